"""Live view of a training run: TensorBoard event files and optional Weights & Biases, fed by MetricsLog.

Sinks receive exactly what ``MetricsLog.append`` writes to ``metrics.jsonl`` (one logging call, no second
list of keys): every numeric value of the record except ``step`` (the x axis) and ``time`` (the event's
wall time), a null (a non-finite value) as NaN. Only rank 0 has sinks (``MetricsLog(enabled=False)``
elsewhere). Each record is flushed at once, i.e. at the log cadence.

TensorBoard: ``<ckpt dir>/tensorboard/`` (the checkpoint dir survives Snakemake retries; the declared
output dir does not). On every start, before the first new event, ``rewind(step, kept)`` rewrites the
folder as ONE event file holding the scalars of the kept ``metrics.jsonl`` records (step <= the resumed
step) and the image events of the old files with step <= the resumed step (each (tag, step) once), then
deletes the old files: whatever a killed attempt wrote after its checkpoint is gone, and every reader
(TensorBoard's Python EventAccumulator, its Rust data server) sees each step exactly once. A crash
inside the rewrite leaves the old files beside the new one; the next start rewrites again. A finished
run's folder is copied to ``<out dir>/tensorboard/`` with its other outputs (``export_tensorboard``).

W&B (``wandb`` off | offline | online): imported only when enabled; enabled without the package is an
error at the start of the run naming the config key. Offline runs write under ``<ckpt dir>/wandb/``
(``wandb sync`` uploads them). A resumed run continues the same W&B run id; W&B ignores steps it has
already seen, so a killed attempt's steps past its checkpoint are not replaced there (TensorBoard is the
exact record).
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np

TB_DIR = "tensorboard"
WANDB_MODES = ("off", "offline", "online")
# record keys that are no curve: the x axis, and the wall time (stored as the event's own wall_time)
NOT_SCALARS = {"step", "time"}


def scalar_items(rec: dict) -> list[tuple[str, float]]:
    """(tag, value) of every numeric value of a metrics record, in key order; None (non-finite) -> NaN."""
    out = []
    for k, v in sorted(rec.items()):
        if k in NOT_SCALARS or isinstance(v, (bool, str)):
            continue
        if v is None:
            out.append((k, math.nan))
        elif isinstance(v, (int, float)):
            out.append((k, float(v)))
    return out


def to_uint8_image(img: Any) -> np.ndarray:
    """(H,W,3) uint8 from a numpy array / tensor, (H,W,3) or (3,H,W), uint8 or float in [0,1]."""
    if hasattr(img, "detach"):
        img = img.detach().float().cpu().numpy()
    a = np.asarray(img)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = a.transpose(1, 2, 0)
    if a.ndim != 3 or a.shape[-1] not in (1, 3):
        raise ValueError(f"an image must be (H,W,3) or (3,H,W), got shape {a.shape}")
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    if a.dtype != np.uint8:
        a = (np.clip(a.astype(np.float64), 0.0, 1.0) * 255.0).round().astype(np.uint8)
    return np.ascontiguousarray(a)


def _png(a: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(a, mode="RGB").save(buf, format="PNG")
    return buf.getvalue()


class TensorBoardSink:
    """Event files in ``logdir``; scalars as simple_value (float32), images as PNG."""

    def __init__(self, logdir: str | os.PathLike):
        self.logdir = Path(logdir)
        self._writer = None
        self._suffix = ""

    def _event(self, step: int, wall_time: float | None, values: list) -> Any:
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary

        return Event(
            wall_time=time.time() if wall_time is None else float(wall_time),
            step=int(step),
            summary=Summary(value=values),
        )

    def _scalar_event(self, rec: dict):
        from tensorboard.compat.proto.summary_pb2 import Summary

        vals = [Summary.Value(tag=k, simple_value=v) for k, v in scalar_items(rec)]
        return self._event(rec["step"], rec.get("time"), vals) if vals else None

    def _open(self):
        if self._writer is None:
            from tensorboard.summary.writer.event_file_writer import EventFileWriter

            self.logdir.mkdir(parents=True, exist_ok=True)
            # a unique suffix: two attempts in one second (and one process) never share a file name
            self._suffix = f".{os.getpid()}.{time.time_ns()}"
            self._writer = EventFileWriter(
                str(self.logdir), max_queue_size=1000, flush_secs=3600, filename_suffix=self._suffix
            )
        return self._writer

    def scalars(self, rec: dict) -> None:
        ev = self._scalar_event(rec)
        if ev is not None:
            self._open().add_event(ev)
            self.flush()

    def images(self, step: int, images: dict[str, Any], wall_time: float | None = None) -> None:
        from tensorboard.compat.proto.summary_pb2 import Summary

        vals = []
        for tag, img in sorted(images.items()):
            a = to_uint8_image(img)
            vals.append(
                Summary.Value(
                    tag=tag,
                    image=Summary.Image(
                        height=a.shape[0], width=a.shape[1], colorspace=3, encoded_image_string=_png(a)
                    ),
                )
            )
        if vals:
            self._open().add_event(self._event(step, wall_time, vals))
            self.flush()

    def event_files(self) -> list[Path]:
        return sorted(p for p in self.logdir.glob("*tfevents*") if p.is_file()) if self.logdir.is_dir() else []

    def rewind(self, step: int, kept: Iterable[dict]) -> int:
        """Rewrite the folder: scalars of the `kept` records, old image events with step <= `step`; returns the
        number of old event files replaced."""
        from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader

        self.close()
        old = self.event_files()
        image_events: dict[tuple[str, int], Any] = {}
        for path in old:
            try:
                for ev in LegacyEventFileLoader(str(path)).Load():  # raw events (no migration to tensors)
                    if ev.step > step or not ev.HasField("summary"):
                        continue
                    for v in ev.summary.value:
                        if v.HasField("image"):
                            image_events.setdefault((v.tag, ev.step), (ev.wall_time, v))
            except Exception as e:  # a file cut by a kill: what was read is kept
                print(f"WARNING: {path}: unreadable event file tail ({type(e).__name__}: {e})", flush=True)
        w = self._open()
        for rec in sorted(kept, key=lambda r: r["step"]):
            ev = self._scalar_event(rec)
            if ev is not None:
                w.add_event(ev)
        for (tag, s), (wt, v) in sorted(image_events.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            w.add_event(self._event(s, wt, [v]))
        self.flush()
        for path in old:
            if not path.name.endswith(self._suffix):
                path.unlink(missing_ok=True)
        return len(old)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class WandbSink:
    """Weights & Biases (offline by default); the package is imported here only."""

    def __init__(
        self,
        mode: str,
        *,
        project: str,
        entity: str | None,
        run_name: str,
        ckpt_dir: str | os.PathLike,
        config: dict | None = None,
    ):
        try:
            import wandb
        except ImportError:
            raise RuntimeError(
                f"monitoring.wandb.enabled is true (W&B mode {mode!r}) but the wandb package is not installed in "
                f"this environment: `pip install wandb`, or set monitoring.wandb.enabled: false in the config "
                f"(engine flag --wandb off)"
            ) from None
        self._wandb = wandb
        d = Path(ckpt_dir)
        d.mkdir(parents=True, exist_ok=True)
        # one W&B run per checkpoint dir: a resumed attempt continues it
        run_id = hashlib.sha256(str(d.resolve()).encode()).hexdigest()[:16]
        self._run = wandb.init(
            project=project,
            entity=entity,
            name=run_name,
            id=run_id,
            resume="allow",
            mode=mode,
            dir=str(d),
            config=config or {},
        )

    def scalars(self, rec: dict) -> None:
        self._run.log(dict(scalar_items(rec)), step=int(rec["step"]))

    def images(self, step: int, images: dict[str, Any], wall_time: float | None = None) -> None:
        self._run.log({k: self._wandb.Image(to_uint8_image(v)) for k, v in images.items()}, step=int(step))

    def rewind(self, step: int, kept: Iterable[dict]) -> int:
        return 0  # W&B keeps what it has; steps it has already seen are ignored there

    def flush(self) -> None:
        pass

    def close(self) -> None:
        if self._run is not None:
            self._run.finish()
            self._run = None


def build_sinks(
    ckpt_dir: str | os.PathLike,
    *,
    tensorboard: bool,
    wandb: str = "off",
    wandb_project: str = "",
    wandb_entity: str | None = None,
    run_name: str = "run",
    config: dict | None = None,
) -> list:
    """The sinks of rank 0 for the engine's config; raises (naming the key) where W&B is on but not installed."""
    if wandb not in WANDB_MODES:
        raise ValueError(f"wandb must be one of {WANDB_MODES}, got {wandb!r}")
    sinks: list = []
    if tensorboard:
        sinks.append(TensorBoardSink(Path(ckpt_dir) / TB_DIR))
    if wandb != "off":
        sinks.append(
            WandbSink(
                wandb, project=wandb_project, entity=wandb_entity, run_name=run_name, ckpt_dir=ckpt_dir, config=config
            )
        )
    return sinks


def export_tensorboard(src: str | os.PathLike, dest: str | os.PathLike) -> Path | None:
    """Replace folder `dest` by a copy of the run's event files `src` (at the end of a run, into its declared
    output folder, so `tensorboard --logdir results/train` shows every finished run); None where `src` is
    missing. The copy is made beside `dest` and renamed into place."""
    import shutil

    src, dest = Path(src), Path(dest)
    files = sorted(src.glob("*tfevents*")) if src.is_dir() else []
    if not files:
        return None
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in files:
        shutil.copy2(f, tmp / f.name)
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    return dest


def read_tensorboard(logdir: str | os.PathLike) -> dict:
    """{"scalars": {tag: [(step, value, wall_time)]}, "images": {tag: [(step, (H,W,3) uint8)]}} as TensorBoard's
    own reader (EventAccumulator, no sampling) sees the folder."""
    from tensorboard.backend.event_processing.event_accumulator import IMAGES, SCALARS, EventAccumulator
    from PIL import Image

    acc = EventAccumulator(str(logdir), size_guidance={SCALARS: 0, IMAGES: 0})
    acc.Reload()
    tags = acc.Tags()
    scalars = {t: [(e.step, e.value, e.wall_time) for e in acc.Scalars(t)] for t in tags.get("scalars", [])}
    images = {
        t: [(e.step, np.asarray(Image.open(io.BytesIO(e.encoded_image_string)).convert("RGB"))) for e in acc.Images(t)]
        for t in tags.get("images", [])
    }
    return {"scalars": scalars, "images": images}


def send_pictures(task, model, step: int, device, autocast, metrics, log) -> bool:
    """The task's pictures of this step (the unwrapped model on `device`) to the live-view sinks (rank 0;
    training/engine.py): eval mode, no grad, a forked RNG (training is unaffected), under `autocast`. A picture
    that fails never stops training: warned once, no more pictures this attempt (returns False)."""
    import torch

    modes = [(m, m.training) for m in model.modules()]
    devices = [device] if device.type == "cuda" else []
    try:
        model.eval()
        with torch.random.fork_rng(devices=devices), torch.no_grad(), autocast:
            imgs = task.images(model, step)
        metrics.images(step, imgs or {})
        return True
    except Exception as e:
        log(
            f"WARNING pictures of step {step} failed ({type(e).__name__}: {e}); "
            f"no more pictures in this attempt, training goes on"
        )
        return False
    finally:
        for m, was in modes:
            m.training = was
