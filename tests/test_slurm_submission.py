"""The paper-scale study as a cluster user submits it, with the sbatch calls captured (issue 26).

`snakemake --profile slurm` runs the paper config (config.yaml) against a generated 130-task LIBERO-format
root with the real Slurm executor plugin, but with stand-ins on PATH: `sbatch` logs its arguments and starts
nothing, `squeue` reports each job's state, `sacctmgr` knows the account. Every job's first attempt is reported
FAILED, so Snakemake
resubmits it (each training rule's own retries, `--retries 1` for the rest); on the second attempt the
stand-in creates the job's outputs (empty files: nothing runs) and reports COMPLETED, so that every
downstream job is submitted too. The test then asserts, for every rule, the sbatch flags of attempts 1 and 2.
"""

import json
import re
import subprocess
import sys
import time

import pytest

from conftest import dry_run_jobs, snakemake_cmd, venv_env
from dreamer4_libero.data.synthetic import cycle_task_ids, generate

# rules whose scripts run a network: they must get a GPU at paper scale
GPU_RULES = {"train_tokenizer", "train_dynamics", "tokenizer_eval", "probe", "probe_baselines", "rollout_eval"}
DOWNLOAD = re.compile(r"pip download|https?://|\bwget\b|\bcurl\b|huggingface|hf_hub|torch\.hub")

SITE = """\
data: {{libero_root: {root}}}
dmcontrol_init: {{source: pretrain}}    # every rule of the DAG, the DMControl pretraining's too
slurm:
  partition: cpu
  gpu_partition: gpu
  account: proj42
  gpu_constraint: h100
  extra: "--mail-type=FAIL"
  rules:
    train_dynamics: {{partition: gpu-long}}
    collect_dmcontrol: {{constraint: egl}}
"""

SBATCH = r'''#!{python}
"""Stand-in sbatch: log the call, start nothing; attempt 2 of a job creates its outputs (empty)."""
import fcntl, json, os, sys
from pathlib import Path
state = Path(os.environ["SBATCH_STATE"])
argv = sys.argv[1:]
# the plugin submits from several threads at once: one call at a time (unique job ids, whole lines)
lock = open(state / "sbatch.lock", "w")
fcntl.flock(lock, fcntl.LOCK_EX)
comment = argv[argv.index("--comment") + 1]
calls_file = state / "calls.jsonl"
calls = [json.loads(x) for x in calls_file.read_text().splitlines()] if calls_file.exists() else []
attempt = 1 + sum(c["comment"] == comment for c in calls)
jobid = str(1000 + len(calls))
outputs = json.loads((state / "outputs.json").read_text()).get(comment)
ok = attempt >= 2 and outputs is not None
if ok:
    for o in outputs:
        Path(o).parent.mkdir(parents=True, exist_ok=True)
        Path(o).touch()
with open(state / "calls.jsonl", "a") as fh:
    fh.write(json.dumps({{"jobid": jobid, "comment": comment, "attempt": attempt, "argv": argv}}) + "\n")
with open(state / "states.txt", "a") as fh:
    fh.write(f"{{jobid}}|{{'COMPLETED' if ok else 'FAILED'}}\n")
print(jobid)
'''

SQUEUE = r'''#!/bin/sh
cat "$SBATCH_STATE/states.txt" 2>/dev/null
'''


def _comment(job: dict) -> str:
    """The plugin's --comment of a job: rule_<rule>[_wildcards_<values joined by _>]."""
    wc = "_".join(job["wildcards"].values()).replace("/", "_")
    return f"rule_{job['rule']}" + (f"_wildcards_{wc}" if wc else "")


def _flag(argv: list[str], *names: str) -> str | None:
    """The value of the first of `names` in an sbatch argv (`-t 10`, `--nodes=1`, `-p 'x'`)."""
    for i, a in enumerate(argv):
        for n in names:
            if a == n and i + 1 < len(argv):
                return argv[i + 1]
            if n.startswith("--") and a.startswith(n + "="):
                return a[len(n) + 1 :]
    return None


@pytest.fixture(scope="module")
def submitted(snakemake_repo, tmp_path_factory):
    """(calls, dry-run jobs) of the paper study's submission with stand-in sbatch/squeue."""
    tmp = tmp_path_factory.mktemp("submission")
    root = tmp / "libero"
    generate(root, cycle_task_ids(130), n_demos=1, len_range=(4, 4), progress=False)
    assert len(list(root.rglob("*.hdf5"))) == 130
    site = tmp / "site.yaml"
    site.write_text(SITE.format(root=root))
    work = snakemake_repo
    state = tmp / "state"
    state.mkdir()
    bin_ = tmp / "bin"
    bin_.mkdir()
    (bin_ / "sbatch").write_text(SBATCH.format(python=sys.executable))
    (bin_ / "squeue").write_text(SQUEUE)
    # `scontrol show config`: MinJobAge long enough for squeue status queries (else the plugin wants sacct)
    (bin_ / "scontrol").write_text("#!/bin/sh\necho 'MinJobAge               = 300 sec'\n")
    (bin_ / "sacctmgr").write_text("#!/bin/sh\necho proj42\n")  # the plugin checks the account exists
    for f in bin_.iterdir():
        f.chmod(0o755)
    xdg = tmp / "xdg"
    (xdg / "snakemake" / "slurm").mkdir(parents=True)
    (xdg / "snakemake" / "slurm" / "config.yaml").write_text((work / "profiles/slurm/config.yaml").read_text())
    env = {
        **venv_env(),
        "PATH": f"{bin_}:{venv_env()['PATH']}",
        "XDG_CONFIG_HOME": str(xdg),
        "SBATCH_STATE": str(state),
    }
    dry = subprocess.run(
        snakemake_cmd("--profile", "slurm", "-n", "-p", "--forceall", "--configfile", str(site)),
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
    )
    assert dry.returncode == 0, dry.stderr[-3000:]
    jobs = [j for j in dry_run_jobs(dry.stdout + dry.stderr) if j["rule"] != "all"]
    # which rules run on the submit host: Snakemake's own decision (a dry run does not print it)
    rules = subprocess.run(
        [sys.executable, "tests/snakemake_rules.py", str(site)], cwd=work, env=env, capture_output=True, text=True
    )
    assert rules.returncode == 0, rules.stderr[-3000:]
    local = {n for n, r in json.loads(rules.stdout.split("RULES_JSON ", 1)[1]).items() if r["local"]}
    for j in jobs:
        j["local"] = j["rule"] in local
    (state / "outputs.json").write_text(
        json.dumps(
            {_comment(j): j["output"] + ([j["benchmark"]] if j["benchmark"] else []) for j in jobs if not j["local"]}
        )
    )
    t0 = time.time()
    r = subprocess.run(
        snakemake_cmd(
            "--profile",
            "slurm",
            "--configfile",
            str(site),
            "--retries",
            "1",
            "--slurm-init-seconds-before-status-checks",
            "1",
            "--latency-wait",
            "1",
        ),
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-5000:]
    calls = [json.loads(x) for x in (state / "calls.jsonl").read_text().splitlines()]
    print(f"\n[sbatch] {len(calls)} sbatch calls for {len(jobs)} jobs in {time.time() - t0:.0f} s")
    return calls, jobs, dry.stdout


def test_every_job_submitted_twice_with_the_same_time_and_memory(submitted):
    calls, jobs, _ = submitted
    assert len({c["jobid"] for c in calls}) == len(calls)  # the stand-in gave every submission its own id
    remote = [j for j in jobs if not j["local"]]
    by = {}
    for c in calls:
        by.setdefault(c["comment"], []).append(c)
    assert set(by) == {_comment(j) for j in remote}, set(by) ^ {_comment(j) for j in remote}
    for comment, cs in by.items():
        assert [c["attempt"] for c in cs] == [1, 2], (comment, [c["attempt"] for c in cs])
        a1, a2 = (c["argv"] for c in cs)
        for flag in (
            ("-t", "--time"),
            ("--mem",),
            ("-c", "--cpus-per-task"),
            ("--gpus",),
            ("-p", "--partition"),
            ("-C", "--constraint"),
            ("--nodes",),
        ):
            assert _flag(a1, *flag) == _flag(a2, *flag), (comment, flag, _flag(a1, *flag), _flag(a2, *flag))
        assert _flag(a1, "-t") and _flag(a1, "--mem"), (comment, a1)
    rules = sorted({j["rule"] for j in remote})
    for rule in rules:  # one line per rule: its first job's two attempts
        cs = next(v for k, v in by.items() if k.startswith(f"rule_{rule}"))

        def flags(a):
            return " ".join(
                f"{n}={_flag(a, n)}"
                for n in ("-t", "--mem", "--cpus-per-task", "--gpus", "--nodes", "-p", "-C")
                if _flag(a, n)
            )

        print(f"[sbatch] {rule}: attempt 1 {flags(cs[0]['argv'])} | attempt 2 {flags(cs[1]['argv'])}")
    assert {
        "preprocess",
        "train_tokenizer",
        "train_dynamics",
        "probe",
        "rollout_eval",
        "collect_dmcontrol",
        "pretrain_dmcontrol",
        "tables",
        "archive",
    } <= set(rules)


def test_cluster_settings_reach_every_rule(submitted):
    calls, jobs, _ = submitted
    rule_of = {_comment(j): j for j in jobs}
    for c in calls:
        job, argv = rule_of[c["comment"]], c["argv"]
        rule, gpus = job["rule"], _flag(argv, "--gpus")
        assert _flag(argv, "-A", "--account") == "proj42", (rule, argv)
        assert "--mail-type=FAIL" in " ".join(argv), (rule, argv)
        want_part = "gpu-long" if rule == "train_dynamics" else ("gpu" if gpus else "cpu")
        assert _flag(argv, "-p", "--partition") == want_part, (rule, argv)
        want_c = "egl" if rule == "collect_dmcontrol" else ("h100" if gpus else None)
        assert _flag(argv, "-C", "--constraint") == want_c, (rule, argv)
        if rule in GPU_RULES:  # one node, its GPUs (the model-less form here)
            assert gpus and int(gpus) >= 1 and _flag(argv, "--nodes") == "1", (rule, argv)
        else:
            assert gpus is None and _flag(argv, "--nodes") is None, (rule, argv)


def test_cpus_equal_the_workers_each_script_starts(submitted):
    calls, jobs, _ = submitted
    rule_of = {_comment(j): j for j in jobs}
    for c in calls:
        job = rule_of[c["comment"]]
        cpus = int(_flag(c["argv"], "-c", "--cpus-per-task"))
        m = re.search(r"--workers (\d+)", job["shell"])
        if m:  # preprocess: its worker processes
            assert int(m.group(1)) == cpus, (job["rule"], cpus, job["shell"][:300])
        elif "--num-workers auto" in job["shell"]:  # trainers: loader workers from the job's CPUs
            assert cpus >= int(_flag(c["argv"], "--gpus") or 1), (job["rule"], cpus)
        elif job["rule"] in ("collect_dmcontrol", "rollout_eval", "tables", "archive", "splits"):
            assert cpus == 1, (job["rule"], cpus)


def test_no_gpu_job_downloads(submitted):
    calls, jobs, _ = submitted
    rule_of = {_comment(j): j for j in jobs}
    gpu_jobs = [rule_of[c["comment"]] for c in calls if _flag(c["argv"], "--gpus")]
    assert {j["rule"] for j in gpu_jobs} >= GPU_RULES
    for j in gpu_jobs:
        assert j["shell"] and not DOWNLOAD.search(j["shell"]), (j["rule"], j["shell"][:500])
