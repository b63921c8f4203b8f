"""The tokenizer trainer end to end on the engine: resume after SIGTERM and SIGKILL (at random steps and
inside checkpoint writes, tests/faults.py), checkpoint contents, init_from."""

from pathlib import Path

import pytest
import torch

import faults
from conftest import step_state, trainer_cmd
from test_monitor import assert_tb_equals_metrics

from dreamer4_libero.cli import ConfigError
from dreamer4_libero.config import demo_config
from dreamer4_libero.fileio import read_json
from dreamer4_libero.models.upstream import load_tokenizer_checkpoint

# the trainers use LPIPS (lpips_weight 0.2) and never fetch it: the machine cache is filled first
pytestmark = pytest.mark.usefixtures("lpips_weights")


def _tiny_cfg(**over) -> dict:
    t = demo_config()["tokenizer"]
    t.update(
        model={**t["model"], "d_model": 32, "depth": 1, "n_latents": 4, "d_bottleneck": 8},
        seq_len=4,
        batch_size=2,
        max_steps=12,
        save_every=2,
        log_every=2,
        deterministic=True,
        num_workers=0,
        keep_last=0,
    )
    t.update(over)
    return t


def _cmd(pre: Path, t: dict, ckpt: Path, out: Path) -> list[str]:
    return trainer_cmd(
        "train_tokenizer.py",
        "--tokenizer",
        t,
        pre,
        "--resolution",
        "32",
        "--ckpt-dir",
        str(ckpt),
        "--out-dir",
        str(out),
    )


@pytest.fixture(scope="module")
def reference(trainer_cli, preprocessed, tmp_path_factory) -> Path:
    """One uninterrupted run of `_tiny_cfg()` (12 steps, a checkpoint every 2)."""
    d = tmp_path_factory.mktemp("tokref")
    ref = trainer_cli.run(_cmd(preprocessed, _tiny_cfg(), d / "ck", d / "out"))
    assert ref.returncode == 0, ref.stderr[-3000:]
    return d


def _assert_same_final(reference: Path, ck: Path) -> None:
    a, b = step_state(reference / "ck", 12), step_state(ck, 12)
    assert a["step"] == b["step"] == 12
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    sa, sb = a["opt"]["state"], b["opt"]["state"]
    assert sa.keys() == sb.keys() and all(torch.equal(sa[i]["exp_avg"], sb[i]["exp_avg"]) for i in sa)


@pytest.mark.fault(
    fault="tokenizer trainer: SIGTERM at a random step, then SIGKILL at a later random step",
    guarantee="SIGTERM saves and exits 75; the last resume ends bitwise equal to an uninterrupted run; "
    "TensorBoard holds each step once, equal to metrics.jsonl",
)
def test_sigterm_then_sigkill_at_random_steps_resume_bitwise(trainer_cli, reference, preprocessed, tmp_path):
    ck = tmp_path / "ck"
    faults.interrupt_at_random_steps(
        trainer_cli,
        _cmd(preprocessed, _tiny_cfg(), ck, tmp_path / "out"),
        ck,
        tmp_path,
        max_steps=12,
        log_every=2,
        seed=11,
    )
    _assert_same_final(reference, ck)
    # the killed attempts' TensorBoard events after their checkpoints are gone: each step once (issue 28)
    tb = assert_tb_equals_metrics(ck)
    assert [s for s, _, _ in tb["scalars"]["loss"]] == list(range(2, 13, 2))


@pytest.mark.fault(
    fault="tokenizer trainer: SIGTERM, then SIGKILL, inside checkpoint writes (temp file not renamed)",
    guarantee="SIGTERM completes the write; the killed write's temp file is never resumed; bitwise end",
)
def test_sigterm_and_sigkill_during_checkpoint_writes_resume_bitwise(trainer_cli, reference, preprocessed, tmp_path):
    ck = tmp_path / "ck"
    faults.interrupt_during_checkpoint_writes(
        trainer_cli,
        _cmd(preprocessed, _tiny_cfg(), ck, tmp_path / "out"),
        ck,
        tmp_path,
        save_every=2,
        max_steps=12,
        seed=12,
    )
    _assert_same_final(reference, ck)


def test_checkpoint_records_lpips_and_config(trainer_cli, preprocessed, tmp_path):
    t = _tiny_cfg(max_steps=2, save_every=1, nonfinite="skip", nonfinite_max_skips=7)
    res = trainer_cli.run(_cmd(preprocessed, t, tmp_path / "ck", tmp_path / "out"))
    assert res.returncode == 0, res.stderr[-3000:]
    ck = read_json(tmp_path / "out" / "checkpoint.json")
    state = torch.load(ck["path"], weights_only=True)  # every checkpoint loads with weights_only
    args = state["args"]
    assert state["step"] == 2 and set(state) >= {"step", "epoch", "model", "opt", "scaler", "args", "scale_pos_embeds"}
    assert args["lpips_weight"] == 0.2 and args["lpips_net"] == "alex" and args["lpips_resolution"] == 32
    assert len(args["lpips_weights_sha256"]) == 64
    assert args["d_model"] == 32 and args["H"] == 32 and args["seq_len"] == 4
    cfg = read_json(Path(ck["path"]).parent / "config.json")
    assert cfg["task"]["lpips"]["weight"] == 0.2 and (tmp_path / "out" / "config.json").exists()
    assert (cfg["engine"]["nonfinite"], cfg["engine"]["nonfinite_max_skips"]) == ("skip", 7)  # config -> engine
    assert ck["skipped_nonfinite"] == 0 and state["nonfinite"] == {
        "policy": "skip",
        "skipped": 0,
        "skipped_updates": [],
    }
    model, report = load_tokenizer_checkpoint(ck["path"])  # strict load of our own checkpoint
    assert model.cfg.d_model == 32 and report["step"] == 2
    # lpips_weight 0 stays possible and is recorded
    t0 = _tiny_cfg(max_steps=1, save_every=1, lpips_weight=0.0)
    res = trainer_cli.run(_cmd(preprocessed, t0, tmp_path / "ck0", tmp_path / "out0"))
    assert res.returncode == 0, res.stderr[-3000:]
    s0 = torch.load(read_json(tmp_path / "out0" / "checkpoint.json")["path"], weights_only=True)
    assert s0["args"]["lpips_weight"] == 0.0 and s0["args"]["lpips_net"] is None


def test_init_scale_and_lr_mult_are_applied_and_recorded(trainer_cli, preprocessed, tmp_path):
    from dreamer4_libero.training.tokenizer_task import TokenizerTask

    t = _tiny_cfg(max_steps=1, save_every=1, lr_mult={"decoder": 3.0}, init_scale={"encoder.patch_proj.weight": 8.0})
    task = TokenizerTask(
        t, manifest=preprocessed / "manifest.json", train_split=preprocessed / "splits" / "train.json", resolution=32
    )
    plain_task = TokenizerTask(
        {**t, "init_scale": {}},
        manifest=preprocessed / "manifest.json",
        train_split=preprocessed / "splits" / "train.json",
        resolution=32,
    )
    torch.manual_seed(0)
    scaled = task.build_model().encoder.patch_proj.weight
    torch.manual_seed(0)
    plain = plain_task.build_model()
    assert torch.allclose(scaled, 8.0 * plain.encoder.patch_proj.weight)
    with pytest.raises(ConfigError, match="init_scale"):
        TokenizerTask(
            {**t, "init_scale": {"nope": 2.0}},
            manifest=preprocessed / "manifest.json",
            train_split=preprocessed / "splits" / "train.json",
            resolution=32,
        ).build_model()
    res = trainer_cli.run(_cmd(preprocessed, t, tmp_path / "ck", tmp_path / "out"))
    assert res.returncode == 0, res.stderr[-3000:]
    state = torch.load(tmp_path / "ck" / "step_0000001.pt", weights_only=True)
    assert sorted(g["lr"] for g in state["opt"]["param_groups"]) == pytest.approx([t["lr"], 3 * t["lr"]])
    assert (
        state["args"]["lr_mult"] == {"decoder": 3.0} and state["args"]["init_scale"]["encoder.patch_proj.weight"] == 8.0
    )


# The demo tokenizer's quality (>= 3 dB over the mean-frame baseline on the demo's val split) is tested on
# the session's demo run: tests/test_demo_study.py::test_tokenizer_quality_on_demo_data.


def test_init_from_an_upstream_tokenizer_is_weights_only(trainer_cli, preprocessed, tiny_tokenizer_ckpt, tmp_path):
    """tokenizer.init_from (the LIBERO fine-tune of a DMControl tokenizer): the architecture comes from the file's
    state dict, training starts from its weights at step 0, and its sha256 is part of the run's identity."""
    from dreamer4_libero.training.identity import run_identity
    from dreamer4_libero.training.tokenizer_task import TokenizerTask

    t = _tiny_cfg(
        max_steps=2,
        save_every=2,
        lr=1e-5,
        lpips_weight=0.0,
        init_from=str(tiny_tokenizer_ckpt),
        init_scale={"encoder.patch_proj.weight": 8.0},
    )
    res = trainer_cli.run(_cmd(preprocessed, t, tmp_path / "ck", tmp_path / "out"))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "fresh start at step 0" in res.stdout
    src = torch.load(tiny_tokenizer_ckpt, weights_only=True)["model"]
    final = step_state(tmp_path / "ck", 2)
    assert final["step"] == 2 and final["model"].keys() == src.keys()  # the file's architecture (4 latents)
    assert final["args"]["init_from"] == str(tiny_tokenizer_ckpt) and final["args"]["init_sha256"]
    drift = max(float((final["model"][k].float() - v.float()).abs().max()) for k, v in src.items())
    assert 0 < drift < 1e-3, drift  # 2 small steps from its weights
    task = TokenizerTask(
        t,
        manifest=str(preprocessed / "manifest.json"),
        train_split=str(preprocessed / "splits" / "train.json"),
        resolution=32,
    )
    ident = task.identity_inputs()
    assert ident["checkpoints"]["init_tokenizer"] == task.init_sha
    fresh = TokenizerTask(
        {**t, "init_from": None},
        manifest=str(preprocessed / "manifest.json"),
        train_split=str(preprocessed / "splits" / "train.json"),
        resolution=32,
    )
    assert (
        run_identity(t, world_size=1, **ident)[0]
        != run_identity({**t, "init_from": None}, world_size=1, **fresh.identity_inputs())[0]
    )
    cmd = _cmd(preprocessed, t, tmp_path / "ck2", tmp_path / "out2")
    cmd[cmd.index("--resolution") + 1] = "16"  # a tokenizer for another resolution
    bad = trainer_cli.run(cmd)
    assert bad.returncode == 2 and "32x32 tokenizer" in bad.stderr and "16x16" in bad.stderr


def test_grad_accum_and_a_larger_max_steps_flag_get_enough_batches(trainer_cli, preprocessed, tmp_path):
    """The loader serves max_steps x grad_accum batches of the engine's (CLI-overridable) max_steps."""
    t = _tiny_cfg(max_steps=3, save_every=3)
    r = trainer_cli.run(
        _cmd(preprocessed, t, tmp_path / "ck", tmp_path / "out") + ["--grad-accum", "2", "--max-steps", "4"]
    )
    assert r.returncode == 0, r.stderr[-3000:]
    ck = step_state(tmp_path / "ck", 4)
    assert ck["step"] == 4 and ck["data"] == {"next_step": 8, "grad_accum": 2}
