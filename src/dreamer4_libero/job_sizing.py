"""How a training run is cut into Slurm jobs: which config keys are scheduling (never a rerun trigger),
how many attempts its steps need, and how many data-loader workers fit the CPUs a job was given.

A training job's time limit and memory are the same on every attempt (`runtime_min`, `mem_mb`); its
retries exist for the deadline-and-resume flow (each attempt saves before its deadline and the next
resumes), so the number of attempts follows from the run's steps and its measured speed:

    attempts = ceil(max_steps / (steps_per_s x (runtime_min x 60 - deadline_margin_s - STARTUP_S)))

`steps_per_s` is the run's training speed on its own GPUs (`make bench` on a GPU node, the
`train` rows); with `retries: auto` the rule's retries are attempts - 1 (+ SPARE_ATTEMPTS).
"""

from __future__ import annotations

import math
import os

#: keys of a run's section that only say where, on what and for how long it runs. They reach the job as
#: Slurm resources and engine flags, never in a rule's `params`, so editing them never reruns a finished
#: job (Snakemake's params trigger); they are not part of the run identity either (training/identity.py).
SCHEDULING_KEYS = frozenset(
    {
        "gpus",
        "nodes",
        "cpus_per_task",
        "cpus_per_gpu",
        "mem_mb",
        "runtime_min",
        "retries",
        "steps_per_s",
        "deadline_margin_s",
        "num_workers",
    }
)
#: seconds of an attempt spent before the first step (Slurm prolog, imports, data index, resume)
STARTUP_S = 300
#: attempts added to the computed number by `retries: auto` (a node failure, a slow first epoch)
SPARE_ATTEMPTS = 1


class SizingError(ValueError):
    """A run's time limit, retries or workers cannot work; the message names the config keys."""


def science(run: dict) -> dict:
    """The run's section without its scheduling keys: what goes into a rule's params."""
    return {k: v for k, v in run.items() if k not in SCHEDULING_KEYS}


def steps_per_attempt(run: dict) -> float:
    """Training steps one attempt completes at the run's `steps_per_s` (0 when that is unknown)."""
    usable = run["runtime_min"] * 60 - run["deadline_margin_s"] - STARTUP_S
    return max(0.0, usable) * float(run.get("steps_per_s") or 0.0)


def attempts_needed(run: dict) -> int | None:
    """Attempts that finish `max_steps` from scratch, or None where `steps_per_s` is not configured."""
    per = steps_per_attempt(run)
    if not run.get("steps_per_s"):
        return None
    if per <= 0:
        raise SizingError(
            f"{run.get('run_name') or run.get('name')}: runtime_min {run['runtime_min']} leaves no "
            f"training time after deadline_margin_s {run['deadline_margin_s']} and {STARTUP_S} s of "
            "start-up: raise runtime_min"
        )
    return math.ceil(run["max_steps"] / per)


def retries_of(run: dict, where: str) -> int:
    """The Snakemake retries of a run: the configured integer, or `auto` from its steps and speed.

    An integer that gives fewer attempts than the run's steps need (where `steps_per_s` is known) is an
    error naming `<where>.retries` and the number that works."""
    need = attempts_needed(run)
    r = run["retries"]
    if r == "auto":
        if need is None:
            raise SizingError(
                f"config key '{where}.retries' is auto but '{where}.steps_per_s' is not set: "
                "measure it with `make bench` on a GPU node (steps/s of the run's train case) or "
                "give retries as a number"
            )
        return need - 1 + SPARE_ATTEMPTS
    if need is not None and int(r) + 1 < need:
        raise SizingError(
            f"config key '{where}.retries' = {r} gives {int(r) + 1} attempts of {run['runtime_min']} min, but "
            f"{run['max_steps']} steps at {where}.steps_per_s = {run['steps_per_s']} need {need} "
            f"({steps_per_attempt(run):.0f} steps per attempt): set retries >= {need - 1} (or auto), or raise "
            "runtime_min"
        )
    return int(r)


def loader_workers(num_workers: int | None, *, local_ranks: int, cpus: int | None = None, on_gpu: bool) -> int:
    """Data-loader worker processes per rank. `num_workers` null = the CPUs the job was given (its
    affinity mask, which Slurm sets to the allocation) split over the ranks on this node, one CPU per
    rank kept for the rank's own process; on the CPU the ranks' torch threads use the cores instead, so 0."""
    if num_workers is not None:
        return int(num_workers)
    if not on_gpu:
        return 0
    cpus = cpus if cpus is not None else len(os.sched_getaffinity(0))
    return max(0, cpus // max(1, local_ranks) - 1)


def job_cpus(run: dict) -> int:
    """The CPUs a run's job asks for (per node): cpus_per_gpu x gpus for a GPU job that sets it, else cpus_per_task."""
    gpus = int(run.get("gpus") or 0)
    return gpus * run["cpus_per_gpu"] if gpus and run.get("cpus_per_gpu") else run["cpus_per_task"]


def check_workers(run: dict, where: str) -> None:
    """An explicit `num_workers` on a GPU run must fit its CPUs: gpus x (num_workers + 1) <= CPUs."""
    n, gpus = run.get("num_workers"), int(run.get("gpus") or 0)
    if n is None or gpus == 0:
        return
    cpus = job_cpus(run)
    if gpus * (n + 1) > cpus:
        raise SizingError(
            f"config key '{where}.num_workers' = {n}: {gpus} ranks x ({n} workers + 1) = "
            f"{gpus * (n + 1)} processes on a job of {cpus} CPUs; set it to null (= "
            f"{cpus // gpus - 1} per rank, from the job's CPUs) or raise the CPUs"
        )
