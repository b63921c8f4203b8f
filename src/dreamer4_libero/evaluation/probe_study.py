"""All probe records of one variant (or of the model-free baselines), evaluation.md §1.

Features are extracted once per (feature set, extraction mode, probe mode) for every episode that
any seed's probe lists name (extraction is deterministic: it does not depend on the seed), at every
target frame t valid for H = 1 (features of target t do not depend on H: the visible context is
o_{<=read-out}, a_{<t} for every H). Then, per seed and H, one record:

    probe-train design (frames valid for H) -> PCA (where listed) -> standardise -> α by grouped
    5-fold CV, groups = tasks (for probe_eval_test) and = episodes (for probe_eval_train) -> refit;
    controls train_mean, label_shuffle (same features and CV, labels permuted), copy_prev;
    scored on `all_valid` (frames valid for H) and `common_Hmax` (frames valid for the largest H);
    per-episode sufficient statistics + episode- and task-level bootstrap CIs; the degeneracy
    diagnostic and flags; the leak tests of the feature set.

Records follow docs/results_format.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..data.loader import episode_list
from ..data.shards import parse_episode_id
from ..fileio import read_json, sha256_file
from .bootstrap import percentile_ci, r2_replicates, rng_for
from .diagnostics import IDM_POLICY_MARGIN, NO_SIGNAL_MARGIN, degeneracy
from .features import copy_prev_prediction, valid_targets, window_position
from .leak_tests import leak_failed
from .probe import ALPHA_GRID, Standardizer, fit_pca, r2_scores, ridge_fit, ridge_predict, select_alpha_many

PROTOCOL = "eval-protocol-v1"
LIST_NAMES = ("probe_train", "probe_eval_train", "probe_eval_test")
EVAL_SETS = ("probe_eval_test", "probe_eval_train")
ALPHA_GROUPING = {"probe_eval_test": "task", "probe_eval_train": "episode"}
PREDICTORS = ("probe", "train_mean", "label_shuffle", "copy_prev")
SCORINGS = ("all_valid", "common_Hmax")


# -- probe lists -------------------------------------------------------------------------------


@dataclass
class ProbeLists:
    """Per seed: the three episode lists, their file hashes, and whether seeds vary the episodes."""

    lists: dict[int, dict[str, list[str]]]
    hashes: dict[int, dict[str, str]]
    seeds_vary_episodes: bool

    def all_episodes(self) -> list[str]:
        eps = {e for per_seed in self.lists.values() for lst in per_seed.values() for e in lst}
        return sorted(eps)


def load_probe_lists(probe_root: str | Path, seeds: list[int]) -> ProbeLists:
    """Read splits/probe/seed<s>/{probe_train,probe_eval_train,probe_eval_test}.json (libero_data.md §7.2)."""
    lists, hashes, vary = {}, {}, True
    for s in seeds:
        lists[s], hashes[s] = {}, {}
        for name in LIST_NAMES:
            path = Path(probe_root) / f"seed{s}" / f"{name}.json"
            if not path.exists():
                raise FileNotFoundError(f"probe list not found: {path} (seed {s}, list {name})")
            lists[s][name] = episode_list(path)
            hashes[s][name] = sha256_file(path)
            vary = vary and bool(read_json(path).get("seeds_vary_episodes", True))
    return ProbeLists(lists, hashes, vary)


def stride_offset(seed: int, stride: int) -> int:
    """The seeded offset of `frame_stride` subsampling (0 when stride is 1)."""
    return int(rng_for(seed, "stride", "offset").integers(stride)) if stride > 1 else 0


# -- feature tables ----------------------------------------------------------------------------


@dataclass
class FeatureTable:
    """Features of one (feature set, extraction, probe mode) per episode at its candidate targets."""

    t: dict[str, np.ndarray] = field(default_factory=dict)
    X: dict[str, np.ndarray] = field(default_factory=dict)
    pos: dict[str, np.ndarray] = field(default_factory=dict)


def candidate_targets(T: int, stride: int, offsets: set[int]) -> np.ndarray:
    """Targets valid for H = 1 (t <= T-2), subsampled to the union of the seeds' stride offsets."""
    t = valid_targets(T, 1)
    if stride > 1:
        t = t[np.isin(t % stride, sorted(offsets))]
    return t


def extract_tables(
    extract: Callable[[np.ndarray, np.ndarray, np.ndarray], dict],
    names: list[str],
    store,
    episodes: list[str],
    *,
    mode: str,
    window: int,
    stride: int,
    offsets: set[int],
    progress=None,
) -> dict[str, FeatureTable]:
    """Run `extract(frames, raw, t) -> {feature name: (n, F)}` on every episode; one FeatureTable per name."""
    tables = {n: FeatureTable() for n in names}
    for e in episodes:
        frames, raw = store.episode(e)
        t = candidate_targets(len(raw), stride, offsets)
        feats = extract(frames, raw, t)
        pos = window_position(t, mode, len(raw), window)
        for n in names:
            if feats.get(n) is None:
                continue
            tables[n].t[e], tables[n].X[e], tables[n].pos[e] = t, np.asarray(feats[n], np.float64), pos
        if progress is not None:
            progress.update()
    return {n: tb for n, tb in tables.items() if tb.X}


# -- designs -----------------------------------------------------------------------------------


@dataclass
class Design:
    X: np.ndarray
    Y: np.ndarray
    t: np.ndarray
    ep: np.ndarray  # episode index into `episodes`
    pos: np.ndarray
    prev: np.ndarray  # copy_prev prediction (NaN rows at t = 0, filled with the train mean later)
    common: np.ndarray  # bool: the frame is valid for H_max
    episodes: list[str]


def design(
    table: FeatureTable, raws: dict[str, np.ndarray], episodes: list[str], H: int, H_max: int, stride: int, offset: int
) -> Design:
    Xs, Ys, ts, eps, poss, prevs, commons = [], [], [], [], [], [], []
    for i, e in enumerate(episodes):
        t, X, raw = table.t[e], table.X[e], raws[e]
        T = len(raw)
        sel = t <= T - 1 - H
        if stride > 1:
            sel &= (t % stride) == offset
        tt = t[sel]
        Xs.append(X[sel])
        Ys.append(np.asarray(raw, np.float64)[tt + H])
        ts.append(tt)
        eps.append(np.full(len(tt), i))
        poss.append(table.pos[e][sel])
        prevs.append(copy_prev_prediction(raw, tt, np.full(raw.shape[1], np.nan)))
        commons.append(tt <= T - 1 - H_max)
    cat = np.concatenate
    return Design(cat(Xs), cat(Ys), cat(ts), cat(eps), cat(poss), cat(prevs), cat(commons), list(episodes))


def _episode_stats(d: Design, preds: dict[str, np.ndarray], mask: np.ndarray) -> dict:
    """Per-episode sufficient statistics of the frames in `mask` (docs/results_format.md)."""
    E = len(d.episodes)
    ep = d.ep[mask]
    Y = d.Y[mask]
    k = Y.shape[1]

    def per_ep(v):
        out = np.zeros((E, k))
        np.add.at(out, ep, v)
        return out.tolist()

    return {
        "episodes": d.episodes,
        "tasks": [parse_episode_id(e)[0] for e in d.episodes],
        "n": np.bincount(ep, minlength=E).tolist(),
        "sum_y": per_ep(Y),
        "sum_y2": per_ep(Y * Y),
        "sse": {p: per_ep((Y - pr[mask]) ** 2) for p, pr in preds.items()},
    }


def _summary(y: np.ndarray, pred: np.ndarray, stats: dict, predictor: str, seed: int, set_name: str, B: int) -> dict:
    r = r2_scores(y, pred)
    r.pop("n_frames", None)
    r["r2_per_dim"] = [None if not np.isfinite(v) else v for v in r["r2_per_dim"]]
    for key in ("r2_uniform", "r2_varweighted"):
        r[key] = None if not np.isfinite(r[key]) else r[key]
    r["ci"] = percentile_ci(r2_replicates(stats, predictor, "episode", seed, set_name, B))
    r["ci_task"] = percentile_ci(r2_replicates(stats, predictor, "task", seed, set_name, B))
    return r


# -- one record --------------------------------------------------------------------------------


def probe_record(
    table: FeatureTable,
    raws: dict[str, np.ndarray],
    lists: dict[str, list[str]],
    *,
    feature: str,
    pca: int | None,
    H: int,
    H_max: int,
    seed: int,
    stride: int,
    B: int,
    window: int,
    alphas=ALPHA_GRID,
    n_splits: int = 5,
    pca_cache: dict | None = None,
) -> dict:
    """The numerical part of one record (fit, controls, scorings, degeneracy) for one seed and H."""
    off = stride_offset(seed, stride)
    tr = design(table, raws, lists["probe_train"], H, H_max, stride, off)
    if len(tr.Y) == 0:
        raise ValueError(f"{feature}: probe-train has no frame valid for H={H}")
    tasks_tr = np.array([parse_episode_id(tr.episodes[i])[0] for i in tr.ep])
    eps_tr = np.array([tr.episodes[i] for i in tr.ep])
    n_pca = pca if pca is not None and tr.X.shape[1] > pca else None
    pca_fit = None
    if n_pca:
        # PCA is fit once on all of probe-train (every frame valid for H = 1) and reused for every H
        key = (seed, n_pca)
        if pca_cache is None or key not in pca_cache:
            all_tr = tr if H == 1 else design(table, raws, lists["probe_train"], 1, H_max, stride, off)
            fitted = fit_pca(all_tr.X, n_pca)
            if pca_cache is not None:
                pca_cache[key] = fitted
        pca_fit = pca_cache[key] if pca_cache is not None else fitted
    Xp = pca_fit.transform(tr.X) if pca_fit else tr.X
    scaler = Standardizer().fit(Xp)
    Xs = scaler.transform(Xp)
    perm = rng_for(seed, "label_shuffle", feature).permutation(len(tr.Y))
    Ysh = tr.Y[perm]
    y_mean = tr.Y.mean(0)
    y_std = np.where(tr.Y.std(0) < 1e-9 * (1 + np.abs(y_mean)), 1.0, tr.Y.std(0))
    fits = {}
    for grouping, groups in (("task", tasks_tr), ("episode", eps_tr)):
        (a, curve, edge), (a_sh, _, _) = select_alpha_many(
            Xs, [tr.Y, Ysh], groups, seed, alphas=alphas, n_splits=n_splits
        )
        fits[grouping] = {
            "alpha": a,
            "curve": curve,
            "edge": edge,
            "ridge": ridge_fit(Xs, (tr.Y - y_mean) / y_std, a),
            "ridge_shuffle": ridge_fit(Xs, (Ysh - y_mean) / y_std, a_sh),
            "alpha_shuffle": a_sh,
        }

    def predict(Xraw, ridge):
        Z = scaler.transform(pca_fit.transform(Xraw) if pca_fit else Xraw)
        return ridge_predict(Z, ridge) * y_std + y_mean

    rec = {
        "features": {
            "n_raw": int(tr.X.shape[1]),
            "pca": n_pca,
            "n_dropped": scaler.n_dropped,
            "n_used": scaler.n_kept,
            "pca_explained_variance_ratio": (
                None if not pca_fit or pca_fit.identity else float(np.sum(pca_fit.explained_variance_ratio))
            ),
        },
        "alpha": {g: f["alpha"] for g, f in fits.items()},
        "alpha_label_shuffle": {g: f["alpha_shuffle"] for g, f in fits.items()},
        "alpha_on_grid_edge": {g: f["edge"] for g, f in fits.items()},
        "cv_curve": {
            g: {
                "alphas": f["curve"]["alphas"],
                "mean_r2": f["curve"]["mean_r2"],
                "n_splits": f["curve"]["n_splits"],
                "n_groups": f["curve"]["n_groups"],
                "note": f["curve"].get("note"),
            }
            for g, f in fits.items()
        },
        "frame_stride": stride,
        "stride_offset": off,
        "n": {
            "probe_train": {"episodes": len(tr.episodes), "frames": int(len(tr.Y)), "tasks": int(len(set(tasks_tr)))}
        },
        "scorings": {s: {} for s in SCORINGS},
    }
    for set_name in EVAL_SETS:
        ev = design(table, raws, lists[set_name], H, H_max, stride, off)
        f = fits[ALPHA_GROUPING[set_name]]
        prev = np.where(np.isnan(ev.prev), y_mean[None], ev.prev)
        preds = {
            "probe": predict(ev.X, f["ridge"]),
            "train_mean": np.broadcast_to(y_mean, ev.Y.shape),
            "label_shuffle": predict(ev.X, f["ridge_shuffle"]),
            "copy_prev": prev,
        }
        rec["n"][set_name] = {
            "episodes": len(ev.episodes),
            "frames": int(len(ev.Y)),
            "tasks": len({parse_episode_id(e)[0] for e in ev.episodes}),
        }
        for scoring, mask in (("all_valid", np.ones(len(ev.Y), bool)), ("common_Hmax", ev.common)):
            stats = _episode_stats(ev, preds, mask)
            block = {
                "n_episodes": len(ev.episodes),
                "n_frames": int(mask.sum()),
                "n_tasks": rec["n"][set_name]["tasks"],
            }
            for p in PREDICTORS:
                block[p] = _summary(ev.Y[mask], preds[p][mask], stats, p, seed, set_name, B)
            block["stats"] = stats
            rec["scorings"][scoring][set_name] = block
    in_sample = r2_scores(tr.Y, predict(tr.X, fits["task"]["ridge"]))["r2_uniform"]
    rec["degeneracy"] = degeneracy(
        tr.X, Xs, tr.t, np.stack([tr.t, tr.pos], 1), in_sample_r2=in_sample, cv_r2=fits["task"]["curve"]["best_r2"]
    )
    return rec


# -- flags -------------------------------------------------------------------------------------


def headline(rec: dict, predictor: str = "probe", scoring: str = "common_Hmax") -> float | None:
    return rec["scorings"][scoring]["probe_eval_test"][predictor]["r2_uniform"]


def no_signal(r2: float | None, train_mean_r2: float | None) -> bool:
    """The NO-SIGNAL rule (evaluation.md §1.9): no held-out R², or one within the margin of train_mean's."""
    return r2 is None or (train_mean_r2 is not None and r2 <= train_mean_r2 + NO_SIGNAL_MARGIN)


def local_flags(rec: dict) -> None:
    """DEGENERATE, NO-SIGNAL and the leak-test part of LEAK? from the record alone."""
    reasons = {}
    if rec["degeneracy"]["reasons"]:
        reasons["DEGENERATE"] = "; ".join(rec["degeneracy"]["reasons"])
    r2, base = headline(rec), headline(rec, "train_mean")
    if no_signal(r2, base):
        reasons["NO-SIGNAL"] = (
            f"held-out R² {r2 if r2 is None else f'{r2:+.3f}'} <= train_mean "
            f"{base if base is None else f'{base:+.3f}'} + {NO_SIGNAL_MARGIN} (common_Hmax frames)"
        )
    failed = leak_failed(rec.get("leak_tests"))
    if failed:
        reasons["LEAK?"] = "leak test failed: " + ", ".join(
            f"{k} (max |Δ| {rec['leak_tests'][k]['max_abs_delta']:.3g})" for k in failed
        )
    rec["flag_reasons"] = reasons
    rec["flags"] = {k: k in reasons for k in ("DEGENERATE", "NO-SIGNAL", "LEAK?")}


def _add_leak(rec: dict, why: str) -> None:
    rec["flags"]["LEAK?"] = True
    old = rec["flag_reasons"].get("LEAK?")
    rec["flag_reasons"]["LEAK?"] = why if not old else f"{old}; {why}"


def policy_at_stride(pol: dict, stride: int) -> tuple[float | None, bool, str]:
    """A policy-mode record's held-out R² on frames subsampled by `stride` (an idm record's), whether it has a
    signal there (not NO-SIGNAL), and a note; (None, False, "") where it has none. R² falls with the number of
    probe-train frames, so a policy probe fit on every frame is not compared with an idm probe fit on every
    16th: the policy record carries a refit at the idm stride (`policy_at_idm_stride`, run_study)."""
    if pol["frame_stride"] == stride:
        return headline(pol), not pol["flags"]["NO-SIGNAL"], ""
    sub = pol.get("policy_at_idm_stride")
    if sub and sub["frame_stride"] == stride:
        return sub["r2"], not no_signal(sub["r2"], sub["train_mean_r2"]), f", policy refit at frame stride {stride}"
    return None, False, ""


def cross_record_flags(records: list[dict]) -> None:
    """LEAK? from comparisons across records of the same features: idm < policy − 0.02 on frames subsampled
    alike (where policy mode is not NO-SIGNAL there); R²(H=2) above the upper end of H=1's episode-level CI
    (where the H=2 record is not NO-SIGNAL)."""
    idx = {(r["feature"], r["extraction"], r["probe_mode"], r["H"], r["seed"]): r for r in records}
    for (feat, ext, mode, H, seed), r in idx.items():
        if mode == "idm" and (feat, ext, "policy", H, seed) in idx:
            pol = idx[(feat, ext, "policy", H, seed)]
            a = headline(r)
            b, signal, how = policy_at_stride(pol, r["frame_stride"])
            # only where policy mode has a signal: two no-signal numbers differ by noise alone
            if a is not None and signal and a < b - IDM_POLICY_MARGIN:
                why = f"idm R² {a:+.3f} < policy R² {b:+.3f} − {IDM_POLICY_MARGIN} (H={H}, seed {seed}{how})"
                _add_leak(r, why)
                _add_leak(pol, why)
        if H == 2 and (feat, ext, mode, 1, seed) in idx:
            h1 = idx[(feat, ext, mode, 1, seed)]
            a, hi = headline(r), h1["scorings"]["common_Hmax"]["probe_eval_test"]["probe"]["ci"][1]
            # only where H=2 has a signal: a no-signal R² just under 0 can sit above an H=1 CI that lies below 0
            if a is not None and hi is not None and a > hi and not r["flags"]["NO-SIGNAL"]:
                why = f"R² at H=2 {a:+.3f} exceeds the H=1 CI upper bound {hi:+.3f} (seed {seed})"
                _add_leak(r, why)
                _add_leak(h1, why)


# -- provenance --------------------------------------------------------------------------------


def record_name(rec: dict) -> str:
    return f"{rec['feature']}__{rec['extraction']}__{rec['probe_mode']}__H{rec['H']}__seed{rec['seed']}.json"


# -- the whole job -----------------------------------------------------------------------------


@dataclass
class FeatureGroup:
    """Feature sets extracted together: one extraction mode and probe mode (e.g. wm_agent + wm_spatial)."""

    extraction: str
    mode: str
    extract: Callable[[np.ndarray, np.ndarray, np.ndarray], dict]
    feature_sets: dict  # name -> FeatureSet (pca width, leak-test view)
    stride: int = 1


def run_study(
    groups: list[FeatureGroup],
    store,
    lists: ProbeLists,
    *,
    seeds: list[int],
    H_list: list[int],
    window: int,
    B: int,
    identity: dict,
    leak_episodes: int = 2,
    leak_targets: int = 3,
    n_splits: int = 5,
    progress: Callable | None = None,
    log: Callable[[str], None] = print,
) -> list[dict]:
    """Extract, run the leak tests and build every record of `groups` (not yet written)."""
    from .leak_tests import run_leak_tests

    H_list = sorted(int(h) for h in H_list)
    H_max = H_list[-1]
    episodes = lists.all_episodes()
    raws = {e: np.asarray(store.episode(e)[1], np.float64) for e in episodes}
    leak_eps = [store.episode(e) for e in sorted(lists.lists[seeds[0]]["probe_eval_test"])[:leak_episodes]]
    # policy mode on every frame, idm mode subsampled (one pass per target): the policy probe is refit at the
    # idm stride too, so that the cross-mode LEAK? rule compares like with like (cross_record_flags)
    idm_stride = {g.extraction: g.stride for g in groups if g.mode == "idm"}
    records = []
    for g in groups:
        offsets = {stride_offset(s, g.stride) for s in seeds}
        refit = idm_stride.get(g.extraction, 1) if g.mode == "policy" and g.stride == 1 else 1
        bar = progress(total=len(episodes), desc=f"features {g.extraction}/{g.mode}", unit="ep") if progress else None
        tables = extract_tables(
            g.extract,
            list(g.feature_sets),
            store,
            episodes,
            mode=g.mode,
            window=window,
            stride=g.stride,
            offsets=offsets,
            progress=bar,
        )
        if bar is not None:
            bar.close()
        for name, fs in g.feature_sets.items():
            if name not in tables:
                log(f"{name} ({g.extraction}/{g.mode}): not available for this model, no records")
                continue
            leaks = run_leak_tests(fs, leak_eps, g.mode, n_targets=leak_targets, window=window)
            bar = (
                progress(total=len(seeds) * len(H_list), desc=f"probe {name} {g.extraction}/{g.mode}", unit="fit")
                if progress
                else None
            )
            pca_cache: dict = {}
            refit_pca_cache: dict = {}
            for seed in seeds:
                for H in H_list:
                    rec = {
                        "protocol": PROTOCOL,
                        **identity,
                        "feature": name,
                        "extraction": g.extraction,
                        "probe_mode": g.mode,
                        "H": H,
                        "seed": seed,
                        "H_list": H_list,
                        "H_max": H_max,
                        "seeds_vary_episodes": lists.seeds_vary_episodes,
                        "split_hashes": lists.hashes[seed],
                        "bootstrap_B": B,
                    }
                    fit = dict(
                        feature=name, pca=fs.pca, H=H, H_max=H_max, seed=seed, B=B, window=window, n_splits=n_splits
                    )
                    rec.update(
                        probe_record(tables[name], raws, lists.lists[seed], stride=g.stride, pca_cache=pca_cache, **fit)
                    )
                    if refit > 1:
                        sub = probe_record(
                            tables[name], raws, lists.lists[seed], stride=refit, pca_cache=refit_pca_cache, **fit
                        )
                        rec["policy_at_idm_stride"] = {
                            "frame_stride": refit,
                            "stride_offset": sub["stride_offset"],
                            "probe_train_frames": sub["n"]["probe_train"]["frames"],
                            "r2": headline(sub),
                            "train_mean_r2": headline(sub, "train_mean"),
                        }
                    rec["leak_tests"] = leaks
                    local_flags(rec)
                    records.append(rec)
                    if bar is not None:
                        bar.update()
            if bar is not None:
                bar.close()
    cross_record_flags(records)
    return records


def summarize(records: list[dict]) -> list[str]:
    """One line per (feature, extraction, mode) at H = 1: seed-mean held-out R², controls and flags."""
    lines = []
    keys = sorted({(r["feature"], r["extraction"], r["probe_mode"]) for r in records})
    for feat, ext, mode in keys:
        rs = [r for r in records if (r["feature"], r["extraction"], r["probe_mode"], r["H"]) == (feat, ext, mode, 1)]
        if not rs:
            continue

        def mean(pred, scoring="all_valid"):
            v = [r["scorings"][scoring]["probe_eval_test"][pred]["r2_uniform"] for r in rs]
            v = [x for x in v if x is not None]
            return float(np.mean(v)) if v else float("nan")

        flags = sorted({k for r in rs for k, on in r["flags"].items() if on})
        lines.append(
            f"{feat:15s} {ext:12s} {mode:6s} H=1 held-out R² {mean('probe'):+.3f} "
            f"(train_mean {mean('train_mean'):+.3f}, shuffle {mean('label_shuffle'):+.3f}, "
            f"copy_prev {mean('copy_prev'):+.3f}) {' '.join(flags)}"
        )
    return lines
