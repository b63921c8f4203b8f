"""The study through a real Slurm: `make slurm-profile`, then literally `snakemake --profile slurm`.

The ci_slurm study (config/ci_slurm.yaml on top of config/demo.yaml: one tokenizer on 2 fake GPUs,
one world-model variant, its probe, rollout, tables and archive) runs on the single-node CI Slurm
(conftest.slurm_cluster). Its world model gets 1-minute attempts: the trainer must save and exit 75
at its deadline, Snakemake must resubmit it with the same -t, each retry must resume from the last
checkpoint, and the final weights must equal those of one uninterrupted run (snakemake_slurm.md §4).
"""

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import venv_env
from dreamer4_libero.config import dynamics_variants, load_config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = ("config/demo.yaml", "config/ci_slurm.yaml")
VARIANT = "dynamics_aux_phase6"


def _jobs(log_text: str) -> list[tuple[str, int]]:
    """(rule, Slurm job id) of every sbatch submission, from Snakemake's own log."""
    return [
        (rule, int(jid))
        for jid, rule in re.findall(r"submitted with SLURM jobid (\d+) \(log: \S*/slurm_logs/rule_(\w+?)/", log_text)
    ]


def _squeue(ids: list[int]) -> dict[int, dict]:
    """Job id -> time limit, state and comment (finished jobs stay visible: MinJobAge 3600)."""
    r = subprocess.run(
        ["squeue", "--states=all", "--noheader", "-o", "%i|%l|%T|%k", "-j", ",".join(map(str, ids))],
        capture_output=True,
        text=True,
        check=True,
    )
    out = {}
    for ln in r.stdout.split():
        jid, limit, state, comment = ln.split("|", 3)
        out[int(jid)] = {"limit": limit, "state": state, "comment": comment}
    return out


def _minutes(limit: str) -> float:
    parts = [int(p) for p in limit.replace("-", ":").split(":")]
    while len(parts) < 3:
        parts.insert(0, 0)
    h, m, s = parts[-3:]
    return h * 60 + m + s / 60


def test_study_on_slurm_with_deadline_retry_and_resume(slurm_cluster, dag_repo, trainer_cli, tmp_path):
    work = dag_repo
    xdg, site = tmp_path / "xdg_home", tmp_path / "xdg_site"
    site.mkdir()
    env = {**venv_env(slurm=True), "XDG_CONFIG_HOME": str(xdg), "XDG_CONFIG_DIRS": str(site)}

    # the README's install step, into a fresh user config folder
    r = subprocess.run(["make", "slurm-profile"], cwd=work, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (xdg / "snakemake" / "slurm" / "config.yaml").read_text() == (
        REPO / "profiles" / "slurm" / "config.yaml"
    ).read_text()

    # one uninterrupted run of the world-model variant, same inputs and thread count, to compare the final
    # weights with; it starts beside the Slurm study as soon as its input (the CI tokenizer) exists
    cfg = load_config([work / c for c in CONFIGS])
    run = dynamics_variants(cfg)[VARIANT]
    tok_json = work / "results/train/tokenizer_ci/checkpoint.json"
    ref_cmd = [
        sys.executable,
        str(work / "workflow_scripts/train_dynamics.py"),
        "--variant",
        json.dumps(run),
        "--manifest",
        "results/preprocess/manifest.json",
        "--train-split",
        "results/preprocess/splits/train.json",
        "--tokenizer-checkpoint-json",
        str(tok_json),
        "--ckpt-root",
        str(tmp_path / "ref_ckpt"),
        "--out-dir",
        str(tmp_path / "ref_out"),
        "--progress",
        "false",
    ]
    ref_log, ref = tmp_path / "reference_run.log", None

    log = work / "slurm_snakemake.log"
    with open(log, "w") as fh:
        p = subprocess.Popen(
            ["snakemake", "--profile", "slurm", "--configfile", *CONFIGS],
            cwd=work,
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
        t0 = time.time()
        try:
            while p.poll() is None:
                if ref is None and tok_json.exists():
                    ref = trainer_cli.start(
                        ref_cmd, ref_log, cwd=work, env={**env, "OMP_NUM_THREADS": str(run["cpus_per_task"])}
                    )
                if time.time() - t0 > 600:
                    pytest.fail(f"the Slurm study took over 600 s:\n{log.read_text(errors='replace')[-5000:]}")
                time.sleep(1)
        finally:
            if p.poll() is None:  # the test failed while the study ran: stop it and the reference run
                for proc in (p, ref):
                    if proc is not None:
                        proc.kill()
    text = log.read_text(errors="replace")
    assert p.returncode == 0, text[-5000:]
    assert re.search(r"(\d+) of \1 steps \(100%\) done", text)

    # every job except the local not_run writers went through sbatch
    jobs = _jobs(text)
    rules = {rule for rule, _ in jobs}
    assert rules >= {
        "make_synthetic",
        "preprocess",
        "splits",
        "data_sanity",
        "train_tokenizer",
        "tokenizer_eval",
        "train_dynamics",
        "probe",
        "probe_baselines",
        "rollout_eval",
        "tables",
        "archive",
    }, rules
    states = _squeue([j for _, j in jobs])
    print(
        f"\n[slurm] {len(jobs)} sbatch jobs: "
        + ", ".join(f"{rule} {j} ({states[j]['state']}, -t {states[j]['limit']})" for rule, j in jobs)
    )

    # the tokenizer asked for 2 (fake) GPUs and trained with torchrun, 2 ranks
    tok_ck = json.loads((work / "results/train/tokenizer_ci/checkpoint.json").read_text())
    assert torch.load(tok_ck["path"], map_location="cpu", weights_only=True)["world_size"] == 2

    # the time-limit path: attempt 1 (-t 1) stopped at its deadline with exit 75 and was resubmitted with the
    # same -t (time and memory never grow with the attempt: issue 26 item 2)
    dyn = [j for rule, j in jobs if rule == "train_dynamics"]
    assert len(dyn) >= 2, f"the 1-minute attempt was not retried: {dyn}"
    limits = [_minutes(states[j]["limit"]) for j in dyn]
    assert limits == [1] * len(dyn), limits
    ck = json.loads((work / f"results/train/{VARIANT}/checkpoint.json").read_text())
    ckpt_dir = Path(ck["path"]).parent
    attempts = [json.loads(x) for x in (ckpt_dir / "attempts.jsonl").read_text().splitlines()]
    starts = [a for a in attempts if a["event"] == "start"]
    ends = [a for a in attempts if a["event"] == "end"]
    assert [int(a["job_id"]) for a in starts] == dyn
    assert ends[0]["reason"] == "deadline" or states[dyn[0]]["state"] == "TIMEOUT", (ends, states[dyn[0]])
    trainlog = (ckpt_dir / "train.log").read_text()
    stop = re.search(rf"job {dyn[0]} \[{VARIANT}\] (deadline reached, saved step (\d+))", trainlog)
    assert stop, trainlog[-3000:]
    n = int(stop.group(2))
    resumed = re.search(rf"job {dyn[1]} \[{VARIANT}\] (RESUMED from \S+ at step {n})", trainlog)
    assert resumed and 0 < n < run["max_steps"] and starts[1]["start_step"] == n, trainlog[-3000:]
    print(
        f"[slurm] attempt 1: SLURM job {dyn[0]} -t {states[dyn[0]]['limit']} {states[dyn[0]]['state']}: "
        f"'{stop.group(1)}'; attempt 2: job {dyn[1]} -t {states[dyn[1]]['limit']}: '{resumed.group(1)}'"
    )
    assert "RESUMED" in (work / f"logs/train_dynamics/{VARIANT}.log").read_text()

    # the uninterrupted run (started above): the same final weights
    assert ref is not None, "the tokenizer's checkpoint.json never appeared"
    assert ref.wait(timeout=600) == 0, ref_log.read_text()[-3000:]
    ref_ck = json.loads((tmp_path / "ref_out" / "checkpoint.json").read_text())
    assert Path(ref_ck["path"]).parent.name == ckpt_dir.name  # the same run identity
    a = torch.load(ck["path"], map_location="cpu", weights_only=True)
    b = torch.load(ref_ck["path"], map_location="cpu", weights_only=True)
    assert a["step"] == b["step"] == run["max_steps"]
    for key in ("dynamics", "aux_head"):
        assert a[key].keys() == b[key].keys()
        diff = [k for k in a[key] if not torch.equal(a[key][k], b[key][k])]
        assert diff == [], f"{key}: {diff[:5]}"
    print(
        f"[slurm] final weights after deadline + resume == uninterrupted run ({len(a['dynamics'])} dynamics "
        f"and {len(a['aux_head'])} aux-head tensors, bitwise)"
    )

    # the study's outputs
    for p in ("results/tables/tables.md", f"results/probe/{VARIANT}/summary.json", "results/archive/README.md"):
        assert (work / p).stat().st_size > 0, p
