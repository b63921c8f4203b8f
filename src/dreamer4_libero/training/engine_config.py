"""The engine's settings (`EngineConfig`) and the trainers' command-line flags, generated from its fields.

Each field that a trainer may set from the command line carries its help text in `metadata["help"]`;
`add_engine_args` turns exactly those fields into flags (`--save-every` for `save_every`, the type
from the annotation: booleans as true/false, `X | None` numbers accept "none") and
`engine_config_from_args` applies the flags that were given on top of the trainer's config. The
field list is written once, here.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

import torch

from ..job_sizing import loader_workers
from ..models.blocks import ATTENTION_BACKENDS
from .devices import ALLOW_CPU_FALLBACK_ENV, require_gpus
from .monitor import WANDB_MODES

AMP_MODES = ("auto", "bf16", "fp16", "off")
FUSED_ADAMW_MODES = ("auto", "on", "off")
NONFINITE_POLICIES = ("stop", "skip")
LR_SCHEDULES = ("constant", "cosine")


def flag(default: Any, help: str, **kw: Any) -> Any:
    """A field that is also a command-line flag (`help`, optional `choices`)."""
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class EngineConfig:
    """Everything the engine needs; the trainer builds it from the pipeline config + CLI."""

    run_name: str = flag("run", "run name (log prefix, checkpoint.json)")
    ckpt_dir: str = flag("checkpoints/run", "checkpoint dir (NOT a declared output; kept across retries)")
    out_dir: str | None = flag(None, "declared-output dir: metrics.jsonl, curve_*.png, config.json, checkpoint.json")
    max_steps: int = flag(1000, "optimizer updates of the whole run")
    lr: float = flag(1e-4, "AdamW learning rate")
    weight_decay: float = flag(0.01, "AdamW decoupled weight decay")
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    grad_clip: float | None = flag(None, "max global grad norm (after unscale, on the unwrapped module); 'none' = off")
    nonfinite: str = flag(
        "stop",
        "NaN/inf loss: stop (raise; the newest checkpoint is the last good one) or skip the update",
        choices=NONFINITE_POLICIES,
    )
    nonfinite_max_skips: int = flag(100, "under skip: stop after more skipped updates than this (over all attempts)")
    grad_accum: int = flag(1, "micro-batches per optimizer update")
    save_every: int = flag(1000, "checkpoint every n updates")
    keep_last: int = flag(3, "step checkpoints kept (<= 0: all)")
    log_every: int = flag(100, "metrics record every n updates")
    seed: int = flag(0, "seed of init, data stream and the task's randomness (rank r uses seed + r)")
    amp: str = flag("auto", "mixed precision on CUDA; CPU always runs fp32", choices=AMP_MODES)
    deterministic: bool = flag(False, "deterministic algorithms (bitwise-reproducible CPU runs)")
    num_threads: int | None = flag(None, "torch CPU threads (deterministic mode default: 1)")
    time_limit_min: float | None = flag(
        None,
        "this attempt's time limit (Slurm runtime, minutes; the Slurm job's end "
        "time, where earlier, wins: slurm_job.py); 'none' = off",
    )
    deadline_margin_s: float = flag(180.0, "save and exit 75 this long before the deadline")
    start_time: float | None = None  # epoch seconds the time limit counts from (default: process start)
    model_key: str = "model"  # "model" (tokenizer) or "dynamics"
    extra_args: dict = field(default_factory=dict)  # stored as `args` in checkpoints (upstream vars(args))
    progress: bool = flag(True, "progress bar (and the ETA line in non-interactive logs)")
    find_unused_parameters: bool = flag(False, "DDP find_unused_parameters")
    static_graph: bool = False
    metrics_tail: int = 20  # last metric records stored in each checkpoint
    tf32: bool = True  # CUDA TF32 matmuls (ignored in deterministic mode)
    lr_mult: dict = field(default_factory=dict)  # parameter-name prefix -> lr multiplier (longest prefix wins)
    lr_schedule: str = "constant"  # constant (upstream) | cosine (from lr at update 1 to 0 at max_steps)
    attention: str = flag(
        "sdpa",
        "attention kernel: sdpa (fused kernels) or explicit (the written-out reference; models/blocks.py)",
        choices=ATTENTION_BACKENDS,
    )
    fused_adamw: str = flag(
        "auto", "fused AdamW (auto = on CUDA); CPU always uses the foreach AdamW", choices=FUSED_ADAMW_MODES
    )
    compile: bool = flag(False, "torch.compile the model (checkpoints store the uncompiled state dict)")
    activation_checkpointing: bool = flag(False, "recompute each transformer layer in backward (less memory)")
    # live view (training/monitor.py; config `monitoring`): rank 0 only, never part of what a run learns
    tensorboard: bool = flag(True, "TensorBoard event files in <ckpt-dir>/tensorboard, every metrics.jsonl scalar")
    image_every: int | None = flag(None, "task pictures every n updates (0 = never; default: save_every)")
    wandb: str = flag("off", "Weights & Biases: off | offline | online (needs the wandb package)", choices=WANDB_MODES)
    wandb_project: str = flag("dreamer4-libero", "W&B project")
    wandb_entity: str | None = flag(None, "W&B entity (team or user)")

    def __post_init__(self) -> None:
        self.ckpt_dir = os.fspath(self.ckpt_dir)
        if self.out_dir is not None:
            self.out_dir = os.fspath(self.out_dir)
        self.betas = (float(self.betas[0]), float(self.betas[1]))
        for name, allowed in (
            ("lr_schedule", LR_SCHEDULES),
            ("amp", AMP_MODES),
            ("attention", ATTENTION_BACKENDS),
            ("fused_adamw", FUSED_ADAMW_MODES),
            ("wandb", WANDB_MODES),
            ("nonfinite", NONFINITE_POLICIES),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {'|'.join(allowed)}, got {getattr(self, name)!r}")
        if int(self.max_steps) < 0:
            raise ValueError("max_steps must be >= 0")
        for name in ("grad_accum", "save_every", "log_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.grad_clip is not None and self.grad_clip <= 0:
            self.grad_clip = None
        if self.image_every is not None and int(self.image_every) < 0:
            raise ValueError("image_every must be >= 0 (0 = no images, None = save_every)")
        if int(self.nonfinite_max_skips) < 0:
            raise ValueError("nonfinite_max_skips must be >= 0")
        if self.time_limit_min is not None and self.time_limit_min <= 0:
            self.time_limit_min = None
        if not self.model_key or not isinstance(self.model_key, str):
            raise ValueError("model_key must be a non-empty string")


# ----------------------------------------------------------------------------------------------
# command line


def parse_bool(s: str) -> bool:
    v = str(s).strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {s!r}")


def optional_float(s: str) -> float:
    """A number, or 'none'/'off' -> 0.0, which EngineConfig turns into None (off)."""
    return 0.0 if str(s).strip().lower() in ("none", "null", "off", "") else float(s)


# annotation (as written above) -> argparse type
_FLAG_TYPES = {
    "str": str,
    "str | None": str,
    "int": int,
    "int | None": int,
    "float": float,
    "float | None": optional_float,
    "bool": parse_bool,
}


def cli_fields() -> list[dataclasses.Field]:
    """The EngineConfig fields that are command-line flags (those with a help text), in field order."""
    return [f for f in dataclasses.fields(EngineConfig) if "help" in f.metadata]


def _opt_workers(v: str) -> int | str:
    return "auto" if v == "auto" else int(v)


def add_engine_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the engine's flags: one per `cli_fields()` field, plus the job-level ones (checkpoint root, GPUs,
    loader workers). Every default is None ("not given"): ``engine_config_from_args`` applies only the flags
    actually given on top of the trainer's config."""
    g = parser.add_argument_group("training engine")
    for f in cli_fields():
        kw: dict[str, Any] = {"help": f.metadata["help"]}
        if "choices" in f.metadata:
            kw["choices"] = list(f.metadata["choices"])
        else:
            kw["type"] = _FLAG_TYPES[str(f.type)]
            if kw["type"] is parse_bool:
                kw["metavar"] = "BOOL"
        g.add_argument("--" + f.name.replace("_", "-"), **kw)
    g.add_argument("--ckpt-root", help="instead of --ckpt-dir: <root>/<run>/<identity hash>/ (training/identity.py)")
    g.add_argument(
        "--expect-gpus",
        type=int,
        default=0,
        help="GPUs the job's resources give it (per node); more than torch sees stops the job at once "
        "(training/devices.py) unless --allow-cpu-fallback",
    )
    g.add_argument(
        "--allow-cpu-fallback",
        type=parse_bool,
        metavar="BOOL",
        help=f"run on the CPU when the expected GPUs are missing (default: ${ALLOW_CPU_FALLBACK_ENV})",
    )
    g.add_argument(
        "--num-workers",
        type=_opt_workers,
        metavar="N|auto",
        help="data-loader workers per rank (default: the config's num_workers); auto = from the job's "
        "CPUs (job_sizing.loader_workers)",
    )
    return parser


def engine_config_from_args(args: argparse.Namespace, **base: Any) -> EngineConfig:
    """EngineConfig from ``base`` (e.g. the pipeline config) overridden by the flags that were given."""
    known = {f.name for f in dataclasses.fields(EngineConfig)}
    unknown = set(base) - known
    if unknown:
        raise TypeError(f"unknown EngineConfig fields: {sorted(unknown)}")
    kw = dict(base)
    for f in cli_fields():
        v = getattr(args, f.name, None)
        if v is not None:
            kw[f.name] = v
    # "--grad-clip none" / "--time-limit-min none" arrive as 0.0 and EngineConfig turns them into None
    return EngineConfig(**kw)


#: the engine settings a trainer's config section carries (tokenizer, dynamics.defaults), same names
SECTION_ENGINE_KEYS = (
    "max_steps",
    "lr",
    "lr_schedule",
    "weight_decay",
    "nonfinite",
    "nonfinite_max_skips",
    "save_every",
    "keep_last",
    "log_every",
    "seed",
    "amp",
    "deterministic",
    "attention",
    "fused_adamw",
    "compile",
    "activation_checkpointing",
)


def section_engine_config(args: argparse.Namespace, section: dict, **fixed: Any) -> EngineConfig:
    """A trainer's EngineConfig: its section's engine keys (SECTION_ENGINE_KEYS, deadline_margin_s; 300 s where
    the section has none), the trainer's `fixed` settings (run name, model key, ...), then the given flags."""
    kw = {k: section[k] for k in SECTION_ENGINE_KEYS if k in section}
    kw["deadline_margin_s"] = section.get("deadline_margin_s", 300.0)
    return engine_config_from_args(args, progress=True, **kw, **fixed)


def job_loader_workers(args: argparse.Namespace, configured: int | None) -> int:
    """The data-loader workers per rank of this process: --num-workers (a number, or auto) over the config's
    `num_workers` (null = auto); auto splits the CPUs the job was given over the ranks on this node."""
    n = configured if args.num_workers is None else (None if args.num_workers == "auto" else args.num_workers)
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return loader_workers(n, local_ranks=local, on_gpu=bool(args.expect_gpus) and torch.cuda.is_available())


def require_job_gpus(args: argparse.Namespace, who: str) -> bool:
    """A trainer CLI's first step after parsing, before its task loads any data: the GPUs its job was
    given (--expect-gpus) must be usable by torch (devices.require_gpus; raises GPUUnavailableError)."""
    return require_gpus(args.expect_gpus, args.allow_cpu_fallback, who=who)
