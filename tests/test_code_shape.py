"""Code shape (issue 30): no module over 700 lines, thin workflow scripts (at most 60 lines of code)."""

from __future__ import annotations

import io
import tokenize

from conftest import REPO

MAX_MODULE_LINES = 700
MAX_SCRIPT_CODE_LINES = 60


def code_lines(text: str) -> int:
    """Lines holding code: not blank, not a comment, not inside a docstring (a string statement)."""
    lines, prev = set(), None
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type in (
            tokenize.COMMENT,
            tokenize.NL,
            tokenize.NEWLINE,
            tokenize.INDENT,
            tokenize.DEDENT,
            tokenize.ENDMARKER,
        ):
            continue
        if tok.type == tokenize.STRING and (
            prev is None or prev.type in (tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT)
        ):
            prev = tok
            continue
        lines.update(range(tok.start[0], tok.end[0] + 1))
        prev = tok
    return len(lines)


def test_code_lines_counts_code_only():
    assert code_lines('"""doc\\nstring"""\n\n# comment\nx = 1\nif x:\n    y = (1,\n         2)\n') == 4


def test_no_module_is_over_700_lines():
    long = {
        p.relative_to(REPO).as_posix(): n
        for p in (REPO / "src").rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}


def test_every_workflow_script_is_thin():
    fat = {
        p.name: n
        for p in (REPO / "workflow_scripts").glob("*.py")
        if (n := code_lines(p.read_text())) > MAX_SCRIPT_CODE_LINES
    }
    assert fat == {}
