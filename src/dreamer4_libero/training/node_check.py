"""``make check-gpu``: does this node run the paper-scale study as planned? (issue 28)

For each paper-scale config of config.yaml - the tokenizer at its per-GPU batch, the d512 world model
(``D512_VARIANT``) and the 276M one (``M276_VARIANT``) - on the trainers' own steps (training/perf.py:
the real model classes and losses; random frames / clean latents instead of the loader, the world
model's frozen-tokenizer encode not in the step), with the engine's optimizer set-up (``param_groups``,
AdamW fused on CUDA, the config's grad clip, ``resolve_amp``: bf16 autocast on GPUs, TF32 on):

* **speed**: steps/s over ``steps`` timed steps after ``warmup``; FLOPs per step counted with
  ``torch.utils.flop_counter`` on the meta device (``perf.count_step_flops``: matmuls and attention at 2
  per multiply-add, elementwise ops not counted); MFU = FLOPs x steps/s / the GPU's dense bf16 peak
  (``perf.GPU_BF16_PEAK``, matched on the device name; unknown GPU or CPU: null with the reason);
* **memory**: ``torch.cuda.max_memory_allocated`` over the timed steps against the README's plan
  (``perf.memory_plan`` at the same batch on one GPU: ``total_bf16_GiB``, or ``total_bf16_ckpt_GiB``
  where the config checkpoints activations); pass within ``MEM_TOLERANCE`` (±25 %); CPU: null + reason;
* **SDPA kernel**: the aten SDPA ops that ran in one step (``torch.profiler``, CPU activity: the op the
  dispatcher picked, e.g. ``_scaled_dot_product_efficient_attention``), and one more step with SDPA
  restricted to the fused backends (``sdpa_kernel([FLASH, EFFICIENT, CUDNN])``), which raises where an
  attention call would need the math fallback; on CUDA a math op or a failed restricted step fails;
* **bf16 vs fp32**: 20 steps from the same weights, inputs and random draws, once in fp32 (TF32 off)
  and once under bf16 autocast (on the CPU: CPU autocast), at ``precision_batch`` (the tokenizer: 2, the
  world models: their batch); pass when every
  step's loss is within ``PREC_MAX_REL`` and their mean relative difference within ``PREC_MEAN_REL``.

Then the KV-cached rollout of the 276M world model (models/sampling.py ``rollout``, shortcut schedule
d = 1/4, i.e. K = 4 Euler steps per frame, under the evaluation's autocast) in generated frames/s; and,
with >= 2 GPUs (or on the CPU with gloo), a 2-process DDP step of the d512 world model whose gradients
must equal the mean of the per-rank gradients of the same step without DDP (fp32, ``DDP_REL_TOL``).

``--tiny`` runs all of it at tiny sizes (``TINY``) - what the test suite runs on the CPU. The report
is ``bench/results/gpu_check.json`` and its table ``gpu_check.md`` (written atomically).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

from ..config import dynamics_variants, load_config
from ..models.blocks import set_activation_checkpointing, set_attention_backend
from . import perf
from .devices import build_info
from .optim import param_groups, resolve_amp

D512_VARIANT = "dynamics_aux_phase6_leakfree"  # d_model 512, the aux head on action-free rows (the heaviest d512)
M276_VARIANT = "dynamics_aux_param_matched_276M"
MEM_TOLERANCE = 0.25
PREC_STEPS = 20
PREC_MAX_REL = 0.05  # |loss_bf16 - loss_fp32| / |loss_fp32| at every one of the 20 steps
PREC_MEAN_REL = 0.02  # ... and on average over them
DDP_BATCH = 4  # per rank: one bootstrap row (self_fraction 0.25), so every pass of the step runs
DDP_REL_TOL = 1e-5  # max |grad_ddp - mean of per-rank grads| / max |mean|, fp32
ROLLOUT = {"context": 8, "generated": 24, "d": 0.25}
# tiny sizes: the same code on the CPU in seconds (models narrowed, frames 32x32)
TINY = {
    "resolution": 32,
    "tokenizer": {"d_model": 32, "depth": 1, "n_latents": 4, "d_bottleneck": 8},
    "tok_seq": 4,
    "batch": 2,
    "dyn_seq": 4,
    "dyn_batch": 4,
    D512_VARIANT: {"d_model": 32, "depth": 2},
    M276_VARIANT: {"d_model": 64, "depth": 2},
    "rollout": {"context": 2, "generated": 3, "d": 0.25},
}
SDPA_KINDS = (
    ("_scaled_dot_product_flash_attention_for_cpu", "flash (CPU)"),
    ("_scaled_dot_product_flash_attention", "flash"),
    ("_scaled_dot_product_efficient_attention", "memory-efficient"),
    ("_scaled_dot_product_cudnn_attention", "cudnn"),
    ("_scaled_dot_product_attention_math", "math fallback"),
)


# ----------------------------------------------------------------------------------------------
# the cases


def _lpips(cfg: dict, notes: list[str]):
    """The tokenizer loss's LPIPS from the materialised asset or the machine cache (never downloads); None
    (and a note) where neither has it: the tokenizer step then runs without its LPIPS term."""
    from ..models.lpips import LPIPS
    from ..assets.lpips_weights import ensure_lpips_weights, read_sidecar

    try:
        return LPIPS.from_asset("results/assets/lpips")
    except Exception:
        pass
    try:
        path = ensure_lpips_weights(cfg["paths"].get("lpips_cache"), allow_download=False)
        return LPIPS.from_file(path, read_sidecar(path)["file_sha256"])
    except Exception as e:
        notes.append(
            f"LPIPS weights not found ({type(e).__name__}; `make fetch-lpips` on the login node): "
            f"the tokenizer step runs without its LPIPS term, and its plan likewise"
        )
        return None


def cases(tiny: bool, notes: list[str]) -> list[dict]:
    """[{name, kind, section, build(batch, device, dtype, seed) -> perf.TrainStep, batch, precision_batch}]."""
    cfg = load_config()
    res = TINY["resolution"] if tiny else cfg["data"]["model_resolution"]
    tok = copy.deepcopy(cfg["tokenizer"])
    if tiny:
        tok["model"].update(TINY["tokenizer"])
        tok.update(seq_len=TINY["tok_seq"], batch_size=TINY["batch"])
    lp = _lpips(cfg, notes) if tok["lpips_weight"] > 0 else None
    variants = dynamics_variants(cfg)
    out = []

    def tok_build(batch, device, dtype=torch.float32, seed=0):
        lpd = copy.deepcopy(lp) if lp is not None else None  # .to(device) moves a module in place
        return perf.tokenizer_step(tok, res, batch, tok["seq_len"], device=device, lpips=lpd, dtype=dtype, seed=seed)

    out.append(
        {
            "name": "tokenizer",
            "kind": "tokenizer",
            "variant": None,
            "section": tok,
            "build": tok_build,
            "batch": tok["batch_size"],
            "precision_batch": min(tok["batch_size"], 2),
            "lpips": lp is not None,
        }
    )
    for label, name in (("world_model_d512", D512_VARIANT), ("world_model_276M", M276_VARIANT)):
        run = copy.deepcopy(variants[name])
        if tiny:
            run["model"].update(TINY[name])
            run.update(seq_len=TINY["dyn_seq"], batch_size=TINY["dyn_batch"])  # batch 4: one bootstrap row

        def dyn_build(batch, device, dtype=torch.float32, seed=0, run=run):
            return perf.dynamics_step(run, tok, res, batch=batch, device=device, dtype=dtype, seed=seed)

        out.append(
            {
                "name": label,
                "kind": "dynamics",
                "variant": name,
                "section": run,
                "build": dyn_build,
                "batch": run["batch_size"],
                "precision_batch": run["batch_size"],
            }
        )
    return out


# ----------------------------------------------------------------------------------------------
# one case's steps


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Trainer:
    """A perf.TrainStep with the engine's optimizer, clipping and autocast (engine.Trainer.update, one micro-batch)."""

    def __init__(self, step: perf.TrainStep, section: dict, device: torch.device, amp: torch.dtype | None):
        self.step, self.device, self.amp = step, device, amp
        self.clip = section.get("grad_clip") or None
        fused = device.type == "cuda" and section.get("fused_adamw", "auto") != "off"
        self.opt = torch.optim.AdamW(
            param_groups(step.model, section["lr"], section.get("lr_mult")),
            lr=section["lr"],
            weight_decay=section["weight_decay"],
            **({"fused": True} if fused else {}),
        )
        self.fused = fused

    def autocast(self):
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp)

    def __call__(self) -> float:
        self.opt.zero_grad(set_to_none=True)
        with self.autocast():
            loss = self.step.loss()
        loss = loss.float()
        loss.backward()
        if self.clip:
            torch.nn.utils.clip_grad_norm_(self.step.model.parameters(), self.clip)
        self.opt.step()
        return float(loss.detach())


def sdpa_ops(fn: Callable[[], object]) -> dict[str, int]:
    """aten SDPA ops (forward and backward) dispatched while ``fn`` runs, with counts."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key.replace("aten::", ""): int(e.count) for e in prof.key_averages() if "scaled_dot_product" in e.key}


def classify_sdpa(ops: dict[str, int]) -> list[str]:
    """The kernels behind the forward ops (``..._backward`` ops follow their forward)."""
    kinds = []
    for op in ops:
        if op.endswith("_backward"):
            continue
        for prefix, kind in SDPA_KINDS:
            if op.startswith(prefix):
                kinds.append(kind)
                break
    return sorted(set(kinds))


def sdpa_check(trainer: _Trainer, device: torch.device) -> dict:
    ops = sdpa_ops(trainer)
    kinds = classify_sdpa(ops)
    out = {"ops": ops, "selected": kinds, "math_fallback": "math fallback" in kinds}
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]):
            trainer()
        out["fused_only_step"] = "ok"
    except Exception as e:  # "No available kernel": some call needs the math fallback
        out["fused_only_step"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
    if device.type == "cuda":
        out["pass"] = bool(kinds) and not out["math_fallback"] and out["fused_only_step"] == "ok"
    else:
        out["pass"], out["pass_null_reason"] = None, "CPU: no flash / memory-efficient CUDA kernels to check"
    return out


@contextlib.contextmanager
def _no_tf32():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def precision_check(case: dict, device: torch.device, steps: int = PREC_STEPS) -> dict:
    """The same 20 steps (weights, inputs, random draws) in fp32 and under bf16 autocast."""
    losses = {}
    for name, amp in (("fp32", None), ("bf16", torch.bfloat16)):
        step = case["build"](case["precision_batch"], device, seed=0)
        tr = _Trainer(step, case["section"], device, amp)
        torch.manual_seed(1)
        with _no_tf32():
            losses[name] = [tr() for _ in range(steps)]
        del tr, step
    rel = [abs(b - f) / max(abs(f), 1e-12) for f, b in zip(losses["fp32"], losses["bf16"])]
    ok = all(math.isfinite(x) for x in losses["fp32"] + losses["bf16"])
    out = {
        "batch": case["precision_batch"],
        "steps": steps,
        "loss_fp32": losses["fp32"],
        "loss_bf16": losses["bf16"],
        "max_rel_diff": max(rel),
        "mean_rel_diff": sum(rel) / len(rel),
        "tol_max_rel": PREC_MAX_REL,
        "tol_mean_rel": PREC_MEAN_REL,
        "autocast": f"{device.type} bf16",
        "fp32_tf32": False,
    }
    out["pass"] = ok and out["max_rel_diff"] <= PREC_MAX_REL and out["mean_rel_diff"] <= PREC_MEAN_REL
    return out


def plan_for(case: dict) -> tuple[float, str]:
    """(the README plan's GiB per GPU for this case at its batch on one GPU, the plan key used)."""

    def make(batch, dtype):
        return case["build"](batch, "meta", dtype=dtype)

    plan = perf.memory_plan(make, case["batch"], world_size=1)
    key = "total_bf16_ckpt_GiB" if case["section"].get("activation_checkpointing") else "total_bf16_GiB"
    return plan[key], key


def memory_verdict(measured_gib: float, plan_gib: float, key: str) -> tuple[bool, str | None]:
    """(within ±MEM_TOLERANCE of the plan, the failure text where not)."""
    dev = measured_gib / plan_gib - 1
    if abs(dev) <= MEM_TOLERANCE:
        return True, None
    return False, (
        f"peak memory {measured_gib:.2f} GiB vs the plan's {plan_gib:.2f} GiB ({key}): {dev:+.0%}, outside "
        f"±{MEM_TOLERANCE:.0%} (the plan in training/perf.py or the code is wrong)"
    )


def run_case(
    case: dict,
    device: torch.device,
    steps: int,
    warmup: int,
    peak: float | None,
    peak_reason: str | None,
    log: Callable[[str], None],
) -> dict:
    t_case = time.perf_counter()
    sec = case["section"]
    amp, _ = resolve_amp(sec.get("amp", "auto"), device)
    row = {
        "case": case["name"],
        "kind": case["kind"],
        "variant": case["variant"],
        "batch": case["batch"],
        "seq_len": sec["seq_len"],
        "amp": "bf16" if amp == torch.bfloat16 else ("fp16" if amp else "fp32"),
        "activation_checkpointing": bool(sec.get("activation_checkpointing")),
        "failures": [],
    }
    if case["kind"] == "tokenizer":
        row["lpips"] = case["lpips"]
    meta = case["build"](case["batch"], "meta")
    row["flops_per_step"] = perf.count_step_flops(meta)
    row["flops_method"] = "torch.utils.flop_counter on the meta device (training/perf.py count_step_flops)"
    row["params"] = meta.params()
    del meta
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    step = case["build"](case["batch"], device)
    if row["activation_checkpointing"]:
        set_activation_checkpointing(step.model, True)
    tr = _Trainer(step, sec, device, amp)
    row["fused_adamw"] = tr.fused
    torch.manual_seed(0)
    for _ in range(warmup):
        tr()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    losses = [tr() for _ in range(steps)]
    _sync(device)
    dt = (time.perf_counter() - t0) / steps
    row.update(
        steps=steps,
        warmup=warmup,
        steps_per_s=1 / dt,
        loss_last=losses[-1],
        tokens_per_s=step.tokens / dt,
        achieved_tflops=row["flops_per_step"] / dt / 1e12,
    )
    if not all(math.isfinite(x) for x in losses):
        row["failures"].append(f"non-finite loss in the timed steps: {losses}")
    row["mfu"] = row["flops_per_step"] / dt / peak if peak else None
    if peak is None:
        row["mfu_null_reason"] = peak_reason
    plan, key = plan_for(case)
    row.update(plan_GiB=plan, plan_key=key)
    if device.type == "cuda":
        meas = torch.cuda.max_memory_allocated(device) / 2**30
        ok, why = memory_verdict(meas, plan, key)
        row.update(peak_mem_GiB=meas, mem_ratio=meas / plan, mem_tolerance=MEM_TOLERANCE, mem_pass=ok)
        if not ok:
            row["failures"].append(why)
    else:
        row.update(
            peak_mem_GiB=None,
            mem_ratio=None,
            mem_pass=None,
            mem_null_reason="CPU: torch.cuda.max_memory_allocated measures GPU memory only",
        )
    row["sdpa"] = sdpa_check(tr, device)
    if row["sdpa"]["pass"] is False:
        row["failures"].append(
            f"SDPA: kernels {row['sdpa']['selected']}, fused-only step: {row['sdpa']['fused_only_step']}"
        )
    del tr, step
    if device.type == "cuda":
        torch.cuda.empty_cache()
    row["precision"] = precision_check(case, device)
    if not row["precision"]["pass"]:
        p = row["precision"]
        row["failures"].append(
            f"bf16 vs fp32 loss over {p['steps']} steps: max rel diff {p['max_rel_diff']:.3g} "
            f"(tol {PREC_MAX_REL}), mean {p['mean_rel_diff']:.3g} (tol {PREC_MEAN_REL})"
        )
    row["pass"] = not row["failures"]
    row["seconds"] = time.perf_counter() - t_case
    log(
        f"  {row['case']:18s} batch {row['batch']}: {row['steps_per_s']:.3g} steps/s, MFU "
        f"{'n/a' if row['mfu'] is None else format(row['mfu'], '.1%')}, peak "
        f"{'n/a' if row['peak_mem_GiB'] is None else format(row['peak_mem_GiB'], '.2f')} GiB vs plan "
        f"{plan:.2f} GiB, SDPA {row['sdpa']['selected']}, bf16/fp32 max rel "
        f"{row['precision']['max_rel_diff']:.2g}: {'ok' if row['pass'] else 'FAILED'} ({row['seconds']:.0f} s)"
    )
    return row


# ----------------------------------------------------------------------------------------------
# rollout and DDP


@torch.no_grad()
def rollout_check(case: dict, device: torch.device, tiny: bool, repeats: int = 2) -> dict:
    """KV-cached rollout of the 276M world model: frames/s of generated frames at K = 4."""
    from ..evaluation.runtime import eval_autocast
    from ..models.dynamics import Dynamics
    from ..models.sampling import rollout, tau_schedule

    r = TINY["rollout"] if tiny else ROLLOUT
    cfg = case["build"](1, "meta").model.dynamics.cfg
    torch.manual_seed(0)
    dyn = Dynamics(cfg).to(device).eval()
    for p in dyn.parameters():
        p.normal_(0, 0.02)
    batch = 1 if tiny or device.type == "cpu" else 8
    C, H = r["context"], r["generated"]
    ctx = torch.randn(batch, C, cfg.n_spatial, cfg.d_spatial, device=device)
    act = torch.rand(batch, C + H, cfg.action_dim, device=device) * 2 - 1
    mask = torch.ones_like(act)
    K = tau_schedule(cfg.k_max, "shortcut", r["d"])[0]

    def one():
        with eval_autocast(device, case["section"].get("amp", "auto")):
            return rollout(
                dyn,
                ctx,
                act,
                mask,
                H,
                schedule="shortcut",
                d=r["d"],
                use_cache=True,
                generator=torch.Generator(device=device).manual_seed(0),
            )

    one()  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        out = one()
    _sync(device)
    dt = (time.perf_counter() - t0) / repeats
    finite = bool(torch.isfinite(out.float()).all())
    return {
        "case": case["name"],
        "variant": case["variant"],
        "params": sum(p.numel() for p in dyn.parameters()),
        "batch": batch,
        "context": C,
        "generated": H,
        "euler_steps_K": K,
        "kv_cache": True,
        "frames_per_s": batch * H / dt,
        "seconds_per_rollout": dt,
        "finite": finite,
        "pass": finite and dt > 0,
    }


def _ddp_worker(rank: int, world: int, init_file: str, out_dir: str, backend: str, tiny: bool) -> None:
    """One rank: the d512 world-model step's gradients with DDP and without (same seed), all-gathered."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.set_num_threads(1)
    device = torch.device(f"cuda:{rank}" if backend == "nccl" else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)  # before the NCCL communicator is made
    dist.init_process_group(backend, init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        case = [c for c in cases(tiny, []) if c["variant"] == D512_VARIANT][0]
        step = case["build"](DDP_BATCH, device, seed=0)  # the same weights on every rank
        params = [p for p in step.model.parameters() if p.requires_grad]

        def grads():
            return [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in params]

        torch.manual_seed(100 + rank)  # per-rank random draws: the ranks' gradients differ
        step.loss().float().backward()
        local = grads()
        step.model.zero_grad(set_to_none=True)
        ddp = DDP(step.model, device_ids=[rank] if device.type == "cuda" else None)
        torch.manual_seed(100 + rank)
        step.loss(ddp).float().backward()
        synced = grads()
        flat_local = torch.cat([g.flatten() for g in local])
        gathered = [torch.empty_like(flat_local) for _ in range(world)]
        dist.all_gather(gathered, flat_local)
        mean = torch.stack(gathered).mean(0)
        flat_ddp = torch.cat([g.flatten() for g in synced])
        err = float((flat_ddp - mean).abs().max() / mean.abs().max().clamp_min(1e-30))
        spread = float((gathered[0] - gathered[1]).abs().max() / mean.abs().max().clamp_min(1e-30))
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as fh:
            json.dump(
                {
                    "rank": rank,
                    "max_rel_err": err,
                    "rank_grads_rel_spread": spread,
                    "n_params": int(flat_local.numel()),
                    "device": str(device),
                },
                fh,
            )
    finally:
        dist.destroy_process_group()


def ddp_check(device: torch.device, tiny: bool, enabled: bool) -> dict:
    """2 processes, NCCL on 2 GPUs or gloo on the CPU; skipped (with the reason) otherwise."""
    if not enabled:
        return {"ran": False, "skipped_reason": "--no-ddp", "pass": None}
    if device.type == "cuda" and torch.cuda.device_count() < 2:
        return {
            "ran": False,
            "pass": None,
            "skipped_reason": f"{torch.cuda.device_count()} GPU visible: the NCCL check needs >= 2 "
            "(e.g. `srun --gpus=2 make check-gpu`)",
        }
    import torch.multiprocessing as mp

    if device.type == "cuda":
        torch.cuda.empty_cache()  # rank 0 shares GPU 0 with this process
    backend = "nccl" if device.type == "cuda" else "gloo"
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="d4l_ddp_check_") as tmp:
        init = os.path.join(tmp, "init")
        try:
            mp.start_processes(_ddp_worker, args=(2, init, tmp, backend, tiny), nprocs=2, start_method="spawn")
            ranks = [json.loads(Path(tmp, f"rank{r}.json").read_text()) for r in range(2)]
        except Exception as e:
            return {"ran": True, "backend": backend, "pass": False, "error": f"{type(e).__name__}: {e}"[:2000]}
    err = max(r["max_rel_err"] for r in ranks)
    spread = min(r["rank_grads_rel_spread"] for r in ranks)
    return {
        "ran": True,
        "backend": backend,
        "world_size": 2,
        "variant": D512_VARIANT,
        "precision": "fp32",
        "max_rel_err": err,
        "tol": DDP_REL_TOL,
        "rank_grads_rel_spread": spread,
        "n_params": ranks[0]["n_params"],
        "seconds": time.perf_counter() - t0,
        # the ranks' own gradients must differ, or the mean would be trivially right
        "pass": err <= DDP_REL_TOL and spread > 10 * DDP_REL_TOL,
    }


# ----------------------------------------------------------------------------------------------
# the whole check


def run(
    device: str = "cuda",
    tiny: bool = False,
    steps: int | None = None,
    warmup: int | None = None,
    ddp: bool = True,
    log: Callable[[str], None] = print,
) -> dict:
    """Every check; returns the report (``report["ok"]``, ``report["failures"]``)."""
    t0 = time.perf_counter()
    dev = torch.device(device if device != "cuda" else "cuda:0")
    steps = steps or (3 if tiny or dev.type == "cpu" else 10)
    warmup = warmup if warmup is not None else (2 if tiny or dev.type == "cpu" else 3)
    set_attention_backend("sdpa")
    threads = torch.get_num_threads()
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # the engine's default
    gpu = torch.cuda.get_device_name(dev) if dev.type == "cuda" else None
    peak = perf.gpu_bf16_peak(gpu) if gpu else None
    peak_reason = (
        None
        if peak
        else (
            f"no known dense bf16 peak for {gpu!r} (training/perf.py GPU_BF16_PEAK)"
            if gpu
            else "CPU: MFU is defined against a GPU's dense bf16 peak"
        )
    )
    notes: list[str] = []
    report = {
        "check": "gpu_check",
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "mode": "tiny" if tiny else "paper",
        "device": dev.type,
        "gpu": gpu,
        "bf16_peak_tflops": peak / 1e12 if peak else None,
        "environment": build_info(),
        "notes": notes,
        "tolerances": {
            "memory_vs_plan": MEM_TOLERANCE,
            "bf16_vs_fp32_max_rel": PREC_MAX_REL,
            "bf16_vs_fp32_mean_rel": PREC_MEAN_REL,
            "ddp_grad_rel": DDP_REL_TOL,
        },
        "inputs": "random frames (tokenizer) / random clean latents (world models); the frozen-tokenizer "
        "encode is not in the world-model step",
        "cases": [],
    }
    try:
        cs = cases(tiny, notes)
        for note in notes:
            log(f"  note: {note}")
        for case in cs:
            try:
                report["cases"].append(run_case(case, dev, steps, warmup, peak, peak_reason, log))
            except torch.cuda.OutOfMemoryError as e:
                report["cases"].append(
                    {"case": case["name"], "pass": False, "failures": [f"out of memory: {str(e).splitlines()[0]}"]}
                )
                torch.cuda.empty_cache()
                log(f"  {case['name']}: FAILED (out of memory)")
        try:
            report["rollout"] = rollout_check(cs[2], dev, tiny)
            r = report["rollout"]
            log(
                f"  rollout {r['variant']}: {r['frames_per_s']:.1f} frames/s (batch {r['batch']}, K = "
                f"{r['euler_steps_K']}, KV cache)"
            )
        except Exception as e:
            report["rollout"] = {"pass": False, "error": f"{type(e).__name__}: {e}"}
        report["ddp"] = ddp_check(dev, tiny, ddp)
        d = report["ddp"]
        log(
            "  DDP: "
            + (
                f"{d['backend']}, 2 ranks: max rel |grad - mean of rank grads| {d['max_rel_err']:.2g} "
                f"(tol {DDP_REL_TOL:g}): {'ok' if d['pass'] else 'FAILED'}"
                if d.get("ran") and "error" not in d
                else d.get("error") or f"skipped ({d['skipped_reason']})"
            )
        )
    finally:
        torch.set_num_threads(threads)
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    fails = [f"{c['case']}: {f}" for c in report["cases"] for f in c["failures"]]
    if not report["rollout"].get("pass"):
        fails.append(f"rollout: {report['rollout'].get('error') or 'non-finite output'}")
    if report["ddp"].get("pass") is False:
        fails.append(f"DDP: {report['ddp'].get('error') or 'gradients differ from the mean of the rank gradients'}")
    report["failures"] = fails
    report["ok"] = not fails
    report["seconds"] = time.perf_counter() - t0
    report["within_8_min"] = report["seconds"] <= 480  # the issue's budget for one GPU (informational)
    return report
