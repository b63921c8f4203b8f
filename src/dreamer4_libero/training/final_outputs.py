"""A finished run's files (rank 0, after the process group is gone; training/engine.py `Trainer.finish`).

Beside the checkpoints: config.json (the resolved config, the final step and checkpoint, every attempt's
start record). In the declared output folder (`out_dir`, results/train/<run>/): metrics.jsonl, the
TensorBoard copy, one curve PNG per metric group, config.json, the task's own outputs and
checkpoint.json (path, step, sha256 of the final checkpoint; what the downstream rules read).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..fileio import sha256_file, write_json
from .checkpoints import to_json_plain
from .metrics import export_metrics
from .monitor import TB_DIR, export_tensorboard
from .resume import read_attempts


def write_final_outputs(run: Any) -> None:
    """Every file of a finished run; `run` is the engine's Trainer."""
    cfg = run.cfg
    final = run.last_ckpt
    if final is None or not final.exists():
        raise RuntimeError(f"no final checkpoint for step {run.step} in {run.ckpt_dir}")
    history = read_attempts(run.ckpt_dir)
    conf = {
        **run.resolved,
        "final_step": run.step,
        "final_checkpoint": str(final.resolve()),
        "history": [h for h in history if h.get("event") == "start"],
    }
    write_json(run.ckpt_dir / "config.json", conf)
    if cfg.out_dir is None:
        run.end_record("done")
        run.log(f"done at step {run.step}: {final}")
        return
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = run.metrics.records()
    export_metrics(records, out / "metrics.jsonl")
    if cfg.tensorboard:  # the finished run's curves beside its other outputs (results/train/<run>/)
        export_tensorboard(run.ckpt_dir / TB_DIR, out / TB_DIR)
    from ..reporting.plots import plot_metrics  # matplotlib only once a run has finished

    plots = plot_metrics(records, out, title=cfg.run_name)
    write_json(out / "config.json", conf)
    extra = None
    if hasattr(run.task, "final_outputs"):
        extra = run.task.final_outputs(run.raw_model, out)
    write_json(
        out / "checkpoint.json",
        {
            "path": str(final.resolve()),
            "step": run.step,
            "sha256": sha256_file(final),
            "bytes": final.stat().st_size,
            "model_key": cfg.model_key,
            "run_name": cfg.run_name,
            "config": str((run.ckpt_dir / "config.json").resolve()),
            "plots": [p.name for p in plots],
            "attempts": len(conf["history"]),
            "skipped_nonfinite": len(run.skipped),
            "extra": to_json_plain(extra or {}),
        },
    )
    run.end_record("done")
    run.log(f"done at step {run.step}: {final} -> {out}/checkpoint.json")
