"""The node check's report (training/node_check.py `run`): bench/results/gpu_check.json and its Markdown table."""

from __future__ import annotations

import os
from pathlib import Path

from ..fileio import write_bytes, write_json


def _f(x, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


def table(report: dict) -> str:
    env = report["environment"]
    lines = [
        f"# GPU node check ({report['mode']} sizes, {report['date']})",
        "",
        f"Device: {report['gpu'] or 'CPU'}; torch {env['torch']}, CUDA {env['cuda']}, cuDNN {env['cudnn']}, "
        f"NCCL {env['nccl']}; dense bf16 peak {_f(report['bf16_peak_tflops'], '.0f')} TFLOP/s. "
        f"{'OK' if report['ok'] else 'FAILED'} in {report['seconds']:.0f} s.",
        "",
        "| config | batch × seq | amp | steps/s | TFLOP/s | MFU | peak GiB | plan GiB | vs plan | SDPA kernels "
        "| bf16 vs fp32 (max rel, 20 steps) | pass |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in report["cases"]:
        if "steps_per_s" not in c:
            lines.append(f"| {c['case']} | | | {'; '.join(c['failures'])} | | | | | | | | no |")
            continue
        lines.append(
            f"| {c['case']} | {c['batch']} × {c['seq_len']} | {c['amp']} | {c['steps_per_s']:.3g} | "
            f"{c['achieved_tflops']:.3g} | {_f(c['mfu'], '.1%')} | {_f(c['peak_mem_GiB'], '.2f')} | "
            f"{c['plan_GiB']:.2f} | {_f(c['mem_ratio'] - 1 if c['mem_ratio'] else None, '+.0%')} | "
            f"{', '.join(c['sdpa']['selected']) or 'none'} | {c['precision']['max_rel_diff']:.2g} | "
            f"{'yes' if c['pass'] else 'no'} |"
        )
    r, d = report["rollout"], report["ddp"]
    lines.append("")
    if "frames_per_s" in r:
        lines.append(
            f"KV-cached rollout, {r['variant']} ({r['params'] / 1e6:.0f}M params), K = {r['euler_steps_K']}, "
            f"batch {r['batch']}, {r['context']} → {r['generated']} frames: {r['frames_per_s']:.1f} frames/s."
        )
    else:
        lines.append(f"Rollout: {r.get('error')}")
    if d.get("ran") and "error" not in d:
        lines.append(
            f"DDP ({d['backend']}, 2 ranks): max relative difference between the DDP gradients and the mean "
            f"of the ranks' own gradients {d['max_rel_err']:.2g} (tolerance {d['tol']:g})."
        )
    else:
        lines.append(f"DDP: {d.get('error') or 'skipped: ' + d['skipped_reason']}.")
    if report["failures"]:
        lines += ["", "Failures:", *[f"- {f}" for f in report["failures"]]]
    for n in report["notes"]:
        lines.append(f"Note: {n}")
    return "\n".join(lines) + "\n"


def write_report(report: dict, out: str | os.PathLike) -> tuple[Path, Path]:
    """The JSON and its Markdown table beside it (atomic writes)."""
    out = Path(out)
    md = out.with_suffix(".md")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out, report)
    write_bytes(md, table(report).encode())
    return out, md
