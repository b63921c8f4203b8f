"""DMControl collection (data/dmcontrol.py): task names and widths, determinism, time alignment, the
release's resize, and shards the training loader reads with per-task action masks."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dreamer4_libero.data.dmcontrol import (
    CUSTOM_TASKS,
    STOCK_TASKS,
    UPSTREAM_TASKS,
    DMControlError,
    collect,
    collect_episode,
    dm_control_name,
    load_env,
    resize_like_release,
    task_index,
)
from dreamer4_libero.data.loader import WindowDataset
from dreamer4_libero.training.identity import training_data_fingerprint

REPO = Path(__file__).resolve().parents[1]


def test_upstream_names_map_to_dm_control_with_the_upstream_widths():
    assert len(UPSTREAM_TASKS) == 30 and len(STOCK_TASKS) == 18 and len(CUSTOM_TASKS) == 12
    assert dm_control_name("cup-catch") == ("ball_in_cup", "catch")
    assert dm_control_name("cartpole-balance-sparse") == ("cartpole", "balance_sparse")
    assert dm_control_name("finger-turn-easy") == ("finger", "turn_easy")
    assert task_index("walker-stand") == 0 and task_index("reacher-three-hard") == 29
    with pytest.raises(DMControlError, match="MMBench"):
        dm_control_name("cheetah-jump")
    with pytest.raises(DMControlError, match="unknown DMControl task 'walker-fly'"):
        dm_control_name("walker-fly")
    for name in STOCK_TASKS:  # every stock task loads, with upstream's action width
        assert load_env(name, 0).action_spec().shape == (UPSTREAM_TASKS[name],), name


def test_replay_of_the_same_seed_is_identical_and_frames_move_with_the_actions():
    f1, a1 = collect_episode("reacher-easy", seed=7, steps=12, policy="random")
    f2, a2 = collect_episode("reacher-easy", seed=7, steps=12, policy="random")
    assert np.array_equal(f1, f2) and np.array_equal(a1, a2)
    assert f1.shape == (13, 128, 128, 3) and f1.dtype == np.uint8 and a1.shape == (13, 2)
    assert np.all(a1[0] == 0) and np.all(np.abs(a1[1:]) <= 1) and np.abs(a1[1:]).sum() > 0
    f3, _ = collect_episode("reacher-easy", seed=7, steps=12, actions=a1)  # replaying the actions
    assert np.array_equal(f1, f3)
    # not blank: real scene content, and it changes over the episode
    assert f1.std() > 10 and len({f.tobytes() for f in f1}) == len(f1)
    still, _ = collect_episode("reacher-easy", seed=7, steps=12, actions=np.zeros_like(a1))
    moved = [float(np.abs(f1[k].astype(int) - still[k]).mean()) for k in range(13)]
    assert moved[0] == 0 and min(moved[2:]) > 0, moved  # other actions, other frames
    f4, _ = collect_episode("reacher-easy", seed=8, steps=12, policy="random")
    assert not np.array_equal(f1, f4)


def test_a_single_push_in_actions_5_first_changes_frame_5():
    push = np.zeros((21, 1))
    push[5] = 1.0
    pushed, a = collect_episode("cartpole-balance", seed=3, steps=20, actions=push)
    still, _ = collect_episode("cartpole-balance", seed=3, steps=20, actions=np.zeros_like(push))
    assert a[5, 0] == 1.0 and np.count_nonzero(a) == 1
    changed = [k for k in range(21) if not np.array_equal(pushed[k], still[k])]
    print(f"\n[dmcontrol] push in actions[5]: first changed frame {changed[0]}")
    assert changed[0] == 5 and changed == list(range(5, 21))


def test_resize_is_the_release_preprocessing():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(2, 224, 224, 3), dtype=np.uint8)
    ref = (
        F.interpolate(
            torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255.0,
            size=(128, 128),
            mode="bilinear",
            align_corners=False,
        ).clamp(0, 1)
        * 255.0
    )
    ours = resize_like_release(x)
    assert ours.shape == (2, 128, 128, 3) and ours.dtype == np.uint8
    assert np.array_equal(ours, ref.permute(0, 2, 3, 1).numpy().astype(np.uint8))  # truncation, not rounding
    assert not np.array_equal(ours, np.round(ref.permute(0, 2, 3, 1).numpy()).astype(np.uint8))
    flat = np.full((1, 224, 224, 3), 200, np.uint8)
    assert np.all(resize_like_release(flat) >= 199)


def test_collection_writes_shards_the_loader_reads(tmp_path):
    out = tmp_path / "dmc"
    tasks = ["cartpole-swingup", "reacher-easy"]
    kw = dict(episodes=2, steps=33, policy="smooth", policy_per_task={"reacher-easy": "sine"}, progress=False)
    m = collect(out, tasks, seed=0, **kw)
    assert m["totals"] == {"tasks": 2, "demos_kept": 4, "frames": 4 * 34}
    assert [f["action_dim"] for f in m["files"]] == [1, 2] and m["files"][1]["options"]["policy"] == "sine"
    split = json.loads((out / "splits" / "train.json").read_text())
    assert split["episodes"][0] == "dmcontrol/cartpole-swingup/demo_0" and len(split["episodes"]) == 4
    ds = WindowDataset(
        out / "manifest.json", out / "splits" / "train.json", seq_len=32, batch_size=8, resolution=32, seed=0
    )
    for eid in split["episodes"]:
        frames, raw = ds.store.episode(eid)
        w = ds.window(eid, 1)
        width = raw.shape[1]
        assert w["frames"].shape == (32, 3, 32, 32)
        assert np.all(w["act_mask"][0] == 0) and np.all(w["act_mask"][1:, :width] == 1)
        assert np.all(w["act_mask"][:, width:] == 0) and np.all(w["actions"][:, width:] == 0)
        assert np.allclose(w["actions"][1:, :width], raw[2:33])  # block t carries actions[s+t]
    fp = training_data_fingerprint(out / "manifest.json", split["episodes"])
    # a rerun reuses finished tasks; another seed is new data
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.npy")}
    collect(out, tasks, seed=0, **kw)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.npy")} == mtimes
    collect(out, tasks, seed=1, **kw)
    assert training_data_fingerprint(out / "manifest.json", split["episodes"]) != fp


def test_bad_collection_settings_are_clear_errors(tmp_path):
    with pytest.raises(DMControlError, match="policy_per_task names tasks that are not collected"):
        collect(
            tmp_path, ["cartpole-swingup"], episodes=1, steps=2, policy_per_task={"walker-walk": "sine"}, progress=False
        )
    r = subprocess.run(
        [
            sys.executable,
            str(REPO / "workflow_scripts" / "collect_dmcontrol.py"),
            "--collect",
            json.dumps(
                {
                    "tasks": ["jumper-jump"],
                    "episodes_per_task": 1,
                    "steps": 2,
                    "seed": 0,
                    "policy": "random",
                    "policy_per_task": {},
                    "render_size": 224,
                }
            ),
            "--out",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "jumper-jump" in r.stderr and "stock" in r.stderr
    assert not (tmp_path / "o" / "manifest.json").exists()


def _dry_jobs(tmp_path, layer: dict | None) -> tuple[dict, str]:
    import yaml

    from conftest import planned_jobs, snakemake_cmd, venv_env

    files = ["config/demo.yaml"]
    if layer is not None:
        (tmp_path / "layer.yaml").write_text(yaml.safe_dump(layer))
        files.append(str(tmp_path / "layer.yaml"))
    r = subprocess.run(
        snakemake_cmd("-n", "-p", "--forceall", "--cores", "1", "--configfile", *files),
        cwd=REPO,
        env=venv_env(),
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    out = r.stdout + r.stderr
    jobs = planned_jobs(out)
    return jobs, out


def test_dmcontrol_variants_from_the_pipelines_pretraining_or_configured_files(tmp_path):
    """config decides: the demo's DMControl variants use the pipeline's own pretraining; with
    `dmcontrol_init.source: files` they use the configured upstream-layout files and nothing is collected."""
    from dreamer4_libero.config import DMCONTROL_PRETRAIN_DIR, deep_merge, demo_config, dynamics_variants

    dmc = ("dynamics_aux_dmcontrol_pretrained", "dynamics_dmcontrol_pretrained")
    demo = dynamics_variants(demo_config())
    for n in dmc:
        assert demo[n]["runnable"] and demo[n]["init_source"] == "pretrain"
        assert demo[n]["init_paths"] == {
            "tokenizer": f"{DMCONTROL_PRETRAIN_DIR}/tokenizer.pt",
            "dynamics": f"{DMCONTROL_PRETRAIN_DIR}/dynamics.pt",
        }
        assert "own DMControl pretraining" in demo[n]["init_note"]
    jobs, out = _dry_jobs(tmp_path, None)
    assert jobs["collect_dmcontrol"] == 1 and jobs["pretrain_dmcontrol"] == 1
    assert jobs["train_tokenizer"] == 2 and jobs["train_dynamics"] == 8 and jobs["probe"] == 7  # 7 variants + DMC
    assert "--variant '{" in out and '"name": "dynamics_dmcontrol"' in out

    tok, dyn = tmp_path / "released" / "tokenizer.pt", tmp_path / "released" / "dynamics.pt"
    tok.parent.mkdir()
    tok.write_bytes(b"x")
    dyn.write_bytes(b"x")
    files = {"dmcontrol_init": {"source": "auto", "tokenizer": str(tok), "dynamics": str(dyn)}}
    runs = dynamics_variants(deep_merge(demo_config(), files))
    assert all(runs[n]["init_source"] == "files" and runs[n]["init_paths"]["dynamics"] == str(dyn) for n in dmc)
    jobs, out = _dry_jobs(tmp_path, files)
    assert "collect_dmcontrol" not in jobs and "pretrain_dmcontrol" not in jobs and jobs["train_tokenizer"] == 1
    assert out.count(str(dyn)) >= 2 and jobs["train_dynamics"] == 7
    study = deep_merge(files, {"dmcontrol_init": {"tokenizer_choice": "study"}})
    runs = dynamics_variants(deep_merge(demo_config(), study))
    assert all(
        runs[n]["init_paths"]["tokenizer"] is None and "study's LIBERO tokenizer" in runs[n]["init_note"] for n in dmc
    )
    none = dynamics_variants(deep_merge(demo_config(), {"dmcontrol_init": {"source": "none"}}))
    assert not any(none[n]["runnable"] for n in dmc) and "source is none" in none[dmc[0]]["not_run_reason"]
    missing = dynamics_variants(deep_merge(demo_config(), {"dmcontrol_init": {"source": "files"}}))
    assert not missing[dmc[0]]["runnable"] and "dmcontrol_init.dynamics is null" in missing[dmc[0]]["not_run_reason"]
