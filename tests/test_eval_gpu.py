"""Evaluation jobs that run a network use the GPU their resources give them (issue 26, item 4).

* the FLOP counter that sizes them (evaluation/cost.py) against a hand count and the paper numbers;
* tokenizer_eval's batched passes give the same numbers as one causal chunk per pass (CPU: bit-identical);
* the eval scripts given a GPU that torch cannot use stop at once, before reading any input;
* a dry run of the paper config gives tokenizer_eval, probe, probe_baselines and rollout_eval one GPU and
  `--expect-gpus 1`; the demo keeps them CPU jobs (0 GPUs).
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import dry_run_jobs, snakemake_cmd, venv_env
from dreamer4_libero.config import demo_config, load_config
from dreamer4_libero.evaluation import cost
from dreamer4_libero.evaluation.runtime import eval_autocast, eval_device, precision_name, run_amp
from dreamer4_libero.evaluation.tokenizer_psnr import chunk_groups, masked_patch_sq_error, reconstruct
from dreamer4_libero.fileio import write_json
from dreamer4_libero.models.tokenizer import Tokenizer
from dreamer4_libero.training.devices import ALLOW_CPU_FALLBACK_ENV, GPUUnavailableError
from dreamer4_libero.training.tokenizer_task import tokenizer_model_config

REPO = Path(__file__).resolve().parents[1]
NETWORK_EVAL_RULES = ("tokenizer_eval", "probe", "probe_baselines", "rollout_eval")
needs_no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine where CUDA is missing")

# a tiny tokenizer: 16 px frames, 8 px patches -> 4 patches of 8*8*3 = 192 values, 4 latents
TINY = {
    "model": {
        "patch": 8,
        "d_model": 32,
        "n_heads": 2,
        "depth": 2,
        "n_latents": 4,
        "d_bottleneck": 8,
        "dropout": 0.0,
        "mlp_ratio": 4.0,
        "time_every": 1,
        "scale_pos_embeds": False,
    },
    "mae_p_min": 0.0,
    "mae_p_max": 0.75,
}


def test_flop_counter_matches_a_hand_count_on_a_tiny_tokenizer():
    c = cost.tokenizer_flops_per_frame(TINY, 16, chunk=3)
    # hand count per frame: S = 4 latents + 4 patches = 8 tokens, D = 32, L = 2 layers (both with time
    # attention over the 4 latents), SwiGLU hidden 4D, T = 3 frames per chunk
    space = 8 * 2 * 2 * (4 + 3 * 4) * 32 * 32  # qkv + out (4 D^2) and the SwiGLU (3 x 4 D^2) per token
    attn = 2 * 4 * 8 * 8 * 32  # q k^T and p v over the 8 tokens of a frame
    time_ = 4 * 2 * 2 * 4 * 32 * 32 + 2 * 4 * 4 * 3 * 32  # time attention qkv + out on 4 latents, q k^T + p v
    enc = space + attn + time_ + 4 * 2 * 192 * 32 + 4 * 2 * 32 * 8  # + patch_proj, bottleneck_proj
    dec = space + attn + time_ + 4 * 2 * 8 * 32 + 4 * 2 * 32 * 192  # + up_proj, patch_head
    assert (space, attn, time_) == (524288, 16384, 68608)
    assert c["encode"] == enc == 660480 and c["decode"] == dec == 660480
    assert c["masked_pass"] == c["encode_decode"] == enc + dec
    assert c["tokenizer_eval"] == 2 * (enc + dec)
    m = tokenizer_model_config(TINY, 16)
    f = cost.tokenizer_fwd_formula(
        m.d_model, m.depth, m.mlp_ratio, m.n_latents, m.n_patches, m.patch_dim, m.d_bottleneck, 3, m.time_every
    )
    assert f == {"encode": enc, "decode": dec}


def test_paper_tokenizer_eval_flops_size_the_job():
    """The numbers in config.yaml's comments: 52.8 GFLOP per encode + decode, 105.6 per tokenizer_eval frame
    (both passes), 18.9 PFLOP for 179k frames, 8 min at the assumed 40 TFLOP/s of one GPU."""
    cfg = load_config()
    c = cost.tokenizer_flops_per_frame(cfg["tokenizer"], cfg["data"]["model_resolution"], cfg["tokenizer"]["seq_len"])
    assert c["tokens_per_frame"] == 16 + 32 * 32
    assert c["encode_decode"] / 1e9 == pytest.approx(52.81, abs=0.01)
    assert c["tokenizer_eval"] / 1e9 == pytest.approx(105.61, abs=0.01)
    total = 179_000 * c["tokenizer_eval"]
    assert total / 1e15 == pytest.approx(18.9, abs=0.05)
    assert cost.job_minutes(total) == pytest.approx(7.9, abs=0.1)
    assert cost.job_minutes(total) * 10 < cfg["job_resources"]["tokenizer_eval"]["runtime_min"]


def _tiny_model(seed=0):
    torch.manual_seed(seed)
    model = Tokenizer(tokenizer_model_config(TINY, 16)).eval()
    for p in model.parameters():
        p.data.normal_(0, 0.1)
    return model


def test_chunk_groups_cover_the_episode_in_order():
    assert chunk_groups(11, 3, 2) == [[(0, 3), (3, 6)], [(6, 9)], [(9, 11)]]
    assert chunk_groups(6, 3, 16) == [[(0, 3), (3, 6)]]
    assert chunk_groups(2, 3, 4) == [[(0, 2)]]


@torch.no_grad()
def test_batched_tokenizer_eval_equals_one_chunk_per_pass():
    """The reconstruction and the masked train-style error with 4 or 64 chunks per pass equal one chunk per
    pass, and equal the previous implementation (one chunk per pass, mask drawn inside the forward under the
    chunk's seed): on the CPU bit-identical here; the tolerance allows 1e-6 (BLAS blocking may differ)."""
    model = _tiny_model()
    x = torch.rand(23, 3, 16, 16)  # 7 full chunks of 3 and a tail of 2
    gen = torch.Generator().manual_seed(0)
    ref_rec, ref_sse, ref_n = [], 0.0, 0  # the previous implementation, inline
    for s in range(0, 23, 3):
        xc = x[s : s + 3].unsqueeze(0)
        ref_rec.append(model.decode(model.encode(xc, mae=False)).clamp(0, 1)[0])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=gen)))
            out = model(xc, mae=True)
        m = out["mae_mask"].expand_as(out["target_patches"])
        ref_sse += float(((out["recon_patches"].clamp(0, 1) - out["target_patches"]) ** 2)[m].sum())
        ref_n += int(m.sum())
    ref_rec = torch.cat(ref_rec)
    assert ref_n > 0
    for batch in (1, 4, 64):
        rec = reconstruct(model, x, 3, batch)
        assert rec.shape == x.shape and rec.dtype == torch.float32
        assert (rec - ref_rec).abs().max().item() <= 1e-6, batch
        sse, n = masked_patch_sq_error(model, x, 3, torch.Generator().manual_seed(0), batch)
        assert n == ref_n and sse == pytest.approx(ref_sse, rel=1e-6), batch
    assert torch.equal(reconstruct(model, x, 3, 4), ref_rec)  # measured: no difference at all on the CPU


def test_cpu_runs_fp32_whatever_the_amp(tmp_path):
    cpu = torch.device("cpu")
    for amp in ("auto", "bf16", "fp16", "off"):
        assert precision_name(cpu, amp) == "fp32"
        with eval_autocast(cpu, amp):
            assert not torch.is_autocast_enabled("cuda")
    with pytest.raises(ValueError, match="amp must be one of"):
        precision_name(cpu, "fp8")
    conf = tmp_path / "config.json"
    write_json(conf, {"engine": {"amp": "bf16"}})
    write_json(tmp_path / "checkpoint.json", {"config": str(conf)})
    assert run_amp(str(tmp_path / "checkpoint.json")) == "bf16"
    assert run_amp(None) == "auto"
    write_json(conf, {"engine": {"amp": "half"}})
    with pytest.raises(ValueError, match=re.escape(str(conf))):
        run_amp(str(tmp_path / "checkpoint.json"))


@needs_no_cuda
def test_eval_device(monkeypatch, capsys):
    monkeypatch.delenv(ALLOW_CPU_FALLBACK_ENV, raising=False)
    assert eval_device(0, "x") == torch.device("cpu")
    with pytest.raises(GPUUnavailableError, match="tokenizer_eval was given 1 GPU"):
        eval_device(1, "tokenizer_eval")
    monkeypatch.setenv(ALLOW_CPU_FALLBACK_ENV, "1")
    assert eval_device(1, "tokenizer_eval") == torch.device("cpu")
    assert "allow_cpu_fallback is set: running on the CPU" in capsys.readouterr().err


def _env(**extra):
    env = {k: v for k, v in venv_env().items() if k != ALLOW_CPU_FALLBACK_ENV}
    return {**env, "PYTHONPATH": str(REPO / "src"), **extra}


EVAL_ARGV = {
    "eval_tokenizer": [
        "--checkpoint-json",
        "MISSING",
        "--manifest",
        "MISSING",
        "--test-ood",
        "MISSING",
        "--val",
        "MISSING",
        "--resolution",
        "32",
        "--eval",
        "{}",
        "--out-json",
        "OUT/psnr.json",
        "--out-png",
        "OUT/r.png",
    ],
    "probe": [
        "--baselines",
        "--tokenizer-checkpoint-json",
        "MISSING",
        "--manifest",
        "MISSING",
        "--probe-root",
        "MISSING",
        "--seeds",
        "0",
        "--resolution",
        "32",
        "--eval",
        "{}",
        "--out-dir",
        "OUT",
    ],
}


@needs_no_cuda
@pytest.mark.fault(
    fault="tokenizer_eval / probe_baselines given 1 GPU on a machine whose torch is a CPU build",
    guarantee="exit 2 within 10 s before reading any input, naming the build and the fix; with "
    "allow_cpu_fallback they go on on the CPU",
)
@pytest.mark.parametrize("script,who", [("eval_tokenizer", "tokenizer_eval"), ("probe", "probe_baselines")])
def test_eval_scripts_given_gpus_without_cuda_stop_at_once(tmp_path, script, who):
    argv = [str(tmp_path / a) if a.startswith(("MISSING", "OUT")) else a for a in EVAL_ARGV[script]]
    cmd = [sys.executable, str(REPO / "workflow_scripts" / f"{script}.py"), *argv, "--expect-gpus", "1"]
    t0 = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=_env(), timeout=120)
    assert r.returncode == 2 and time.time() - t0 < 10, r.stderr
    assert f"{who} was given 1 GPU(s) but torch sees 0" in r.stderr, r.stderr
    assert "torch==2.13.0" in r.stderr and "allow_cpu_fallback: true" in r.stderr, r.stderr
    assert "stopped before loading any data" in r.stderr and "MISSING" not in r.stderr, r.stderr
    assert not (tmp_path / "OUT").exists()
    # opted in: a loud warning, then it goes on (and fails on the first missing input instead)
    r = subprocess.run(
        cmd, capture_output=True, text=True, cwd=tmp_path, env=_env(**{ALLOW_CPU_FALLBACK_ENV: "1"}), timeout=120
    )
    assert r.returncode != 0 and "allow_cpu_fallback is set: running on the CPU" in r.stderr, r.stderr
    assert "MISSING" in r.stderr, r.stderr


def _planned(configfiles: list[str]) -> dict[str, list[tuple[str, str]]]:
    """rule -> [(resources, shell command)] of a dry run with printed shell commands (the paper config: with
    the DMControl pretraining, whose files a test machine lacks)."""
    args = ["-n", "-p", "--forceall", "--cores", "1"] + (
        ["--configfile", *configfiles] if configfiles else ["--config", "dmcontrol_init={source: pretrain}"]
    )
    r = subprocess.run(snakemake_cmd(*args), cwd=REPO, env=venv_env(), capture_output=True, text=True)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    jobs = {}
    for j in dry_run_jobs(out):
        jobs.setdefault(j["rule"], []).append((j["resources"], j["shell"]))
    return jobs


def test_paper_dry_run_gives_every_network_eval_job_one_gpu():
    jobs = _planned([])
    for rule in NETWORK_EVAL_RULES:
        assert jobs.get(rule), (rule, sorted(jobs))
        for res, sh in jobs[rule]:
            assert re.search(r"\bgpu=1\b", res), (rule, res)
            assert "--expect-gpus 1 " in sh, (rule, sh)
    assert len(jobs["probe"]) == len(jobs["rollout_eval"]) >= 7
    tok = jobs["tokenizer_eval"][0]
    assert (
        "--batch 16 " in tok[1] and "eval_batch=16" in tok[0] and "mem_mb=8000" in tok[0] and "runtime=120" in tok[0]
    ), tok
    # the rules that run no network stay CPU jobs
    for rule in ("data_sanity", "tables", "archive", "splits"):
        assert all(re.search(r"\bgpu=0\b", res) for res, _ in jobs.get(rule, [])), (rule, jobs.get(rule))


def test_demo_eval_jobs_stay_cpu_jobs():
    jobs = _planned(["config/demo.yaml"])
    for rule in NETWORK_EVAL_RULES:
        assert jobs.get(rule), rule
        for res, sh in jobs[rule]:
            assert re.search(r"\bgpu=0\b", res) and "--expect-gpus 0 " in sh, (rule, res, sh)
    assert demo_config()["job_resources"]["tokenizer_eval"]["gpus"] == 0
    assert demo_config(test=True)["job_resources"]["tokenizer_eval"]["gpus"] == 0
    ci = load_config([REPO / "config/demo.yaml", REPO / "config/ci_slurm.yaml"])
    assert (ci["job_resources"]["tokenizer_eval"]["gpus"], ci["probe_eval"]["gpus"], ci["rollout_eval"]["gpus"]) == (
        0,
        0,
        0,
    )


def _tok_eval_cli(pre: Path, tok: Path, tmp: Path, batch: int) -> dict:
    conf = tmp / "config.json"
    write_json(conf, {"engine": {"amp": "bf16"}, "task": {"tokenizer": {"seq_len": 3}}})
    cj = tmp / "checkpoint.json"
    write_json(cj, {"path": str(tok), "config": str(conf), "run_name": "tok_tiny", "sha256": "0" * 64, "step": 1})
    out = tmp / f"b{batch}"
    r = subprocess.run(
        [
            sys.executable,
            str(REPO / "workflow_scripts" / "eval_tokenizer.py"),
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
            '{"eps_per_task": 1, "min_len": 32, "max_val_episodes": 2, "seed": 0}',
            "--batch",
            str(batch),
            "--out-json",
            str(out / "psnr.json"),
            "--out-png",
            str(out / "r.png"),
            "--expect-gpus",
            "0",
        ],
        capture_output=True,
        text=True,
        env=_env(OMP_NUM_THREADS="1"),
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "device cpu, precision fp32 (amp bf16)" in r.stdout, r.stdout
    from dreamer4_libero.fileio import read_json

    return read_json(out / "psnr.json")


def test_tokenizer_eval_cli_on_cpu_same_numbers_at_any_batch(preprocessed, tiny_tokenizer_ckpt, tmp_path):
    """The script on the CPU (a job given 0 GPUs, a run trained under bf16): fp32, and every number of psnr.json
    the same with 1 and with 8 chunks per pass."""
    one = _tok_eval_cli(preprocessed, tiny_tokenizer_ckpt, tmp_path, 1)
    eight = _tok_eval_cli(preprocessed, tiny_tokenizer_ckpt, tmp_path, 8)
    assert (one["device"], one["precision"], one["batch_chunks"], eight["batch_chunks"]) == ("cpu", "fp32", 1, 8)
    assert one["sets"] == eight["sets"]
    val = one["sets"]["val"]
    assert val["n_episodes"] == 2 and val["n_frames"] > 64 and val["tok_psnr_masked_train_style"] is not None
    assert 0 < val["tok_psnr_frame_mean"] < 100


@torch.no_grad()
def test_eval_networks_run_under_bf16_autocast():
    """The GPU path's bf16 autocast, emulated by CPU autocast (same op lists for matmuls / SDPA): the tokenizer
    passes and a cached world-model rollout run without dtype errors, return fp32, and stay close to fp32."""
    from dreamer4_libero.models.dynamics import Dynamics, DynamicsConfig
    from dreamer4_libero.models.sampling import rollout

    model = _tiny_model()
    x = torch.rand(10, 3, 16, 16)
    ref = reconstruct(model, x, 3, 4)
    ref_sse, ref_n = masked_patch_sq_error(model, x, 3, torch.Generator().manual_seed(0), 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        rec = reconstruct(model, x, 3, 4)
        sse, n = masked_patch_sq_error(model, x, 3, torch.Generator().manual_seed(0), 4)
    assert rec.dtype == torch.float32 and 0 < (rec - ref).abs().max().item() < 0.05
    assert n == ref_n and sse == pytest.approx(ref_sse, rel=0.05)
    torch.manual_seed(0)
    dyn = Dynamics(DynamicsConfig(d_model=32, depth=2, n_heads=2, n_spatial=2, d_spatial=16)).eval()
    for p in dyn.parameters():
        torch.nn.init.normal_(p, std=0.05)
    ctx = torch.randn(2, 8, 2, 16).tanh()
    act = torch.rand(2, 32, dyn.cfg.action_dim) * 2 - 1
    noise = torch.randn(2, 24, 2, 16)
    kw = dict(d=0.25, window=32, use_cache=True, noise=noise)
    ref = rollout(dyn, ctx, act, torch.ones_like(act), 24, **kw)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = rollout(dyn, ctx, act, torch.ones_like(act), 24, **kw)
    assert out.dtype == torch.float32 and 0 < (out - ref).abs().max().item() < 0.05


def test_bench_eval_case_reports_counted_flops_and_throughput(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO))  # bench/ is a top-level folder, not part of the package
    from bench.eval import eval_case

    row = eval_case("tokenizer_eval_demo", demo_config(), "cpu", 2, 4, 4)
    c = cost.tokenizer_flops_per_frame(demo_config()["tokenizer"], 32, 2)
    assert (row["device"], row["precision"], row["frames"]) == ("cpu", "fp32", 8)
    assert row["gflop_per_frame"] * 1e9 == c["tokenizer_eval"]
    assert row["frames_per_s"] > 0
    assert row["achieved_tflops"] == pytest.approx(row["frames_per_s"] * c["tokenizer_eval"] / 1e12)
