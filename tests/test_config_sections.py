"""The one way a workflow script reads config (issue 30 item 3): config.parse_section / validate_section."""

from __future__ import annotations

import json
import re

import pytest

from dreamer4_libero.config import (
    VARIANT_DERIVED_KEYS,
    ConfigError,
    demo_config,
    dynamics_variants,
    parse_section,
    validate,
)
from dreamer4_libero.job_sizing import science

from conftest import REPO


def test_defaults_are_filled_and_errors_name_the_section_key():
    ev = parse_section(json.dumps({"horizon": 16}), "rollout_eval", "--eval")
    assert ev["horizon"] == 16 and ev["context"] == 8 and ev["stride"] == 40 and ev["device"] == "auto"
    with pytest.raises(ConfigError, match=r"config key 'rollout_eval.n_strips': 0 is less than the minimum of 1"):
        parse_section(json.dumps({"n_strips": 0}), "rollout_eval", "--eval")
    with pytest.raises(ConfigError, match=r"'bogus' was unexpected"):
        parse_section(json.dumps({"bogus": 1}), "tokenizer.eval", "--eval")


def test_bad_json_and_unknown_sections_name_the_argument():
    with pytest.raises(ConfigError, match=r"--eval: not valid JSON .*expected the config section 'probe_eval'"):
        parse_section("{H_list: [1]}", "probe_eval", "--eval")
    with pytest.raises(
        ConfigError, match=r"--eval: expected the config section 'probe_eval' as a JSON object, found list"
    ):
        parse_section("[1]", "probe_eval", "--eval")
    with pytest.raises(ConfigError, match=r"no config section 'nope.eval'"):
        parse_section("{}", "nope.eval", "--x")


def test_scheduling_keys_are_refused_or_checked_but_never_filled():
    with pytest.raises(ConfigError, match=r"'mem_mb' was unexpected"):
        parse_section(json.dumps({"mem_mb": 1000}), "probe_eval", "--eval")
    tok = parse_section(json.dumps({"gpus": 2}), "tokenizer", "--tokenizer", scheduling="allow")
    assert tok["gpus"] == 2 and "mem_mb" not in tok and "runtime_min" not in tok
    with pytest.raises(ConfigError, match=r"config key 'tokenizer.gpus': -1 is less than the minimum of 0"):
        parse_section(json.dumps({"gpus": -1}), "tokenizer", "--tokenizer", scheduling="allow")


def test_a_resolved_variant_round_trips_with_its_derived_keys():
    run = science(dynamics_variants(demo_config())["dynamics_aux_agent_reads_leakfree"])
    back = parse_section(
        json.dumps(run), "dynamics.defaults", "--variant", derived=VARIANT_DERIVED_KEYS, scheduling="allow"
    )
    assert back == run  # the rule's section is complete: nothing added, nothing lost
    with pytest.raises(ConfigError, match=r"'name', 'not_run_reason', 'runnable' were unexpected"):
        parse_section(json.dumps(run), "dynamics.defaults", "--variant")


def test_the_tables_config_is_a_schema_defs_entry():
    cfg = parse_section(json.dumps({"variants": [{"name": "v"}]}), "$defs.tables_config", "--tables-config")
    assert cfg["variants"] == [
        {
            "name": "v",
            "label": None,
            "runnable": True,
            "not_run_reason": None,
            "stand_in_for": None,
            "aux_weight": 0.0,
            "aux_input": None,
            "space_mode": None,
            "init_from": None,
            "init_source": None,
            "init_note": None,
        }
    ]
    assert (cfg["H_list"], cfg["seeds"], cfg["bootstrap_B"]) == ([1, 2, 4, 8], [0, 1, 2], 1000)
    with pytest.raises(ConfigError, match=r"'variants' is a required property"):
        parse_section("{}", "$defs.tables_config", "--tables-config")


def test_no_workflow_script_parses_a_config_section_itself():
    """grep: every JSON argument of a workflow script goes through parse_section (write_status's --json is a
    status record the rule writes, not config)."""
    hits = []
    for p in sorted((REPO / "workflow_scripts").glob("*.py")):
        for ln in p.read_text().splitlines():
            if re.search(r"json\.loads\(\s*a(rgs)?\.", ln) and p.name != "write_status.py":
                hits.append(f"{p.name}: {ln.strip()}")
    assert hits == []
    defined = [p.name for p in (REPO / "src").rglob("*.py") if "def parse_section" in p.read_text()]
    assert defined == ["config.py"]


def test_unexpected_key_is_named_in_full():
    """A key the section does not have is named as `<section>.<key>` (it read 'rollout_eval.': ... before)."""
    with pytest.raises(ConfigError) as e:
        parse_section(json.dumps({"gpus": 0}), "rollout_eval", "--eval")
    assert "config key 'rollout_eval.gpus': Additional properties are not allowed ('gpus' was unexpected)" in str(
        e.value
    )
    bad = demo_config()
    bad["rollout_eval"]["n_stripes"] = 3
    with pytest.raises(ConfigError, match=r"config key 'rollout_eval.n_stripes': Additional properties"):
        validate(bad)
