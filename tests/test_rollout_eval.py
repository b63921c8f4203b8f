"""Rollout PSNR protocol (evaluation.md §2): window list, derangement, scoring, rows, CLI."""

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from dreamer4_libero.data.loader import episode_list
from dreamer4_libero.data.shards import ShardStore
from dreamer4_libero.evaluation.rollout import (
    cap_windows,
    evaluate_rollouts,
    load_window,
    paired_delta,
    row_metrics,
    rollout_windows,
    score_predictions,
    shuffle_pairing,
    window_noise,
    write_windows,
)
from dreamer4_libero.fileio import read_json, sha256_file
from dreamer4_libero.models.dynamics import Dynamics, DynamicsConfig, InverseDynamicsHead
from dreamer4_libero.models.upstream import upstream_dynamics_checkpoint

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "workflow_scripts" / "rollout_eval.py"
ROW_KEYS = {
    "psnr_frame_mean",
    "psnr_pooled",
    "psnr_pooled_h16",
    "per_step_psnr",
    "per_task",
    "ci",
    "n_capped_frames",
    "per_window_mse",
}


def _store(lengths: dict[str, int]):
    return SimpleNamespace(episodes={e: SimpleNamespace(T=T) for e, T in lengths.items()})


def _wins(tasks: list[str]) -> list[dict]:
    """One window per entry; demos numbered per task."""
    seen: dict[str, int] = {}
    out = []
    for t in tasks:
        k = seen[t] = seen.get(t, -1) + 1
        out.append({"id": f"{t}/demo_{k}@0", "episode": f"{t}/demo_{k}", "task": t, "start": 0})
    return out


# ---------------------------------------------------------------------------------------------
# window list and pairing


def test_window_list_rules(tmp_path):
    b = "libero_goal/task_b"
    lengths = {f"{b}/demo_{k}": T for k, T in {1: 31, 2: 72, 10: 200, 3: 71, 11: 40, 20: 80, 9: 45}.items()}
    lengths["libero_10/task_a/demo_5"] = 32
    w = rollout_windows(_store(lengths), list(lengths)[::-1], eps_per_task=4)
    got = [(x["episode"], x["start"]) for x in w]
    assert got == [
        ("libero_10/task_a/demo_5", 0),  # T = 32: exactly one window
        (f"{b}/demo_2", 0),
        (f"{b}/demo_2", 40),  # s + 31 <= T - 1 = 71
        (f"{b}/demo_3", 0),  # T = 71: 40 + 31 > 70
        (f"{b}/demo_9", 0),
        (f"{b}/demo_10", 0),
        (f"{b}/demo_10", 40),
    ]  # at most 2; demo_10 after demo_2, 9
    assert all(x["task"] == x["episode"].rsplit("/", 1)[0] for x in w)  # demo_1 (T 31) filtered out
    assert len({x["id"] for x in w}) == len(w)
    sha = write_windows(tmp_path / "w.json", w, {"set": "x"})
    assert sha == sha256_file(tmp_path / "w.json") and write_windows(tmp_path / "w2.json", w, {"set": "x"}) == sha
    assert read_json(tmp_path / "w.json")["windows"] == w
    capped = cap_windows(w, 3)  # round robin across tasks
    assert [x["id"] for x in capped] == [w[0]["id"], w[1]["id"], w[2]["id"]]


def test_derangement_pairs_across_tasks_and_errors_when_one_task_dominates():
    rng = np.random.default_rng(0)
    for _ in range(300):
        n_tasks = int(rng.integers(2, 7))
        counts = rng.integers(1, 6, size=n_tasks)
        if counts.max() > counts.sum() / 2:
            continue
        wins = _wins([f"suite/t{k}" for k, c in enumerate(counts) for _ in range(c)])
        wins = [wins[i] for i in rng.permutation(len(wins))]
        pi = shuffle_pairing(wins)
        assert sorted(pi) == list(range(len(wins)))  # a permutation
        assert all(wins[i]["task"] != wins[pi[i]]["task"] for i in range(len(wins)))
    with pytest.raises(ValueError, match=r"'suite/a' holds 5 of them.*'suite/a': 5, 'suite/b': 2, 'suite/c': 2"):
        shuffle_pairing(_wins(["suite/a"] * 5 + ["suite/b"] * 2 + ["suite/c"] * 2))
    shuffle_pairing(_wins(["suite/a"] * 4 + ["suite/b"] * 2 + ["suite/c"] * 2))  # exactly half is fine


# ---------------------------------------------------------------------------------------------
# scoring


def test_ground_truth_rollout_scores_exactly_100_db():
    wins = _wins(["s/a", "s/a", "s/b"])
    gt = torch.rand(3, 24, 3, 8, 8)
    row = score_predictions(gt.clone(), gt, wins, B=50)
    assert set(row) >= ROW_KEYS
    assert row["psnr_frame_mean"] == 100.0 and row["psnr_pooled"] == 100.0 and row["psnr_pooled_h16"] == 100.0
    assert row["per_step_psnr"] == [100.0] * 24 and row["n_capped_frames"] == 72 and row["ci"] == [100.0, 100.0]
    assert row["per_task"] == {"s/a": 100.0, "s/b": 100.0}
    json.dumps(row, allow_nan=False)  # never inf / nan
    pred = gt.clone()
    pred[1, 5] = (pred[1, 5] + 0.1).clamp(0, 1)
    row = score_predictions(pred, gt, wins, B=50)
    assert row["n_capped_frames"] == 71 and row["psnr_pooled"] < row["psnr_frame_mean"] < 100.0


def test_bootstrap_ci_contains_point_estimate():
    rng = np.random.default_rng(1)
    wins = _wins(["s/a"] * 4 + ["s/b"] * 4 + ["s/c"] * 4)
    mse_a = rng.uniform(0.001, 0.05, size=(12, 24))
    mse_b = mse_a * rng.uniform(1.0, 2.0, size=(12, 1))
    ra = row_metrics(mse_a, wins, B=500)
    assert ra["ci"][0] <= ra["psnr_frame_mean"] <= ra["ci"][1] and ra["ci"][0] < ra["ci"][1]
    from dreamer4_libero.evaluation.rollout import bootstrap_counts

    d = paired_delta(mse_a, mse_b, wins, bootstrap_counts(wins, 500, 0, "x"))
    assert d["ci"][0] <= d["mean"] <= d["ci"][1] and d["mean"] > 0 and d["ci"][0] > 0


# ---------------------------------------------------------------------------------------------
# rows on real windows, with an exact stub tokenizer (latents = pixels) and a tiny dynamics model

RES = 8


class PixelTokenizer(torch.nn.Module):
    """Exact tokenizer: 4 latents of the flattened pixels; decode() may corrupt chosen frame indices."""

    def __init__(self, corrupt=()):
        super().__init__()
        self.corrupt = set(corrupt)
        self.cfg = SimpleNamespace(H=RES, W=RES, n_latents=4, d_bottleneck=3 * RES * RES // 4)

    def encode(self, frames, mae=False):
        return frames.reshape(*frames.shape[:2], 4, -1)

    def decode(self, z):
        x = z.reshape(*z.shape[:2], 3, RES, RES).clone()
        for t in self.corrupt:
            x[:, t] = 0.5
        return x


def _dyn(action_scale: float = 30.0, seed: int = 0) -> Dynamics:
    torch.manual_seed(seed)
    m = Dynamics(DynamicsConfig(d_model=32, depth=1, n_heads=2, n_spatial=2, d_spatial=3 * RES * RES // 2))
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.05)
    with torch.no_grad():
        m.action_encoder.fc2.weight.mul_(action_scale)
        m.action_encoder.fc2.bias.mul_(action_scale)
    return m.eval()


class ActionPainter(torch.nn.Module):
    """A 'dynamics model' whose prediction is a grey level set by the block's action (0.5 for the null token)."""

    def __init__(self, n_spatial=2, d_spatial=3 * RES * RES // 2):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))
        self.cfg = SimpleNamespace(k_max=8, emax=3, n_spatial=n_spatial, d_spatial=d_spatial)

    def forward_step(self, t, cache, actions, step_idxs, signal_idxs, packed, act_mask=None):
        a = (actions * act_mask)[..., :7].sum(-1)  # (B,1)
        x1 = (0.5 + 0.4 * torch.tanh(a))[..., None, None].expand_as(packed) * self.w
        return (x1, None), [None]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: one intra-op thread is faster and far steadier on a shared 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def ood(preprocessed):
    store = ShardStore(preprocessed / "manifest.json")
    wins = rollout_windows(store, episode_list(preprocessed / "splits" / "test_ood.json"))
    assert len({w["task"] for w in wins}) >= 2
    return store, cap_windows(wins, 2 * len({w["task"] for w in wins}))


def _eval(store, wins, tok=None, dyn=None, **kw):
    return evaluate_rollouts(
        tok or PixelTokenizer(), dyn or _dyn(), store, wins, resolution=RES, packing=2, B=100, **kw
    )


def test_copy_last_and_ceiling_rows(ood):
    store, wins = ood
    two = [wins[0], next(w for w in wins if w["task"] != wins[0]["task"])]  # the pairing needs two tasks
    block, _ = _eval(store, two)
    x, _, _ = load_window(store, wins[0]["episode"], wins[0]["start"], 32, RES)
    x = x[0].double()
    hand = [float(((x[7] - x[u]) ** 2).mean()) for u in range(8, 32)]
    row = block["rows"]["copy_last_context"]
    np.testing.assert_allclose(row["per_window_mse"][0], hand, rtol=1e-12)
    hand_psnr = np.mean([10 * np.log10(1 / max(v, 1e-10)) for v in hand + row["per_window_mse"][1]])
    assert row["psnr_frame_mean"] == pytest.approx(hand_psnr, abs=1e-9)
    assert block["rows"]["tokenizer_ceiling"]["psnr_frame_mean"] == 100.0  # exact tokenizer
    # the ceiling scores the last 24 frames only: corrupting a context frame changes nothing, frame 8 does
    assert _eval(store, two, tok=PixelTokenizer(range(8)))[0]["rows"]["tokenizer_ceiling"]["n_capped_frames"] == 48
    c8 = _eval(store, two, tok=PixelTokenizer([8]))[0]["rows"]["tokenizer_ceiling"]
    assert c8["n_capped_frames"] == 46 and c8["per_window_mse"][0][0] > 0 and c8["per_step_psnr"][0] < 100


class SpyTokenizer(PixelTokenizer):
    """PixelTokenizer recording the time length of every encode / decode call."""

    def __init__(self, corrupt=()):
        super().__init__(corrupt)
        self.calls = []

    def encode(self, frames, mae=False):
        self.calls.append(("encode", frames.shape[1]))
        return super().encode(frames, mae)

    def decode(self, z):
        self.calls.append(("decode", z.shape[1]))
        return super().decode(z)


def test_chunked_ceiling_row_and_chunked_model_encoding(ood):
    """issue 27: `tokenizer_ceiling_chunked` round-trips chunks of `ceiling_chunk` frames; `tokenizer_chunk`
    makes the context encoding and the rollout decoding use chunks too (positions restart in each)."""
    store, wins = ood
    two = [wins[0], next(w for w in wins if w["task"] != wins[0]["task"])]
    whole, _ = _eval(store, two, tok=PixelTokenizer([0]))  # no chunks: the published setup
    assert whole["tokenizer_chunk"] is None and whole["ceiling_chunk"] is None
    assert whole["rows"]["tokenizer_ceiling"]["n_capped_frames"] == 48  # frame 0 is context: unscored
    assert (
        whole["rows"]["tokenizer_ceiling_chunked"]["per_window_mse"]
        == whole["rows"]["tokenizer_ceiling"]["per_window_mse"]
    )  # chunk None = the whole window
    ch, _ = _eval(store, two, tok=PixelTokenizer([0]), ceiling_chunk=8)
    assert ch["ceiling_chunk"] == 8
    assert ch["rows"]["tokenizer_ceiling"]["n_capped_frames"] == 48  # the whole-window row is unchanged
    c = ch["rows"]["tokenizer_ceiling_chunked"]
    assert c["n_capped_frames"] == 48 - 2 * 3  # chunk starts 8, 16, 24 corrupted
    bad = [u - 8 for u in (8, 16, 24)]
    assert all(c["per_window_mse"][w][k] > 1e-4 for w in range(2) for k in bad)
    assert ch["rows"]["model"]["per_window_mse"] == whole["rows"]["model"]["per_window_mse"]  # the run: unchanged
    # the run's own chunks: context encoded in chunks of 4, the 32 generated latents decoded in chunks of 4
    spy = SpyTokenizer([0])
    run, _ = _eval(store, two, tok=spy, tokenizer_chunk=4, ceiling_chunk=8)
    assert run["tokenizer_chunk"] == 4
    assert ("encode", 32) in spy.calls and ("encode", 8) in spy.calls  # the two ceiling rows
    assert ("encode", 4) in spy.calls and ("decode", 4) in spy.calls  # the model rows
    m = np.array(run["rows"]["model"]["per_window_mse"])
    m0 = np.array(whole["rows"]["model"]["per_window_mse"])
    grey = [k for k in range(24) if (k + 8) % 4 == 0]  # frames 8, 12, ..., 28: chunk starts
    other = [k for k in range(24) if k not in grey]
    np.testing.assert_allclose(m[:, other], m0[:, other], rtol=1e-6, atol=1e-9)
    assert (np.abs(m[:, grey] - m0[:, grey]) > 1e-6).any()


def test_common_random_numbers_and_action_rows(ood):
    store, wins = ood
    a, ex = _eval(store, wins, batch_size=4, n_examples=2)
    b, _ = _eval(store, wins, batch_size=4)
    for r in a["rows"]:
        assert a["rows"][r]["per_window_mse"] == b["rows"][r]["per_window_mse"]  # two calls: identical
    assert len(ex) == 2 and ex[0]["gt"].shape == (32, 3, RES, RES)
    m, s = np.array(a["rows"]["model"]["per_window_mse"]), np.array(a["rows"]["action_shuffled"]["per_window_mse"])
    assert np.abs(m - s).max() > 1e-7  # this model sees actions a little
    # a model whose prediction is set by the actions: the three action rows differ clearly
    p, _ = _eval(store, wins, dyn=ActionPainter())
    rows = {r: np.array(p["rows"][r]["per_window_mse"]) for r in ("model", "action_shuffled", "null_actions")}
    assert np.abs(rows["model"] - rows["action_shuffled"]).max() > 1e-3
    assert np.abs(rows["model"] - rows["null_actions"]).max() > 1e-3
    assert p["delta_action"]["mean"] == pytest.approx(
        p["rows"]["model"]["psnr_frame_mean"] - p["rows"]["action_shuffled"]["psnr_frame_mean"]
    )
    assert p["delta_action"]["ci"][0] <= p["delta_action"]["mean"] <= p["delta_action"]["ci"][1]
    # issue 27: the same deltas per third of the horizon, each the mean of its steps' per-step differences
    for key, ref in (("delta_copy_last_bins", "copy_last_context"), ("delta_action_bins", "action_shuffled")):
        bins = p[key]
        assert [b["frames"] for b in bins] == [[1, 8], [9, 16], [17, 24]]
        diff = np.subtract(p["rows"]["model"]["per_step_psnr"], p["rows"][ref]["per_step_psnr"])
        for b in bins:
            assert b["mean"] == pytest.approx(diff[b["frames"][0] - 1 : b["frames"][1]].mean(), abs=1e-9)
            assert b["ci"][0] <= b["mean"] <= b["ci"][1]
        whole = p["delta_copy_last" if ref == "copy_last_context" else "delta_action"]["mean"]
        assert np.mean([b["mean"] for b in bins]) == pytest.approx(whole, abs=1e-9)
    pairs = dict(map(tuple, a["shuffle_pairs"]))
    task = {w["id"]: w["task"] for w in wins}
    assert set(pairs) == set(task) and all(task[k] != task[v] for k, v in pairs.items())
    # a model blind to actions: all three model rows coincide (same noise for every row)
    c, _ = _eval(store, wins, dyn=_dyn(action_scale=0.0))
    ref = np.array(c["rows"]["model"]["per_window_mse"])
    for r in ("action_shuffled", "null_actions"):
        np.testing.assert_allclose(c["rows"][r]["per_window_mse"], ref, rtol=1e-5, atol=1e-9)
    # the noise is a pure function of (rollout seed, window id, frame)
    n1 = window_noise(0, wins[0]["id"], range(8, 32), (2, 4))
    assert torch.equal(n1, window_noise(0, wins[0]["id"], range(8, 32), (2, 4)))
    assert not torch.equal(n1, window_noise(1, wins[0]["id"], range(8, 32), (2, 4)))


# ---------------------------------------------------------------------------------------------
# the command-line entry point


def _ckpt(tmp_path: Path, tok: Path, **extra_args) -> Path:
    torch.manual_seed(0)
    dyn = Dynamics(DynamicsConfig(d_model=32, depth=1, n_heads=2, n_spatial=2, d_spatial=16))
    for p in dyn.parameters():
        torch.nn.init.normal_(p, std=0.05)
    ck = upstream_dynamics_checkpoint(
        dyn,
        step=7,
        args={
            "tokenizer_ckpt": str(tok),
            "tokenizer_sha256": sha256_file(tok),
            "packing_factor": 2,
            "n_spatial": 2,
            "n_heads": 2,
            "k_max": 8,
            "n_agent": 1,
            "space_mode": "wm_agent_isolated",
            "variant": "dyn_tiny",
            **extra_args,
        },
    )
    ck["aux_head"] = InverseDynamicsHead(32).state_dict()  # present in the file, never loaded
    torch.save(ck, tmp_path / "step_0000007.pt")
    cj = tmp_path / "checkpoint.json"
    cj.write_text(
        json.dumps(
            {
                "path": str(tmp_path / "step_0000007.pt"),
                "step": 7,
                "run_name": "dyn_tiny",
                "sha256": sha256_file(tmp_path / "step_0000007.pt"),
            }
        )
    )
    return cj


EVAL = {
    "eps_per_task": 4,
    "context": 8,
    "horizon": 24,
    "euler_steps": 4,
    "rollout_seed": 0,
    "bootstrap_B": 200,
    "max_val_windows": 6,
    "n_strips": 2,
}


def _cli(pre: Path, cj: Path, out: Path, ev: dict, *extra) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--checkpoint-json",
            str(cj),
            "--manifest",
            str(pre / "manifest.json"),
            "--test-ood",
            str(pre / "splits" / "test_ood.json"),
            "--val",
            str(pre / "splits" / "val.json"),
            "--resolution",
            "32",
            "--eval",
            json.dumps(ev),
            "--out-dir",
            str(out),
            "--progress",
            "false",
            *extra,
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def test_cli_end_to_end(preprocessed, tiny_tokenizer_ckpt, tmp_path):
    cj = _ckpt(tmp_path, tiny_tokenizer_ckpt)
    out = tmp_path / "rollout"
    res = _cli(preprocessed, cj, out, EVAL, "--study-tokenizer-sha256", "0" * 64)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "test_ood" in res.stdout and "Δ_action" in res.stdout
    rec = read_json(out / "rollout.json")
    assert rec["protocol"] == "eval-protocol-v1" and rec["variant"] == "dyn_tiny"
    assert {
        "checkpoint_sha256",
        "tokenizer_sha256",
        "n_params",
        "context",
        "horizon",
        "euler_steps",
        "k_max",
        "decode_window",
        "rollout_seeds",
        "bootstrap_B",
        "sets",
        "tokenizer_eval",
    } <= set(rec)
    assert rec["decode_window"] == 32 and rec["euler_steps"] == 4 and rec["k_max"] == 8 and rec["rollout_seeds"] == [0]
    assert rec["tokenizer_sha256"] == sha256_file(tiny_tokenizer_ckpt) and rec["aux_head_loaded"] is False
    for name in ("test_ood", "val"):
        s = rec["sets"][name]
        assert {
            "windows_file",
            "windows_sha256",
            "n_windows",
            "n_episodes",
            "rows",
            "delta_action",
            "delta_copy_last",
            "delta_copy_last_bins",
            "delta_action_bins",
            "shuffle_pairs",
        } <= set(s)
        assert [b["frames"] for b in s["delta_copy_last_bins"]] == [[1, 8], [9, 16], [17, 24]]
        assert set(s["rows"]) == {
            "model",
            "action_shuffled",
            "null_actions",
            "copy_last_context",
            "tokenizer_ceiling",
            "tokenizer_ceiling_chunked",
        }
        assert s["tokenizer_chunk"] is None and s["ceiling_chunk"] == rec["tokenizer_train_seq_len"]
        for row in s["rows"].values():
            assert ROW_KEYS <= set(row) and len(row["per_step_psnr"]) == 24
            assert len(row["per_window_mse"]) == s["n_windows"]
        assert sha256_file(s["windows_file"]) == s["windows_sha256"]
        assert len(read_json(s["windows_file"])["windows"]) == s["n_windows"]
    assert rec["sets"]["val"]["n_windows"] <= 6
    te = rec["tokenizer_eval"]
    assert te is not None and set(te["sets"]) == {"test_ood_rollout_list", "val"}
    assert te["sets"]["test_ood_rollout_list"]["n_episodes"] == rec["sets"]["test_ood"]["n_episodes"]
    for f in ("strips.png", "per_step_psnr.png"):
        assert (out / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    with Image.open(out / "rollout.gif") as im:
        assert im.format == "GIF" and im.n_frames == 32


def test_load_run_reads_the_runs_tokenizer_chunk(tiny_tokenizer_ckpt, tmp_path):
    from dreamer4_libero.evaluation.loading import load_run

    _, _, info = load_run(str(_ckpt(tmp_path, tiny_tokenizer_ckpt)))
    assert info["tokenizer_chunk"] is None  # older checkpoints: whole window
    assert info["tokenizer_train_seq_len"] == 8  # not in its args: upstream default
    (tmp_path / "b").mkdir()
    _, _, info = load_run(str(_ckpt(tmp_path / "b", tiny_tokenizer_ckpt, tokenizer_chunk=4)))
    assert info["tokenizer_chunk"] == 4
    (tmp_path / "c").mkdir()
    with pytest.raises(ValueError, match=r"\['tokenizer_chunk'\]"):
        load_run(str(_ckpt(tmp_path / "c", tiny_tokenizer_ckpt, tokenizer_chunk=0)))


def test_cli_bad_input_names_file_and_key(preprocessed, tiny_tokenizer_ckpt, tmp_path):
    cj = _ckpt(tmp_path, tiny_tokenizer_ckpt)
    res = _cli(preprocessed, cj, tmp_path / "o", {**EVAL, "horizon": 0})  # the schema's minimum is 1
    assert res.returncode == 2 and "config key 'rollout_eval.horizon': 0 is less than the minimum of 1" in res.stderr
    res = _cli(preprocessed, cj, tmp_path / "o", {**EVAL, "gpus": 1})  # resources never travel in the section
    assert res.returncode == 2 and "'gpus' was unexpected" in res.stderr, res.stderr[-2000:]
    res = _cli(preprocessed, cj, tmp_path / "o", {k: v for k, v in EVAL.items() if k != "horizon"})
    assert res.returncode == 0, res.stderr[-2000:]  # a missing key takes the schema default
    assert read_json(tmp_path / "o" / "rollout.json")["horizon"] == 24
    ck = read_json(cj)
    state = torch.load(ck["path"], weights_only=True)
    del state["args"]["packing_factor"]
    torch.save(state, ck["path"])
    res = _cli(preprocessed, cj, tmp_path / "o", EVAL)
    assert res.returncode == 2 and "packing_factor" in res.stderr and "step_0000007.pt" in res.stderr


def test_sampler_noise_argument_matches_generator_draws():
    from dreamer4_libero.models.sampling import rollout

    dyn = _dyn(seed=1)
    ctx = torch.randn(2, 3, 2, 3 * RES * RES // 2)
    act, mask = torch.rand(2, 7, 16), torch.ones(2, 7, 16)
    g = torch.Generator().manual_seed(5)
    noise = torch.stack([torch.randn(2, 1, 2, ctx.shape[-1], generator=g)[:, 0] for _ in range(4)], dim=1)
    a = rollout(dyn, ctx, act, mask, 4, generator=torch.Generator().manual_seed(5))
    b = rollout(dyn, ctx, act, mask, 4, noise=noise)
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="noise must have shape"):
        rollout(dyn, ctx, act, mask, 4, noise=noise[:, :3])
