"""The benchmark entry point: `python -m bench` writes one JSON and a Markdown table, every speed with
its same-run baseline ratio. The memory section runs for real (meta device, ~30 s); the ratio
arithmetic is checked on hand-made rows."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.__main__ import ratios, table  # noqa: E402


def test_memory_section_writes_json_and_table(tmp_path):
    """Two of the paper-scale runs (`make bench` plans all of them; the plan itself: tests/test_perf.py)."""
    out = tmp_path / "b.json"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--only",
            "memory",
            "--memory-runs",
            "tokenizer,dynamics_aux_param_matched_276M",
            "--out",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    runs = {row["run"]: row for row in res["memory"]}
    assert list(runs) == ["tokenizer", "dynamics_aux_param_matched_276M"]
    big = runs["dynamics_aux_param_matched_276M"]
    # 276M: the dynamics (256M) + the frozen tokenizer (21M) = the published "276M"
    assert 250e6 < big["params"] < 262e6 and 275e6 < big["params"] + big["frozen_params"] < 280e6
    assert big["largest_batch_per_80GB_bf16_ckpt"] > big["largest_batch_per_80GB_bf16"] >= big["batch"]
    assert 0.99 < big["formula_over_counted"] < 1.01
    md = out.with_suffix(".md").read_text()
    assert "| dynamics_aux_param_matched_276M |" in md and "largest batch / 80 GB" in md
    assert res["machine"]["cpus"] >= 1
    print(
        f"\n276M: {big['flops_per_step'] / 1e12:.2f} TFLOP/step, {big['total_bf16_GiB']:.2f} GiB/GPU at batch "
        f"{big['batch']}, largest batch {big['largest_batch_per_80GB_bf16']} "
        f"({big['largest_batch_per_80GB_bf16_ckpt']} with activation checkpointing)"
    )


def test_unknown_section_or_run_is_an_error():
    r = subprocess.run([sys.executable, "-m", "bench", "--only", "trian"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 2 and "unknown section(s) ['trian']" in r.stderr
    from bench.memory import run_all

    with pytest.raises(SystemExit, match=r"unknown run\(s\) \['dynamics_nope'\]"):
        run_all(log=lambda s: None, runs=["dynamics_nope"])


def _train_row(case, attention, sps, batch=4, **kw):
    return {
        "case": case,
        "attention": attention,
        "steps_per_s": sps,
        "batch": batch,
        "seq_len": 32,
        "device": "cpu",
        "amp": "fp32",
        "tokens_per_s": sps * 100,
        "flops_per_step": 1e9,
        "achieved_tflops": sps * 1e-3,
        "mfu": None,
        "peak_rss_GiB": 1.0,
        **kw,
    }


def test_ratios_are_against_the_same_run_baselines():
    res = {
        "machine": {"cpu": "x", "cpus": 2, "ram_GiB": 24, "torch": "t"},
        "date": "d",
        "train": [
            _train_row("dynamics_demo", "sdpa", 2.0),
            _train_row("dynamics_demo", "explicit", 1.6),
            _train_row("tokenizer_demo", "sdpa", 10.0, batch=32),
            {"case": "dynamics_paper_276M", "attention": "sdpa", "error": "killed (out of memory?)"},
        ],
        "rollout": [
            {
                "case": "rollout_demo",
                "speedup": 2.5,
                "frames_per_s_cached": 100.0,
                "frames_per_s_uncached": 40.0,
                "max_abs_diff": 1e-7,
            }
        ],
        "data": {
            "preprocess": {
                "ratio_workers1": 0.9,
                "ratio_workers2": 1.4,
                "ours_workers1_fps": 900,
                "ours_workers2_fps": 1400,
                "baseline_read_flip_write_npy_fps": 1000,
            },
            "loader": {
                "dynamics_demo": {"windows_per_s_workers0": 400.0},
                "tokenizer_demo": {"windows_per_s_workers0": 3200.0},
            },
            "staging": {"GB": 0.5, "seconds": 1.25, "seconds_per_GB": 2.5},
        },
    }
    r = ratios(res)
    assert r["sdpa_vs_explicit_steps_per_s"] == {"dynamics_demo": pytest.approx(1.25)}
    assert r["cached_vs_uncached_rollout_frames_per_s"] == {"rollout_demo": 2.5}
    assert r["preprocess_vs_read_flip_write"] == {"workers1": 0.9, "workers2": 1.4}
    lv = r["loader_vs_train_step"]
    assert lv["dynamics_demo"]["step_consumes_per_s"] == pytest.approx(8.0)  # 2 steps/s x batch 4
    assert lv["dynamics_demo"]["ratio"] == pytest.approx(50.0)
    assert lv["tokenizer_demo"]["ratio"] == pytest.approx(10.0)  # 3200 / (10 x 32)
    res["ratios"] = r
    md = table(res)
    assert "| dynamics_demo | cpu (fp32) | 4 × 32 | 2 |" in md and "x1.25 |" in md
    assert "| dynamics_paper_276M | | | killed (out of memory?)" in md
    assert "x2.50" in md and "x50 |" in md
    assert "| staging to node-local disk (copy + verify), s per GB | 2.50 (0.500 GB in 1.25 s) |" in md


def test_data_section_times_staging_per_GB(preprocessed, tmp_path):
    from bench.data import staging_time

    st = staging_time(preprocessed / "manifest.json", tmp_path / "stage", repeats=1)
    shards = sum(p.stat().st_size for p in (preprocessed / "shards").rglob("*") if p.is_file())
    assert st["GB"] == pytest.approx(shards / 1e9) and st["seconds"] > 0
    assert st["seconds_per_GB"] == pytest.approx(st["seconds"] / st["GB"])
    assert not (tmp_path / "stage").exists()  # each repeat's copy is removed
