"""Compare two result trees file by file (`make compare-trees A=... B=...`): are two runs' outputs byte-identical?

For a refactor that must change no output (issue 30), run the demo before and after in the same
folder and compare `results/` trees. Each file of either tree is `same` (equal bytes), `differs` or
missing on one side. For JSON files that differ, the differing key paths are listed with both values,
so a difference can be explained or found.

A file that differs only in provenance counts as `provenance_only`, not as a difference of content.
Provenance is what names the code and the files a result came from, not what it computed:
- JSON keys matching `provenance` (default: `versions.code`, the commit that wrote a record; any
  `*sha256`, the hash of a checkpoint or record file, whose bytes hold the run's timings and so
  differ between any two runs; `wall_s`, the job's wall time);
- inside any string or text file, 64-hex file hashes, 40-hex commits and the 16-hex run-identity
  folder of a checkpoint path (`.../<run>/<identity>/step_...`, which follows from the tokenizer
  file's hash), each compared as a placeholder. Tables list their inputs' sha256 in a footer.
Numbers, labels and every other byte must match.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import re
from pathlib import Path
from typing import Any, Iterator

#: the outputs whose bytes must not change under a refactor (relative to results/)
DEFAULT_PATTERNS = (
    "tables/*",
    "tables/plots/*",
    "archive/*/config.json",
    "probe/*/*.json",
    "rollout/*/rollout.json",
    "rollout/*/windows_*.json",
    "tokenizer_eval/*/psnr.json",
)


#: JSON key paths (fnmatch globs) that record which code and files made a result, not what it computed
DEFAULT_PROVENANCE = ("versions.code", "*sha256", "wall_s", "*.wall_s")
#: hashes inside strings and text: (pattern, placeholder)
_HASHES = (
    (re.compile(r"(?<![0-9a-f])[0-9a-f]{64}(?![0-9a-f])"), "<sha256>"),
    (re.compile(r"(?<![0-9a-f])[0-9a-f]{40}(?![0-9a-f])"), "<commit>"),
    (re.compile(r"/[0-9a-f]{16}/(?=step_)"), "/<identity>/"),
)


def without_hashes(text: str) -> str:
    """`text` with file hashes, commits and run-identity folders replaced by placeholders."""
    for pat, placeholder in _HASHES:
        text = pat.sub(placeholder, text)
    return text


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _json_diffs(a: Any, b: Any, path: str = "") -> Iterator[tuple[str, Any, Any]]:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            p = f"{path}.{k}" if path else str(k)
            if k not in a or k not in b:
                yield p, a.get(k, "<absent>"), b.get(k, "<absent>")
            else:
                yield from _json_diffs(a[k], b[k], p)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            yield from _json_diffs(x, y, f"{path}[{i}]")
    elif a != b:
        yield path, a, b


def _is_provenance(path: str, va: Any, vb: Any, provenance: tuple[str, ...]) -> bool:
    if not provenance:
        return False
    if any(fnmatch.fnmatchcase(path, g) for g in provenance):
        return True
    return isinstance(va, str) and isinstance(vb, str) and without_hashes(va) == without_hashes(vb)


def _text_without_hashes(path: Path) -> str | None:
    try:
        return without_hashes(path.read_text())
    except UnicodeDecodeError:  # a picture: bytes only
        return None


def selected(root: Path, patterns: tuple[str, ...]) -> set[str]:
    return {
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and any(fnmatch.fnmatchcase(p.relative_to(root).as_posix(), pat) for pat in patterns)
    }


def compare_trees(
    a: str | Path,
    b: str | Path,
    patterns: tuple[str, ...] = DEFAULT_PATTERNS,
    max_paths: int = 8,
    provenance: tuple[str, ...] = DEFAULT_PROVENANCE,
) -> dict:
    """{"same": [...], "provenance_only": {rel: [keys]}, "differs": {rel: [key-path lines] or []},
    "only_a": [...], "only_b": [...]}."""
    a, b = Path(a), Path(b)
    fa, fb = selected(a, patterns), selected(b, patterns)
    out: dict = {"same": [], "provenance_only": {}, "differs": {}, "only_a": sorted(fa - fb), "only_b": sorted(fb - fa)}
    for rel in sorted(fa & fb):
        if _sha(a / rel) == _sha(b / rel):
            out["same"].append(rel)
            continue
        lines: list[str] = []
        if rel.endswith(".json"):
            try:
                diffs = list(_json_diffs(json.loads((a / rel).read_text()), json.loads((b / rel).read_text())))
            except ValueError:
                diffs = []
            if diffs and all(_is_provenance(p, va, vb, provenance) for p, va, vb in diffs):
                out["provenance_only"][rel] = sorted({re.sub(r"\[\d+\]", "[]", p) for p, _, _ in diffs})
                continue
            lines = [f"{p}: {va!r} -> {vb!r}" for p, va, vb in diffs[:max_paths]]
            if len(diffs) > max_paths:
                lines.append(f"... {len(diffs) - max_paths} more")
        elif provenance:
            ta = _text_without_hashes(a / rel)
            if ta is not None and ta == _text_without_hashes(b / rel):
                out["provenance_only"][rel] = ["hashes in the text"]
                continue
        out["differs"][rel] = lines
    return out


def report_lines(res: dict) -> list[str]:
    prov = res.get("provenance_only", {})
    n = len(res["same"]) + len(prov) + len(res["differs"]) + len(res["only_a"]) + len(res["only_b"])
    lines = [
        f"{n} files: {len(res['same'])} byte-identical, {len(prov)} differ only in provenance, "
        f"{len(res['differs'])} differ, {len(res['only_a'])} only in A, {len(res['only_b'])} only in B"
    ]
    if prov:
        keys = sorted({k for ks in prov.values() for k in ks})
        lines.append(f"what differs in those: {', '.join(keys)} (code version, file hashes, wall time)")
    for rel, paths in res["differs"].items():
        lines.append(f"DIFFERS {rel}")
        lines += [f"    {p}" for p in paths]
    lines += [f"ONLY IN A {rel}" for rel in res["only_a"]] + [f"ONLY IN B {rel}" for rel in res["only_b"]]
    return lines
