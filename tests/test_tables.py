"""Tables stage (evaluation.md §4): formats, verbatim headers, aggregation, quality bars, determinism, CLI.

`write_synthetic_results` builds small records that follow docs/results_format.md exactly (probe
records with per-episode statistics, summaries, rollout and tokenizer records, training folders
with metrics.jsonl and one not_run.json); test_archive.py reuses it.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import io
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dreamer4_libero.evaluation import bootstrap
from dreamer4_libero.fileio import sha256_file, write_json
from dreamer4_libero.reporting import builders as BL
from dreamer4_libero.reporting import labels as LB
from dreamer4_libero.reporting import quality as QB
from dreamer4_libero.reporting import render as RD
from dreamer4_libero.reporting import results as RS
from dreamer4_libero.reporting import tables as T

REPO = Path(__file__).resolve().parents[1]
SEEDS = (0, 1, 2)
H_LIST = (1, 2)
B = 200
TOK_PARAMS, DYN_PARAMS = 21361488, 42642496

VARIANTS = [
    {
        "name": "dynamics_phase3",
        "label": None,
        "runnable": True,
        "not_run_reason": None,
        "stand_in_for": None,
        "aux_weight": 0.0,
        "aux_input": None,
        "space_mode": "wm_agent_isolated",
        "init_from": None,
    },
    {
        "name": "dynamics_aux_phase6",
        "label": None,
        "runnable": True,
        "not_run_reason": None,
        "stand_in_for": None,
        "aux_weight": 0.05,
        "aux_input": "leaky",
        "space_mode": "wm_agent_isolated",
        "init_from": None,
    },
    {
        "name": "dynamics_aux_dmcontrol_pretrained",
        "label": None,
        "runnable": False,
        "not_run_reason": "no DMControl checkpoint configured",
        "stand_in_for": None,
        "aux_weight": 0.05,
        "aux_input": "leaky",
        "space_mode": None,
        "init_from": "dmcontrol",
    },
    {
        "name": "dynamics_aux_param_matched_276M",
        "label": None,
        "runnable": True,
        "not_run_reason": None,
        "stand_in_for": "dynamics_aux_param_matched_276M (d_model 1024, depth 12): a tiny CPU stand-in",
        "aux_weight": 0.05,
        "aux_input": "leaky",
        "space_mode": "wm_agent_isolated",
        "init_from": None,
    },
    {
        "name": "dynamics_aux_agent_reads_leakfree",
        "label": None,
        "runnable": True,
        "not_run_reason": None,
        "stand_in_for": None,
        "aux_weight": 0.05,
        "aux_input": "action_free",
        "space_mode": "agent_reads",
        "init_from": None,
    },
]
RUN_VARIANTS = [v["name"] for v in VARIANTS if v["runnable"]]
NOT_RUN_REASON = (
    "no DMControl checkpoint configured (dmcontrol_init.dynamics is null): "
    "this DMControl-initialised variant is not run"
)
BASE_FEATS = ("lagged_actions", "time_only", "const_control")
# (probe_mode, H) combinations written: policy at every H, idm at H = 1
MODES = [("policy", 1), ("policy", 2), ("idm", 1)]
# feature quality q: prediction = q * y + (1 - q) * train-mean + noise
QUALITY = {"wm_agent": 0.0, "wm_spatial": 0.35, "lagged_actions": 0.5, "time_only": 0.05, "const_control": 0.0}


def _rng(*key) -> np.random.Generator:
    d = hashlib.sha256("|".join(map(str, key)).encode()).digest()
    return np.random.default_rng(int.from_bytes(d[:8], "little"))


def _episodes(seed: int, set_name: str):
    n_tasks, per = (3, 2) if set_name == RS.TEST else (4, 2)
    tag = "ood" if set_name == RS.TEST else "seen"
    tasks = [f"suite/{tag}_task{t}" for t in range(n_tasks) for _ in range(per)]
    eps = [f"{t}/demo_{(i % per) + 3 * seed}" for i, t in enumerate(tasks)]
    return eps, tasks


def _targets(seed, set_name, scoring, mode, H):
    """Per-episode targets (list of (n_e, 7) arrays), shared by every record with this key."""
    eps, tasks = _episodes(seed, set_name)
    rng_n = _rng("n", seed, set_name, scoring, H if scoring == "all_valid" else "Hmax")
    rng = _rng("y", seed, set_name, scoring, mode, H)
    ys = []
    for e, t in zip(eps, tasks):
        n = int(rng_n.integers(6, 11))
        task_mean = _rng("task", t).normal(0, 0.4, 7)
        ys.append(task_mean + rng.normal(0, 1, (n, 7)))
    return eps, tasks, ys


def _block(seed, set_name, scoring, mode, H, feature, variant):
    eps, tasks, ys = _targets(seed, set_name, scoring, mode, H)
    rng = _rng("pred", variant, feature, seed, set_name, scoring, mode, H)
    q = QUALITY.get(feature, 0.2) + (0.1 if mode == "idm" else 0.0) - 0.05 * (H - 1)
    preds = {
        "probe": [q * y + rng.normal(0, 0.3, y.shape) for y in ys],
        "train_mean": [np.zeros_like(y) for y in ys],
        "label_shuffle": [rng.normal(0, 0.1, y.shape) for y in ys],
        "copy_prev": [0.7 * y + rng.normal(0, 0.5, y.shape) for y in ys],
    }
    stats = {
        "episodes": eps,
        "tasks": tasks,
        "n": [len(y) for y in ys],
        "sum_y": [y.sum(0).tolist() for y in ys],
        "sum_y2": [(y**2).sum(0).tolist() for y in ys],
        "sse": {k: [((y - p) ** 2).sum(0).tolist() for y, p in zip(ys, v)] for k, v in preds.items()},
    }
    ones = np.ones((1, len(eps)))
    blk = {"n_episodes": len(eps), "n_frames": int(sum(stats["n"])), "n_tasks": len(set(tasks)), "stats": stats}
    for k in preds:
        per_dim = bootstrap.r2_from_stats(ones, stats["n"], stats["sum_y"], stats["sum_y2"], stats["sse"][k])[0]
        r2u = float(
            bootstrap.r2_uniform_from_stats(ones, stats["n"], stats["sum_y"], stats["sum_y2"], stats["sse"][k])[0]
        )
        blk[k] = {
            "r2_uniform": r2u,
            "r2_varweighted": r2u - 0.01,
            "r2_per_dim": per_dim.tolist(),
            "gripper_sign_acc": 0.5,
            "nan_dims": [],
            "ci": [r2u - 0.1, r2u + 0.1],
            "ci_task": [r2u - 0.2, r2u + 0.2],
        }
    return blk


def probe_record(variant, feature, extraction, mode, H, seed, *, seeds_vary=True, flags=None):
    base = variant == RS.BASELINES
    rec = {
        "protocol": RS.PROTOCOL,
        "variant": variant,
        "checkpoint_sha256": None if base else "c" * 64,
        "tokenizer_sha256": "t" * 64,
        "space_mode": None if base else "wm_agent_isolated",
        "n_params": {"tokenizer": TOK_PARAMS, "dynamics": None if base else DYN_PARAMS},
        "feature": feature,
        "extraction": extraction,
        "probe_mode": mode,
        "H": H,
        "seed": seed,
        "H_list": list(H_LIST),
        "H_max": max(H_LIST),
        "frame_stride": 1,
        "stride_offset_rule": "seeded",
        "seeds_vary_episodes": seeds_vary,
        "null_action": "zero action, zero mask",
        "split_hashes": {"probe_train": "a" * 64, "probe_eval_train": "b" * 64, "probe_eval_test": "d" * 64},
        "n": {
            "probe_train": {"episodes": 12, "frames": 96, "tasks": 4},
            "probe_eval_train": {"episodes": 8, "frames": 64, "tasks": 4},
            "probe_eval_test": {"episodes": 6, "frames": 48, "tasks": 3},
        },
        "features": {"n_raw": 64, "pca": None, "n_dropped": 0, "n_used": 64},
        "alpha": {"task": 10.0, "episode": 3.16},
        "alpha_on_grid_edge": {"task": False, "episode": False},
        "cv_curve": {
            "task": {"alphas": [1.0, 10.0], "mean_r2": [-0.1, 0.0]},
            "episode": {"alphas": [1.0, 10.0], "mean_r2": [-0.1, 0.0]},
        },
        "scorings": {
            sc: {s: _block(seed, s, sc, mode, H, feature, variant) for s in (RS.TEST, RS.TRAIN)}
            for sc in ("all_valid", "common_Hmax")
        },
        "degeneracy": {
            "total_variance": 64.0 * (1 + seed),
            "relative_variation": 0.8,
            "n_columns_raw": 64,
            "n_nonconstant": 64 - seed,
            "effective_rank": 10.0 + seed,
            "time_explained": 0.1,
            "episode_specificity": 0.5,
            "in_sample_r2": 0.3,
            "cv_r2": 0.05,
            "reasons": [],
        },
        "leak_tests": {
            "future_actions": {"max_abs_delta": 0.0, "pass": True, "n_targets": 6},
            "non_vacuity": {"max_abs_delta": 0.3, "pass": True, "expect": "change", "feature": "wm_spatial"},
            "future_frames": {"max_abs_delta": 0.0, "pass": True},
        },
        "flags": {"DEGENERATE": False, "NO-SIGNAL": False, "LEAK?": False},
        "flag_reasons": {},
        "versions": {"python": "3.11", "torch": "x", "numpy": "x", "sklearn": "x", "code": "unknown"},
    }
    if feature in ("wm_agent", "const_control"):
        rec["flags"].update({"DEGENERATE": True, "NO-SIGNAL": True})
        rec["degeneracy"]["reasons"] = ["episode specificity < 1e-3"]
        rec["degeneracy"]["episode_specificity"] = 0.0
    if flags:
        rec["flags"].update(flags)
    return rec


def rollout_record(variant, pooled=13.0, frame_mean=14.0, copy_last=12.0):
    def row(fm, pooled_):
        steps = [fm + 2.0 - 0.15 * k for k in range(24)]
        return {
            "psnr_frame_mean": fm,
            "psnr_pooled": pooled_,
            "psnr_pooled_h16": pooled_ + 0.3,
            "per_step_psnr": steps,
            "per_task": {"suite/ood_task0": fm},
            "ci": [fm - 0.5, fm + 0.5],
            "n_capped_frames": 0,
            "per_window_mse": [[0.01] * 24, [0.02] * 24],
        }

    rows = {
        "model": row(frame_mean, pooled),
        "action_shuffled": row(frame_mean - 0.7, pooled - 0.7),
        "null_actions": row(frame_mean - 1.0, pooled - 1.0),
        "copy_last_context": row(copy_last, copy_last - 0.5),
        "tokenizer_ceiling": row(22.0, 21.5),
        "tokenizer_ceiling_chunked": row(23.25, 22.75),
    }
    test = {
        "windows_file": "results/rollout/windows.json",
        "windows_sha256": "w" * 64,
        "n_windows": 2,
        "tokenizer_chunk": None,
        "ceiling_chunk": 2,
        "n_episodes": 2,
        "rows": rows,
        "delta_action": {"mean": 0.7, "ci": [0.2, 1.2]},
        "delta_copy_last": {
            "mean": frame_mean - copy_last,
            "ci": [frame_mean - copy_last - 0.4, frame_mean - copy_last + 0.4],
        },
        # issue 27: per third of the horizon (copy-last wins early, the model late)
        "delta_copy_last_bins": [
            {
                "frames": [1 + 8 * k, 8 + 8 * k],
                "mean": frame_mean - copy_last - 1.5 + 1.5 * k,
                "ci": [frame_mean - copy_last - 1.9 + 1.5 * k, frame_mean - copy_last - 1.1 + 1.5 * k],
            }
            for k in range(3)
        ],
        "delta_action_bins": [
            {"frames": [1 + 8 * k, 8 + 8 * k], "mean": 0.3 + 0.4 * k, "ci": [-0.1 + 0.4 * k, 0.7 + 0.4 * k]}
            for k in range(3)
        ],
        "shuffle_pairs": [[0, 1], [1, 0]],
    }
    return {
        "protocol": RS.PROTOCOL,
        "variant": variant,
        "checkpoint_sha256": "c" * 64,
        "tokenizer_sha256": "t" * 64,
        "n_params": {"tokenizer": TOK_PARAMS, "dynamics": DYN_PARAMS},
        "context": 8,
        "horizon": 24,
        "euler_steps": 4,
        "k_max": 8,
        "decode_window": 32,
        "rollout_seeds": [0],
        "bootstrap_B": 1000,
        "sets": {"test_ood": test, "val": copy.deepcopy(test)},
        "tokenizer_eval": None,
    }


def tokenizer_record(run="tokenizer_demo", psnr=26.1):
    s = {
        "tok_psnr_frame_mean": psnr,
        "tok_psnr_pooled": psnr - 0.3,
        "tok_psnr_per_suite": {"suite": psnr},
        "tok_psnr_masked_train_style": psnr - 1.0,
        "n_frames": 100,
        "n_episodes": 4,
    }
    return {
        "run": run,
        "checkpoint_sha256": "t" * 64,
        "step": 600,
        "chunk": 8,
        "sets": {"test_ood_rollout_list": s, "val": dict(s)},
    }


def metrics_lines(n=40, aux=True, nan_at=None, aux_flat=False):
    out = []
    for i in range(n):
        rec = {
            "step": 10 * (i + 1),
            "loss": 1.0 / (1 + 0.2 * i),
            "lr": 0.001,
            "time": 1.0e9 + i,
            "train/flow_mse": 0.5 / (1 + i),
        }
        if aux:
            rec["train/aux_mse"] = 0.4 if aux_flat else 0.4 / (1 + 0.3 * i)
        if nan_at is not None and i == nan_at:
            rec["loss"] = float("nan")
        out.append(json.dumps(rec))
    return "\n".join(out) + "\n"


def write_train_dir(root: Path, name: str, aux: bool, **kw) -> Path:
    d = root / "train" / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "metrics.jsonl").write_text(metrics_lines(aux=aux, **kw))
    write_json(
        d / "checkpoint.json",
        {
            "run_name": name,
            "path": str(d / "ckpt.pt"),
            "sha256": "c" * 64,
            "step": 400,
            "model_key": "dynamics",
            "extra": {},
        },
    )
    write_json(d / "config.json", {"engine": {}, "task": {}})
    return d


def write_synthetic_results(root: Path, variants=None) -> dict:
    """Schema-true records for VARIANTS + baselines under root/; returns the CLI inputs."""
    root = Path(root)
    variants = copy.deepcopy(variants or VARIANTS)
    summaries = []

    def write_variant(variant, feats, extractions, flags_for=None):
        folder = root / "probe" / variant
        entries = []
        for f in feats:
            for e in extractions:
                for mode, H in MODES:
                    for s in SEEDS:
                        fl = (flags_for or {}).get((f, s))
                        rec = probe_record(variant, f, e, mode, H, s, flags=fl)
                        name = f"{f}__{e}__{mode}__H{H}__seed{s}.json"
                        write_json(folder / name, rec)
                        entries.append(
                            {
                                "path": name,
                                "sha256": sha256_file(folder / name),
                                "feature": f,
                                "extraction": e,
                                "probe_mode": mode,
                                "H": H,
                                "seed": s,
                            }
                        )
        write_json(folder / "summary.json", {"variant": variant, "records": entries})
        summaries.append(folder / "summary.json")

    rollouts, train_dirs = [], []
    for v in variants:
        if not v["runnable"]:
            d = root / "train" / v["name"]
            write_json(d / "not_run.json", {"variant": v["name"], "status": "not_run", "reason": NOT_RUN_REASON})
            train_dirs.append(d)
            continue
        flags_for = {("wm_spatial", 1): {"LEAK?": True}} if v["name"] == "dynamics_aux_phase6" else None
        write_variant(v["name"], RS.WM_FEATURES, RS.EXTRACTIONS, flags_for)
        p = root / "rollout" / v["name"] / "rollout.json"
        write_json(p, rollout_record(v["name"], pooled=18.5 if v["name"] == "dynamics_phase3" else 13.0))
        rollouts.append(p)
        train_dirs.append(write_train_dir(root, v["name"], aux=v["aux_weight"] > 0))
    write_variant(RS.BASELINES, BASE_FEATS, ("none",))
    tok = root / "tokenizer_eval" / "tokenizer_demo" / "psnr.json"
    write_json(tok, tokenizer_record())
    train_dirs.insert(0, write_train_dir(root, "tokenizer_demo", aux=False))
    cfg = {
        "variants": variants,
        "H_list": list(H_LIST),
        "seeds": list(SEEDS),
        "bootstrap_B": B,
        "tokenizer_run": "tokenizer_demo",
    }
    return {
        "config": cfg,
        "probe_summaries": summaries,
        "rollout": rollouts,
        "tokenizer_eval": [tok],
        "train_dirs": train_dirs,
        "root": root,
    }


def load(res: dict) -> RS.Inputs:
    return RS.load_inputs(
        res["config"],
        res["probe_summaries"],
        res["rollout"],
        res["tokenizer_eval"],
        res["train_dirs"],
        root=res["root"],
    )


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    return write_synthetic_results(tmp_path_factory.mktemp("results"))


@pytest.fixture(scope="module")
def built(results, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tables") / "tables"
    T.write_tables(load(results), out)
    return out


def _md_rows(text: str) -> list[list[str]]:
    rows = []
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith("|---"):
            rows.append([c.strip() for c in line.strip()[2:-2].split(" | ")])
    return rows


def _row(rows, first, second=None):
    hits = [r for r in rows if r[0] == first and (second is None or r[1] == second)]
    assert len(hits) == 1, (first, second, hits)
    return hits[0]


# ---------------------------------------------------------------------------- files and headers


def test_all_outputs_written(built):
    for key in T.TABLE_KEYS:
        for ext in ("md", "csv", "tex"):
            assert (built / f"{key}.{ext}").stat().st_size > 0
    assert (built / "tables.md").exists()
    for n in T.PLOT_NAMES:
        assert (built / "plots" / f"{n}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_verbatim_headers(built):
    md = {k: (built / f"{k}.md").read_text() for k in T.TABLE_KEYS}
    assert (
        "| Model | Features | Held-out-task R² (H=1) | ± std (3 seeds) | 95% CI | Seen-task R² | Params | "
        "Archived | Flag |"
    ) in md["table1_probe"]
    assert (
        "| Model | Tokenizer PSNR (dB) | Rollout PSNR (dB, 8→24) | Pooled PSNR (dB) | Δ vs copy-last (dB) | "
        "Δ vs copy-last, frames 17–24 (dB) | Δ true − shuffled actions (dB) | Params | Archived rollout |"
    ) in md["table2_quality"]
    assert "| Variant | params | test R² (action probe, H=1, mean of 3 seeds) |" in md["paper_table_probe"]
    assert "| Variant | rollout PSNR (LIBERO test_ood) |" in md["paper_table_rollout"]
    rows = _md_rows(md["paper_table_probe"])[1:]
    assert [r[0] for r in rows[:4]] == [
        "D4 dynamics (scratch, agent token)",
        "D4 dynamics + aux λ=0.05 (agent)",
        "D4 + DMControl pretrain + aux (agent)",
        "D4 param-matched 276M + aux (agent)",
    ]
    assert rows[4][0] == "D4 dynamics + aux λ=0.05 (leak-free aux) (agent reads frame) (agent)"
    assert [r[0] for r in rows[5:]] == [
        "V-JEPA 2 ViT-L + aux (paper main) †",
        "LAPA + aux (paper main) †",
        "LAPA frozen †",
    ]
    assert [r[1:] for r in rows[5:]] == [["304M", "+0.845"], ["344M", "+0.510"], ["344M", "+0.410"]]
    rrows = _md_rows(md["paper_table_rollout"])[1:]
    assert [r[0] for r in rrows] == [
        "D4 dynamics (scratch)",
        "D4 + aux",
        "D4 + DMControl pretrain + aux",
        "D4 param-matched 276M + aux",
        "D4 + aux (leak-free aux) (agent reads frame)",
    ]
    # CSV keeps the verbatim header first
    head = next(csv.reader(io.StringIO((built / "table1_probe.csv").read_text())))
    assert head[:9] == BL.HEADER_TABLE1
    head2 = next(csv.reader(io.StringIO((built / "table2_quality.csv").read_text())))
    assert head2[:9] == BL.HEADER_TABLE2


def test_stand_in_is_said(built):
    for key in ("paper_table_probe", "paper_table_rollout"):
        md = (built / f"{key}.md").read_text()
        assert "stand-in" in md and "d_model 1024, depth 12" in md
    t1 = (built / "table1_probe.md").read_text()
    assert "dynamics_aux_param_matched_276M ‡" in t1 and "‡ dynamics_aux_param_matched_276M is a stand-in" in t1


def test_derived_labels():
    v = {"name": "dynamics_dmcontrol_pretrained", "aux_weight": 0.0, "init_from": "dmcontrol"}
    assert LB.variant_label(v, "rollout") == "D4 + DMControl pretrain (no aux)"
    assert LB.variant_label(v, "probe") == "D4 + DMControl pretrain (no aux) (agent)"
    v = {"name": "dynamics_aux_phase6_leakfree", "aux_weight": 0.05, "aux_input": "action_free"}
    assert LB.variant_label(v, "probe") == "D4 dynamics + aux λ=0.05 (leak-free aux) (agent)"
    assert LB.variant_label(v, "rollout") == "D4 + aux (leak-free aux)"
    assert LB.variant_label({**v, "label": "my label"}, "rollout") == "my label"
    # archive rows keep the archive's label whatever the config says
    assert LB.variant_label({"name": "dynamics_phase3", "label": "x"}, "probe") == "D4 dynamics (scratch, agent token)"
    # a per-table label from the config; the run name is never parsed (issue 30)
    lab = {"probe": "P276 (agent)", "rollout": "P276"}
    v = {"name": "dynamics_aux_param_matched_276M_leakfree", "aux_weight": 0.05, "aux_input": "action_free"}
    assert LB.variant_label({**v, "label": lab}, "probe") == "P276 (agent)"
    assert LB.variant_label({**v, "label": lab}, "rollout") == "P276"
    assert LB.variant_label(v, "rollout") == "D4 + aux (leak-free aux)"
    with pytest.raises(ValueError, match="table must be one of"):
        LB.variant_label(v, "table1")


def test_config_labels_the_276m_leakfree_variant_as_the_archive_style():
    """config.yaml gives the disabled 276M leak-free variant its labels (they used to come from its name)."""
    from dreamer4_libero.config import load_config

    v = load_config()["dynamics"]["variants"]["dynamics_aux_param_matched_276M_leakfree"]
    assert v["label"] == {
        "probe": "D4 param-matched 276M + aux (leak-free aux) (agent)",
        "rollout": "D4 param-matched 276M + aux (leak-free aux)",
    }


# ---------------------------------------------------------------------------- signs and formats


def test_sign_formats(built):
    md = (built / "table1_probe.md").read_text()
    csv_t = (built / "table1_probe.csv").read_text()
    tex = (built / "table1_probe.tex").read_text()
    assert "−0.039" in md and "-0.039" not in md.split("Inputs (sha256)")[0].replace("sha256", "")
    assert "+0.845" in md
    assert "$-$0.039" in tex and "+0.845" in tex
    rows = list(csv.reader(io.StringIO(csv_t.split("\n\n")[0])))
    arch = [r for r in rows[1:] if r[0] == "dynamics_phase3" and r[1] == "wm_agent"][0]
    assert arch[7] == "-0.039000"
    assert [r for r in rows[1:] if r[0].startswith("V-JEPA")][0][2] == "0.845000"
    assert "\u2212" not in csv_t
    assert RD.render_cell(("r2", -0.0391), "md") == "\u22120.039"
    assert RD.render_cell(("r2", -0.0391), "tex") == "$-$0.039"
    assert RD.render_cell(("r2", -0.039), "csv") == "-0.039000"
    assert RD.render_cell(("r2", 0.8451), "md") == "+0.845"
    assert RD.render_cell(("r2", -0.0001), "md") == "+0.000"  # no negative zero
    assert RD.render_cell(("psnr", 13.4149), "md") == "13.41"
    assert RD.render_cell(("dpsnr", -0.5), "md") == "\u22120.50"
    assert RD.render_cell(("ci_r2", (-0.1, 0.02)), "md") == "[\u22120.100, +0.020]"
    assert RD.render_cell(("ci_r2", (-0.1, 0.02)), "tex") == "[$-$0.100, +0.020]"
    assert RD.render_cell(("r2", None), "md") == "—" and RD.render_cell(("r2", float("nan")), "csv") == ""


def test_tex_is_ascii_booktabs_and_escaped(built):
    for key in T.TABLE_KEYS:
        tex = (built / f"{key}.tex").read_text()
        assert all(ord(c) < 128 for c in tex), key
        assert r"\begin{tabular}" in tex and r"\toprule" in tex and r"\bottomrule" in tex
        assert "\\usepackage" not in tex
    t2 = (built / "table2_quality.tex").read_text()
    assert r"$\Delta$ vs copy-last (dB)" in t2 and r"8$\to$24" in t2 and r"$\Delta$ true $-$ shuffled" in t2
    t1 = (built / "table1_probe.tex").read_text()
    assert r"R$^2$" in t1 and r"$\pm$ std" in t1 and r"$^\dagger$" in t1 and r"dynamics\_phase3" in t1
    assert r"$\lambda$=0.05" in (built / "paper_table_probe.tex").read_text()


def test_quoted_rows_dagger(built):
    rows = _md_rows((built / "table1_probe.md").read_text())
    for name, val, params in (
        ("V-JEPA 2 ViT-L + aux †", "+0.845", "304M"),
        ("LAPA + aux †", "+0.510", "344M"),
        ("LAPA frozen †", "+0.410", "344M"),
    ):
        r = _row(rows, name)
        assert r[2] == val and r[6] == params and r[7] == "—"
    assert "quoted from the paper, not recomputed" in (built / "table1_probe.md").read_text()
    assert "quoted from the paper, not recomputed" in (built / "paper_table_probe.md").read_text()
    # references come after every variant row
    names = [r[0] for r in rows[1:]]
    assert names.index("V-JEPA 2 ViT-L + aux †") > max(i for i, n in enumerate(names) if n.startswith("dynamics_"))


def test_archived_only_on_archive_wm_agent_rows(built):
    rows = _md_rows((built / "table1_probe.md").read_text())[1:]
    got = {(r[0], r[1]): r[7] for r in rows if r[0].startswith("dynamics_") and len(r) > 7 and r[1] != "—"}
    assert got[("dynamics_phase3", "wm_agent")] == "−0.039"
    assert got[("dynamics_aux_phase6", "wm_agent")] == "−0.039"
    assert got[("dynamics_aux_param_matched_276M ‡", "wm_agent")] == "−0.036"
    for k, v in got.items():
        if k[1] != "wm_agent" or k[0].startswith("dynamics_aux_agent_reads"):
            assert v == "—", k
    # the not-run archive variant shows no archived number
    nr = _row(rows, "dynamics_aux_dmcontrol_pretrained")
    assert "−0.040" not in " ".join(nr)
    t2 = _md_rows((built / "table2_quality.md").read_text())[1:]
    assert _row(t2, "dynamics_phase3")[8] == "13.41" and _row(t2, "dynamics_aux_param_matched_276M ‡")[8] == "13.05"
    assert _row(t2, "dynamics_aux_agent_reads_leakfree")[8] == "—"
    assert _row(t2, "copy-last-context frame")[8] == "—"


def test_not_run_rows_everywhere(built):
    for key in T.TABLE_KEYS:
        md = (built / f"{key}.md").read_text()
        assert f"not run: {NOT_RUN_REASON}" in md, key
        csv_t = (built / f"{key}.csv").read_text()
        assert f"not run: {NOT_RUN_REASON}" in csv_t, key
        for line in md.splitlines():
            if "not run:" in line:
                cells = line.split(" | ")
                after = " ".join(cells[cells.index(next(c for c in cells if "not run:" in c)) + 1 :])
                assert not any(ch.isdigit() for ch in after.replace("|", "")), line
    tex = (built / "table1_probe.tex").read_text()
    assert r"\multicolumn{7}{l}{not run: no DMControl" in tex


def test_missing_record_gives_dash(results, tmp_path):
    # drop the rollout record of one variant and every wm_spatial record of another: "—", no crash
    res = dict(results)
    res["rollout"] = [p for p in results["rollout"] if "dynamics_aux_phase6" not in str(p)]
    summ = results["probe_summaries"][0]
    data = json.loads(summ.read_text())
    new = tmp_path / "probe" / data["variant"]
    new.mkdir(parents=True)
    kept = []
    for e in data["records"]:
        if e["feature"] == "wm_spatial":
            continue
        shutil.copy(summ.parent / e["path"], new / e["path"])
        kept.append(e)
    write_json(new / "summary.json", {"variant": data["variant"], "records": kept})
    res["probe_summaries"] = [new / "summary.json"] + list(results["probe_summaries"][1:])
    out = tmp_path / "out"
    T.write_tables(load(res), out, plots=False)
    t1 = _md_rows((out / "table1_probe.md").read_text())
    r = _row(t1, data["variant"], "wm_spatial")
    assert r[2:6] == ["—", "—", "—", "—"]
    t2 = _md_rows((out / "table2_quality.md").read_text())
    assert _row(t2, "dynamics_aux_phase6")[2:6] == ["—", "—", "—", "—"]


def test_table2_reports_the_tokenizer_ceiling_both_ways(results, built, tmp_path):
    """issue 27: whole-window ceiling and the ceiling in chunks of the tokenizer's training length."""
    t2 = _md_rows((built / "table2_quality.md").read_text())
    whole = _row(t2, "tokenizer reconstruction ceiling")
    chunked = _row(t2, "tokenizer reconstruction ceiling, chunks of 2 frames (its training length)")
    assert whole[2:4] == ["22.00", "21.50"] and chunked[2:4] == ["23.25", "22.75"]
    rows = list(csv.reader(io.StringIO((built / "table2_quality.csv").read_text())))
    head = rows[0]
    r = next(x for x in rows if "tokenizer_ceiling_chunked" in x)
    assert float(r[head.index("psnr_frame_mean_ci_lo")]) == 22.75
    # an older rollout record without the row: the row stays, with dashes
    res = dict(results)
    old = tmp_path / "rollout"
    res["rollout"] = []
    for p in results["rollout"]:
        rec = json.loads(Path(p).read_text())
        for s in rec["sets"].values():
            s["rows"].pop("tokenizer_ceiling_chunked")
            s.pop("ceiling_chunk")
        q = old / Path(p).relative_to(Path(p).parents[1])
        q.parent.mkdir(parents=True, exist_ok=True)
        q.write_text(json.dumps(rec))
        res["rollout"].append(q)
    out = tmp_path / "out"
    T.write_tables(load(res), out, plots=False)
    r = _row(
        _md_rows((out / "table2_quality.md").read_text()),
        "tokenizer reconstruction ceiling, chunks of its training length",
    )
    assert r[1:] == ["—"] * 8


# ---------------------------------------------------------------------------- numbers


def test_mean_std_and_pooled_ci(results, built):
    inp = load(results)
    vals, reps = [], []
    for s in SEEDS:
        rec = inp.probe[("dynamics_aux_phase6", "wm_spatial", "past_actions", "policy", 1, s)]
        blk = rec["scorings"]["all_valid"][RS.TEST]
        vals.append(blk["probe"]["r2_uniform"])
        reps.append(bootstrap.r2_replicates(blk["stats"], "probe", "task", s, RS.TEST, B))
    mean = sum(vals) / 3
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / 2)
    lo, hi = bootstrap.percentile_ci(np.concatenate(reps))
    row = _row(_md_rows((built / "table1_probe.md").read_text()), "dynamics_aux_phase6", "wm_spatial")
    fmt = lambda x: f"{x:+.3f}".replace("-", "\u2212")  # noqa: E731
    assert row[2] == fmt(mean)
    assert row[3] == "±" + f"{std:.3f}"
    assert row[4] == f"[{fmt(lo)}, {fmt(hi)}]"
    # the CSV carries each seed and the exact CI
    rows = list(csv.DictReader(io.StringIO((built / "table1_probe.csv").read_text().split("\n\n")[0])))
    r = [x for x in rows if x["variant"] == "dynamics_aux_phase6" and x["feature"] == "wm_spatial"][0]
    assert [float(r[f"heldout_r2_seed{s}"]) for s in SEEDS] == pytest.approx(vals, abs=1e-6)
    assert float(r["ci_task_lo"]) == pytest.approx(lo, abs=1e-6)
    assert float(r["ci_task_hi"]) == pytest.approx(hi, abs=1e-6)
    # seen-task column = mean of probe_eval_train values
    seen = [
        inp.probe[("dynamics_aux_phase6", "wm_spatial", "past_actions", "policy", 1, s)]["scorings"]["all_valid"][
            RS.TRAIN
        ]["probe"]["r2_uniform"]
        for s in SEEDS
    ]
    assert row[5] == fmt(sum(seen) / 3)
    assert row[6] == "64.0M"


def test_cached_bootstrap_equals_library(results):
    inp = load(results)
    cache = RS.BootstrapCache(B)
    a = inp.probe[("dynamics_phase3", "wm_spatial", "past_actions", "policy", 2, 1)]["scorings"]["common_Hmax"][RS.TEST]
    b = inp.probe[(RS.BASELINES, "lagged_actions", "none", "policy", 2, 1)]["scorings"]["common_Hmax"][RS.TEST]
    for level in ("task", "episode"):
        np.testing.assert_array_equal(
            cache.replicates(a["stats"], "probe", level, 1, RS.TEST),
            bootstrap.r2_replicates(a["stats"], "probe", level, 1, RS.TEST, B),
        )
        np.testing.assert_array_equal(
            cache.paired(a["stats"], "probe", b["stats"], "probe", level, 1, RS.TEST),
            bootstrap.paired_r2_diff(a["stats"], "probe", b["stats"], "probe", level, 1, RS.TEST, B),
        )


def test_fixed_lists_std(results, tmp_path):
    root = tmp_path / "r"
    res = write_synthetic_results(root, variants=[VARIANTS[0]])
    for summ in res["probe_summaries"]:
        data = json.loads(summ.read_text())
        for e in data["records"]:
            p = summ.parent / e["path"]
            rec = json.loads(p.read_text())
            rec["seeds_vary_episodes"] = False
            write_json(p, rec)
            e["sha256"] = sha256_file(p)
        write_json(summ, data)
    T.write_tables(load(res), tmp_path / "out", plots=False)
    r = _row(_md_rows((tmp_path / "out" / "table1_probe.md").read_text()), "dynamics_phase3", "wm_agent")
    assert r[3] == "n/a (fixed lists)"


def test_flags_column(built):
    rows = _md_rows((built / "table1_probe.md").read_text())
    assert _row(rows, "dynamics_phase3", "wm_agent")[8] == "DEGENERATE, NO-SIGNAL"
    assert _row(rows, "dynamics_aux_phase6", "wm_spatial")[8] == "LEAK? (1/3 seeds)"
    assert _row(rows, "dynamics_phase3", "wm_spatial")[8] == ""
    deg = _md_rows((built / "degeneracy.md").read_text())
    r = _row(deg, "baseline", "const_control")
    assert r[-2] == "DEGENERATE, NO-SIGNAL" and "episode specificity" in r[-1]
    # seed-mean of the degeneracy numbers: total variance 64·(1+s) -> 128
    r = [x for x in deg if x[:3] == ["dynamics_phase3", "wm_spatial", "past_actions"]][0]
    assert r[3] == "128" and r[5] == "63"


def test_controls_table(results, built):
    md = (built / "controls.md").read_text()
    rows = _md_rows(md)
    assert rows[0][:5] == ["Model", "Features", "Extraction", "Mode", "H"]
    kinds = {(r[0], r[3], r[4]) for r in rows[1:]}
    for ctl in ("train_mean", "copy_prev"):
        for mode, H in MODES:
            assert (ctl, mode, str(H)) in kinds
    assert any(r[0].startswith("label_shuffle (on lagged_actions") for r in rows)
    for f in BASE_FEATS:
        assert any(r[0] == "baseline" and r[1] == f for r in rows)
    wm = [r for r in rows if r[0] == "dynamics_phase3"]
    assert {(r[1], r[2], r[3], r[4]) for r in wm} == {
        (f, e, m, str(h)) for f in RS.WM_FEATURES for e in RS.EXTRACTIONS for m, h in MODES
    }
    # paired Δ vs lagged_actions on common_Hmax, by hand for one row
    inp = load(results)
    diffs, reps = [], []
    for s in SEEDS:
        a = inp.probe[("dynamics_phase3", "wm_spatial", "video_only", "policy", 2, s)]["scorings"]["common_Hmax"]
        a = a[RS.TEST]
        b = inp.probe[(RS.BASELINES, "lagged_actions", "none", "policy", 2, s)]["scorings"]["common_Hmax"][RS.TEST]
        diffs.append(a["probe"]["r2_uniform"] - b["probe"]["r2_uniform"])
        reps.append(bootstrap.paired_r2_diff(a["stats"], "probe", b["stats"], "probe", "task", s, RS.TEST, B))
    lo, hi = bootstrap.percentile_ci(np.concatenate(reps))
    fmt = lambda x: f"{x:+.3f}".replace("-", "\u2212")  # noqa: E731
    r = [x for x in wm if x[1:5] == ["wm_spatial", "video_only", "policy", "2"]][0]
    assert r[9] == f"{fmt(np.mean(diffs))} [{fmt(lo)}, {fmt(hi)}]"
    # controls use common_Hmax, not all_valid
    tm = [x for x in rows if x[0] == "train_mean" and x[3] == "policy" and x[4] == "1"][0]
    v = np.mean(
        [
            inp.probe[(RS.BASELINES, "lagged_actions", "none", "policy", 1, s)]["scorings"]["common_Hmax"][RS.TEST][
                "train_mean"
            ]["r2_uniform"]
            for s in SEEDS
        ]
    )
    assert tm[5] == fmt(v)
    assert "off-distribution" in md and "not training variance" in md


# ---------------------------------------------------------------------------- quality bars


def test_quality_bar_functions():
    recs = [json.loads(x) for x in metrics_lines(aux=True).splitlines()]
    assert QB.loss_smoothness(recs)["result"] is True
    assert QB.aux_mse_drop(recs)["result"] is True
    nan = [json.loads(x) for x in metrics_lines(nan_at=20).splitlines()]
    assert QB.loss_smoothness(nan)["result"] is False
    nulled = [dict(r) for r in recs]
    nulled[5]["loss"] = None  # metrics.jsonl stores NaN/Inf as null
    assert QB.loss_smoothness(nulled)["result"] is False
    assert QB.aux_mse_drop([json.loads(x) for x in metrics_lines(aux_flat=True).splitlines()])["result"] is False
    assert QB.aux_mse_drop(recs[:9])["result"] is None  # fewer than 10 points: n/a
    spike = [dict(r) for r in recs] + [{"step": 1000 + i, "loss": 1e6} for i in range(20)]
    assert QB.loss_smoothness(spike)["result"] is False
    rising = [{"step": i, "loss": 1.0 + 0.1 * i} for i in range(40)]
    assert QB.loss_smoothness(rising)["result"] is False


def test_quality_bars_table_flips(results, built, tmp_path):
    rows = _md_rows((built / "quality_bars.md").read_text())
    bars = {(r[0], r[1]): r[4] for r in rows[1:] if len(r) == 5}
    assert bars[("tokenizer_demo", "tokenizer PSNR (tok_psnr_frame_mean, test_ood rollout list)")] == "✓"
    assert bars[("dynamics_phase3", "rollout psnr_pooled")] == "✓"  # 18.5 ≥ 18
    assert bars[("dynamics_aux_phase6", "rollout psnr_pooled")] == "✗"  # 13.0
    assert bars[("dynamics_phase3", "rollout psnr_frame_mean > copy-last-context")] == "✓"
    assert bars[("dynamics_aux_phase6", "smooth loss curve (heuristic)")] == "✓"
    assert bars[("dynamics_aux_phase6", "aux head MSE drops")] == "✓"
    assert bars[("dynamics_phase3", "aux head MSE drops")] == "n/a"
    # break the loss of one run and the aux MSE of another; drop the tokenizer PSNR below 25 dB
    res = dict(results)
    new_dirs = []
    for d in results["train_dirs"]:
        nd = tmp_path / "train" / d.name
        shutil.copytree(d, nd)
        if d.name == "dynamics_aux_phase6":
            (nd / "metrics.jsonl").write_text(metrics_lines(aux=True, nan_at=12))
        if d.name == "dynamics_aux_agent_reads_leakfree":
            (nd / "metrics.jsonl").write_text(metrics_lines(aux=True, aux_flat=True))
        new_dirs.append(nd)
    res["train_dirs"] = new_dirs
    tok = tmp_path / "psnr.json"
    write_json(tok, tokenizer_record(psnr=24.9))
    res["tokenizer_eval"] = [tok]
    out = tmp_path / "out"
    T.write_tables(load(res), out, plots=False)
    rows = _md_rows((out / "quality_bars.md").read_text())
    bars = {(r[0], r[1]): r[4] for r in rows[1:] if len(r) == 5}
    assert bars[("tokenizer_demo", "tokenizer PSNR (tok_psnr_frame_mean, test_ood rollout list)")] == "✗"
    assert bars[("dynamics_aux_phase6", "smooth loss curve (heuristic)")] == "✗"
    assert bars[("dynamics_aux_agent_reads_leakfree", "aux head MSE drops")] == "✗"
    assert bars[("dynamics_aux_agent_reads_leakfree", "smooth loss curve (heuristic)")] == "✓"


# ---------------------------------------------------------------------------- determinism and CLI


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_footer_lists_every_input(results, built):
    inp = load(results)
    md = (built / "table2_quality.md").read_text()
    csv_t = (built / "table2_quality.csv").read_text()
    tex = (built / "table2_quality.tex").read_text()
    for disp, h in inp.files:
        assert f"{h}  {disp}" in md and f"# {h}  {disp}" in csv_t and f"% {h}  {disp}" in tex
    paths = [d for d, _ in inp.files]
    assert any(p.endswith("metrics.jsonl") for p in paths) and any(p.endswith("not_run.json") for p in paths)
    assert any(p.endswith("psnr.json") for p in paths) and any("__seed2.json" in p for p in paths)
    assert all(not os.path.isabs(p) for p in paths)  # relative to the results root


def test_rerun_is_byte_identical(results, built, tmp_path):
    before = _tree_bytes(built)
    out = tmp_path / "again"
    T.write_tables(load(results), out)
    assert _tree_bytes(out) == before
    shutil.rmtree(out)
    T.write_tables(load(results), out)
    assert _tree_bytes(out) == before


def _cli(res: dict, out: Path, cwd: Path) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        str(REPO / "workflow_scripts" / "make_tables.py"),
        "--tables-config",
        json.dumps(res["config"]),
        "--probe-summaries",
        *map(str, res["probe_summaries"]),
        "--rollout",
        *map(str, res["rollout"]),
        "--tokenizer-eval",
        *map(str, res["tokenizer_eval"]),
        "--train-dirs",
        *map(str, res["train_dirs"]),
        "--out-dir",
        str(out),
    ]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_cli_runs_and_matches_library(results, built):
    out = results["root"] / "cli_tables"
    p = _cli(results, out, cwd=results["root"])
    assert p.returncode == 0, p.stderr
    assert _tree_bytes(out) == _tree_bytes(built)


def test_tables_path_does_not_import_torch():
    code = (
        "import sys, runpy; sys.argv = ['make_tables.py', '--help']\n"
        "try:\n    runpy.run_path(%r, run_name='__main__')\nexcept SystemExit:\n    pass\n"
        "import dreamer4_libero.reporting.tables\nprint('torch' in sys.modules)"
    ) % str(REPO / "workflow_scripts" / "make_tables.py")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.stdout.strip().splitlines()[-1] == "False", p.stdout + p.stderr


def test_cli_malformed_record_names_file(results, tmp_path):
    root = tmp_path / "bad"
    shutil.copytree(results["root"] / "probe", root / "probe")
    res = dict(results)
    res["probe_summaries"] = [root / "probe" / p.parent.name / "summary.json" for p in results["probe_summaries"]]
    summ = res["probe_summaries"][0]
    data = json.loads(summ.read_text())
    victim = summ.parent / data["records"][3]["path"]
    rec = json.loads(victim.read_text())
    del rec["scorings"]["all_valid"][RS.TEST]["probe"]
    write_json(victim, rec)
    data["records"][3]["sha256"] = sha256_file(victim)
    write_json(summ, data)
    p = _cli(res, tmp_path / "out", cwd=tmp_path)
    assert p.returncode == 2
    assert str(victim) in p.stderr or victim.name in p.stderr
    assert "malformed probe record" in p.stderr and "scorings.all_valid.probe_eval_test" in p.stderr
    # not valid JSON at all
    victim.write_text("{not json")
    data["records"][3]["sha256"] = sha256_file(victim)
    write_json(summ, data)
    p = _cli(res, tmp_path / "out2", cwd=tmp_path)
    assert p.returncode == 2 and victim.name in p.stderr and "not valid JSON" in p.stderr


def test_summary_hash_mismatch_is_an_error(results, tmp_path):
    root = tmp_path / "bad"
    shutil.copytree(results["root"] / "probe" / "baselines", root)
    data = json.loads((root / "summary.json").read_text())
    victim = root / data["records"][0]["path"]
    victim.write_text(victim.read_text().replace('"seed": 0', '"seed": 0 '))
    with pytest.raises(RS.TablesError, match="sha256 differs"):
        RS.load_inputs(results["config"], [root / "summary.json"])
