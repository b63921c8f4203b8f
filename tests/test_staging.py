"""Staging the shards to node-local disk (data/staging.py, config data.stage_to_local): training from the
staged copy gives the same weights, bitwise, as from the shared path; a failed copy or check falls back."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from dreamer4_libero.config import demo_config
from dreamer4_libero.data import staging
from dreamer4_libero.data.staging import StagingError, StagingWarning, stage_shards, staged_manifest
from dreamer4_libero.fileio import read_json
from dreamer4_libero.training.engine import EngineConfig, train
from dreamer4_libero.training.tokenizer_task import TokenizerTask


def _tok_cfg() -> dict:
    t = demo_config()["tokenizer"]
    t.update(
        model={**t["model"], "d_model": 32, "depth": 1, "n_latents": 4, "d_bottleneck": 8},
        lpips_weight=0.0,
        seq_len=4,
        batch_size=2,
        max_steps=4,
        num_workers=0,
    )
    return t


def _train(manifest: str, pre: Path, ckpt: Path) -> dict:
    t = _tok_cfg()
    task = TokenizerTask(t, manifest=manifest, train_split=pre / "splits" / "train.json", resolution=32)
    cfg = EngineConfig(
        ckpt_dir=str(ckpt),
        max_steps=t["max_steps"],
        save_every=t["max_steps"],
        seed=0,
        deterministic=True,
        progress=False,
        lr=t["lr"],
        log_every=2,
    )
    assert train(task, cfg) == 0
    return torch.load(ckpt / f"step_{t['max_steps']:07d}.pt", weights_only=True), task


def test_training_from_staged_shards_is_bitwise_the_same(preprocessed, tmp_path):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    env = {"TMPDIR": str(scratch)}
    ref, _ = _train(str(preprocessed / "manifest.json"), preprocessed, tmp_path / "ref")
    with staged_manifest(preprocessed / "manifest.json", True, env=env) as manifest:
        staged_dirs = [p for p in scratch.iterdir() if p.is_dir()]
        assert len(staged_dirs) == 1 and Path(manifest) == staged_dirs[0] / "manifest.json"
        assert Path(manifest).read_bytes() == (preprocessed / "manifest.json").read_bytes()  # a byte copy
        got, task = _train(manifest, preprocessed, tmp_path / "staged")
        assert task.dataset.store.shard_root.resolve() == (staged_dirs[0] / "shards").resolve()  # read from scratch
        n_shards = len(list((staged_dirs[0] / "shards").glob("*/*/episodes.json")))  # <suite>/<stem>/
        assert n_shards == len(task.dataset.store.shards) > 1
    assert list(scratch.iterdir()) == []  # copy and status file removed at the end
    assert ref["model"].keys() == got["model"].keys()
    for k in ref["model"]:
        assert torch.equal(ref["model"][k], got["model"][k]), k


def test_stage_reports_bytes_and_time(preprocessed, tmp_path):
    res = stage_shards(preprocessed / "manifest.json", tmp_path / "stage")
    frames = sum(p.stat().st_size for p in (preprocessed / "shards").rglob("*") if p.is_file())
    assert res["bytes"] == frames and res["files"] == len(
        [p for p in (preprocessed / "shards").rglob("*") if p.is_file()]
    )
    assert res["seconds"] > 0 and res["seconds_per_GB"] == pytest.approx(res["seconds"] / (frames / 1e9))
    assert not (tmp_path / "stage.tmp").exists()


@pytest.mark.fault(
    fault="the staged copy of a shard file is corrupted (one byte flipped after the copy)",
    guarantee="the sha256 check fails, a StagingWarning names the file, training uses the shared path",
)
def test_corrupted_copy_falls_back_to_the_shared_path(preprocessed, tmp_path, monkeypatch):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    real = staging._copy_hashed

    def flip_a_byte(src, dst):
        out = real(src, dst)
        if dst.name == "frames.npy":
            with open(dst, "r+b") as fh:
                fh.seek(-1, 2)
                b = fh.read(1)
                fh.seek(-1, 2)
                fh.write(bytes([b[0] ^ 0xFF]))
        return out

    monkeypatch.setattr(staging, "_copy_hashed", flip_a_byte)
    src = str(preprocessed / "manifest.json")
    with pytest.warns(
        StagingWarning,
        match=r"stage_to_local: copy to .* failed \(StagingError: .*frames\.npy: sha256 "
        r".* after the copy.*falling back to the shared path",
    ) as rec:
        with staged_manifest(src, True, env={"SLURM_TMPDIR": str(scratch)}) as manifest:
            assert manifest == src
            assert not [p for p in scratch.iterdir() if p.is_dir()]  # the partial copy is gone
    assert len(rec) == 1 and list(scratch.iterdir()) == []


@pytest.mark.fault(
    fault="the node-local scratch is not a writable folder ($TMPDIR names a file)",
    guarantee="a StagingWarning, and training uses the shared path",
)
def test_unwritable_scratch_falls_back(preprocessed, tmp_path):
    bad = tmp_path / "not_a_dir"
    bad.write_text("")
    src = str(preprocessed / "manifest.json")
    with pytest.warns(StagingWarning, match="failed .*falling back to the shared path"):
        with staged_manifest(src, True, env={"TMPDIR": str(bad)}) as manifest:
            assert manifest == src
            key = staging.stage_key(src, {"TMPDIR": str(bad)})
            if staging.SHM.is_dir():  # the status went to /dev/shm, where the other local ranks look too
                assert read_json(staging.SHM / f"d4l_stage_{key}.json")["ok"] is False
    assert not list(staging.SHM.glob(f"d4l_stage_{key}*"))  # and is removed at the end


def test_no_scratch_or_off(preprocessed):
    src = str(preprocessed / "manifest.json")
    with pytest.warns(StagingWarning, match=r"neither \$SLURM_TMPDIR nor \$TMPDIR is set"):
        with staged_manifest(src, True, env={}) as manifest:
            assert manifest == src
    with staged_manifest(src, None, env={"TMPDIR": "/nonexistent", staging.STAGE_ENV: "0"}) as manifest:
        assert manifest == src  # off: nothing staged, no warning


def test_other_local_ranks_wait_for_rank0(preprocessed, tmp_path):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    src = str(preprocessed / "manifest.json")
    base = {"TMPDIR": str(scratch), staging.WAIT_ENV: "5"}
    with staged_manifest(src, True, env={**base, "LOCAL_RANK": "0"}) as m0:
        assert m0 != src
        with staged_manifest(src, True, env={**base, "LOCAL_RANK": "1"}) as m1:
            assert m1 == m0  # rank 1 copies nothing, reads rank 0's copy
        assert Path(m0).exists()  # rank 1 leaving does not remove rank 0's copy
    assert list(scratch.iterdir()) == []
    with pytest.warns(
        StagingWarning, match="local rank 0 did not stage the shards .*no status from local rank 0 in 0.2 s"
    ):
        with staged_manifest(src, True, env={**base, "LOCAL_RANK": "1", staging.WAIT_ENV: "0.2"}) as m1:
            assert m1 == src


def test_manifest_check_names_the_bad_shard(preprocessed, tmp_path):
    dest = tmp_path / "stage"
    stage_shards(preprocessed / "manifest.json", dest)
    manifest = read_json(dest / "manifest.json")
    staging.verify_against_manifest(dest, manifest)  # the good copy passes
    task = staging.kept_shards(manifest)[0]
    arr = np.load(dest / "shards" / task / "frames.npy", mmap_mode="r+")
    arr[0, 0, 0, 0] ^= 1  # the first frame of the first demo
    arr.flush()
    del arr
    with pytest.raises(StagingError, match=rf"{task}/frames\.npy: demo \S+'s first frame has sha256"):
        staging.verify_against_manifest(dest, manifest)
    shutil.rmtree(dest)


def test_the_workflow_sets_the_trainers_flag_from_the_config():
    from dreamer4_libero.config import load_config

    repo = Path(__file__).resolve().parents[1]
    assert (
        "export D4L_STAGE_TO_LOCAL={int(config['data']['stage_to_local'])}; " in (repo / "rules/common.smk").read_text()
    )
    # how the trainers read the shards, not what is in them: not a parameter of the preprocessing rule (a change
    # would rerun it, and everything after it)
    assert 'if k not in ("workers", "stage_to_local")' in (repo / "rules/preprocess.smk").read_text()
    assert load_config()["data"]["stage_to_local"] is False  # schema default: off
    assert staging.env_flag({staging.STAGE_ENV: "1"}) and not staging.env_flag({staging.STAGE_ENV: "0"})


def test_two_rank_trainer_stages_once_and_matches_unstaged(trainer_cli, preprocessed, tmp_path):
    """The real tokenizer trainer under torchrun (2 ranks, gloo): local rank 0 copies, rank 1 waits for it; the
    weights equal an unstaged run's bitwise and the scratch is empty afterwards."""
    import json
    import os

    repo = Path(__file__).resolve().parents[1]
    t = {**_tok_cfg(), "max_steps": 3, "save_every": 3, "log_every": 1, "deterministic": True, "keep_last": 0}
    scratch = tmp_path / "scratch"
    scratch.mkdir()

    def cmd(ck: Path, stage: str) -> list[str]:
        return [
            *trainer_cli.torchrun(2),
            str(repo / "workflow_scripts" / "train_tokenizer.py"),
            "--tokenizer",
            json.dumps(t),
            "--manifest",
            str(preprocessed / "manifest.json"),
            "--train-split",
            str(preprocessed / "splits" / "train.json"),
            "--resolution",
            "32",
            "--ckpt-dir",
            str(ck),
            "--progress",
            "false",
            "--stage-to-local",
            stage,
        ]

    env = {**os.environ, "TMPDIR": str(scratch), "OMP_NUM_THREADS": "1"}
    env.pop("SLURM_TMPDIR", None)
    staged = trainer_cli.run(cmd(tmp_path / "staged", "true"), env=env)
    log = staged.stdout + staged.stderr
    assert staged.returncode == 0, log[-4000:]
    assert log.count("stage_to_local: ") == 1 and " staged to " in log and "StagingWarning" not in log, log[-4000:]
    assert not list(scratch.glob("d4l_stage_*"))  # copy and status removed (torchrun keeps its own temp dirs here)
    plain = trainer_cli.run(cmd(tmp_path / "plain", "false"), env=env)
    assert plain.returncode == 0, (plain.stdout + plain.stderr)[-4000:]
    assert "stage_to_local" not in plain.stdout + plain.stderr
    a = torch.load(tmp_path / "staged" / "step_0000003.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "plain" / "step_0000003.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.fault(
    fault="training fails (an exception) while it reads the staged shards",
    guarantee="the staged copy and its status file are removed all the same",
)
def test_staged_copy_is_removed_when_training_fails(preprocessed, tmp_path):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    with pytest.raises(RuntimeError, match="boom"):
        with staged_manifest(preprocessed / "manifest.json", True, env={"TMPDIR": str(scratch)}) as manifest:
            assert Path(manifest).exists() and str(scratch) in manifest
            raise RuntimeError("boom")
    assert list(scratch.iterdir()) == []
