"""How a training job starts its processes, and what it asks Slurm for (rules/common.smk `launcher`,
`job_resources`): one place, so the commands and resources can be tested without Snakemake or Slurm.

A run's `gpus` is GPUs **per node** and `nodes` its node count (config.yaml `tokenizer`, `dynamics.defaults`
and variants, `dmcontrol_pretrain.*`), so the job has `nodes x gpus` ranks in all:

* `nodes: 1` (default): `python` for at most one GPU, else `torchrun --standalone --nnodes=1
  --nproc_per_node=<gpus>`. Slurm resources `nodes=1` (sbatch `--nodes=1`: the job never straddles two
  nodes) and `gpu=<gpus>` (`--gpus=<gpus>`, or `--gpus=<model>:<gpus>`).
* `nodes: N > 1`: one torchrun agent per node under `srun`, on torchrun's own c10d rendezvous hosted by
  the first node of the allocation::

      srun --nodes=N --ntasks-per-node=1 --cpus-per-task=C --mem=0 --kill-on-bad-exit=1 \\
        torchrun --nnodes=N --nproc_per_node=<gpus> --rdzv-backend=c10d \\
        --rdzv-id=$SLURM_JOB_ID --rdzv-endpoint=<first node>:<port> <script> ...

  The agents agree on their node ranks and the global ranks through the rendezvous (RANK = global rank,
  LOCAL_RANK = the GPU on its node; training/engine.py). Slurm resources: `nodes=N`, `tasks=N` (one task
  per node), `gres=gpu:<gpus>` (GPUs per node; `gpu:<model>:<gpus>` with slurm.gpu_model), `gpu=0` (so
  the plugin sends no `--gpus`, which would be a total), and `mpi` set, which makes the jobstep plugin run
  the rule's shell on the batch node instead of wrapping it in a one-task `srun` (whose step would hold
  the GPUs the agents need). `mem_mb` and `cpus_per_task` are per node.

The Slurm executor plugin (2.8.0) refuses `--nodes`, `--ntasks`, `--gpus` and `--gres` in `slurm.extra`;
these resources are the way to send them. The jobstep plugin strips `SLURM_JOB_NODELIST` from the rule's
environment (it keeps `SLURM_JOB_ID`), so the first node comes from squeue when the variable is missing.
"""

from __future__ import annotations

#: the rendezvous port on the first node: base + job id modulo the span, so that two multi-node jobs
#: sharing their first node do not collide
RDZV_PORT_BASE, RDZV_PORT_SPAN = 29500, 10000

#: shell text, evaluated in the rule's shell (bash -euo pipefail) on the batch node, the allocation's first
#: node; the job id comes first, so that outside Slurm the error says why
SLURM_JOB_ID_SH = '"${SLURM_JOB_ID:?nodes > 1 starts one torchrun agent per node with srun: run it under Slurm}"'
FIRST_NODE_SH = (
    '"$(scontrol show hostnames "${SLURM_JOB_NODELIST:-$(squeue --noheader --format=%N '
    '--jobs="$SLURM_JOB_ID")}" | head -n 1)"'
)
PORT_SH = f"$(( {RDZV_PORT_BASE} + SLURM_JOB_ID % {RDZV_PORT_SPAN} ))"


#: the resources slurm_node_resources() decides (rules/common.smk job_resources)
NODE_RESOURCE_KEYS = ("nodes", "gpu", "gpu_model", "gres", "tasks", "tasks_per_gpu", "mpi", "gpus_per_node")


class LaunchConfigError(ValueError):
    """A run's `nodes` / `gpus` cannot be launched."""


def check_nodes(run: dict, where: str) -> None:
    """`nodes` > 1 needs GPUs on every node (one torchrun agent per node drives that node's GPUs)."""
    nodes, gpus = int(run.get("nodes", 1)), int(run.get("gpus", 0))
    if nodes < 1:
        raise LaunchConfigError(f"config key '{where}.nodes': {nodes} (must be >= 1)")
    if nodes > 1 and gpus < 1:
        raise LaunchConfigError(
            f"config key '{where}.nodes': {nodes} nodes with '{where}.gpus': {gpus}. `gpus` is GPUs per node and a "
            f"multi-node run needs at least one on each node (one torchrun agent per node); set `gpus` >= 1 or "
            f"`nodes: 1`"
        )


def agent_args(
    nodes: int, nproc_per_node: int, *, rdzv_endpoint: str, rdzv_id: str, launcher: tuple[str, ...] = ("torchrun",)
) -> list[str]:
    """argv of one torchrun agent of an `nodes`-node run (c10d rendezvous at `rdzv_endpoint`)."""
    return [
        *launcher,
        f"--nnodes={nodes}",
        f"--nproc_per_node={nproc_per_node}",
        "--rdzv-backend=c10d",
        f"--rdzv-id={rdzv_id}",
        f"--rdzv-endpoint={rdzv_endpoint}",
    ]


def launcher(gpus: int, nodes: int = 1, cpus_per_task: int | None = None) -> str:
    """The shell text that starts a training script: `gpus` per node on `nodes` nodes (see the module doc)."""
    gpus, nodes = int(gpus or 0), int(nodes or 1)
    check_nodes({"gpus": gpus, "nodes": nodes}, "run")
    if nodes == 1:
        return f"torchrun --standalone --nnodes=1 --nproc_per_node={gpus}" if gpus > 1 else "python"
    srun = ["srun", f"--nodes={nodes}", "--ntasks-per-node=1"]
    if cpus_per_task:
        srun.append(f"--cpus-per-task={int(cpus_per_task)}")  # srun does not inherit the job's -c
    srun += ["--mem=0", "--kill-on-bad-exit=1"]  # the step gets the job's memory; one dead agent ends the step
    agent = agent_args(nodes, gpus, rdzv_endpoint=f"{FIRST_NODE_SH}:{PORT_SH}", rdzv_id=SLURM_JOB_ID_SH)
    return " ".join(srun + agent)


def slurm_node_resources(gpus: int, nodes: int = 1, gpu_model: str = "") -> dict:
    """The node/GPU/task resources of a job for the Slurm executor plugin (2.8.0); None = not sent.

    Keys: nodes, gpu, gpu_model, gres, tasks, tasks_per_gpu, mpi, gpus_per_node (the trainer's
    --expect-gpus: what each node's agent must see)."""
    gpus, nodes = int(gpus or 0), int(nodes or 1)
    check_nodes({"gpus": gpus, "nodes": nodes}, "run")
    none = dict.fromkeys(("gres", "tasks", "tasks_per_gpu", "mpi"))
    if gpus == 0:  # a CPU job: nothing about nodes or GPUs (one task, the plugin's default)
        return {"nodes": None, "gpu": 0, "gpu_model": None, "gpus_per_node": 0, **none}
    if nodes == 1:
        return {"nodes": 1, "gpu": gpus, "gpu_model": gpu_model or None, "gpus_per_node": gpus, **none}
    gres = f"gpu:{gpu_model}:{gpus}" if gpu_model else f"gpu:{gpus}"
    # tasks_per_gpu=0: the plugin would otherwise turn `tasks` into --ntasks-per-gpu for a GPU job
    return {
        "nodes": nodes,
        "gpu": 0,
        "gpu_model": None,
        "gres": gres,
        "tasks": nodes,
        "tasks_per_gpu": 0,
        "mpi": "srun",
        "gpus_per_node": gpus,
    }
