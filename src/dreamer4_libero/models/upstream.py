"""Upstream (nicklashansen/dreamer4) state-dict layout and checkpoints written elsewhere (§7, §8).

Our module tree uses the upstream key names, so conversion is only about wrappers: torch.compile
adds `_orig_mod.`, DDP adds `module.` (§7.4). A foreign checkpoint's architecture is read from
its state dict (widths, depth, time layers, patch geometry); only parameter-free settings come
from an explicit config, then the checkpoint's `args`, then the train_tokenizer defaults (§6.1),
except scale_pos_embeds whose fallback is True (§1.7). The report says where each value came from.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import OrderedDict
from dataclasses import fields

import torch

from ..fileio import safe_torch_load
from .blocks import has_time
from .tokenizer import Tokenizer, TokenizerConfig

WRAPPER_PREFIXES = ("_orig_mod.", "module.")


def strip_prefixes(sd: dict, prefixes=WRAPPER_PREFIXES) -> OrderedDict:
    """Remove leading wrapper prefixes (repeatedly, any order: `module._orig_mod.x` -> `x`)."""
    out = OrderedDict()
    for k, v in sd.items():
        while True:
            p = next((p for p in prefixes if k.startswith(p)), None)
            if p is None:
                break
            k = k[len(p) :]
        out[k] = v
    return out


def add_prefix(sd: dict, prefix: str = "_orig_mod.") -> OrderedDict:
    return OrderedDict((prefix + k, v) for k, v in sd.items())


def to_upstream_state_dict(model_or_sd, compiled: bool = False) -> OrderedDict:
    """State dict in the upstream layout (fp32 CPU copies); compiled=True adds `_orig_mod.`."""
    sd = model_or_sd.state_dict() if isinstance(model_or_sd, torch.nn.Module) else model_or_sd
    sd = OrderedDict((k, v.detach().to("cpu", torch.float32).clone()) for k, v in strip_prefixes(sd).items())
    return add_prefix(sd) if compiled else sd


def upstream_tokenizer_args(cfg: TokenizerConfig) -> dict:
    """The architecture part of train_tokenizer.py's `args` (same names as our config)."""
    return cfg.to_dict()


def upstream_tokenizer_checkpoint(
    model: Tokenizer, step: int = 0, epoch: int = 0, args: dict | None = None, compiled: bool = False
) -> dict:
    """A checkpoint dict as train_tokenizer.py writes it (§8): weights only, empty optimizer state."""
    args = dict(upstream_tokenizer_args(model.cfg) if args is None else args)
    return {
        "step": step,
        "epoch": epoch,
        "model": to_upstream_state_dict(model, compiled),
        "opt": {"state": {}, "param_groups": []},
        "scaler": {},
        "args": args,
        "scale_pos_embeds": args.get("scale_pos_embeds", model.cfg.scale_pos_embeds),
    }


def save_upstream_tokenizer_checkpoint(path, model: Tokenizer, **kw) -> None:
    torch.save(upstream_tokenizer_checkpoint(model, **kw), str(path))


# ---------------------------------------------------------------------------------------------


def _layer_info(sd: dict, prefix: str) -> tuple[int, set[int]]:
    """(depth, indices of layers with time attention) of `prefix`transformer.layers.{i}.*"""
    pat = re.compile(re.escape(prefix) + r"transformer\.layers\.(\d+)\.(\w+)")
    idx, time = set(), set()
    for k in sd:
        m = pat.match(k)
        if m:
            idx.add(int(m.group(1)))
            if m.group(2) == "time":
                time.add(int(m.group(1)))
    if not idx:
        raise ValueError(f"no {prefix}transformer.layers.* keys in the state dict")
    return max(idx) + 1, time


def _time_every(depth: int, time_layers: set[int]) -> int:
    for te in range(1, depth + 2):
        if {i for i in range(depth) if has_time(i, te)} == time_layers:
            return te
    raise ValueError(f"time-attention layers {sorted(time_layers)} of depth {depth} match no time_every")


def tokenizer_config_from_state_dict(sd: dict, args: dict | None = None, explicit: dict | None = None):
    """Build a TokenizerConfig for a (possibly foreign) tokenizer state dict.

    Shape-derived: d_model, n_latents, d_bottleneck, mlp_ratio, depth, time_every, and the patch
    geometry (C*patch^2 = patch dim, (H/patch)*(W/patch) = patch count; the image values are taken
    from explicit/args/defaults when consistent, else re-derived for square images).
    Parameter-free (n_heads, dropout, mae_p_min/max, scale_pos_embeds): explicit (non-None) >
    args > defaults (§6.1; scale_pos_embeds -> True).
    Returns (cfg, report) with report = {"source": {field: origin}, "fallbacks": [..], "notes": [..]}.
    """
    sd = strip_prefixes(sd)
    args, explicit = dict(args or {}), {k: v for k, v in (explicit or {}).items() if v is not None}
    defaults = TokenizerConfig()
    source, fallbacks, notes = {}, [], []

    def setting(name, default=None):
        if name in explicit:
            source[name] = "explicit"
            return explicit[name]
        if name in args and args[name] is not None:
            source[name] = "args"
            return args[name]
        value = getattr(defaults, name) if default is None else default
        source[name] = "default"
        fallbacks.append(f"{name}={value!r} (not in explicit config or checkpoint args: default)")
        return value

    D, Dp = sd["encoder.patch_proj.weight"].shape
    n_lat = sd["encoder.latents"].shape[0]
    d_b = sd["encoder.bottleneck_proj.weight"].shape[0]
    n_p = sd["decoder.patch_queries"].shape[0]
    h2 = sd["encoder.transformer.layers.0.mlp.fc_in.weight"].shape[0]
    depth, t_enc = _layer_info(sd, "encoder.")
    depth_dec, t_dec = _layer_info(sd, "decoder.")
    if (depth, t_enc) != (depth_dec, t_dec):
        raise ValueError(
            f"encoder (depth {depth}, time {sorted(t_enc)}) and decoder (depth {depth_dec}, "
            f"time {sorted(t_dec)}) differ; one TokenizerConfig cannot describe them"
        )
    ratio = h2 / 2 / D
    if int(D * ratio) != h2 // 2:  # float round-off
        ratio = math.nextafter(ratio, math.inf)
    shaped = {
        "d_model": int(D),
        "n_latents": int(n_lat),
        "d_bottleneck": int(d_b),
        "mlp_ratio": ratio,
        "depth": depth,
        "time_every": _time_every(depth, t_enc),
    }
    for name, value in shaped.items():
        source[name] = "state_dict"
        if name in explicit and explicit[name] != value:
            notes.append(f"explicit {name}={explicit[name]!r} ignored: state dict says {value!r}")
        elif name in args and args[name] is not None and args[name] != value:
            notes.append(f"args {name}={args[name]!r} ignored: state dict says {value!r}")

    geo = {n: setting(n) for n in ("H", "W", "C", "patch")}
    if geo["C"] * geo["patch"] ** 2 != Dp or (geo["H"] // geo["patch"]) * (geo["W"] // geo["patch"]) != n_p:
        C = geo["C"] if Dp % geo["C"] == 0 and math.isqrt(Dp // geo["C"]) ** 2 == Dp // geo["C"] else 3
        p, side = math.isqrt(Dp // C), math.isqrt(n_p)
        if C * p * p != Dp or side * side != n_p:
            raise ValueError(f"cannot derive image geometry from patch dim {Dp} and patch count {n_p}")
        notes.append(
            f"image geometry {geo} inconsistent with patch dim {Dp} / count {n_p}: "
            f"using C={C}, patch={p}, H=W={side * p}"
        )
        geo = {"H": side * p, "W": side * p, "C": C, "patch": p}
        for n in geo:
            source[n] = "state_dict"
    free = {n: setting(n) for n in ("n_heads", "dropout", "mae_p_min", "mae_p_max")}
    free["scale_pos_embeds"] = bool(setting("scale_pos_embeds", default=True))
    if D % free["n_heads"]:
        raise ValueError(f"n_heads {free['n_heads']} does not divide d_model {D}")
    cfg = TokenizerConfig(**shaped, **geo, **free)
    assert {f.name for f in fields(cfg)} == set(source)
    return cfg, {"source": source, "fallbacks": fallbacks, "notes": notes}


def load_tokenizer_checkpoint(path_or_dict, explicit: dict | None = None, map_location="cpu"):
    """Tokenizer (eval mode) from an upstream or own checkpoint file/dict, or a bare state dict.

    Returns (model, report); report as tokenizer_config_from_state_dict plus "step" and "path".
    """
    sd, args, ckpt = read_checkpoint(path_or_dict, keys=("model", "tokenizer", "state_dict"), map_location=map_location)
    cfg, report = tokenizer_config_from_state_dict(sd, args, explicit)
    model = Tokenizer(cfg)
    model.load_state_dict(sd, strict=True)
    report.update(
        step=ckpt.get("step"), path=str(path_or_dict) if isinstance(path_or_dict, (str, os.PathLike)) else None
    )
    return model.eval(), report


def load_frozen_tokenizer(path: str):
    """Tokenizer for encoding only: eval mode, MAE off (p_min = p_max = 0), dropout 0, no grads.

    What the dynamics trainer and the evaluations (probe, rollout) encode with;
    returns (model, report) as :func:`load_tokenizer_checkpoint`."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"tokenizer checkpoint not found: {path}")
    tok, report = load_tokenizer_checkpoint(path, explicit={"mae_p_min": 0.0, "mae_p_max": 0.0, "dropout": 0.0})
    for p in tok.parameters():
        p.requires_grad_(False)
    return tok.eval(), report


# ---------------------------------------------------------------------------------------------
# Dynamics (§3, §7.2, §8 "Loading checkpoints written elsewhere")

# train_dynamics.py defaults for the settings without parameters (§6.2) -- never interactive.py's
# inference fallbacks (n_agent 0, time_every 4), which would drop the agent token the probe reads.
DYNAMICS_TRAIN_DEFAULTS = {
    "n_heads": 4,
    "k_max": 8,
    "space_mode": "wm_agent_isolated",
    "n_agent": 1,
    "dropout": 0.0,
    "n_spatial": 8,
}
_ARG_ALIASES = {"space_mode": ("space_mode", "agent_space_mode")}


def dynamics_config_from_state_dict(sd: dict, args: dict | None = None, explicit: dict | None = None):
    """DynamicsConfig for a (possibly foreign) dynamics state dict.

    From shapes: d_model, d_spatial, depth, time_every (which layers have time.* keys), n_register,
    action width, mlp_ratio, and k_max is checked against signal_embed / step_embed.
    Parameter-free (n_heads, k_max, space_mode, n_agent, dropout, n_spatial): explicit (non-None) >
    args > train_dynamics defaults; scale_pos_embeds: explicit > args > True (§1.7).
    n_spatial has no parameter: pass it explicitly from the tokenizer (n_latents / packing_factor).
    Returns (cfg, report) like tokenizer_config_from_state_dict.
    """
    from .dynamics import DynamicsConfig

    sd = strip_prefixes(sd)
    args, explicit = dict(args or {}), {k: v for k, v in (explicit or {}).items() if v is not None}
    source, fallbacks, notes = {}, [], []

    def setting(name, default):
        if name in explicit:
            source[name] = "explicit"
            return explicit[name]
        for a in _ARG_ALIASES.get(name, (name,)):
            if args.get(a) is not None:
                source[name] = f"args[{a!r}]"
                return args[a]
        source[name] = "default"
        fallbacks.append(
            f"{name}={default!r} (not in the run's config nor the checkpoint's args: train_dynamics default)"
        )
        return default

    D, d_sp = sd["spatial_proj.weight"].shape
    h2 = sd["transformer.layers.0.mlp.fc_in.weight"].shape[0]
    depth, t_layers = _layer_info(sd, "")
    ratio = h2 / 2 / D
    if int(D * ratio) != h2 // 2:
        ratio = math.nextafter(ratio, math.inf)
    shaped = {
        "d_model": int(D),
        "d_spatial": int(d_sp),
        "depth": depth,
        "time_every": _time_every(depth, t_layers),
        "n_register": int(sd["register_tokens"].shape[0]),
        "action_dim": int(sd["action_encoder.fc1.weight"].shape[1]),
        "mlp_ratio": ratio,
    }
    for name, value in shaped.items():
        source[name] = "state_dict"
        for origin, d in (("explicit", explicit), ("args", args)):
            if d.get(name) is not None and d[name] != value:
                notes.append(f"{origin} {name}={d[name]!r} ignored: state dict says {value!r}")
    free = {
        n: setting(n, DYNAMICS_TRAIN_DEFAULTS[n])
        for n in ("n_heads", "k_max", "space_mode", "n_agent", "dropout", "n_spatial")
    }
    free["scale_pos_embeds"] = bool(setting("scale_pos_embeds", True))
    n_sig, n_step = sd["signal_embed.weight"].shape[0], sd["step_embed.weight"].shape[0]
    if n_sig != free["k_max"] + 1 or n_step != int(math.log2(free["k_max"])) + 1:
        raise ValueError(
            f"k_max={free['k_max']} ({source['k_max']}) does not match the state dict: "
            f"signal_embed has {n_sig} rows (k_max+1), step_embed {n_step} (log2 k_max + 1)"
        )
    cfg = DynamicsConfig(**shaped, **free)
    return cfg, {"source": source, "fallbacks": fallbacks, "notes": notes}


def checkpoint_file(path: str | os.PathLike) -> str:
    """A weights file, or a training run's checkpoint.json (results/train/<run>/), as the weights file's path."""
    path = os.fspath(path)
    if path.endswith(".json"):
        if not os.path.exists(path):
            raise FileNotFoundError(f"checkpoint not found: {path}")
        with open(path) as fh:
            return json.load(fh)["path"]
    return path


def read_checkpoint(path_or_dict, keys=("dynamics", "model", "state_dict"), map_location="cpu"):
    """(state dict without wrapper prefixes, args, raw checkpoint) from a file or dict; clear errors."""
    if isinstance(path_or_dict, (str, os.PathLike)):
        if not os.path.exists(path_or_dict):
            raise FileNotFoundError(f"checkpoint not found: {path_or_dict}")
        ckpt = safe_torch_load(path_or_dict, map_location=map_location)
    else:
        ckpt = path_or_dict
    key = next((k for k in keys if isinstance(ckpt.get(k), dict)), None)
    if key is None:  # a bare state dict
        return strip_prefixes(ckpt), {}, ckpt
    args = dict(ckpt.get("args") or {})
    if "scale_pos_embeds" not in args and "scale_pos_embeds" in ckpt:
        args["scale_pos_embeds"] = ckpt["scale_pos_embeds"]  # top-level duplicate
    return strip_prefixes(ckpt[key]), args, ckpt


def load_dynamics_checkpoint(path_or_dict, explicit: dict | None = None, map_location="cpu", strict: bool = True):
    """Dynamics (eval mode) from an upstream or own checkpoint (file/dict) or a bare state dict.

    Returns (model, report); report as dynamics_config_from_state_dict plus "step", "path",
    "missing", "unexpected" (strict=False only) and "n_params".
    """
    from .dynamics import Dynamics

    sd, args, ckpt = read_checkpoint(path_or_dict, map_location=map_location)
    cfg, report = dynamics_config_from_state_dict(sd, args, explicit)
    model = Dynamics(cfg)
    res = model.load_state_dict(sd, strict=strict)
    report.update(
        step=ckpt.get("step"),
        n_params=sum(p.numel() for p in model.parameters()),
        missing=list(getattr(res, "missing_keys", [])),
        unexpected=list(getattr(res, "unexpected_keys", [])),
        path=str(path_or_dict) if isinstance(path_or_dict, (str, os.PathLike)) else None,
    )
    return model.eval(), report


def upstream_dynamics_checkpoint(model, step: int = 0, args: dict | None = None, compiled: bool = False) -> dict:
    """A checkpoint dict as train_dynamics.py writes it (§8): weights, empty optimizer state."""
    args = dict(
        args
        if args is not None
        else {"d_model_dyn": model.cfg.d_model, "dyn_depth": model.cfg.depth, **model.cfg.to_dict()}
    )
    return {
        "step": step,
        "epoch": 0,
        "dynamics": to_upstream_state_dict(model, compiled),
        "opt": {"state": {}, "param_groups": []},
        "scaler": {},
        "args": args,
        "scale_pos_embeds": args.get("scale_pos_embeds", model.cfg.scale_pos_embeds),
    }
