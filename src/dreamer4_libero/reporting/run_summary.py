"""The demo's closing console summary (`make demo`, workflow_scripts/stage_times.py): the wall time of
every rule and stage from Snakemake's benchmark files, then where each output is with its headline
numbers (data sanity probe, training losses, tokenizer PSNR, probe R², rollout PSNR against copy-last
and the tokenizer ceiling of the encoding the run uses).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .runtime import read_benchmarks, stage_totals


def stage_time_lines(benchmarks: str | os.PathLike = "benchmarks") -> list[str]:
    """Seconds per rule/job and per stage (sums over jobs), from `benchmarks/<rule>/<job>.tsv`."""
    rows = read_benchmarks(benchmarks)
    out: list[str] = []
    out.append("time per rule (s):")
    for r in rows:
        out.append(f"  {r['rule'] + '/' + r['job']:56s} {r['s']:8.1f}")
    out.append("time per stage (s):")
    totals = stage_totals(rows)
    for stage, secs in totals:
        out.append(f"  {stage:40s} {secs:8.1f}")
    out.append(f"  {'total (sum over jobs; jobs run in parallel)':40s} {sum(s for _, s in totals):8.1f}")
    return out


def output_lines(results: str | os.PathLike = "results") -> list[str]:
    """Where every output of the study is, with the headline numbers of those that exist."""
    out: list[str] = []
    res = Path(results)
    out.append("outputs:")
    out.append(f"  shards:       {res}/preprocess/shards/<suite>/<task>/  (frames.npy, actions.npy, episodes.json)")
    out.append(f"  manifest:     {res}/preprocess/manifest.json")
    out.append(f"  splits:       {res}/preprocess/splits/{{train,val,test_ood}}.json")
    out.append(f"  probe lists:  {res}/preprocess/splits/probe/seed<s>/probe_{{train,eval_train,eval_test}}.json")
    out.append(f"  data sanity:  {res}/preprocess/sanity/  (frame_diff_probe.json/.png, sample_frames.png)")
    sanity = res / "preprocess" / "sanity" / "frame_diff_probe.json"
    if sanity.exists():
        s = json.loads(sanity.read_text())
        for mode in ("idm", "policy"):
            e = s[mode]["eval"]["probe_eval_test"]
            out.append(
                f"    frame_diff {mode:6s} R2 on held-out tasks: uniform {e['r2_uniform']:+.3f}, "
                f"dims 0-5 {e['r2_mean_dims_0_5']:+.3f}"
            )
    for run in sorted((res / "train").glob("*/checkpoint.json")):
        out.append(f"  training run: {run.parent}/  (checkpoint.json, config.json, metrics.jsonl, curve_*.png)")
        ck = json.loads(run.read_text())
        lines = (
            (run.parent / "metrics.jsonl").read_text().splitlines() if (run.parent / "metrics.jsonl").exists() else []
        )
        last = json.loads(lines[-1]) if lines else {}
        if "train/flow_mse" in last:
            aux = f", aux mse {last['train/aux_mse']:.4f}" if "train/aux_mse" in last else ""
            stand = f"  [stand-in for {ck['extra']['stand_in_for']}]" if ck.get("extra", {}).get("stand_in_for") else ""
            out.append(
                f"    step {ck['step']}: flow mse {last['train/flow_mse']:.5f}, bootstrap mse "
                f"{last['train/bootstrap_mse']:.5f}{aux}{stand}"
            )
    for nr in sorted((res / "train").glob("*/not_run.json")):
        out.append(f"  NOT RUN: {nr.parent.name}: {json.loads(nr.read_text())['reason']}")
    for ev in sorted((res / "tokenizer_eval").glob("*/psnr.json")):
        r = json.loads(ev.read_text())
        out.append(f"  tokenizer eval: {ev.parent}/  (psnr.json, reconstructions.png)")
        for name, v in r["sets"].items():
            out.append(
                f"    {name}: PSNR {v['tok_psnr_frame_mean']:.2f} dB (mean-frame baseline "
                f"{v['mean_frame_baseline_psnr_frame_mean']:.2f} dB)"
            )
    for summ in sorted((res / "probe").glob("*/summary.json")):
        s = json.loads(summ.read_text())
        out.append(f"  probe: {summ.parent}/  ({s['n_records']} records)")
        for r in s["records"]:
            if (r["H"], r["seed"], r["probe_mode"]) == (1, 0, "policy") and r["extraction"] in ("past_actions", "none"):
                rec = json.loads((summ.parent / r["path"]).read_text())
                v = rec["scorings"]["all_valid"]["probe_eval_test"]
                flags = " ".join(r["flags"])
                out.append(
                    f"    {r['feature']:15s} held-out R2 (seed 0, policy, H=1) {v['probe']['r2_uniform']:+.3f} "
                    f"[train_mean {v['train_mean']['r2_uniform']:+.3f}] {flags}"
                )
    for roll in sorted((res / "rollout").glob("*/rollout.json")):
        b = json.loads(roll.read_text())["sets"]["test_ood"]
        rows = b["rows"]
        # the ceiling of the encoding the run uses: chunks of the tokenizer's training length, or the whole window
        chunked = b.get("tokenizer_chunk") and b.get("tokenizer_chunk") == b.get("ceiling_chunk")
        ceil = (
            f"ceiling ({b['tokenizer_chunk']}-frame chunks) {rows['tokenizer_ceiling_chunked']['psnr_frame_mean']:.2f}"
            if chunked and "tokenizer_ceiling_chunked" in rows
            else f"ceiling {rows['tokenizer_ceiling']['psnr_frame_mean']:.2f}"
        )
        out.append(
            f"  rollout: {roll.parent}/  test_ood PSNR {rows['model']['psnr_frame_mean']:.2f} dB (pooled "
            f"{rows['model']['psnr_pooled']:.2f}; copy-last {rows['copy_last_context']['psnr_frame_mean']:.2f}, "
            f"{ceil}, shuffled actions "
            f"{rows['action_shuffled']['psnr_frame_mean']:.2f})"
        )
    if (res / "tables" / "tables.md").exists():
        out.append(f"  tables:       {res}/tables/  (tables.md; *.md, *.csv, *.tex; plots/)")
    if (res / "archive" / "README.md").exists():
        out.append(f"  model cards:  {res}/archive/<run>/  (README.md, weights, config.json, metrics.json)")
    return out
