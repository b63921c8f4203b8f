"""The rule files (rules/*.smk) depend on rules/common.smk only (issue 30 item 5).

A name that one rule file uses and another defines would make the workflow work in one include order only
(and, read lazily inside an input function, fail at DAG time rather than at parse time). The static tests
compile each file with Snakemake's own parser and list, with `symtable`, every global name it reads -
at module level and inside its functions and lambdas - which must be defined in the file itself, in
common.smk or by Snakemake. An upstream output is read as `rules.<name>.output.<key>`, which needs the
producing rule to be defined earlier: the only include-order constraint left, checked statically against
the Snakefile's order and dynamically by a dry run of the DAG with the rule files included in the reverse
of that order wherever the constraint allows (the same jobs, shell commands and resources).
"""

import ast
import builtins
import re
import shutil
import subprocess
import symtable
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import snakemake.api  # noqa: F401 (first: snakemake.workflow alone is a circular import)
import snakemake.workflow
from snakemake.parser import parse

from conftest import venv_env

REPO = Path(__file__).resolve().parents[1]
RULES = REPO / "rules"
SNAKEMAKE = shutil.which("snakemake", path=str(Path(sys.executable).parent)) or "snakemake"
# what Snakemake puts in a Snakefile's namespace besides its module globals (snakemake/workflow.py Workflow.__init__)
SNAKEMAKE_NAMES = set(vars(snakemake.workflow)) | {
    "config",
    "rules",
    "workflow",
    "checkpoints",
    "shell",
    "scatter",
    "gather",
    "storage",
    "access",
    "github",
    "gitlab",
    "gitfile",
    "from_queue",
}
ALLOWED = SNAKEMAKE_NAMES | set(dir(builtins))
INCLUDE = re.compile(r'^include: "rules/(\w+)\.smk"$', re.M)


def compile_smk(path: Path) -> str:
    """The Python that Snakemake compiles a .smk file to (snakemake.parser.parse)."""
    src = SimpleNamespace(get_path_or_uri=lambda secret_free=True: str(path))
    wf = SimpleNamespace(sourcecache=SimpleNamespace(open=lambda _src: open(path)))
    code, _ = parse(src, wf, {})
    return code


def global_names(path: Path) -> tuple[set[str], set[str]]:
    """(names the file defines at module level, global names it reads anywhere, nested scopes included)."""
    top = symtable.symtable(compile_smk(path), str(path), "exec")
    defined = {s.get_name() for s in top.get_symbols() if s.is_assigned() or s.is_imported()}
    used = {s.get_name() for s in top.get_symbols() if s.is_referenced()}
    stack = list(top.get_children())
    while stack:
        scope = stack.pop()
        used |= {s.get_name() for s in scope.get_symbols() if s.is_global() and s.is_referenced()}
        stack += scope.get_children()
    return defined, used


def rule_refs(path: Path) -> tuple[dict[str, int], list[tuple[int, str]]]:
    """({rule the file defines: line of compiled code}, [(line, rule name) of each `rules.<name>` it reads])."""
    tree = ast.parse(compile_smk(path))
    defined, refs = {}, []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "rule":
            defined |= {k.value.value: node.lineno for k in node.keywords if k.arg == "name"}
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "rules":
            refs.append((node.lineno, node.attr))
    return defined, sorted(refs)


def include_order() -> list[str]:
    return INCLUDE.findall((REPO / "Snakefile").read_text())


def test_snakefile_includes_every_rule_file_once_common_first():
    order = include_order()
    assert order[0] == "common"
    assert sorted(order) == sorted(p.stem for p in RULES.glob("*.smk")), order


def test_common_reads_only_its_own_names():
    """common.smk's functions run at DAG time: a stage global they read (TOKS, DYN, ...) must be defined here."""
    defined, used = global_names(RULES / "common.smk")
    missing = sorted(used - defined - ALLOWED)
    assert missing == [], f"rules/common.smk reads names it does not define: {missing}"


@pytest.mark.parametrize("stem", [p.stem for p in sorted(RULES.glob("*.smk")) if p.stem != "common"])
def test_rule_file_reads_only_common_names(stem):
    common, _ = global_names(RULES / "common.smk")
    defined, used = global_names(RULES / f"{stem}.smk")
    missing = sorted(used - defined - common - ALLOWED)
    assert missing == [], f"rules/{stem}.smk reads names defined neither there nor in rules/common.smk: {missing}"
    # a stage that redefines a common name would make the value depend on the include order
    assert sorted(defined & common) == [], f"rules/{stem}.smk redefines names of common.smk"


def _producers() -> dict[str, str]:
    """rule name -> the rule file (stem) that defines it."""
    return {r: p.stem for p in RULES.glob("*.smk") for r in rule_refs(p)[0]}


def _requires() -> dict[str, set[str]]:
    """rule file -> the other rule files whose rules it reads as rules.<name> (they must be included first)."""
    prod = _producers()
    return {p.stem: {prod[r] for _, r in rule_refs(p)[1]} - {p.stem} for p in RULES.glob("*.smk")}


def test_rule_references_name_upstream_rules():
    """Every rules.<name> names a rule that exists and is defined before the reference: earlier in the same
    file, or in a file the Snakefile includes earlier (Snakemake resolves rules.<name> when the line runs)."""
    prod, order = _producers(), include_order()
    for stem in order:
        own, refs = rule_refs(RULES / f"{stem}.smk")
        for line, name in refs:
            assert name in prod, f"rules/{stem}.smk reads rules.{name}: no such rule"
            where = prod[name]
            assert order.index(where) <= order.index(stem), f"rules/{stem}.smk reads rules.{name} of later {where}.smk"
            if where == stem:  # the rule's decorator line comes before the reference
                assert own[name] < line, f"rules/{stem}.smk reads rules.{name} before defining it"
    # the constraint the Snakefile's comment states: which files must come before which
    assert _requires() == {
        "common": set(),
        "assets": set(),
        "preprocess": set(),
        "dmcontrol": set(),
        "dynamics": set(),
        "tokenizer": {"preprocess"},
        "evaluation": {"preprocess", "dynamics"},
        "tables": {"preprocess", "tokenizer", "evaluation"},
        "report": {"preprocess", "dmcontrol", "tables"},
    }


def _reversed_order() -> list[str]:
    """The include order furthest from the Snakefile's that rules.<name> allows: common first, then each time
    the latest (in the Snakefile's order) file whose producers are all included already."""
    order, req = include_order(), _requires()
    out, todo = ["common"], [s for s in include_order() if s != "common"]
    while todo:
        ready = [s for s in todo if req[s] <= set(out)]
        pick = max(ready, key=order.index)
        out.append(pick)
        todo.remove(pick)
    return out


def _jobs(snakefile: Path, tmp_path: Path) -> list[str]:
    """Every job of the demo's forceall dry run: its block (rule, wildcards, files, resources, shell command) with
    the run-specific lines (date, job id) dropped, sorted."""
    r = subprocess.run(
        [
            SNAKEMAKE,
            "-n",
            "-p",
            "--forceall",
            "--cores",
            "1",
            "--directory",
            str(REPO),
            "--snakefile",
            str(snakefile),
            "--configfile",
            str(REPO / "config/demo.yaml"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=venv_env(),
        timeout=300,
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    job = re.compile(r"^(local)?rule \w+:$", re.M)
    return sorted(
        "\n".join(ln for ln in block.splitlines() if not ln.startswith("[") and not ln.strip().startswith("jobid:"))
        for block in (r.stdout + r.stderr).split("\n\n")
        if job.search(block)
    )


def test_reversed_include_order_gives_the_same_dag(tmp_path):
    order = _reversed_order()
    assert order != include_order()
    # the rule files that read no other file's rules run before their place in the Snakefile
    assert order.index("dynamics") < order.index("dmcontrol") and order[-1] == "assets", order
    text = (REPO / "Snakefile").read_text()
    block = re.compile(r'(^include: "rules/\w+\.smk"\n)+', re.M)
    assert len(block.findall(text)) == 1  # the includes are one block
    text = block.sub("".join(f'include: "{RULES / s}.smk"\n' for s in order), text)
    for rel in ('"report/', '"config/schema'):  # paths relative to the Snakefile's folder
        text = text.replace(rel, f'"{REPO}/{rel[1:]}')
    reordered = tmp_path / "Snakefile"
    reordered.write_text(text)
    base, moved = _jobs(REPO / "Snakefile", tmp_path), _jobs(reordered, tmp_path)
    assert len(base) == 39 and any("rule train_dynamics:" in j for j in base)
    assert moved == base
