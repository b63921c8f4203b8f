"""Live view of training runs (issue 28): TensorBoard scalars equal metrics.jsonl step for step (tokenizer and
world model), each step exactly once over a deadline stop + resume and over a crash after the last checkpoint,
pictures at the image cadence, the progress / ETA line, W&B off by default and a clear error without the
package, and the config's flags reaching the trainers (dry run)."""

from __future__ import annotations

import math
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # engine_toy, whatever pytest's import mode

from conftest import venv_env  # noqa: E402
from engine_toy import ToyTask, toy_config  # noqa: E402
from dreamer4_libero.config import demo_config, dynamics_variants, load_schema  # noqa: E402
from dreamer4_libero.training.checkpoints import list_checkpoints  # noqa: E402
from dreamer4_libero.training.engine import EXIT_OK, EXIT_RESUME, train  # noqa: E402
from dreamer4_libero.training.engine_config import EngineConfig, add_engine_args, engine_config_from_args  # noqa: E402
from dreamer4_libero.training.metrics import read_metrics  # noqa: E402
from dreamer4_libero.training.monitor import TB_DIR, TensorBoardSink, read_tensorboard  # noqa: E402
from dreamer4_libero.training.progress import Progress, fmt_duration, progress_line  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def cfg(ckpt_dir, **kw) -> EngineConfig:
    return toy_config(ckpt_dir, **kw)


def assert_tb_equals_metrics(ckpt_dir: Path) -> dict:
    """Every key of every metrics.jsonl record is in TensorBoard at that step, exactly once (float32 rounding);
    `time` is the event's wall time. Returns what TensorBoard read."""
    recs = read_metrics(ckpt_dir / "metrics.jsonl")
    assert recs, "no metrics"
    steps = [r["step"] for r in recs]
    assert len(steps) == len(set(steps)), "metrics.jsonl holds a step twice"
    tb = read_tensorboard(ckpt_dir / TB_DIR)
    keys = sorted({k for r in recs for k in r} - {"step", "time"})
    assert sorted(tb["scalars"]) == keys
    for k in keys:
        want = [(r["step"], r.get(k)) for r in recs if k in r]
        got = tb["scalars"][k]
        assert [s for s, _, _ in got] == [s for s, _ in want], f"{k}: steps differ"
        for (s, v, _), (_, w) in zip(got, want):
            if w is None:
                assert math.isnan(v), (k, s)
            else:
                assert v == pytest.approx(w, rel=1e-6, abs=1e-30), (k, s)
    times = {s: wt for s, _, wt in tb["scalars"][keys[0]]}
    for r in recs:
        assert times[r["step"]] == pytest.approx(r["time"], abs=1e-6)
    return tb


# -- tokenizer and world model: scalars equal metrics.jsonl, pictures at the image cadence --------------------


def test_tokenizer_run_tensorboard_equals_metrics_and_recon_pictures(preprocessed, tmp_path):
    from dreamer4_libero.training.tokenizer_task import TokenizerTask

    t = demo_config(test=True)["tokenizer"]
    t.update(
        model={**t["model"], "d_model": 32, "depth": 1, "n_latents": 4, "d_bottleneck": 8},
        seq_len=4,
        batch_size=2,
        max_steps=6,
        num_workers=0,
        lpips_weight=0.0,
    )
    task = TokenizerTask(
        t,
        manifest=str(preprocessed / "manifest.json"),
        train_split=str(preprocessed / "splits" / "train.json"),
        resolution=32,
    )
    d = tmp_path / "ck"
    out = tmp_path / "out"
    assert (
        train(
            task,
            cfg(d, max_steps=6, save_every=3, log_every=1, image_every=3, run_name="tok", lr=1e-3, out_dir=str(out)),
        )
        == EXIT_OK
    )
    tb = assert_tb_equals_metrics(d)
    # the finished run's copy in its output folder reads the same
    exported = read_tensorboard(out / TB_DIR)
    assert exported["scalars"] == tb["scalars"] and list(exported["images"]) == ["images/recon"]
    for key in ("loss", "train/mse", "train/psnr", "lr", "lr_factor", "steps_per_s"):
        assert key in tb["scalars"], key
    assert [s for s, _, _ in tb["scalars"]["train/psnr"]] == [1, 2, 3, 4, 5, 6]
    pics = tb["images"]["images/recon"]
    assert [s for s, _ in pics] == [3, 6]
    n = len(task._fixed["episodes"])
    assert n == 3 and task._fixed["split"].endswith("val.json")
    assert pics[0][1].shape == (2 * n * 32, 4 * 32, 3)  # per window: 4 target frames over 4 reconstructions
    # the target rows are the val frames themselves (PNG is lossless)
    target = (task._fixed["frames"][0].permute(2, 0, 3, 1).reshape(32, 4 * 32, 3).double().numpy() * 255).round()
    assert np.array_equal(pics[0][1][:32].astype(np.float64), target)
    assert not np.array_equal(pics[0][1], pics[1][1])  # the model changed between steps 3 and 6


def test_world_model_run_tensorboard_equals_metrics_and_rollout_pictures(preprocessed, tiny_tokenizer_ckpt, tmp_path):
    from dreamer4_libero.training.dynamics_task import DynamicsTask

    run = dynamics_variants(demo_config(test=True))["dynamics_aux_phase6_leakfree"]
    run.update(
        model={**run["model"], "d_model": 32, "depth": 1, "n_heads": 2},
        seq_len=8,
        batch_size=2,
        bootstrap_start=3,
        max_steps=4,
        num_workers=0,
    )
    task = DynamicsTask(
        run,
        manifest=str(preprocessed / "manifest.json"),
        train_split=str(preprocessed / "splits" / "train.json"),
        tokenizer_ckpt=str(tiny_tokenizer_ckpt),
    )
    d = tmp_path / "ck"
    assert (
        train(task, cfg(d, max_steps=4, save_every=2, log_every=1, grad_clip=1.0, model_key="dynamics", run_name="wm"))
        == EXIT_OK
    )
    tb = assert_tb_equals_metrics(d)
    for key in ("loss", "train/aux_mse", "grad_norm", "lr", "steps_per_s"):
        assert key in tb["scalars"], key
    pics = tb["images"]["images/rollout"]
    assert [s for s, _ in pics] == [2, 4]  # image_every None = save_every
    assert pics[0][1].shape == (2 * 3 * 32, 6 * 32, 3)  # 3 windows x (target, 2 context + 4 generated) x 6 frames
    # deterministic: the same weights give the same picture; an action-free variant rolls out without actions
    model = task.build_model().eval()
    a, b = task.images(model, 0)["images/rollout"], task.images(model, 0)["images/rollout"]
    assert np.array_equal(a, b) and a.shape == pics[0][1].shape
    task.run["use_actions"] = False
    assert task.images(model, 0)["images/rollout"].shape == a.shape


# -- resume: each step exactly once -----------------------------------------------------------------------


class PictureToy(ToyTask):
    """The toy task with a picture (its first weight's sign pattern) and an optional crash at one step."""

    def __init__(self, crash_at: int | None = None, **kw):
        super().__init__(**kw)
        self.crash_at = crash_at

    def loss(self, model, batch, step):
        if self.crash_at is not None and step == self.crash_at:
            raise RuntimeError("injected crash")
        return super().loss(model, batch, step)

    def images(self, model, step):
        w = next(model.parameters()).detach()[:8, :8]
        return {"images/w": (w > 0).float()[None].repeat(3, 1, 1)}


@pytest.mark.fault(
    fault="a run stopped by its deadline, then resumed",
    guarantee="TensorBoard holds each step exactly once, equal to metrics.jsonl; pictures once each",
)
def test_deadline_stop_and_resume_keeps_each_step_once(tmp_path, capsys):
    d = tmp_path / "ck"
    rc = train(
        PictureToy(sleep=0.05),
        cfg(d, time_limit_min=0.9 / 60, deadline_margin_s=0.2, image_every=2, start_time=time.time()),
    )
    assert rc == EXIT_RESUME
    out = capsys.readouterr().out
    stopped = int(re.search(r"deadline reached, saved step (\d+)", out).group(1))
    assert 0 < stopped < 20
    # the ETA line at the log cadence, with the deadline save (train.log keeps it too)
    line = re.compile(
        r"step (\d+)/20 \((\d+\.\d)%\) \| loss \S+ \| ([\d.]+) steps/s \| ETA (\S+) \| "
        r"deadline save in (\S+)"
    )
    hits = [m for m in map(line.search, out.splitlines()) if m]
    assert [int(m.group(1)) for m in hits] == list(range(1, stopped + 1))
    for m in hits:
        assert float(m.group(2)) == round(100 * int(m.group(1)) / 20, 1)
        assert 5 <= float(m.group(3)) <= 25  # 0.05 s per step
    assert "deadline save in" in (d / "train.log").read_text()
    assert assert_tb_equals_metrics(d)["scalars"]["loss"][-1][0] == stopped
    assert train(PictureToy(), cfg(d, time_limit_min=10.0, image_every=2, start_time=time.time())) == EXIT_OK
    tb = assert_tb_equals_metrics(d)
    assert [s for s, _, _ in tb["scalars"]["loss"]] == list(range(1, 21))
    assert [s for s, _ in tb["images"]["images/w"]] == list(range(2, 21, 2))
    assert len(list((d / TB_DIR).glob("*tfevents*"))) == 1


@pytest.mark.fault(
    fault="a crash 3 updates after the last checkpoint (its steps already in TensorBoard), then resume",
    guarantee="the crashed attempt's steps after the checkpoint are dropped; each step once",
)
def test_crash_after_checkpoint_then_resume_keeps_each_step_once(tmp_path):
    d = tmp_path / "ck"
    with pytest.raises(RuntimeError, match="injected crash"):
        train(PictureToy(crash_at=13), cfg(d, image_every=1))
    assert list_checkpoints(d)[-1][0] == 10
    before = read_tensorboard(d / TB_DIR)
    assert [s for s, _, _ in before["scalars"]["loss"]] == list(range(1, 14))  # 11..13: after the checkpoint
    assert train(PictureToy(), cfg(d, image_every=1)) == EXIT_OK
    tb = assert_tb_equals_metrics(d)
    assert [s for s, _, _ in tb["scalars"]["loss"]] == list(range(1, 21))
    assert [s for s, _ in tb["images"]["images/w"]] == list(range(1, 21))
    # the resumed values are the new attempt's (the loss of step 12 is recomputed identically: deterministic)
    assert tb["scalars"]["loss"][11][1] == pytest.approx(before["scalars"]["loss"][11][1], rel=1e-6)


def test_rewind_after_a_crash_inside_the_rewrite(tmp_path):
    """Old files beside a half-finished rewrite (duplicated steps): the next rewind leaves one file, each step once."""
    logdir = tmp_path / "tb"
    recs = [{"step": s, "loss": float(s), "time": 1000.0 + s} for s in range(1, 9)]
    for part in (recs, recs[:5]):  # an old file, and a rewrite that stopped before deleting it
        sink = TensorBoardSink(logdir)
        for r in part:
            sink.scalars(r)
        sink.images(4, {"images/x": np.zeros((2, 2, 3), np.uint8)})
        sink.close()
    assert len(list(logdir.glob("*tfevents*"))) == 2
    sink = TensorBoardSink(logdir)
    assert sink.rewind(6, [r for r in recs if r["step"] <= 6]) == 2
    sink.close()
    tb = read_tensorboard(logdir)
    assert [(s, v) for s, v, _ in tb["scalars"]["loss"]] == [(s, float(s)) for s in range(1, 7)]
    assert [s for s, _ in tb["images"]["images/x"]] == [4]
    assert len(list(logdir.glob("*tfevents*"))) == 1


class BrokenPictureToy(ToyTask):
    def images(self, model, step):
        raise ValueError("no episode has >= 6 frames")


def test_a_failing_picture_never_stops_training(tmp_path, capsys):
    d = tmp_path / "ck"
    assert train(BrokenPictureToy(), cfg(d, max_steps=6, image_every=2)) == EXIT_OK
    out = capsys.readouterr().out
    assert out.count("WARNING pictures of step 2 failed (ValueError: no episode has >= 6 frames)") == 1
    assert "pictures of step 4" not in out
    tb = assert_tb_equals_metrics(d)
    assert tb["images"] == {} and [s for s, _, _ in tb["scalars"]["loss"]] == list(range(1, 7))


def test_skipped_non_finite_steps_reach_tensorboard(tmp_path):
    d = tmp_path / "ck"
    with pytest.warns(RuntimeWarning):
        assert train(ToyTask(nan_at=4), cfg(d, max_steps=8, nonfinite="skip")) == EXIT_OK
    tb = assert_tb_equals_metrics(d)  # the skipped update's null loss is NaN there
    assert math.isnan(tb["scalars"]["loss"][4][1]) and tb["scalars"]["loss"][4][0] == 5
    assert [(s, v) for s, v, _ in tb["scalars"]["skipped_nonfinite"]] == [(s, 1.0) for s in range(5, 9)]


def test_rank0_only_and_tensorboard_off(tmp_path):
    d = tmp_path / "ck"
    assert train(ToyTask(), cfg(d, max_steps=3, tensorboard=False)) == EXIT_OK
    assert not (d / TB_DIR).exists() and len(read_metrics(d / "metrics.jsonl")) == 3


# -- the progress / ETA line ------------------------------------------------------------------------------


def test_progress_line_numbers_with_a_fake_clock():
    now = [100.0]
    p = Progress(start_step=1000, max_steps=30000, clock=lambda: now[0])  # resumed at step 1000
    assert p.rate(1000) is None
    assert p.line(1000) == "step 1000/30000 (3.3%) | ? steps/s | ETA ?"
    now[0] += 100.0
    # 200 steps in 100 s of this attempt: 2 steps/s; 28800 left -> 4 h; deadline save in 3h10m reaches ~23,800
    assert p.line(1200, loss=0.01234567, deadline_save_in_s=3 * 3600 + 600) == (
        "step 1200/30000 (4.0%) | loss 0.012346 | 2 steps/s | ETA 4h00m | deadline save in 3h10m (~step 24000)"
    )
    # a deadline after the end: no step estimate; no deadline: no part
    assert progress_line(29000, 30000, 2.0, deadline_save_in_s=7200) == (
        "step 29000/30000 (96.7%) | 2 steps/s | ETA 8m20s | deadline save in 2h00m"
    )
    assert progress_line(30000, 30000, 3.1) == "step 30000/30000 (100.0%) | 3.1 steps/s | ETA 0s"
    assert [fmt_duration(s) for s in (0, 59.4, 61, 3599, 3600, 9300, 86400 * 2 + 3600 * 5, float("inf"))] == [
        "0s",
        "59s",
        "1m01s",
        "59m59s",
        "1h00m",
        "2h35m",
        "2d05h",
        "?",
    ]


# -- W&B --------------------------------------------------------------------------------------------------


def test_wandb_off_by_default_everywhere(tmp_path):
    assert EngineConfig().wandb == "off"
    schema = load_schema()["properties"]["monitoring"]["properties"]
    assert schema["wandb"]["properties"]["enabled"]["default"] is False
    assert schema["wandb"]["properties"]["mode"]["default"] == "offline"
    assert demo_config()["monitoring"]["wandb"]["enabled"] is False
    mods = set(sys.modules)
    assert train(ToyTask(), cfg(tmp_path / "ck", max_steps=2)) == EXIT_OK
    assert "wandb" not in set(sys.modules) - mods and not (tmp_path / "ck" / "wandb").exists()


def test_wandb_enabled_without_the_package_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError, installed or not
    d = tmp_path / "ck"
    with pytest.raises(RuntimeError, match=r"monitoring\.wandb\.enabled is true .*wandb package is not installed"):
        train(ToyTask(), cfg(d, wandb="offline"))
    assert list_checkpoints(d) == []  # stopped before the first update


# -- config -> trainer flags ------------------------------------------------------------------------------


def test_engine_flags_parse():
    import argparse

    a = add_engine_args(argparse.ArgumentParser()).parse_args(
        ["--tensorboard", "false", "--image-every", "0", "--wandb", "offline", "--wandb-project", "p"]
    )
    c = engine_config_from_args(a, max_steps=3)
    assert (c.tensorboard, c.image_every, c.wandb, c.wandb_project) == (False, 0, "offline", "p")
    c = engine_config_from_args(add_engine_args(argparse.ArgumentParser()).parse_args([]), max_steps=3)
    assert (c.tensorboard, c.image_every, c.wandb) == (True, None, "off")
    with pytest.raises(ValueError, match="wandb must be one of"):
        EngineConfig(wandb="on")


@pytest.mark.parametrize(
    "override, flags",
    [
        (None, "--tensorboard true --wandb off"),
        (
            "monitoring: {tensorboard: false, image_every: 50, wandb: {enabled: true, project: p1, entity: team}}\n",
            "--tensorboard false --image-every 50 --wandb offline --wandb-project p1 --wandb-entity team",
        ),
    ],
)
def test_monitoring_config_reaches_the_trainers(tmp_path, override, flags):
    """A dry run prints the train_tokenizer command with the flags of config `monitoring` (resources)."""
    files = [str(REPO / "config" / "demo.yaml")]
    if override:
        (tmp_path / "mon.yaml").write_text(override)
        files.append(str(tmp_path / "mon.yaml"))
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-n",
        "-p",
        "-s",
        str(REPO / "Snakefile"),
        "--directory",
        str(tmp_path),
        "--configfile",
        *files,
        "--",
        "results/train/tokenizer_demo/checkpoint.json",
    ]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=venv_env(), timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    shell = [ln for ln in (r.stdout + r.stderr).splitlines() if "> logs/train_tokenizer/" in ln]
    assert shell and shell[0].rstrip().endswith(
        f"--num-workers 0 {flags} > logs/train_tokenizer/tokenizer_demo.log 2>&1"
    )
