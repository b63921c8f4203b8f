"""The Snakemake workflow: config layering and schema validation, the DAG, profiles."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import venv_env
from dreamer4_libero.config import ConfigError, demo_config, dynamics_variants, load_config

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = shutil.which("snakemake", path=str(Path(sys.executable).parent)) or "snakemake"


def _dry(tmp_path, *args, configfiles=("config/demo.yaml",)):
    cmd = [SNAKEMAKE, "-n", "--cores", "1", "--directory", str(REPO), "--snakefile", str(REPO / "Snakefile")]
    for c in configfiles:
        cmd += ["--configfile", str(REPO / c)]
    return subprocess.run(cmd + list(args), capture_output=True, text=True, cwd=tmp_path, env=venv_env())


def test_demo_dag_dry_run(tmp_path):
    r = _dry(tmp_path, "--forceall")
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout + r.stderr
    for rule in ("make_synthetic", "preprocess", "splits", "data_sanity", "train_tokenizer", "tokenizer_eval"):
        assert f"rule {rule}:" in out or f"{rule} " in out, rule


_SCHEMA_GUARANTEE = "load_config and Snakemake fail naming the key; no job runs, no results/ or logs/ written"


@pytest.mark.parametrize(
    "layer,needle",
    [
        pytest.param(
            {"data": {"bogus_key": 1}},
            "bogus_key",
            id="unknown_key",
            marks=pytest.mark.fault(fault="config: unknown key data.bogus_key", guarantee=_SCHEMA_GUARANTEE),
        ),
        pytest.param(
            {"data": {"workers": "many"}},
            "data.workers",
            id="wrong_type",
            marks=pytest.mark.fault(fault="config: wrong type (data.workers: 'many')", guarantee=_SCHEMA_GUARANTEE),
        ),
        pytest.param(
            {"split": {"ood_fraction": 1.5}},
            "split.ood_fraction",
            id="above_maximum",
            marks=pytest.mark.fault(
                fault="config: out of range (split.ood_fraction: 1.5 > maximum)", guarantee=_SCHEMA_GUARANTEE
            ),
        ),
        pytest.param(
            {"tokenizer": {"model": {"depth": "eight"}}},
            "tokenizer.model.depth",
            id="nested_wrong_type",
            marks=pytest.mark.fault(
                fault="config: wrong type in a nested section (tokenizer.model.depth)", guarantee=_SCHEMA_GUARANTEE
            ),
        ),
        pytest.param(
            {"tokenizer": {"max_steps": 0}},
            "tokenizer.max_steps",
            id="below_minimum",
            marks=pytest.mark.fault(
                fault="config: out of range (tokenizer.max_steps: 0 < minimum 1)", guarantee=_SCHEMA_GUARANTEE
            ),
        ),
        pytest.param(
            {"tokenizer": {"nonfinite": "ignore"}},
            "tokenizer.nonfinite",
            id="not_in_enum",
            marks=pytest.mark.fault(
                fault="config: value outside an enum (tokenizer.nonfinite: ignore)", guarantee=_SCHEMA_GUARANTEE
            ),
        ),
        pytest.param(
            {"dynamics": {"variants": {"dynamics_phase3": {"bogus_knob": 1}}}},
            "bogus_knob",
            id="variant_unknown_key",
            marks=pytest.mark.fault(
                fault="config: unknown key in a dynamics variant (merged, then checked)", guarantee=_SCHEMA_GUARANTEE
            ),
        ),
    ],
)
def test_schema_errors_name_the_key(snakemake_repo, tmp_path, layer, needle):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(layer))
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        dynamics_variants(load_config([REPO / "config" / "demo.yaml", bad]))  # variants are checked when merged
    # a real (not dry) run of the workflow: the config is refused before any job starts
    r = subprocess.run(
        [SNAKEMAKE, "--cores", "1", "--configfile", "config/demo.yaml", str(bad)],
        cwd=snakemake_repo,
        capture_output=True,
        text=True,
        env=venv_env(),
        timeout=300,
    )
    out = r.stdout + r.stderr
    assert r.returncode != 0
    assert needle.split(".")[-1] in out, out[-3000:]
    assert "Job stats" not in out and "rule make_synthetic" not in out, out[-3000:]
    made = [d for d in ("results", "logs", "benchmarks", "checkpoints") if (snakemake_repo / d).exists()]
    assert made == [], f"{made} written by a refused config"
    assert not (snakemake_repo / ".snakemake" / "incomplete").exists() or not any(
        (snakemake_repo / ".snakemake" / "incomplete").iterdir()
    )


def test_layering_and_defaults():
    base, demo = load_config(), demo_config()
    assert base["split"]["ood_fraction"] == 0.2 and demo["split"]["ood_fraction"] == 0.25
    assert demo["data"]["min_demo_len"] == base["data"]["min_demo_len"] == 32  # inherited from config.yaml
    assert base["tokenizer"]["seq_len"] == 16 and base["tokenizer"]["mae_p_max"] == 0.75
    assert base["tokenizer"]["max_steps"] == 85000 and base["tokenizer"]["save_every"] == 5000
    assert base["tokenizer"]["gpus"] == 4 and base["tokenizer"]["lpips_weight"] == 0.2
    assert demo["tokenizer"]["lpips_weight"] == 0.2
    t = demo_config(test=True)
    assert (t["synthetic"]["len_min"], t["synthetic"]["len_max"]) == (40, 64)


def test_every_schema_key_has_default_and_description():
    schema = yaml.safe_load((REPO / "config" / "schema.yaml").read_text())

    def walk(node, path):
        for k, sub in node.get("properties", {}).items():
            assert "default" in sub, f"{path}{k}: no default"
            assert sub.get("description"), f"{path}{k}: no description"
            walk(sub, f"{path}{k}.")

    walk(schema, "")


def test_default_profile_sets_no_resources():
    """A workflow profile's default-resources would replace a site slurm profile's (account, partition)."""
    prof = yaml.safe_load((REPO / "profiles" / "default" / "config.yaml").read_text())
    assert "default-resources" not in prof and "set-resources" not in prof
    assert not (REPO / "slurm").exists()  # would shadow the site's `--profile slurm`


def test_lint_and_snakefmt_are_clean(tmp_path):
    r = _dry(tmp_path, "--lint")
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "Congratulations" in out, out[-3000:]
    fmt = shutil.which("snakefmt", path=str(Path(sys.executable).parent)) or "snakefmt"
    r = subprocess.run([fmt, "--check", "."], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
