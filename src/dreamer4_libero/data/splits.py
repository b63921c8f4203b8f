"""Task-level train / val / test_ood split and per-seed probe lists (libero_data.md §7.2-7.3).

Everything is a deterministic function of sha256 rankings, so the same manifest and settings
always give byte-identical split files. Episode ids are `<suite>/<stem>/demo_<k>`.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from ..fileio import sha256_file, write_json
from .shards import parse_episode_id

SPLIT_FORMAT = "libero-split-v1"
PROBE_SETS = ("probe_train", "probe_eval_train", "probe_eval_test")


class SplitError(ValueError):
    """A split or probe list cannot be built or does not validate."""


def round_half_up(x: float) -> int:
    """round() as people expect it (2.5 -> 3), unlike Python's banker's rounding."""
    return int(math.floor(x + 0.5 + 1e-12))


def _h(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def suite_of(task_id: str) -> str:
    return task_id.split("/", 1)[0]


def episode_id(task_id: str, k: int) -> str:
    return f"{task_id}/demo_{k}"


def available_from_manifest(manifest: dict) -> dict[str, list[int]]:
    """task_id -> sorted demo indices kept by the preprocessor."""
    out = {}
    for f in manifest["files"]:
        if f.get("skipped_file") or not f["demos_kept"]:
            continue
        out[f["task_id"]] = sorted(int(n[len("demo_") :]) for n in f["demos_kept"])
    return dict(sorted(out.items()))


@dataclass
class Split:
    train: list[str]
    val: list[str]
    test_ood: list[str]
    source: str = "default"  # or "user"
    user_files: dict[str, str] = field(default_factory=dict)  # name -> sha256
    user_paths: dict[str, str] = field(default_factory=dict)  # name -> path given in the config (for messages)

    def tasks(self, name: str) -> list[str]:
        return sorted({parse_episode_id(e)[0] for e in getattr(self, name)})


def _per_suite(tasks) -> dict[str, int]:
    """suite -> number of tasks, for messages."""
    out: dict[str, int] = defaultdict(int)
    for t in tasks:
        out[suite_of(t)] += 1
    return dict(sorted(out.items()))


def default_split(
    available: dict[str, list[int]], split_seed: int = 0, ood_fraction: float = 0.2, train_demo_fraction: float = 0.8
) -> Split:
    """§7.2 steps 1-4: per suite, the first round(ood_fraction * n) tasks by rank are OOD."""
    by_suite: dict[str, list[str]] = defaultdict(list)
    for t in sorted(available):
        by_suite[suite_of(t)].append(t)
    train, val, ood = [], [], []
    for suite in sorted(by_suite):
        ranked = sorted(by_suite[suite], key=lambda t: _h(f"{split_seed}:{t}"))
        n_ood = round_half_up(ood_fraction * len(ranked))
        for t in ranked[:n_ood]:
            ood += [episode_id(t, k) for k in available[t]]
        for t in ranked[n_ood:]:
            demos = sorted(available[t], key=lambda k: _h(f"{split_seed}:{t}/demo_{k}"))
            n_train = round_half_up(train_demo_fraction * len(demos))
            train += [episode_id(t, k) for k in demos[:n_train]]
            val += [episode_id(t, k) for k in demos[n_train:]]
    pool = f"the {len(available)} preprocessed tasks (per suite {_per_suite(available)})"
    if not train:
        raise SplitError(
            f"split.ood_fraction = {ood_fraction} leaves no train task: round({ood_fraction} x n) of "
            f"each suite's n tasks go to test_ood, from {pool}; lower split.ood_fraction"
            + ("" if ood else " (or raise split.train_demo_fraction: it keeps 0 demos per task)")
        )
    if not ood:
        biggest = max(len(v) for v in by_suite.values())
        raise SplitError(
            f"split.ood_fraction = {ood_fraction} gives an empty test_ood: round({ood_fraction} x n) "
            f"is 0 for every suite of {pool}; the task-OOD evaluation needs at least one held-out "
            f"task: set split.ood_fraction >= {0.5 / biggest:.3g}, or give split.train_file, "
            f"split.val_file and split.test_ood_file"
        )
    return Split(sorted(train), sorted(val), sorted(ood))


def largest_remainder(total: int, counts: dict[str, int]) -> dict[str, int]:
    """Allocate `total` proportionally to counts; leftover units go to the largest remainders,
    ties broken by key in alphabetical order."""
    n = sum(counts.values())
    if total > n:
        raise SplitError(f"cannot take {total} tasks from a pool of {n} ({dict(sorted(counts.items()))})")
    exact = {k: total * c / n for k, c in counts.items()}
    out = {k: int(math.floor(v)) for k, v in exact.items()}
    left = total - sum(out.values())
    for k in sorted(counts, key=lambda k: (-(exact[k] - out[k]), k))[:left]:
        out[k] += 1
    return dict(sorted(out.items()))


def choose_probe_tasks(pool: list[str], n_tasks: int, probe_task_seed: int) -> list[str]:
    """§7.2 step 5: per-suite quotas by largest remainder; each suite's top-ranked tasks."""
    by_suite: dict[str, list[str]] = defaultdict(list)
    for t in sorted(set(pool)):
        by_suite[suite_of(t)].append(t)
    quotas = largest_remainder(n_tasks, {s: len(v) for s, v in by_suite.items()})
    chosen = []
    for s, q in quotas.items():
        chosen += sorted(by_suite[s], key=lambda t: _h(f"{probe_task_seed}:probe:{t}"))[:q]
    return sorted(chosen)


def probe_lists(
    split: Split,
    seed: int,
    *,
    probe_task_seed: int = 0,
    reseed_tasks: bool = False,
    n_train_tasks: int = 27,
    n_ood_tasks: int = 7,
    n_probe_train: int = 400,
    n_eval_train: int = 200,
    n_eval_test: int = 200,
) -> dict[str, list[str]]:
    """The three probe lists of one seed (evaluation.md §1.1, §1.6)."""
    task_seed = seed if reseed_tasks else probe_task_seed
    for key, n, name in (
        ("probe.n_train_tasks", n_train_tasks, "train"),
        ("probe.n_ood_tasks", n_ood_tasks, "test_ood"),
    ):
        pool = split.tasks(name)
        if n > len(pool):
            raise SplitError(
                f"{key} = {n} cannot be met: its pool, the tasks of {name}.json, holds {len(pool)} "
                f"tasks (per suite {_per_suite(pool)}); set {key} <= {len(pool)}"
                + (", or lower split.ood_fraction" if name == "train" else ", or raise split.ood_fraction")
            )
    train_tasks = set(choose_probe_tasks(split.tasks("train"), n_train_tasks, task_seed))
    ood_tasks = set(choose_probe_tasks(split.tasks("test_ood"), n_ood_tasks, task_seed))
    rank = lambda eps: sorted(eps, key=lambda e: _h(f"{seed}:{e}"))  # noqa: E731
    tr = rank([e for e in split.train if parse_episode_id(e)[0] in train_tasks])
    te = rank([e for e in split.test_ood if parse_episode_id(e)[0] in ood_tasks])
    if len(tr) < n_probe_train + n_eval_train:
        raise SplitError(
            f"probe seed {seed}: the {n_train_tasks} probe train tasks (probe.n_train_tasks) hold "
            f"{len(tr)} train.json episodes, need probe.n_probe_train + probe.n_eval_train = "
            f"{n_probe_train} + {n_eval_train}; lower those or raise probe.n_train_tasks"
        )
    if len(te) < n_eval_test:
        raise SplitError(
            f"probe seed {seed}: the {n_ood_tasks} probe OOD tasks (probe.n_ood_tasks) hold {len(te)} "
            f"test_ood.json episodes, need probe.n_eval_test = {n_eval_test}; lower it or raise "
            f"probe.n_ood_tasks"
        )
    return {
        "probe_train": sorted(tr[:n_probe_train]),
        "probe_eval_train": sorted(tr[n_probe_train : n_probe_train + n_eval_train]),
        "probe_eval_test": sorted(te[:n_eval_test]),
    }


# ---------------------------------------------------------------- user-provided files (§7.3)


def _resolve_task(name: str, available: dict[str, list[int]], path: Path) -> str:
    if name in available:
        return name
    hits = [t for t in available if t.split("/", 1)[1] == name]
    if len(hits) == 1:
        return hits[0]
    if not hits:
        raise SplitError(f"{path}: task {name!r} is not among the preprocessed tasks")
    raise SplitError(f"{path}: bare stem {name!r} is ambiguous: {hits}")


def _demo_index(d, path: Path, task: str) -> int:
    if isinstance(d, int):
        return d
    s = str(d)
    if s.startswith("demo_") and s[5:].isdigit():
        return int(s[5:])
    if s.isdigit():
        return int(s)
    raise SplitError(f"{path}: task {task}: not a demo name {d!r} (expected demo_<k> or an integer)")


def load_episode_file(path: str | Path, available: dict[str, list[int]]) -> list[str]:
    """Read a split / probe file in any §7.3 form and return sorted canonical episode ids."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SplitError(f"{path}: cannot read split file: {exc}") from None
    eps: list[str] = []
    if isinstance(data, dict) and "episodes" in data:  # (a) canonical
        items = data["episodes"]
    elif isinstance(data, dict):  # (c) {task: [demos]}
        items = []
        for task, demos in data.items():
            t = _resolve_task(task, available, path)
            items += [episode_id(t, _demo_index(d, path, t)) for d in demos]
    elif isinstance(data, list):
        items = data
    else:
        raise SplitError(f"{path}: expected a JSON object or list, found {type(data).__name__}")
    for it in items:
        if not isinstance(it, str):
            raise SplitError(f"{path}: entry {it!r} is not a string")
        task, _, last = it.rpartition("/")
        if last.startswith("demo_") and last[5:].isdigit():  # (a)/(b) episode id (maybe with a bare stem)
            t = _resolve_task(task, available, path)
            eps.append(episode_id(t, int(last[5:])))
        else:  # (d) a task id or stem: all its demos
            t = _resolve_task(it, available, path)
            eps += [episode_id(t, k) for k in available[t]]
    for e in eps:
        t, k = parse_episode_id(e)
        if k not in available[t]:
            raise SplitError(f"{path}: episode {e} does not exist (task {t} has demos {available[t][:5]}...)")
    return sorted(set(eps))


def user_split(train_file, val_file, test_ood_file, available) -> Split:
    files = {"train": train_file, "val": val_file, "test_ood": test_ood_file}
    missing = [k for k, v in files.items() if not v]
    if missing:
        raise SplitError(f"user-provided split needs all of train_file, val_file, test_ood_file; missing {missing}")
    eps = {k: load_episode_file(v, available) for k, v in files.items()}
    for k in ("train", "test_ood"):
        if not eps[k]:
            raise SplitError(f"{files[k]}: split.{k}_file names no episode; {k} needs at least one task")
    return Split(
        eps["train"],
        eps["val"],
        eps["test_ood"],
        source="user",
        user_files={k: sha256_file(v) for k, v in files.items()},
        user_paths={k: str(v) for k, v in files.items()},
    )


def validate_split(split: Split) -> None:
    """No task in both train and test_ood; no episode in two sets; val only from train tasks."""
    tr, va, te = set(split.train), set(split.val), set(split.test_ood)
    for a, b, sa, sb in (("train", "val", tr, va), ("train", "test_ood", tr, te), ("val", "test_ood", va, te)):
        both = sorted(sa & sb)
        if both:
            raise SplitError(f"episode {both[0]} is in both {a} and {b} ({len(both)} shared)")
    shared = sorted(set(split.tasks("train")) & set(split.tasks("test_ood")))
    if shared:
        raise SplitError(f"task {shared[0]} is in both train and test_ood ({len(shared)} shared tasks)")
    # val = unseen demos of train tasks (§7.2 step 4): a val episode of any other task is refused
    train_tasks, ood_tasks = set(split.tasks("train")), set(split.tasks("test_ood"))
    where = f"{split.user_paths['val']} (split.val_file)" if "val" in split.user_paths else "val.json"
    task_of = {e: parse_episode_id(e)[0] for e in split.val}
    for what, bad in (
        ("a test_ood task", sorted(e for e, t in task_of.items() if t in ood_tasks)),
        ("not a train task", sorted(e for e, t in task_of.items() if t not in train_tasks)),
    ):
        if bad:
            n_tasks = len({task_of[e] for e in bad})
            raise SplitError(
                f"{where}: episode {bad[0]} is of task {task_of[bad[0]]}, {what}; val must hold unseen "
                f"demos of train tasks only ({len(bad)} such episodes from {n_tasks} tasks)"
            )


def validate_probe(lists: dict[str, list[str]], split: Split) -> None:
    sets = {k: set(v) for k, v in lists.items()}
    for a in PROBE_SETS:
        for b in PROBE_SETS:
            if a < b and sets[a] & sets[b]:
                raise SplitError(f"probe lists {a} and {b} share episode {sorted(sets[a] & sets[b])[0]}")
    pools = {
        "probe_train": set(split.train),
        "probe_eval_train": set(split.train),
        "probe_eval_test": set(split.test_ood),
    }
    for k, pool in pools.items():
        bad = sorted(sets[k] - pool)
        if bad:
            src = "test_ood" if k == "probe_eval_test" else "train"
            raise SplitError(f"{k}: episode {bad[0]} is not in {src}.json ({len(bad)} such)")


# ---------------------------------------------------------------- writing


def _doc(episodes: list[str], header: dict, **extra) -> dict:
    tasks = sorted({parse_episode_id(e)[0] for e in episodes})
    return {"format": SPLIT_FORMAT, **header, **extra, "tasks": tasks, "episodes": sorted(episodes)}


def build_and_write(manifest_path: str | Path, out_dir: str | Path, *, split_cfg: dict, probe_cfg: dict) -> dict:
    """Make (or load) the split and the probe lists for every seed; write them; return a summary.

    Every document is built and validated before the first file is written, so a setting that
    fails (an empty test_ood, a probe pool too small) leaves no split file behind; summary.json,
    written last, marks a complete set.
    """
    from ..fileio import read_json

    manifest_path, out = Path(manifest_path), Path(out_dir)
    available = available_from_manifest(read_json(manifest_path))
    if any(split_cfg.get(k) for k in ("train_file", "val_file", "test_ood_file")):
        split = user_split(
            split_cfg.get("train_file"), split_cfg.get("val_file"), split_cfg.get("test_ood_file"), available
        )
    else:
        split = default_split(
            available, split_cfg["split_seed"], split_cfg["ood_fraction"], split_cfg["train_demo_fraction"]
        )
    validate_split(split)
    header = {
        "split_seed": split_cfg["split_seed"],
        "ood_fraction": split_cfg["ood_fraction"],
        "source_manifest_sha256": sha256_file(manifest_path),
        "split_source": split.source,
    }
    if split.user_files:
        header["user_file_sha256"] = split.user_files
    docs: dict[Path, dict] = {}  # relative path -> document, written only once all are built
    summary: dict = {"split_source": split.source, "sets": {}, "probe": {}}
    for name in ("train", "val", "test_ood"):
        eps = getattr(split, name)
        docs[Path(f"{name}.json")] = _doc(eps, header)
        summary["sets"][name] = {"episodes": len(eps), "tasks": len(split.tasks(name))}

    user_probe = {
        k: probe_cfg.get(f)
        for k, f in (
            ("probe_train", "probe_train_file"),
            ("probe_eval_train", "eval_train_file"),
            ("probe_eval_test", "eval_test_file"),
        )
    }
    fixed = any(user_probe.values())
    if fixed and not all(user_probe.values()):
        raise SplitError(
            "user-provided probe lists need all of probe.probe_train_file, probe.eval_train_file, probe.eval_test_file"
        )
    for s in probe_cfg["seeds"]:
        if fixed:
            lists = {k: load_episode_file(v, available) for k, v in user_probe.items()}
        else:
            lists = probe_lists(
                split,
                s,
                probe_task_seed=probe_cfg["task_seed"],
                reseed_tasks=probe_cfg["reseed_tasks"],
                n_train_tasks=probe_cfg["n_train_tasks"],
                n_ood_tasks=probe_cfg["n_ood_tasks"],
                n_probe_train=probe_cfg["n_probe_train"],
                n_eval_train=probe_cfg["n_eval_train"],
                n_eval_test=probe_cfg["n_eval_test"],
            )
        validate_probe(lists, split)
        task_seed = s if probe_cfg["reseed_tasks"] else probe_cfg["task_seed"]
        for k, eps in lists.items():
            docs[Path("probe") / f"seed{s}" / f"{k}.json"] = _doc(
                eps, header, probe_seed=s, probe_task_seed=task_seed, seeds_vary_episodes=not fixed
            )
        summary["probe"][f"seed{s}"] = {
            k: {"episodes": len(v), "tasks": len({parse_episode_id(e)[0] for e in v})} for k, v in lists.items()
        }
    summary["seeds_vary_episodes"] = not fixed
    _write_set(out, docs, summary)
    return summary


def _write_set(out: Path, docs: dict[Path, dict], summary: dict) -> None:
    """Write a complete split set: summary.json goes first out and last in, so a set cut short by
    a failing write never looks complete; probe seed folders of an earlier run are removed."""
    import shutil

    (out / "summary.json").unlink(missing_ok=True)
    keep = {rel.parts[1] for rel in docs if rel.parts[0] == "probe"}
    for old in sorted((out / "probe").glob("seed*")) if (out / "probe").is_dir() else []:
        if old.is_dir() and old.name not in keep:
            shutil.rmtree(old)
    for rel, doc in docs.items():
        write_json(out / rel, doc)
    write_json(out / "summary.json", summary)
