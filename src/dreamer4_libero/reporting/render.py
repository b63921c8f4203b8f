"""The table model (`Table`, `Row`, typed cells) and its renderers: Markdown, CSV, LaTeX and HTML.

Cells are typed tuples (`("r2", x)`, `("psnr", x)`, `("ci_r2", (lo, hi))`, ...) so that every
format prints the same number with its own conventions: fixed decimals, a real minus sign in
Markdown, math-mode symbols in LaTeX (booktabs only), full precision in CSV. Nothing here reads
results.
"""

from __future__ import annotations

import csv
import html
import io
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

from .results import PROTOCOL, finite, is_num

MISSING = ("missing",)


@dataclass
class Row:
    cells: list[tuple]
    extra: list[Any] = field(default_factory=list)  # CSV-only columns
    not_run: str | None = None  # reason: cells after `n_label` become one message
    n_label: int = 1
    variant: str | None = None  # for the archive's per-run extraction


@dataclass
class Table:
    key: str
    title: str
    caption: str
    header: list[str]
    align: str
    rows: list[Row]
    notes: list[str] = field(default_factory=list)
    extra_header: list[str] = field(default_factory=list)


def _num_str(x: float, nd: int, signed: bool) -> str:
    s = f"{x:+.{nd}f}" if signed else f"{x:.{nd}f}"
    if float(s) == 0.0:  # never print a negative zero
        s = ("+" if signed else "") + s.lstrip("+-")
    return s


def _sign_style(s: str, fmt: str) -> str:
    if fmt == "md":
        return s.replace("-", "\u2212")
    if fmt == "tex":
        return s.replace("-", "$-$")
    return s


def fmt_num(x: Any, nd: int, signed: bool, fmt: str) -> str:
    if not finite(x):
        return _missing(fmt)
    if fmt == "csv":
        return _num_str(float(x), 6, False)
    return _sign_style(_num_str(float(x), nd, signed), fmt)


def _missing(fmt: str) -> str:
    return {"md": "—", "tex": "---", "csv": ""}[fmt]


def _fmt_general(x: Any, fmt: str) -> str:
    """4 significant digits (degeneracy numbers span many orders of magnitude)."""
    if not finite(x):
        return _missing(fmt)
    if fmt == "csv":
        return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(float(x))
    s = f"{float(x):.4g}"
    return _sign_style(s, fmt)


def fmt_params(n: Any, fmt: str) -> str:
    if not is_num(n):
        return _missing(fmt)
    if fmt == "csv":
        return str(int(n))
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e6:.3f}M"


_TEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "<": r"$<$",
    ">": r"$>$",
    "|": r"$|$",
}
_TEX_UNICODE = {
    "Δ": r"$\Delta$",
    "→": r"$\to$",
    "−": "$-$",
    "²": "$^2$",
    "λ": r"$\lambda$",
    "±": r"$\pm$",
    "†": r"$^\dagger$",
    "‡": r"$^\ddagger$",
    "≥": r"$\geq$",
    "≤": r"$\leq$",
    "×": r"$\times$",
    "—": "---",
    "–": "--",
    "✓": "yes",
    "✗": "no",
    "·": r"$\cdot$",
    "δ": r"$\delta$",
    "σ": r"$\sigma$",
    "μ": r"$\mu$",
    "α": r"$\alpha$",
    "…": r"\dots{}",
    "’": "'",
    "‘": "`",
    "“": "``",
    "”": "''",
    "≈": r"$\approx$",
    "φ": r"$\varphi$",
    "ŷ": r"$\hat{y}$",
    "≠": r"$\neq$",
}


def tex_escape(s: str) -> str:
    """Plain text -> pdflatex-safe ASCII (booktabs only; symbols as math)."""
    out = []
    for ch in str(s):
        if ch in _TEX_SPECIAL:
            out.append(_TEX_SPECIAL[ch])
        elif ch in _TEX_UNICODE:
            out.append(_TEX_UNICODE[ch])
        elif ord(ch) < 128:
            out.append(ch)
        else:
            out.append("?")
    return "".join(out)


def _text(s: str, fmt: str) -> str:
    s = " ".join(str(s).split())
    if fmt == "md":
        return s.replace("|", "\\|")
    if fmt == "tex":
        return tex_escape(s)
    return s


def render_cell(cell: tuple, fmt: str) -> str:
    kind = cell[0]
    if kind == "missing":
        return _missing(fmt)
    if kind == "text":
        return _text(cell[1], fmt)
    if kind == "r2":
        return fmt_num(cell[1], 3, True, fmt)
    if kind == "psnr":
        return fmt_num(cell[1], 2, False, fmt)
    if kind == "dpsnr":
        return fmt_num(cell[1], 2, True, fmt)
    if kind == "num":
        return _fmt_general(cell[1], fmt)
    if kind == "std":
        if not finite(cell[1]):
            return _missing(fmt)
        if fmt == "csv":
            return fmt_num(cell[1], 3, False, fmt)
        return ("$\\pm$" if fmt == "tex" else "±") + fmt_num(cell[1], 3, False, fmt)
    if kind == "params":
        return fmt_params(cell[1], fmt)
    if kind in ("ci_r2", "ci_psnr"):
        lo, hi = cell[1]
        if not (finite(lo) and finite(hi)):
            return _missing(fmt)
        nd = 3 if kind == "ci_r2" else 2
        return f"[{fmt_num(lo, nd, True, fmt)}, {fmt_num(hi, nd, True, fmt)}]"
    if kind in ("r2_ci", "dpsnr_ci"):
        x, (lo, hi) = cell[1], cell[2]
        if not finite(x):
            return _missing(fmt)
        nd = 3 if kind == "r2_ci" else 2
        s = fmt_num(x, nd, True, fmt)
        if finite(lo) and finite(hi):
            s += f" [{fmt_num(lo, nd, True, fmt)}, {fmt_num(hi, nd, True, fmt)}]"
        return s
    raise ValueError(f"unknown cell kind {kind!r}")


def _csv_extra(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return fmt_num(v, 6, False, "csv") if math.isfinite(v) else ""
    return str(v)


def _row_strings(table: Table, row: Row, fmt: str) -> list[str]:
    if row.not_run is not None:
        cells = [render_cell(c, fmt) for c in row.cells[: row.n_label]]
        msg = _text(f"not run: {row.not_run}", fmt)
        return cells + [msg] + [""] * (len(table.header) - row.n_label - 1)
    return [render_cell(c, fmt) for c in row.cells]


def footer_lines(files: Sequence[tuple[str, str]]) -> list[str]:
    return ["Inputs (sha256):"] + [f"{h}  {p}" for p, h in files]


def render_md(table: Table, files: Sequence[tuple[str, str]] | None, level: int = 2) -> str:
    out = [f"{'#' * level} {table.title}", "", _text(table.caption, "md"), ""]
    out.append("| " + " | ".join(table.header) + " |")
    out.append("|" + "|".join("---" for _ in table.header) + "|")
    for row in table.rows:
        out.append("| " + " | ".join(_row_strings(table, row, "md")) + " |")
    if table.notes:
        out.append("")
        out.extend(f"{n}  " if i < len(table.notes) - 1 else n for i, n in enumerate(table.notes))
    if files is not None:
        out += ["", "<details><summary>Inputs (sha256)</summary>", "", "```"]
        out += [f"{h}  {p}" for p, h in files]
        out += ["```", "", "</details>"]
    return "\n".join(out) + "\n"


def render_html(table: Table, level: int = 2) -> str:
    """One table as an HTML <section> (cells as in Markdown, escaped; for the Snakemake report)."""
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in table.header)
    body = []
    for row in table.rows:
        cells = [c.replace("\\|", "|") for c in _row_strings(table, row, "md")]
        if row.not_run is not None:
            tds = "".join(f"<td>{esc(c)}</td>" for c in cells[: row.n_label])
            tds += f'<td class="notrun" colspan="{len(table.header) - row.n_label}">{esc(cells[row.n_label])}</td>'
        else:
            tds = "".join(f"<td>{esc(c)}</td>" for c in cells)
        body.append(f"<tr>{tds}</tr>")
    notes = "".join(f"<p class=\"note\">{esc(n)}</p>" for n in table.notes)
    return (
        f'<section id="{esc(table.key)}"><h{level}>{esc(table.title)}</h{level}>'
        f"<p>{esc(' '.join(table.caption.split()))}</p>"
        f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>{notes}</section>\n"
    )


HTML_STYLE = (
    "body{font-family:sans-serif;font-size:13px;margin:1em;color:#222}"
    "table{border-collapse:collapse;margin:.5em 0 1em}th,td{border:1px solid #bbb;padding:2px 6px;"
    "text-align:left;white-space:nowrap}th{background:#eee}td.notrun{color:#777;font-style:italic}"
    "p.note{font-size:12px;color:#555;margin:.2em 0}"
)


def render_all_html(tables: Sequence[Table], files: Sequence[tuple[str, str]]) -> str:
    """Every table on one self-contained HTML page (no scripts, no external resources)."""
    toc = "".join(f'<li><a href="#{html.escape(t.key)}">{html.escape(t.title)}</a></li>' for t in tables)
    files = "\n".join(f"{h}  {html.escape(p)}" for p, h in files)
    return (
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Tables</title>"
        f"<style>{HTML_STYLE}</style></head><body><h1>Tables ({html.escape(PROTOCOL)})</h1>"
        "<p>Generated from the result records and training metrics only. † rows are quoted from the paper, "
        f"not recomputed.</p><ul>{toc}</ul>\n"
        + "".join(render_html(t) for t in tables)
        + f"<details><summary>Inputs (sha256)</summary><pre>{files}</pre></details></body></html>\n"
    )


def render_csv(table: Table, files: Sequence[tuple[str, str]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(table.header + table.extra_header)
    for row in table.rows:
        extra = [_csv_extra(v) for v in row.extra] + [""] * (len(table.extra_header) - len(row.extra))
        w.writerow(_row_strings(table, row, "csv") + extra)
    buf.write("\n")
    for n in table.notes:
        buf.write("# " + " ".join(n.split()) + "\n")
    for line in footer_lines(files):
        buf.write("# " + line + "\n")
    return buf.getvalue()


def render_tex(table: Table, files: Sequence[tuple[str, str]]) -> str:
    out = [
        f"% {tex_escape(table.title)}",
        f"% generated by dreamer4_libero.reporting.tables ({PROTOCOL}); needs only booktabs",
        r"\begin{table}[ht]",
        r"\centering",
        r"\scriptsize",
        r"\caption{" + tex_escape(" ".join(table.caption.split())) + "}",
        r"\begin{tabular}{" + table.align + "}",
        r"\toprule",
        " & ".join(tex_escape(h) for h in table.header) + r" \\",
        r"\midrule",
    ]
    ncol = len(table.header)
    for row in table.rows:
        if row.not_run is not None:
            cells = [render_cell(c, "tex") for c in row.cells[: row.n_label]]
            msg = tex_escape(f"not run: {row.not_run}")
            cells.append(r"\multicolumn{" + str(ncol - row.n_label) + "}{l}{" + msg + "}")
            out.append(" & ".join(cells) + r" \\")
        else:
            out.append(" & ".join(_row_strings(table, row, "tex")) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}"]
    if table.notes:
        out.append(r"\par\smallskip")
        out += [tex_escape(" ".join(n.split())) + r"\par" for n in table.notes]
    out.append(r"\end{table}")
    out += ["% " + line for line in footer_lines(files)]
    return "\n".join(out) + "\n"
