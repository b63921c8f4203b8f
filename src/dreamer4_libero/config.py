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
        lines = []
        for err in errors:
            where = ".".join(str(p) for p in err.absolute_path) or "<top level>"
            lines.append(f"config key '{where}': {err.message}")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines))
    return cfg


def load_config(files: Iterable[str | Path] = (), overrides: dict | None = None,
                base: str | Path | None = REPO_ROOT / "config.yaml") -> dict:
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
        run = deep_merge(base, entry or {})
        _fill_defaults(sub, run)
        errors = sorted(jsonschema.Draft202012Validator(sub).iter_errors(run), key=lambda e: list(e.absolute_path))
        if errors:
            raise ConfigError("invalid configuration:\n  " + "\n  ".join(
                f"config key 'dynamics.variants.{name}.{'.'.join(str(p) for p in e.absolute_path)}': {e.message}"
                for e in errors))
        run["name"] = name
        init = run["init_from"]
        reason = None
        if init == "dmcontrol":
            paths = dict(cfg.get("dmcontrol_init") or {})
            if not paths.get("dynamics"):
                reason = ("no DMControl checkpoint configured (dmcontrol_init.dynamics is null): "
                          "this DMControl-initialised variant is not run")
            init = {"tokenizer": paths.get("tokenizer"), "dynamics": paths.get("dynamics")}
        run["init_paths"] = init
        run["runnable"] = run["enabled"] and reason is None
        run["not_run_reason"] = reason if run["enabled"] else "disabled in the config (enabled: false)"
        out[name] = run
    return {n: out[n] for n in _variant_order(list(out))}


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
