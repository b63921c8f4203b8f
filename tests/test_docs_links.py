"""The README is a short quick path (issue 30, item 7); the reference material lives in docs/.

Checked here: the README stays under 20 KiB; every relative link in README.md and docs/**/*.md points to an
existing file, and every `#anchor` to a heading of its target (GitHub's anchor rule); every docs/*.md page is
linked from the README; every entry of the README's code map names a file and a function or class in it.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import REPO

README = REPO / "README.md"
DOC_PAGES = sorted((REPO / "docs").rglob("*.md"))
MAX_README_BYTES = 20 * 1024

_FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.S | re.M)  # fenced code blocks
_CODE_SPAN = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$", re.M)
_CODE_MAP_ENTRY = re.compile(r"`(src/[\w/]+\.py):([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)?)`")
# the concepts issue 30 (item 8) asks the code map to answer
CODE_MAP_CONCEPTS = (
    "shortcut",
    "aux head",
    "aux_input",
    "agent-token mask",
    "ridge α",
    "rollout PSNR",
    "run identity",
    "deadline",
)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: markup and punctuation dropped (except '-' and '_'), lowercase,
    spaces to '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").lower()
    return "".join(c for c in text if c.isalnum() or c in "-_ ").replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    """Every heading anchor of a page; a repeated heading gets -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    out = set()
    for m in _HEADING.finditer(_FENCE.sub("", markdown)):
        base = slug(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(markdown: str) -> list[str]:
    """Link targets outside code blocks and code spans."""
    return _LINK.findall(_CODE_SPAN.sub("", _FENCE.sub("", markdown)))


def broken_links(page: Path) -> list[str]:
    """'target: why' for every relative link of `page` that does not resolve."""
    bad = []
    for target in links(page.read_text()):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            bad.append(f"{target}: no file {dest}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest.read_text()):
            bad.append(f"{target}: no heading with anchor #{anchor} in {dest.name}")
    return bad


def code_map(markdown: str) -> list[tuple[str, list[tuple[str, str]]]]:
    """(concept, [(file, name), ...]) of every row of the README's '## Code map' table."""
    section = markdown.split("\n## Code map", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) == 2 and not set(cells[1]) <= set("-: ") and cells[0] != "concept":
            rows.append((cells[0], _CODE_MAP_ENTRY.findall(cells[1])))
    return rows


def defines(source: str, name: str) -> bool:
    """Whether `source` defines `name` (a module-level function or class) or `Class.method`."""
    if "." not in name:
        return re.search(rf"^(?:async\s+)?(?:def|class)\s+{name}\b", source, re.M) is not None
    cls, meth = name.split(".")
    m = re.search(rf"^class\s+{cls}\b.*?(?=^\S|\Z)", source, re.M | re.S)
    return m is not None and re.search(rf"^\s+(?:async\s+)?def\s+{meth}\b", m.group(0), re.M) is not None


# ---------------------------------------------------------------------------------------------- the checker


def test_slug_follows_githubs_rule():
    assert slug("GPUs: the CUDA build of torch, `make check-gpu`") == "gpus-the-cuda-build-of-torch-make-check-gpu"
    assert slug("Training runs: resume, time limits, clean exit") == "training-runs-resume-time-limits-clean-exit"
    assert slug("4-GPU nodes and multi-node training") == "4-gpu-nodes-and-multi-node-training"
    assert slug("Method power (`power.md`, issue 27)") == "method-power-powermd-issue-27"
    assert slug("A sample of the demo's tables") == "a-sample-of-the-demos-tables"
    assert slug("snake_case and R² — dash") == "snake_case-and-r²--dash"


def test_checker_reports_a_missing_file_a_missing_anchor_and_ignores_code(tmp_path):
    (tmp_path / "b.md").write_text("# B page\n\n## Part one\n\n## Part one\n```\n## not a heading\n```\n")
    page = tmp_path / "a.md"
    page.write_text(
        "# A\n[ok](b.md#part-one) [dup](b.md#part-one-1) [self](#a) [web](https://x.org/y#z)\n"
        "[gone](c.md) [bad anchor](b.md#part-two) [code heading](b.md#not-a-heading)\n"
        "`[in a span](nowhere.md)`\n```\n[in a block](nowhere.md)\n```\n"
    )
    bad = broken_links(page)
    assert [b.split(":")[0] for b in bad] == ["c.md", "b.md#part-two", "b.md#not-a-heading"]
    assert "no file" in bad[0] and "no heading with anchor #part-two in b.md" in bad[1]


def test_code_map_checker_finds_functions_classes_and_methods():
    src = "class Run:\n    def stop(self):\n        pass\n\ndef free():\n    pass\n\nclass Other:\n    x = 1\n"
    assert defines(src, "Run") and defines(src, "free") and defines(src, "Run.stop")
    assert not defines(src, "stop") and not defines(src, "Other.stop") and not defines(src, "Run.free")
    assert not defines(src, "fre")


# ---------------------------------------------------------------------------------------------- the docs


def test_readme_is_under_20_kib():
    size = len(README.read_bytes())
    assert size < MAX_README_BYTES, f"README.md is {size} bytes (limit {MAX_README_BYTES}): move material to docs/"


@pytest.mark.parametrize("page", [README, *DOC_PAGES], ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(page):
    assert broken_links(page) == []


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(README.parent / t.partition("#")[0]).resolve() for t in links(README.read_text())}
    pages = sorted((REPO / "docs").glob("*.md"))
    assert len(pages) >= 13
    assert [p.name for p in pages if p.resolve() not in linked] == []


def test_code_map_names_real_files_and_functions():
    rows = code_map(README.read_text())
    assert len(rows) >= len(CODE_MAP_CONCEPTS)
    for concept in CODE_MAP_CONCEPTS:
        assert any(concept.lower() in c.lower() for c, _ in rows), f"the code map has no row for {concept!r}"
    for concept, entries in rows:
        assert entries, f"code map row {concept!r} names no `src/...py:function`"
        for path, name in entries:
            f = REPO / path
            assert f.is_file(), f"code map row {concept!r}: no file {path}"
            assert defines(f.read_text(), name), f"code map row {concept!r}: {path} defines no {name}"
