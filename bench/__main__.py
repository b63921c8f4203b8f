"""The benchmark suite: ``python -m bench`` (or ``make bench``) writes one JSON file and prints a table.

Sections (``--only`` picks some):
  train     tokenizer and world-model train steps/s, tokens/s, FLOPs/step, MFU, peak memory, for the
            demo and paper configs, with SDPA and with the explicit attention (bench/train.py)
  rollout   world-model rollout frames/s with and without the KV cache, K = 4 (bench/rollout.py)
  data      preprocessing frames/s against read-flip-write, loader windows/s, staging s per GB (bench/data.py)
  memory    per-GPU memory plan and FLOPs of every paper-scale run (bench/memory.py)
  dmcontrol DMControl collection frames/s (bench/dmcontrol.py)
  eval      tokenizer_eval frames/s and achieved TFLOP/s, demo and paper tokenizer (bench/eval.py)
Every speed is also given as a ratio against its baseline measured in the same run: SDPA vs
explicit attention, cached vs uncached rollout, preprocessing vs its baseline, loader vs the train
step's consumption (steps/s x batch). A GPU is used when present (``--device cuda``).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

SECTIONS = ("train", "rollout", "data", "memory", "dmcontrol", "eval")


def machine(device: str) -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = None
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        pass
    out = {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "ram_GiB": mem,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": device,
    }
    if device == "cuda":
        out["gpu"] = torch.cuda.get_device_name()
        out["gpu_mem_GiB"] = torch.cuda.get_device_properties(0).total_memory / 2**30
    return out


def ratios(res: dict) -> dict:
    out: dict = {}
    if "train" in res:
        from bench.train import speedups

        out["sdpa_vs_explicit_steps_per_s"] = speedups(res["train"])
    if "rollout" in res:
        out["cached_vs_uncached_rollout_frames_per_s"] = {r["case"]: r["speedup"] for r in res["rollout"]}
    if "data" in res:
        p = res["data"]["preprocess"]
        out["preprocess_vs_read_flip_write"] = {"workers1": p["ratio_workers1"], "workers2": p["ratio_workers2"]}
        if "train" in res:
            by = {r["case"]: r for r in res["train"] if r.get("attention") == "sdpa" and "error" not in r}
            lv = {}
            for case, ld in res["data"]["loader"].items():
                if case in by:
                    need = by[case]["steps_per_s"] * by[case]["batch"]  # windows/s the train step consumes
                    lv[case] = {
                        "loader_windows_per_s": ld["windows_per_s_workers0"],
                        "step_consumes_per_s": need,
                        "ratio": ld["windows_per_s_workers0"] / need,
                    }
            out["loader_vs_train_step"] = lv
    return out


def _f(x, spec=".3g"):
    return "n/a" if x is None else format(x, spec)


def table(res: dict) -> str:
    """The short Markdown table (docs/performance.md)."""
    m = res["machine"]
    lines = [
        f"Machine: {m['cpu']}, {m['cpus']} CPUs, {_f(m['ram_GiB'], '.0f')} GiB RAM"
        + (f", {m['gpu']}" if m.get("gpu") else ", no GPU")
        + f"; torch {m['torch']}; {res['date']}.",
        "",
    ]
    r = res.get("ratios", {})
    if "train" in res:
        lines += [
            "| train step | device | batch × seq | steps/s | tokens/s | GFLOP/step | TFLOP/s | MFU | peak mem GiB "
            "| SDPA / explicit |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        sp = r.get("sdpa_vs_explicit_steps_per_s", {})
        for row in res["train"]:
            if row.get("attention") != "sdpa":
                continue
            if "error" in row:
                lines.append(f"| {row['case']} | | | {row['error']} | | | | | | |")
                continue
            mem = row.get("peak_gpu_mem_GiB", row.get("peak_rss_GiB"))
            lines.append(
                f"| {row['case']} | {row['device']} ({row['amp']}) | {row['batch']} × {row['seq_len']} | "
                f"{row['steps_per_s']:.3g} | {row['tokens_per_s']:.3g} | {row['flops_per_step'] / 1e9:.4g} | "
                f"{row['achieved_tflops']:.3g} | {_f(row['mfu'], '.1%')} | {_f(mem)} | "
                f"{'x' + format(sp[row['case']], '.2f') if row['case'] in sp else 'n/a'} |"
            )
        lines.append("")
    if "rollout" in res:
        lines += [
            "| rollout (8 → 24 frames, K = 4) | cached frames/s | uncached frames/s | cached / uncached "
            "| max abs diff |",
            "|---|---|---|---|---|",
        ]
        for row in res["rollout"]:
            lines.append(
                f"| {row['case']} | {row['frames_per_s_cached']:.3g} | {row['frames_per_s_uncached']:.3g} | "
                f"x{row['speedup']:.2f} | {row['max_abs_diff']:.1e} |"
            )
        lines.append("")
    if "data" in res:
        p = res["data"]["preprocess"]
        lines += [
            "| data | ours | baseline | ratio |",
            "|---|---|---|---|",
            f"| preprocessing frames/s (1 / 2 workers) | {p['ours_workers1_fps']:.0f} / {p['ours_workers2_fps']:.0f} "
            f"| {p['baseline_read_flip_write_npy_fps']:.0f} (read, flip, write .npy) | "
            f"x{p['ratio_workers1']:.2f} / x{p['ratio_workers2']:.2f} |",
        ]
        for case, lv in r.get("loader_vs_train_step", {}).items():
            lines.append(
                f"| loader windows/s, {case} shapes | {lv['loader_windows_per_s']:.0f} | "
                f"{lv['step_consumes_per_s']:.1f} (train step's consumption) | x{lv['ratio']:.0f} |"
            )
        if "staging" in res["data"]:
            st = res["data"]["staging"]
            lines.append(
                f"| staging to node-local disk (copy + verify), s per GB | {st['seconds_per_GB']:.2f} "
                f"({st['GB']:.3f} GB in {st['seconds']:.2f} s) | | |"
            )
        lines.append("")
    if "memory" in res:
        lines += [
            "| paper-scale run | params | per-GPU batch | GPUs | TFLOP/step | GiB/GPU bf16 (fp32) | with act. ckpt "
            "| largest batch / 80 GB (with ckpt) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for row in res["memory"]:
            lines.append(
                f"| {row['run']}{'' if row.get('enabled', True) else ' (disabled)'} | {row['params'] / 1e6:.1f}M | "
                f"{row['batch']} | {row['gpus']} | {row['flops_per_step'] / 1e12:.2f} | "
                f"{row['total_bf16_GiB']:.1f} ({row['total_fp32_GiB']:.1f}) | {row['total_bf16_ckpt_GiB']:.1f} | "
                f"{row['largest_batch_per_80GB_bf16']} ({row['largest_batch_per_80GB_bf16_ckpt']}) |"
            )
        lines.append("")
    if "dmcontrol" in res:
        d = res["dmcontrol"]
        lines += [
            f"DMControl collection: {d['mean_frames_per_s_render_224']:.1f} frames/s rendered at 224 px and "
            f"resized, {d['mean_frames_per_s_render_128']:.1f} at 128 px.",
            "",
        ]
    if "eval" in res:
        e = res["eval"]
        lines += [
            "| tokenizer_eval (encode + decode + masked pass) | device | frames/s | GFLOP/frame | TFLOP/s |",
            "|---|---|---|---|---|",
        ]
        for row in e["rows"]:
            lines.append(
                f"| {row['case']} | {row['device']} ({row['precision']}) | {row['frames_per_s']:.3g} | "
                f"{row['gflop_per_frame']:.4g} | {row['achieved_tflops']:.3g} |"
            )
        lines += [
            "",
            f"Paper tokenizer_eval: {e['paper_frames']:,} frames, {e['paper_pflop']:.1f} PFLOP: "
            f"{e['paper_minutes_at_assumed_gpu']:.0f} min at the assumed {e['assumed_gpu_tflops']:g} TFLOP/s "
            f"of one GPU.",
            "",
        ]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench/results/bench.json")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    ap.add_argument(
        "--memory-runs",
        default=None,
        help="comma-separated runs of the memory section (tokenizer and/or variant names; default: all)",
    )
    a = ap.parse_args(argv)
    only = [s.strip() for s in a.only.split(",") if s.strip()]
    bad = sorted(set(only) - set(SECTIONS))
    if bad:
        ap.error(f"unknown section(s) {bad}; choose from {list(SECTIONS)}")
    res: dict = {
        "benchmark": "dreamer4-libero",
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "machine": machine(a.device),
        "seconds": {},
    }

    def log(msg):
        print(msg, flush=True)

    for sec in only:
        t0 = time.time()
        log(f"[bench] {sec} ...")
        if sec == "train":
            from bench.train import run_all

            res["train"] = run_all(a.device, log=log)
        elif sec == "rollout":
            from bench.rollout import run_all

            res["rollout"] = run_all(a.device, log=log)
        elif sec == "data":
            from bench.data import run_all

            res["data"] = run_all(log=log)
        elif sec == "memory":
            from bench.memory import run_all

            res["memory"] = run_all(log=log, runs=a.memory_runs.split(",") if a.memory_runs else None)
        elif sec == "dmcontrol":
            from bench.dmcontrol import run_all

            res["dmcontrol"] = run_all(log=log)
        elif sec == "eval":
            from bench.eval import run_all

            res["eval"] = run_all(a.device, log=log)
        res["seconds"][sec] = time.time() - t0
    res["ratios"] = ratios(res)
    res["table_markdown"] = table(res)
    from dreamer4_libero.fileio import write_bytes, write_json

    write_json(a.out, res)
    write_bytes(Path(a.out).with_suffix(".md"), (res["table_markdown"] + "\n").encode())
    print("\n" + res["table_markdown"])
    print(f"[bench] wrote {a.out} and {Path(a.out).with_suffix('.md')} ({sum(res['seconds'].values()):.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
