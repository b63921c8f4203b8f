"""Shared fixtures (a synthetic LIBERO dataset at the test config's size and its preprocessing, the demo study,
a real Slurm, trainer subprocesses), the test tiers, and the fault-injection summary."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from dreamer4_libero.config import demo_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def test_cfg() -> dict:
    return demo_config(test=True)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory, test_cfg) -> Path:
    """12 tasks x 12 demos x 40-64 frames in the LIBERO layout (config/test.yaml)."""
    from dreamer4_libero.data.synthetic import demo_task_ids, generate

    s = test_cfg["synthetic"]
    root = tmp_path_factory.mktemp("libero")
    generate(
        root,
        demo_task_ids(per_suite=s["per_suite"]),
        n_demos=s["n_demos"],
        len_range=(s["len_min"], s["len_max"]),
        seed=s["seed"],
        progress=False,
    )
    return root


@pytest.fixture(scope="session")
def preprocessed(tmp_path_factory, synthetic_root, test_cfg) -> Path:
    """Output folder of the preprocessing stage run on `synthetic_root`, with splits."""
    from dreamer4_libero.data.preprocess import preprocess
    from dreamer4_libero.data.splits import build_and_write

    out = tmp_path_factory.mktemp("pre")
    preprocess(synthetic_root, out, workers=2, min_demo_len=test_cfg["data"]["min_demo_len"], progress=False)
    build_and_write(out / "manifest.json", out / "splits", split_cfg=test_cfg["split"], probe_cfg=test_cfg["probe"])
    return out


def write_libero_file(path: Path, demos: list[tuple[np.ndarray, np.ndarray]], convention: str = "opengl") -> Path:
    """A minimal file in the LIBERO layout: demos = [(upright frames (T,128,128,3) uint8, actions (T,7))]."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        g = f.create_group("data")
        g.attrs["problem_info"] = json.dumps({"language_instruction": "do the thing"})
        g.attrs["env_args"] = json.dumps({"env_kwargs": {"camera_heights": 128}})
        g.attrs["macros_image_convention"] = convention
        g.attrs["num_demos"] = len(demos)
        g.attrs["total"] = sum(len(a) for _, a in demos)
        for i, (frames, actions) in enumerate(demos):
            d = g.create_group(f"demo_{i}")
            d.attrs["num_samples"] = len(actions)
            d.create_dataset("actions", data=actions.astype(np.float64))
            stored = frames[:, ::-1] if convention == "opengl" else frames
            d.create_dataset("obs/agentview_rgb", data=np.ascontiguousarray(stored))
    return path


@pytest.fixture(scope="session")
def tiny_tokenizer_ckpt(tmp_path_factory) -> Path:
    """An upstream-format tokenizer checkpoint (random weights, 32x32, 4 latents x 8) for dynamics tests."""
    import torch

    from dreamer4_libero.models.tokenizer import Tokenizer, TokenizerConfig
    from dreamer4_libero.models.upstream import save_upstream_tokenizer_checkpoint

    torch.manual_seed(0)
    tok = Tokenizer(
        TokenizerConfig(H=32, W=32, patch=8, d_model=32, n_heads=2, depth=1, n_latents=4, d_bottleneck=8, dropout=0.0)
    )
    path = tmp_path_factory.mktemp("tok") / "tokenizer.pt"
    save_upstream_tokenizer_checkpoint(path, tok)
    return path


@pytest.fixture(scope="session")
def lpips_weights() -> Path:
    """The LPIPS weights in the machine cache (<repo>/.cache/lpips or $D4L_CACHE/lpips), fetched once here, in the
    test process, as `make fetch-lpips` does on a submit host: trainers never download them."""
    from dreamer4_libero.assets.lpips_weights import ensure_lpips_weights

    return ensure_lpips_weights()


def _repo_copy(dest: Path) -> Path:
    """The working tree (tracked and untracked, not ignored files) copied to `dest`: a clean checkout."""
    files = (
        subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True, check=True
        )
        .stdout.decode()
        .split("\0")
    )
    for f in filter(None, files):
        src = REPO / f
        if src.is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / f)
    return dest


def snakemake_cmd(*args) -> list[str]:
    exe = shutil.which("snakemake", path=str(Path(sys.executable).parent)) or "snakemake"
    return [exe, *args]


def planned_jobs(out: str) -> dict[str, int]:
    """rule -> job count from the "Job stats" block of a (dry-)run's output ({} when nothing is planned)."""
    if "Job stats:" not in out:
        return {}
    jobs = {}
    for ln in out[out.index("Job stats:") :].split("\n")[3:]:
        if not ln.strip():
            break
        name, count = ln.split()
        jobs[name] = int(count)
    return jobs


def dry_run_jobs(out: str) -> list[dict]:
    """Every job of a dry run's output (`snakemake -n -p`): {rule, local, output, benchmark, wildcards, resources,
    shell};
    `wildcards` is a dict in the order printed, `resources` the raw `k=v, ...` text, `shell` '' where none."""
    jobs, cur = [], None
    for ln in out.splitlines():
        s = ln.strip()
        if s.startswith(("rule ", "localrule ")) and s.endswith(":"):
            cur = {
                "rule": s.split()[1][:-1],
                "local": s.startswith("localrule"),
                "output": [],
                "benchmark": None,
                "wildcards": {},
                "resources": "",
                "shell": "",
            }
            jobs.append(cur)
        elif cur is None:
            continue
        elif s.startswith("output:"):
            cur["output"] = [x.strip() for x in s[len("output:") :].split(",") if x.strip()]
        elif s.startswith("benchmark:"):
            cur["benchmark"] = s[len("benchmark:") :].strip()
        elif s.startswith("wildcards:"):
            cur["wildcards"] = dict(kv.strip().split("=", 1) for kv in s[len("wildcards:") :].split(","))
        elif s.startswith("resources:"):
            cur["resources"] = s[len("resources:") :].strip()
        elif s.startswith("Shell command:"):
            cur["shell"] = s[len("Shell command:") :].strip()
    return jobs


_NO_SLURM_BIN: Path | None = None


def trainer_cmd(script: str, section_flag: str, section: dict, pre: Path, *args: str) -> list[str]:
    """A trainer script's command line on a preprocessed set (train split), progress bars off:
    `trainer_cmd("train_tokenizer.py", "--tokenizer", cfg, pre, "--resolution", "32", "--ckpt-dir", ...)`."""
    data = ["--manifest", str(pre / "manifest.json"), "--train-split", str(pre / "splits" / "train.json")]
    script_path = str(REPO / "workflow_scripts" / script)
    return [sys.executable, script_path, section_flag, json.dumps(section), *data, *args, "--progress", "false"]


def step_state(ckpt_dir: Path, step: int) -> dict:
    """The checkpoint of `step` in a trainer's checkpoint folder."""
    import torch

    return torch.load(ckpt_dir / f"step_{step:07d}.pt", weights_only=True)


def venv_env(slurm: bool = False) -> dict:
    """The environment for a Snakemake (or `make`) subprocess: the venv's bin first on PATH.

    Unless `slurm`, also a folder whose `scontrol` fails at once: on import, Snakemake's Slurm executor
    plugin asks `scontrol show config` for MinJobAge (only to word a help text), which waits 10 s for its
    timeout on a machine that has the Slurm client but no running controller (this one, between Slurm
    tests) - 10 s for every Snakemake invocation of the suite that never talks to Slurm."""
    global _NO_SLURM_BIN
    path = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
    if not slurm:
        if _NO_SLURM_BIN is None:
            import tempfile

            _NO_SLURM_BIN = Path(tempfile.mkdtemp(prefix="d4l-no-slurm-"))
            (_NO_SLURM_BIN / "scontrol").write_text("#!/bin/sh\necho 'scontrol: no Slurm in this test' >&2\nexit 1\n")
            (_NO_SLURM_BIN / "scontrol").chmod(0o755)
        path = f"{_NO_SLURM_BIN}:{path}"
    return {**os.environ, "PATH": path, "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="session")
def demo_study(tmp_path_factory) -> Path:
    """The whole demo DAG (`make demo`'s snakemake command) run once per test session in a copy of the repo.

    Every test that needs trained demo models, evaluation records, tables or the archive reads this run.
    Developers can point DEMO_STUDY_DIR at a finished `make demo` checkout to reuse it (its tables are
    regenerated by one test); CI never sets it.
    """
    reuse = os.environ.get("DEMO_STUDY_DIR")
    if reuse and not os.environ.get("CI"):
        return Path(reuse).resolve()
    work = _repo_copy(tmp_path_factory.mktemp("demo_study"))
    log = work / "demo_snakemake.log"
    with open(log, "w") as fh:
        r = subprocess.run(
            snakemake_cmd("--profile", "profiles/local", "--cores", "2", "--configfile", "config/demo.yaml"),
            cwd=work,
            env=venv_env(),
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
    if r.returncode != 0:
        tail = log.read_text()[-4000:]
        logs = sorted((work / "logs").rglob("*.log"))
        last = logs[-1].read_text()[-3000:] if logs else ""
        raise AssertionError(f"demo DAG failed (exit {r.returncode}):\n{tail}\n--- newest rule log ---\n{last}")
    return work


SLURM_SCRIPT = Path(os.environ.get("SLURM_CI_SCRIPT", REPO.parent / "shared" / "ci" / "slurm-single-node.sh"))


@pytest.fixture(scope="session")
def slurm_cluster():
    """A real single-node Slurm (../shared/ci/slurm-single-node.sh: 2 CPUs, 2 fake GPUs), up for the session.

    Skipped, with the reason, only where it cannot be started (not root, no script); in CI (CI set)
    a Slurm that cannot be started fails the tests instead."""
    why = None
    if os.geteuid() != 0:
        why = "starting the single-node Slurm needs root"
    elif not SLURM_SCRIPT.exists():
        why = f"{SLURM_SCRIPT} not found (set SLURM_CI_SCRIPT)"
    else:
        r = subprocess.run(["bash", str(SLURM_SCRIPT), "up"], capture_output=True, text=True, timeout=900)
        if r.returncode != 0:
            why = f"`{SLURM_SCRIPT} up` failed (exit {r.returncode}): {(r.stdout + r.stderr)[-3000:]}"
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"Slurm tests must run in CI, but Slurm could not be started: {why}")
        pytest.skip(why)
    yield SLURM_SCRIPT
    subprocess.run(["bash", str(SLURM_SCRIPT), "down"], capture_output=True, text=True, timeout=300)


@pytest.fixture
def dag_repo(tmp_path) -> Path:
    """A clean copy of the repository in which the test runs a Snakemake DAG for real (jobs train and
    evaluate). Asking for it puts the test in the e2e tier."""
    return _repo_copy(tmp_path / "repo")


@pytest.fixture(scope="module")
def snakemake_repo(tmp_path_factory) -> Path:
    """A clean copy of the repository, shared by a module, for real (not dry) Snakemake invocations that run
    no training (a refused config, a failing check). Asking for it puts the test in the integration tier."""
    return _repo_copy(tmp_path_factory.mktemp("snakemake_repo"))


class TrainerCLI:
    """Real trainers as subprocesses: workflow_scripts/train_*.py, tests/engine_toy.py, under torchrun or not.
    Every test that starts one gets it from the `trainer_cli` fixture (integration tier)."""

    TIMEOUT = 600

    @staticmethod
    def torchrun(nproc: int) -> list[str]:
        """The launcher prefix of an `nproc`-process single-node run."""
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]

    def run(self, cmd: list[str], *, timeout: float | None = None, **kw) -> subprocess.CompletedProcess:
        """Run to the end; stdout and stderr captured as text."""
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout or self.TIMEOUT, **kw)

    def start(
        self, cmd: list[str], log: Path, *, cwd: Path | None = None, env: dict | None = None, **extra_env: str
    ) -> subprocess.Popen:
        """Start in the background, stdout and stderr into `log` (unbuffered)."""
        with open(log, "w") as fh:  # the child keeps its own copy of the descriptor
            return subprocess.Popen(
                cmd,
                stdout=fh,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env={**(env or os.environ), "PYTHONUNBUFFERED": "1", **extra_env},
            )


@pytest.fixture(scope="session")
def trainer_cli() -> TrainerCLI:
    return TrainerCLI()


# ----------------------------------------------------------------------------------------------
# Test tiers, assigned here and nowhere else, from the fixtures a test uses (its whole fixture
# closure, so a fixture built on `demo_study` makes its tests e2e too):
#   e2e          the demo-study run, a real Slurm, or a full Snakemake DAG
#   integration  subprocess trainers or torchrun, real (not dry) Snakemake invocations, or more than
#                UNIT_MAX_STEPS optimizer steps in one test
#   unit         everything else                  (`make test-fast` = -m "not e2e and not integration")
# A unit-tier test that starts such a process or trains longer anyway fails, naming the fixture that
# would put it in the right tier (the guard below); tests/test_tiers.py checks the classification.

TIER_FIXTURES = {
    "demo_study": "e2e",
    "slurm_cluster": "e2e",
    "dag_repo": "e2e",
    "trainer_cli": "integration",
    "snakemake_repo": "integration",
    "long_training": "integration",
}
TIERS = ("unit", "integration", "e2e")
UNIT_MAX_STEPS = 50
TIER_KEY = pytest.StashKey[str]()


@pytest.fixture
def long_training():
    """For a test that trains in-process for more than UNIT_MAX_STEPS optimizer steps (integration tier)."""
    return UNIT_MAX_STEPS


def tier_of(fixturenames) -> str:
    found = {TIER_FIXTURES[f] for f in fixturenames if f in TIER_FIXTURES}
    return max(found, key=TIERS.index, default="unit")


# (what a unit-tier test may not start, the fixture it needs instead); matched against each argv item
_HEAVY_ARGV = (
    (re.compile(r"^torch\.distributed\.run$|(^|/)torchrun$"), "torchrun", "trainer_cli"),
    (re.compile(r"(^|/)workflow_scripts/(pre)?train_\w+\.py$|(^|/)engine_toy\.py$"), "a trainer script", "trainer_cli"),
    (re.compile(r"(^|/)(sbatch|srun|salloc)$"), "a Slurm job", "slurm_cluster"),
)
_SNAKEMAKE_NO_JOBS = re.compile(
    r"^(-n|--dry-?run|--lint|--report|--unlock|--list\S*|--summary|--detailed-summary|"
    r"--rulegraph|--dag|--filegraph|--version|-h|--help|-\w*n\w*)$"
)


def heavy_command(args) -> tuple[str, str] | None:
    """(what, fixture) when `args` (a Popen argv) starts something beyond the unit tier, else None."""
    argv = [str(a) for a in ([args] if isinstance(args, (str, bytes, os.PathLike)) else args)]
    if len(argv) == 1 and " " in argv[0]:  # a shell string
        argv = argv[0].split()
    for a in argv:
        for pat, what, fixture in _HEAVY_ARGV:
            if pat.search(a):
                return what, fixture
    if any(Path(a).name == "snakemake" for a in argv[:3]) and not any(_SNAKEMAKE_NO_JOBS.match(a) for a in argv):
        return "a real (not dry) Snakemake run", "snakemake_repo (or dag_repo for a DAG that trains)"
    return None


class _TierGuard:
    """Active during a unit-tier test's setup and call: refuses heavy subprocesses; counts the optimizer steps
    of its call phase (a module-scoped fixture's training is shared by its tests, so it is not counted)."""

    def __init__(self):
        self.item = None
        self.steps = 0
        self._popen_init = None

    def install(self):
        import torch.optim.optimizer as optim

        self._popen_init = orig = subprocess.Popen.__init__
        guard = self

        def guarded_init(popen, args, *a, **kw):
            if guard.item is not None:
                hit = heavy_command(args)
                if hit:
                    pytest.fail(
                        f"{guard.item.nodeid} is in the unit tier but starts {hit[0]} ({args!r}); ask for the "
                        f"`{hit[1]}` fixture (tests/conftest.py TIER_FIXTURES)",
                        pytrace=False,
                    )
            orig(popen, args, *a, **kw)

        subprocess.Popen.__init__ = guarded_init
        self._hook = optim.register_optimizer_step_post_hook(self._count)

    def uninstall(self):
        if self._popen_init is not None:
            subprocess.Popen.__init__ = self._popen_init
            self._hook.remove()

    def _count(self, *_):
        self.steps += 1  # read after a unit-tier test's call phase only


_GUARD = _TierGuard()

_HEAVY_NAMES = re.compile(
    r"torch\.distributed\.run|\btorchrun\b|(pre)?train_(tokenizer|dynamics)\.py|engine_toy\.py|"
    r"\b(sbatch|srun|salloc|squeue)\b"
)


def static_heavy_refs(item) -> list[str]:
    """What a test's code names that belongs to a higher tier (torchrun, a trainer script, Slurm commands):
    the string constants and module-level values used by its function, its fixtures, and the tests/ helper
    functions those call, transitively (docstrings and comments aside). The tier machinery itself (this file,
    whose tier fixtures are in TIER_FIXTURES, and tests/test_tiers.py, whose test data name such commands)
    is not scanned."""
    import types

    here = Path(__file__).resolve()
    tests_dir, machinery = str(here.parent), {str(here), str(here.parent / "test_tiers.py")}
    funcs = [getattr(item, "obj", None)]
    for defs in item._fixtureinfo.name2fixturedefs.values():
        funcs += [d.func for d in defs]
    seen, hits = set(), []

    def check(value, where):
        if isinstance(value, (str, os.PathLike)) and _HEAVY_NAMES.search(str(value)):
            hits.append(f"{where}: {str(value)[:120]!r}")
        elif isinstance(value, (list, tuple)):
            for v in value:
                check(v, where)

    def visit_code(code, glb, where, doc):
        for c in code.co_consts:
            if isinstance(c, types.CodeType):
                visit_code(c, glb, where, None)
            elif c is not doc:
                check(c, where)
        for name in code.co_names:
            v = glb.get(name)
            if isinstance(v, types.FunctionType):
                visit(v)
            elif v is not None:
                check(v, f"{where} -> {name}")

    def visit(fn):
        fn = getattr(fn, "__wrapped__", fn)
        code = getattr(fn, "__code__", None)
        if code is None or code in seen or not code.co_filename.startswith(tests_dir) or code.co_filename in machinery:
            return
        seen.add(code)
        visit_code(code, fn.__globals__, f"{Path(code.co_filename).name}:{fn.__name__}", fn.__doc__)

    for fn in funcs:
        if fn is not None:
            visit(fn)
    return hits


_DESELECTED: list = []


def pytest_deselected(items):
    _DESELECTED.extend(items)


def pytest_collection_finish(session):
    """With D4L_TIER_AUDIT=<file>: write every selected test's tier, tier fixtures and static heavy references,
    and the number deselected (tests/test_tiers.py reads it after `pytest --collect-only -m "not e2e and not
    integration"`)."""
    out = os.environ.get("D4L_TIER_AUDIT")
    if out:
        Path(out).write_text(
            json.dumps(
                {
                    "deselected": len(_DESELECTED),
                    "items": {
                        it.nodeid: {
                            "tier": it.stash.get(TIER_KEY, "unit"),
                            "tier_fixtures": sorted(set(it.fixturenames) & set(TIER_FIXTURES)),
                            "heavy": static_heavy_refs(it),
                        }
                        for it in session.items
                    },
                },
                indent=1,
            )
        )


def pytest_configure(config):
    _GUARD.install()


def pytest_unconfigure(config):
    _GUARD.uninstall()
    if _NO_SLURM_BIN is not None:
        shutil.rmtree(_NO_SLURM_BIN, ignore_errors=True)


def _guard(item):
    return item if item.stash.get(TIER_KEY, "unit") == "unit" else None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    _GUARD.item = _guard(item)  # subprocesses only: a module fixture's steps are shared, not this test's
    try:
        return (yield)
    finally:
        _GUARD.item = None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    unit = _guard(item)
    _GUARD.item, _GUARD.steps = unit, 0
    try:
        res = yield
    finally:
        _GUARD.item = None
    if unit is not None and _GUARD.steps > UNIT_MAX_STEPS:
        pytest.fail(
            f"{item.nodeid} is in the unit tier but took {_GUARD.steps} optimizer steps (at most "
            f"{UNIT_MAX_STEPS}): shrink it, or ask for the `long_training` fixture",
            pytrace=False,
        )
    return res


# ----------------------------------------------------------------------------------------------
# fault-injection tests: `@pytest.mark.fault(fault="...", guarantee="...")`. The session summary
# prints every such test with its fault, its guarantee and its outcome (so the CI log shows which
# guarantees were checked, even under `pytest -q`).

_FAULT_RESULTS: list[tuple[str, str, str, str]] = []  # (test id, fault, guarantee, outcome)


def _fault_marker(item):
    m = item.get_closest_marker("fault")
    if m is None:
        return None
    fault, guarantee = m.kwargs.get("fault"), m.kwargs.get("guarantee")
    if not fault or not guarantee:
        raise pytest.UsageError(f"{item.nodeid}: @pytest.mark.fault needs fault=... and guarantee=...")
    return fault, guarantee


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by these markers
def pytest_collection_modifyitems(config, items):
    for item in items:
        _fault_marker(item)  # a marker without fault/guarantee is a usage error at collection
        tier = tier_of(item.fixturenames)
        item.stash[TIER_KEY] = tier
        item.add_marker(tier)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    fg = _fault_marker(item)
    if fg is not None:  # carried by the report, so that it also reaches pytest-xdist's controller
        outcome.get_result().user_properties.append(("fault", list(fg)))


def pytest_runtest_logreport(report):
    fg = dict(report.user_properties).get("fault")
    if fg is None:
        return
    if report.when == "setup" and report.skipped:
        _FAULT_RESULTS.append((report.nodeid, *fg, "SKIPPED"))
    elif report.when == "call":
        _FAULT_RESULTS.append(
            (report.nodeid, *fg, "PASSED" if report.passed else ("SKIPPED" if report.skipped else "FAILED"))
        )
    elif report.when == "setup" and report.failed:
        _FAULT_RESULTS.append((report.nodeid, *fg, "ERROR"))


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not _FAULT_RESULTS:
        return
    tr = terminalreporter
    tr.section(
        f"fault injection: {len(_FAULT_RESULTS)} faults, "
        f"{sum(r[3] == 'PASSED' for r in _FAULT_RESULTS)} guarantees held"
    )
    for nodeid, fault, guarantee, outcome in _FAULT_RESULTS:
        tr.write_line(f"{outcome:7s} {nodeid}")
        tr.write_line(f"        fault:     {fault}")
        tr.write_line(f"        guarantee: {guarantee}")
