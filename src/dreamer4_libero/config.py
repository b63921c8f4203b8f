"""One config system: `config.yaml` (paper scale) with override files layered on top.

The Snakefile validates with `snakemake.utils.validate`; this module does the same outside
Snakemake (tests, benchmarks, notebooks): deep-merge the files in order, then validate against
`config/schema.yaml`, filling every default. Unknown keys and wrong types are errors that name
the key.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Iterable

import jsonschema
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = REPO_ROOT / "config" / "schema.yaml"


class ConfigError(ValueError):
    """A config file does not match config/schema.yaml."""


def deep_merge(base: dict, override: dict) -> dict:
    """Return base updated recursively by override (the way Snakemake layers config files)."""
    out = copy.deepcopy(base)
    for key, val in override.items():
        if isinstance(val, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], val)
        else:
            out[key] = copy.deepcopy(val)
    return out


def _fill_defaults(schema: dict, cfg: dict) -> None:
    for key, sub in schema.get("properties", {}).items():
        if key not in cfg and "default" in sub:
            cfg[key] = copy.deepcopy(sub["default"])
        if sub.get("type") == "object" and isinstance(cfg.get(key), dict):
            _fill_defaults(sub, cfg[key])
        if sub.get("type") == "array" and isinstance(cfg.get(key), list) and "properties" in sub.get("items", {}):
            for item in cfg[key]:
                if isinstance(item, dict):
                    _fill_defaults(sub["items"], item)


def load_schema(path: str | Path = SCHEMA_PATH) -> dict:
    with open(path) as fh:
        return yaml.safe_load(fh)


def validate(cfg: dict, schema: dict | None = None) -> dict:
    """Validate and fill defaults in place; return cfg. Errors name the offending key path."""
    schema = schema or load_schema()
    _fill_defaults(schema, cfg)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(cfg), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"config key '{_key_path('', e) or '<top level>'}': {e.message}" for e in errors]
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines))
    if isinstance(cfg.get("tokenizer"), dict) and "nodes" in cfg["tokenizer"]:
        check_launch(cfg["tokenizer"], "tokenizer")
    return cfg


def load_config(
    files: Iterable[str | Path] = (), overrides: dict | None = None, base: str | Path | None = REPO_ROOT / "config.yaml"
) -> dict:
    """Load config.yaml, then each override file, then a dict of overrides; validate."""
    cfg: dict[str, Any] = {}
    paths = ([base] if base else []) + list(files)
    for p in paths:
        with open(p) as fh:
            layer = yaml.safe_load(fh) or {}
        if not isinstance(layer, dict):
            raise ConfigError(f"{p}: top level must be a mapping, found {type(layer).__name__}")
        cfg = deep_merge(cfg, layer)
    if overrides:
        cfg = deep_merge(cfg, overrides)
    return validate(cfg)


def demo_config(test: bool = False) -> dict:
    """The resolved CPU demo config (or the test config, which layers on the demo)."""
    files = [REPO_ROOT / "config" / "demo.yaml"]
    if test:
        files.append(REPO_ROOT / "config" / "test.yaml")
    return load_config(files)


def dynamics_variants(cfg: dict, schema: dict | None = None) -> dict[str, dict]:
    """name -> resolved run config (`dynamics.defaults` deep-merged with the variant's entry).

    Each merged run is validated against the schema of `dynamics.defaults` (unknown keys and wrong
    types are errors naming `dynamics.variants.<name>.<key>`). Adds `name`, `init_paths`
    ({tokenizer, dynamics} or None) and `runnable` / `not_run_reason` (a DMControl init whose paths
    are unset cannot run).
    """
    schema = schema or load_schema()
    sub = schema["properties"]["dynamics"]["properties"]["defaults"]
    dyn = cfg.get("dynamics", {})
    base = dyn.get("defaults", {})
    out = {}
    for name, entry in (dyn.get("variants") or {}).items():
        run = _validated(deep_merge(base, entry or {}), sub, f"dynamics.variants.{name}")
        run["name"] = name
        init = run["init_from"]
        reason = None
        run["init_source"], run["init_note"] = (None, None) if not init else ("files", "configured init checkpoints")
        if init == "dmcontrol":
            init, reason, run["init_source"], run["init_note"] = _dmcontrol_init(cfg)
        run["init_paths"] = init
        run["runnable"] = run["enabled"] and reason is None
        run["not_run_reason"] = reason if run["enabled"] else "disabled in the config (enabled: false)"
        out[name] = run
    return {n: out[n] for n in _variant_order(list(out))}


#: where the pipeline's own DMControl pretraining leaves its upstream-layout checkpoints (rules/dmcontrol.smk)
DMCONTROL_PRETRAIN_DIR = "results/dmcontrol/pretrain"


def _dmcontrol_init(cfg: dict) -> tuple[dict, str | None, str | None, str]:
    """(init_paths, not-run reason, source, note for the tables) of an `init_from: dmcontrol` variant."""
    from .data.dmcontrol_release import DEFAULT_DIR, HF_REPO, release_paths

    dm = dict(cfg.get("dmcontrol_init") or {})
    source = _dmcontrol_source(dm)
    if source == "none":
        return (
            {"tokenizer": None, "dynamics": None},
            "dmcontrol_init.source is none: this DMControl-initialised variant is not run",
            None,
            "not run",
        )
    reason = None
    if source == "released":  # present or not: the workflow checks at parse time (check_dmcontrol_files)
        paths = release_paths(dm.get("released_dir") or DEFAULT_DIR)
        note = f"DMControl init from the released {HF_REPO} checkpoints ({paths['dynamics']})"
    elif source == "files":
        paths = {"tokenizer": dm.get("tokenizer"), "dynamics": dm.get("dynamics")}
        reason = (
            None
            if paths["dynamics"]
            else (
                "no DMControl checkpoint configured (dmcontrol_init.dynamics is "
                "null): this DMControl-initialised variant is not run"
            )
        )
        note = f"DMControl init from the configured files ({paths['dynamics']})"
    else:
        paths = {
            "tokenizer": f"{DMCONTROL_PRETRAIN_DIR}/tokenizer.pt",
            "dynamics": f"{DMCONTROL_PRETRAIN_DIR}/dynamics.pt",
        }
        note = "DMControl init from the pipeline's own DMControl pretraining (collect_dmcontrol + pretrain_dmcontrol)"
    choice = dm.get("tokenizer_choice", "dmcontrol")
    if choice == "study" or not paths["tokenizer"]:
        paths["tokenizer"] = None
        note += "; frozen tokenizer: the study's LIBERO tokenizer"
    elif choice == "finetune":
        run = _finetune_run_name(cfg)
        paths["tokenizer"] = f"results/train/{run}/checkpoint.json"
        note += f"; frozen tokenizer: the DMControl tokenizer fine-tuned on LIBERO ({run})"
    else:
        note += "; frozen tokenizer: the DMControl tokenizer"
    return paths, reason, source, note


def _dmcontrol_source(dm: dict) -> str:
    """`dmcontrol_init.source` resolved: auto = files when a dynamics path is set, else released (never
    the pretraining, which only an explicit `source: pretrain` runs)."""
    source = dm.get("source", "released")
    if source == "auto":
        return "files" if dm.get("dynamics") else "released"
    return source


def _dmcontrol_start_tokenizer(dm: dict) -> str | None:
    """The DMControl tokenizer file a LIBERO fine-tune of it starts from, by source."""
    from .data.dmcontrol_release import DEFAULT_DIR, release_paths

    source = _dmcontrol_source(dm)
    if source == "files":
        return dm.get("tokenizer")
    if source == "released":
        return release_paths(dm.get("released_dir") or DEFAULT_DIR)["tokenizer"]
    return f"{DMCONTROL_PRETRAIN_DIR}/tokenizer.pt"


def _finetune_run_name(cfg: dict) -> str:
    return ((cfg.get("dmcontrol_pretrain") or {}).get("finetune_tokenizer") or {}).get(
        "run_name", "tokenizer_dmcontrol_libero"
    )


def _key_path(where: str, err: jsonschema.ValidationError) -> str:
    """The dotted config key of a schema error below `where`; an unexpected key is named itself
    ('rollout_eval.gpus', not 'rollout_eval')."""
    parts = [where] if where else []
    parts += [str(p) for p in err.absolute_path]
    if err.validator == "additionalProperties" and isinstance(err.instance, dict):
        extra = sorted(k for k in err.instance if k not in err.schema.get("properties", {}))
        if len(extra) == 1:
            parts.append(str(extra[0]))
    return ".".join(parts)


def _validated(run: dict, sub: dict, where: str) -> dict:
    """Fill the defaults of schema `sub` into `run` and validate; errors name `<where>.<key>`."""
    _fill_defaults(sub, run)
    errors = sorted(jsonschema.Draft202012Validator(sub).iter_errors(run), key=lambda e: list(e.absolute_path))
    if errors:
        raise ConfigError(
            "invalid configuration:\n  "
            + "\n  ".join(f"config key '{_key_path(where, e)}': {e.message}" for e in errors)
        )
    if "nodes" in run:
        check_launch(run, where)
    return run


def section_schema(where: str, schema: dict | None = None, scheduling: str = "refuse") -> dict:
    """The schema fragment of the config section at dotted path `where` (e.g. "rollout_eval",
    "tokenizer.eval"). Its scheduling keys (job_sizing.SCHEDULING_KEYS: they travel as Slurm resources,
    never inside an algorithm section) are left out (`scheduling="refuse"`: present, they are errors) or
    kept without their defaults (`"allow"`: checked where given, never filled in)."""
    from .job_sizing import SCHEDULING_KEYS

    node = schema or load_schema()
    parts = where.split(".")
    if parts[0] == "$defs":  # a structure the workflow builds (e.g. $defs.tables_config), not a config key
        node, parts = {"properties": node.get("$defs") or {}}, parts[1:]
    for part in parts:
        props = node.get("properties") or {}
        if part not in props:
            raise ConfigError(f"{SCHEMA_PATH.name} has no config section {where!r}")
        node = props[part]
    node = copy.deepcopy(node)
    props = node.get("properties") or {}
    if scheduling == "refuse":
        node["properties"] = {k: v for k, v in props.items() if k not in SCHEDULING_KEYS}
    else:
        for k in SCHEDULING_KEYS & set(props):
            props[k].pop("default", None)
    return node


#: keys `dynamics_variants` adds to a resolved variant (not config keys; parse_section(derived=...) keeps them)
VARIANT_DERIVED_KEYS = ("name", "init_paths", "init_source", "init_note", "runnable", "not_run_reason")


def parse_section(text: str, where: str, arg: str, derived: Iterable[str] = (), scheduling: str = "refuse") -> dict:
    """A config section handed to a workflow script as one JSON argument (rules/common.smk `json_arg`):
    parsed, its defaults filled from the schema fragment at `where`, validated against it. The one way
    a script reads config; errors name the argument and the key (`<where>.<key>`). `derived` keys (added
    by the workflow, e.g. VARIANT_DERIVED_KEYS) are passed through unchecked; `scheduling` as in
    `section_schema` (the trainers allow them: a run's own config, e.g. in tests, may carry them)."""
    import json

    try:
        section = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{arg}: not valid JSON ({exc}); expected the config section {where!r}") from None
    if not isinstance(section, dict):
        raise ConfigError(
            f"{arg}: expected the config section {where!r} as a JSON object, found {type(section).__name__}"
        )
    return validate_section(section, where, derived=derived, scheduling=scheduling)


def validate_section(section: dict, where: str, derived: Iterable[str] = (), scheduling: str = "refuse") -> dict:
    """`parse_section` for a section already parsed (in-process callers, e.g. reporting/results.py)."""
    if not isinstance(section, dict):
        raise ConfigError(f"the config section {where!r} must be a mapping, found {type(section).__name__}")
    section = copy.deepcopy(section)
    kept = {k: section.pop(k) for k in derived if k in section}
    return {**_validated(section, section_schema(where, scheduling=scheduling), where), **kept}


def check_launch(run: dict, where: str) -> None:
    """A training run's `nodes` and `gpus` (GPUs per node) must be launchable (training/launch.py); the
    error names `<where>.nodes`."""
    from .training.launch import LaunchConfigError, check_nodes

    try:
        check_nodes(run, where)
    except LaunchConfigError as e:
        raise ConfigError(f"invalid configuration:\n  {e}") from None


def dmcontrol_pretrain_runs(cfg: dict, schema: dict | None = None) -> dict[str, dict]:
    """The DMControl pretraining runs, each validated like its source section (errors name
    `dmcontrol_pretrain.<run>.<key>`):
    - "tokenizer": the `tokenizer` section updated by `dmcontrol_pretrain.tokenizer`;
    - "dynamics": `dynamics.defaults` updated by `dmcontrol_pretrain.dynamics` (no aux head, from scratch);
    - "finetune_tokenizer": that tokenizer's settings updated by `dmcontrol_pretrain.finetune_tokenizer`,
      starting from the DMControl tokenizer this config's DMControl variants use (released file, configured
      file or own pretraining): the run of `dmcontrol_init.tokenizer_choice: finetune`.
    """
    schema = schema or load_schema()
    props = schema["properties"]
    pre = cfg.get("dmcontrol_pretrain") or {}
    tok = _validated(
        deep_merge(
            deep_merge(cfg.get("tokenizer", {}), {"run_name": "tokenizer_dmcontrol", "fresh_tag": ""}),
            pre.get("tokenizer") or {},
        ),
        props["tokenizer"],
        "dmcontrol_pretrain.tokenizer",
    )
    dyn = _validated(
        deep_merge(
            deep_merge(
                cfg.get("dynamics", {}).get("defaults", {}),
                {"aux_weight": 0.0, "init_from": None, "enabled": True, "fresh_tag": "", "stand_in_for": None},
            ),
            pre.get("dynamics") or {},
        ),
        props["dynamics"]["properties"]["defaults"],
        "dmcontrol_pretrain.dynamics",
    )
    dyn.update(
        name="dynamics_dmcontrol", init_paths=None, init_source=None, init_note=None, runnable=True, not_run_reason=None
    )
    dm = dict(cfg.get("dmcontrol_init") or {})
    start = _dmcontrol_start_tokenizer(dm)
    ft = _validated(
        deep_merge(
            deep_merge(tok, {"run_name": _finetune_run_name(cfg), "init_from": start}),
            pre.get("finetune_tokenizer") or {},
        ),
        props["tokenizer"],
        "dmcontrol_pretrain.finetune_tokenizer",
    )
    return {"tokenizer": tok, "dynamics": dyn, "finetune_tokenizer": ft}


def _variant_order(names: list[str]) -> list[str]:
    """config.yaml's order of variants first (tables list rows in it), then variants added by overrides.

    Snakemake's config merge puts an override file's keys first, so the merged order is not the
    study's order."""
    try:
        with open(REPO_ROOT / "config.yaml") as fh:
            base = list(((yaml.safe_load(fh) or {}).get("dynamics") or {}).get("variants") or {})
    except OSError:
        base = []
    return [n for n in base if n in names] + [n for n in names if n not in base]
