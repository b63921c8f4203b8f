"""The dynamics trainer on the shared engine: resume after SIGTERM and SIGKILL (at random steps and inside
checkpoint writes, tests/faults.py) and after deadline stops (bitwise), a corrupt training shard, clean exit
with 1 and 2 processes (bootstrap on), checkpoint layout, init_from."""

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import faults
from conftest import step_state, trainer_cmd
from dreamer4_libero.config import demo_config, dynamics_variants
from dreamer4_libero.fileio import read_json
from dreamer4_libero.models.dynamics import Dynamics, DynamicsConfig
from dreamer4_libero.models.upstream import add_prefix, load_dynamics_checkpoint, upstream_dynamics_checkpoint


def _run_cfg(name="dynamics_aux_phase6_leakfree", **over) -> dict:
    run = dynamics_variants(demo_config(test=True))[name]
    run.update(
        model={**run["model"], "d_model": 32, "depth": 1, "n_heads": 2},
        seq_len=8,
        batch_size=4,
        bootstrap_start=3,
        max_steps=10,
        save_every=2,
        log_every=1,
        deterministic=True,
        num_workers=0,
        keep_last=0,
    )
    run.update(over)
    return run


def _cmd(pre: Path, tok: Path, run: dict, ckpt: Path, out: Path, *extra) -> list[str]:
    tok_json = ckpt.parent / f"{ckpt.name}_tok.json"
    tok_json.write_text(json.dumps({"path": str(tok)}))
    return trainer_cmd(
        "train_dynamics.py",
        "--variant",
        run,
        pre,
        "--tokenizer-checkpoint-json",
        str(tok_json),
        "--ckpt-dir",
        str(ckpt),
        "--out-dir",
        str(out),
        *extra,
    )


def _same(a: dict, b: dict):
    for key in ("dynamics", "aux_head"):
        assert a[key].keys() == b[key].keys()
        for k in a[key]:
            assert torch.equal(a[key][k], b[key][k]), (key, k)


@pytest.fixture(scope="module")
def reference(trainer_cli, preprocessed, tiny_tokenizer_ckpt, tmp_path_factory):
    d = tmp_path_factory.mktemp("dynref")
    res = trainer_cli.run(_cmd(preprocessed, tiny_tokenizer_ckpt, _run_cfg(), d / "ck", d / "out"))
    assert res.returncode == 0, res.stderr[-3000:]
    return d


def test_reference_outputs_and_checkpoint_layout(reference):
    out = reference / "out"
    ck = read_json(out / "checkpoint.json")
    state = torch.load(ck["path"], weights_only=True)
    assert state["step"] == 10 and set(state) >= {"step", "epoch", "dynamics", "opt", "scaler", "args", "aux_head"}
    assert not any(k.startswith("aux") for k in state["dynamics"])  # the evaluated weights are aux-free
    model, rep = load_dynamics_checkpoint(ck["path"])  # strict load, upstream keys
    assert model.cfg.d_model == 32 and model.cfg.n_agent == 1 and rep["step"] == 10
    aux = torch.load(ck["extra"]["aux_head"], weights_only=True)
    assert aux["aux_input"] == "action_free" and set(aux["aux_head"]) == {
        "fc1.weight",
        "fc1.bias",
        "fc2.weight",
        "fc2.bias",
    }
    args = state["args"]
    assert args["aux_weight"] == 0.05 and args["bootstrap_start"] == 3 and len(args["tokenizer_sha256"]) == 64
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    by_step = {r["step"]: r for r in metrics if "step" in r}
    assert by_step[2]["train/loss_self"] == 0 and by_step[10]["train/loss_self"] > 0  # bootstrap from step 3
    assert all("train/aux_mse" in by_step[s] for s in by_step)
    conf = read_json(out / "config.json")
    assert conf["task"]["variant"]["name"] == "dynamics_aux_phase6_leakfree" and conf["final_step"] == 10


@pytest.mark.fault(
    fault="dynamics trainer: SIGTERM at a random step, then SIGKILL at a later random step",
    guarantee="SIGTERM saves and exits 75; the last resume ends bitwise equal to an uninterrupted run",
)
def test_sigterm_then_sigkill_at_random_steps_resume_bitwise(
    trainer_cli, reference, preprocessed, tiny_tokenizer_ckpt, tmp_path
):
    ck = tmp_path / "ck"
    cmd = _cmd(preprocessed, tiny_tokenizer_ckpt, _run_cfg(), ck, tmp_path / "out")
    faults.interrupt_at_random_steps(trainer_cli, cmd, ck, tmp_path, max_steps=10, log_every=1, seed=3)
    _same(step_state(reference / "ck", 10), step_state(ck, 10))


@pytest.mark.fault(
    fault="dynamics trainer: SIGTERM, then SIGKILL, inside checkpoint writes (temp file not renamed)",
    guarantee="SIGTERM completes the write; the killed write's temp file is never resumed; bitwise end",
)
def test_sigterm_and_sigkill_during_checkpoint_writes_resume_bitwise(
    trainer_cli, reference, preprocessed, tiny_tokenizer_ckpt, tmp_path
):
    ck = tmp_path / "ck"
    cmd = _cmd(preprocessed, tiny_tokenizer_ckpt, _run_cfg(), ck, tmp_path / "out")
    faults.interrupt_during_checkpoint_writes(trainer_cli, cmd, ck, tmp_path, save_every=2, max_steps=10, seed=4)
    _same(step_state(reference / "ck", 10), step_state(ck, 10))


def test_deadline_stops_resume_bitwise(trainer_cli, reference, preprocessed, tiny_tokenizer_ckpt, tmp_path):
    ck = tmp_path / "ck"
    cmd = _cmd(
        preprocessed,
        tiny_tokenizer_ckpt,
        _run_cfg(max_steps=6),
        ck,
        tmp_path / "out",
        "--time-limit-min",
        "1e-6",
        "--deadline-margin-s",
        "0",
    )
    codes = []
    for _ in range(10):
        res = trainer_cli.run(cmd)
        codes.append(res.returncode)
        if res.returncode == 0:
            break
        assert res.returncode == 75 and "deadline reached, saved step" in res.stdout + res.stderr, res.stderr[-2000:]
    assert codes[-1] == 0 and codes.count(75) >= 2
    ref = trainer_cli.run(
        _cmd(preprocessed, tiny_tokenizer_ckpt, _run_cfg(max_steps=6), tmp_path / "ref", tmp_path / "ref_out")
    )
    assert ref.returncode == 0
    _same(step_state(tmp_path / "ref", 6), step_state(ck, 6))


@pytest.mark.fault(
    fault="dynamics trainer on a truncated training shard (frames.npy cut short)",
    guarantee="exits non-zero naming the shard file before training; no checkpoint, no outputs",
)
def test_corrupt_training_shard_fails_naming_the_file(trainer_cli, preprocessed, tiny_tokenizer_ckpt, tmp_path):
    bad = faults.corrupt_shard_copy(preprocessed, tmp_path / "pre", "truncated_frames")
    ck, out = tmp_path / "ck", tmp_path / "out"
    res = trainer_cli.run(_cmd(tmp_path / "pre", tiny_tokenizer_ckpt, _run_cfg(), ck, out))
    assert res.returncode != 0 and res.returncode != 75, res.stderr[-3000:]
    assert f"ERROR: {bad}: corrupt shard file" in res.stderr and "truncated" in res.stderr, res.stderr[-3000:]
    assert not (out / "checkpoint.json").exists() and (not out.exists() or not any(out.iterdir()))
    assert not ck.exists() or not list(ck.glob("step_*.pt"))


def test_two_process_torchrun_exits_cleanly_with_bootstrap(trainer_cli, preprocessed, tiny_tokenizer_ckpt, tmp_path):
    ck = tmp_path / "ck"
    cmd = _cmd(preprocessed, tiny_tokenizer_ckpt, _run_cfg(max_steps=6, deterministic=False), ck, tmp_path / "out")
    cmd = trainer_cli.torchrun(2) + cmd[1:]
    t0 = time.time()
    res = trainer_cli.run(cmd, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert time.time() - t0 < 120
    state = torch.load(ck / "step_0000006.pt", weights_only=True)
    assert state["step"] == 6 and state["world_size"] == 2
    metrics = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [r for r in metrics if r.get("step") == 6][0]["train/loss_self"] > 0


def test_init_from_upstream_checkpoint_is_weights_only(trainer_cli, preprocessed, tiny_tokenizer_ckpt, tmp_path):
    torch.manual_seed(0)
    src = Dynamics(DynamicsConfig(d_model=32, depth=1, n_heads=2, n_spatial=2, d_spatial=16))
    for p in src.parameters():
        torch.nn.init.normal_(p, std=0.05)
    ck = upstream_dynamics_checkpoint(src, step=39999, args={"n_heads": 2})  # no n_agent / time_every args
    ck["dynamics"] = add_prefix(ck["dynamics"])
    torch.save(ck, tmp_path / "dmc_dynamics.pt")
    run = _run_cfg(
        "dynamics_dmcontrol_pretrained",
        max_steps=2,
        bootstrap_start=0,
        init_paths={"tokenizer": None, "dynamics": str(tmp_path / "dmc_dynamics.pt")},
    )
    run["model"].update(n_heads=None)
    res = trainer_cli.run(_cmd(preprocessed, tiny_tokenizer_ckpt, run, tmp_path / "ck", tmp_path / "out"))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "fallback: n_agent=1" in res.stdout
    conf = read_json(tmp_path / "out" / "config.json")
    assert conf["task"]["init"]["init_from"]["dynamics"].endswith("dmc_dynamics.pt")
    assert conf["task"]["variant"]["bootstrap_start"] == 0 and conf["history"][0]["start_step"] == 0
    first = (
        torch.load(tmp_path / "ck" / "step_0000000.pt", weights_only=True)
        if (tmp_path / "ck" / "step_0000000.pt").exists()
        else None
    )
    final = torch.load(tmp_path / "ck" / "step_0000002.pt", weights_only=True)
    assert final["step"] == 2 and "aux_head" not in final
    moved = sum(not torch.equal(final["dynamics"][k], v) for k, v in src.state_dict().items())
    assert moved > 0 and first is None
    missing = dict(run, init_paths={"tokenizer": None, "dynamics": str(tmp_path / "nope.pt")})
    res = trainer_cli.run(_cmd(preprocessed, tiny_tokenizer_ckpt, missing, tmp_path / "ck2", tmp_path / "out2"))
    assert res.returncode != 0 and "checkpoint not found" in res.stderr + res.stdout


def test_small_world_model_learns_and_beats_copy_last(trainer_cli, preprocessed, tiny_tokenizer_ckpt, tmp_path, capsys):
    """A few CPU minutes of the demo variant on synthetic data: the shortcut loss falls and the
    one-step prediction of the next frame's latents beats copying the last frame's latents.
    The 24-frame rollout PSNR and copy-last PSNR are reported, not asserted (the fixture's
    tokenizer is untrained, so decoded pixels mean little)."""
    from dreamer4_libero.data.loader import episode_list
    from dreamer4_libero.data.shards import ShardStore
    from dreamer4_libero.evaluation.rollout import evaluate_windows
    from dreamer4_libero.models.upstream import load_tokenizer_checkpoint

    run = dynamics_variants(demo_config(test=True))["dynamics_phase3"]
    run.update(
        max_steps=600, save_every=600, log_every=50, num_workers=0, tokenizer_chunk=None
    )  # evaluate_windows: whole windows
    res = trainer_cli.run(_cmd(preprocessed, tiny_tokenizer_ckpt, run, tmp_path / "ck", tmp_path / "out"))
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    flow = [r["train/flow_mse"] for r in metrics if "train/flow_mse" in r]
    assert np.mean(flow[-3:]) < 0.5 * np.mean(flow[:2]), flow
    dyn, _ = load_dynamics_checkpoint(read_json(tmp_path / "out" / "checkpoint.json")["path"])
    tok, _ = load_tokenizer_checkpoint(tiny_tokenizer_ckpt, explicit={"mae_p_min": 0.0, "mae_p_max": 0.0})
    store = ShardStore(preprocessed / "manifest.json")
    val = episode_list(preprocessed / "splits" / "val.json")
    r = evaluate_windows(tok, dyn, store, val, resolution=32, packing=2, max_windows=8)
    with capsys.disabled():
        print(
            f"\n[dynamics quality] flow mse {flow[0]:.4g} -> {flow[-1]:.4g}; one-step latent mse "
            f"{r['one_step_mse']:.4g} vs copy-last {r['copy_last_mse']:.4g}; rollout PSNR (8->24) "
            f"{r['rollout_psnr_frame_mean']:.2f} dB vs copy-last {r['copy_last_psnr_frame_mean']:.2f} dB "
            f"({r['n_windows']} windows)"
        )
    assert r["one_step_mse"] < r["copy_last_mse"]
