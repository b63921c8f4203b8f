"""`make check-gpu` as a node check (training/node_check.py): the tiny CPU run of every check through the Make
target, and the verdicts each check gives."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dreamer4_libero.training import node_check

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check") / "gpu_check.json"
    r = subprocess.run(
        ["make", "-s", "check-gpu", f"PY={sys.executable}", f"CHECK_GPU_ARGS=--device cpu --tiny --out {out}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return r, out


def test_make_check_gpu_tiny_on_cpu_passes_and_writes_the_report(tiny_run):
    r, out = tiny_run
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-4000:]
    assert f"torch: {torch.__version__}" in log and "OK: every check passed" in log, log[-3000:]
    rep = json.loads(out.read_text())
    assert rep["ok"] is True and rep["failures"] == [] and rep["mode"] == "tiny" and rep["device"] == "cpu"
    assert rep["environment"]["torch"] == str(torch.__version__)
    assert [c["case"] for c in rep["cases"]] == ["tokenizer", "world_model_d512", "world_model_276M"]
    assert (
        rep["cases"][2]["variant"] == node_check.M276_VARIANT and rep["cases"][1]["variant"] == node_check.D512_VARIANT
    )
    for c in rep["cases"]:
        assert c["pass"] is True and c["failures"] == []
        assert c["steps_per_s"] > 0 and c["flops_per_step"] > 0 and c["params"] > 0 and c["steps"] == 3
        assert c["achieved_tflops"] == pytest.approx(c["flops_per_step"] * c["steps_per_s"] / 1e12)
        assert "flop_counter" in c["flops_method"]
        # CPU: MFU and measured memory are null, each with its reason; the plan is still computed
        assert c["mfu"] is None and "CPU" in c["mfu_null_reason"]
        assert c["peak_mem_GiB"] is None and c["mem_pass"] is None and "GPU memory only" in c["mem_null_reason"]
        assert c["plan_GiB"] > 0 and c["plan_key"] == "total_bf16_GiB"
        # the SDPA op the dispatcher picked was seen
        assert c["sdpa"]["ops"].get("scaled_dot_product_attention", 0) > 0 and c["sdpa"]["selected"]
        assert c["sdpa"]["pass"] is None and c["sdpa"]["pass_null_reason"]
        p = c["precision"]
        assert len(p["loss_fp32"]) == len(p["loss_bf16"]) == 20 and p["steps"] == 20
        assert all(math.isfinite(x) for x in p["loss_fp32"] + p["loss_bf16"])
        assert 0 < p["max_rel_diff"] <= node_check.PREC_MAX_REL  # > 0: bf16 autocast really ran
        assert p["mean_rel_diff"] <= min(p["max_rel_diff"], node_check.PREC_MEAN_REL)
        assert len(set(p["loss_fp32"])) == 20  # 20 training steps (new weights, new random draws each)
    ro = rep["rollout"]
    assert ro["pass"] and ro["kv_cache"] and ro["euler_steps_K"] == 4 and ro["frames_per_s"] > 0
    d = rep["ddp"]
    assert d["ran"] and d["backend"] == "gloo" and d["world_size"] == 2 and d["pass"] is True
    assert d["max_rel_err"] <= node_check.DDP_REL_TOL and d["rank_grads_rel_spread"] > 1e-3  # ranks' grads differ
    md = out.with_suffix(".md").read_text()
    assert "| config | batch × seq |" in md and md.count("| yes |") == 3 and "OK in" in md
    assert "KV-cached rollout" in md and "DDP (gloo, 2 ranks)" in md


def test_make_passes_check_gpu_args_through():
    r = subprocess.run(
        ["make", "-n", "check-gpu", "PY=python", "CHECK_GPU_ARGS=--device cpu --tiny --out x.json"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert "python workflow_scripts/check_gpu.py --device cpu --tiny --out x.json" in r.stdout, r.stdout + r.stderr


def test_memory_verdict_is_25_percent_either_way():
    assert node_check.memory_verdict(10.0, 8.0, "total_bf16_GiB") == (True, None)  # +25 %
    assert node_check.memory_verdict(6.0, 8.0, "total_bf16_GiB")[0] is True  # -25 %
    ok, why = node_check.memory_verdict(10.5, 8.0, "total_bf16_GiB")
    assert not ok and "+31%" in why and "outside ±25%" in why and "8.00 GiB" in why


def test_sdpa_classification_flags_the_math_fallback():
    ops = {
        "scaled_dot_product_attention": 4,
        "_scaled_dot_product_efficient_attention": 2,
        "_scaled_dot_product_efficient_attention_backward": 2,
        "_scaled_dot_product_flash_attention": 2,
    }
    assert node_check.classify_sdpa(ops) == ["flash", "memory-efficient"]
    assert "math fallback" in node_check.classify_sdpa({**ops, "_scaled_dot_product_attention_math": 1})
    assert node_check.classify_sdpa({"_scaled_dot_product_flash_attention_for_cpu": 1}) == ["flash (CPU)"]


def test_precision_check_fails_outside_its_tolerance(monkeypatch):
    case = node_check.cases(True, [])[1]
    monkeypatch.setattr(node_check, "PREC_MAX_REL", 0.0)
    p = node_check.precision_check(case, torch.device("cpu"), steps=3)
    assert p["pass"] is False and p["max_rel_diff"] > 0 and p["tol_max_rel"] == 0.0


def test_bf16_peaks_by_device_name():
    from dreamer4_libero.training.perf import gpu_bf16_peak

    assert gpu_bf16_peak("NVIDIA H100 80GB HBM3") == gpu_bf16_peak("NVIDIA H200") == 989.4e12  # SXM
    assert gpu_bf16_peak("NVIDIA H100 PCIe") == 756.5e12 and gpu_bf16_peak("NVIDIA A100-SXM4-80GB") == 312e12
    assert gpu_bf16_peak("Tesla T4") is None and gpu_bf16_peak(None) is None  # -> MFU null, with the reason
