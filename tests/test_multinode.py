"""Multi-node training (issue 26 item 3), on this one machine: the launcher that rules/common.smk puts in
front of a trainer when a run has `nodes: 2` (training/launch.py), run for real with a stand-in for the Slurm
step launcher that starts one torchrun agent per "node" on 127.0.0.1, must end with the same weights as one
agent with 2 processes: the same 2 global ranks, whichever agent hosts rank 0 (gloo, deterministic CPU maths,
so the comparison is exact: torch.equal on every tensor)."""

from __future__ import annotations

import json
import os
import random
import socket
import stat
import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # engine_toy, whatever pytest's import mode

import engine_toy  # noqa: E402
from dreamer4_libero.training import launch  # noqa: E402
from dreamer4_libero.training.checkpoints import load_checkpoint, step_path  # noqa: E402
from dreamer4_libero.training.resume import read_attempts  # noqa: E402
from dreamer4_libero.training.metrics import read_metrics  # noqa: E402

TOY = Path(engine_toy.__file__).resolve()
REPO = TOY.parents[1]
STEPS = 12  # checkpoints at 5, 10 and the final 12

# stand-ins on PATH: the step launcher runs its command once per requested node, here, in parallel (and logs
# its options); the host-list tool names two "nodes" whose first is 127.0.0.1; the queue tool answers the
# node list the job-step plugin strips from the rule's environment
STEP_LAUNCHER = r"""#!/bin/bash
n=1
while [[ "$1" == -* ]]; do
  case "$1" in --nodes=*) n="${1#--nodes=}" ;; esac
  echo "opt $1" >> "$STANDIN_LOG"; shift
done
echo "agent $*" >> "$STANDIN_LOG"
pids=()
for i in $(seq 1 "$n"); do "$@" & pids+=($!); done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=$?; done
exit $rc
"""
HOSTLIST = """#!/bin/bash
echo "hostlist $*" >> "$STANDIN_LOG"
printf '127.0.0.1\\n127.0.0.2\\n'
"""
QUEUE = """#!/bin/bash
echo "queue $*" >> "$STANDIN_LOG"
echo 'fakenode[1-2]'
"""


def _standins(folder: Path) -> Path:
    folder.mkdir()
    for name, text in (("srun", STEP_LAUNCHER), ("scontrol", HOSTLIST), ("squeue", QUEUE)):
        p = folder / name
        p.write_text(text)
        p.chmod(p.stat().st_mode | stat.S_IXUSR)
    return folder


def _free_rdzv_port() -> int:
    """A free port inside the launcher's rendezvous range (base + job id % span)."""
    rng = random.Random(os.getpid())
    for _ in range(200):
        port = launch.RDZV_PORT_BASE + rng.randrange(launch.RDZV_PORT_SPAN)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.skip("no free port in the rendezvous range")


def _toy_args(ckpt: Path, out: Path) -> list[str]:
    return [str(TOY), "--ckpt-dir", str(ckpt), "--out-dir", str(out), "--max-steps", str(STEPS)]


def test_two_torchrun_agents_as_two_nodes_match_one_agent_with_two_processes(trainer_cli, tmp_path):
    one, two = tmp_path / "one_node", tmp_path / "two_nodes"
    bin_dir = _standins(tmp_path / "bin")
    port = _free_rdzv_port()
    job_id = 10_000 + port - launch.RDZV_PORT_BASE  # the launcher's port: base + job id % span = port
    venv_bin = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}  # as the job-step plugin leaves it
    env.update(
        PYTHONPATH=str(REPO / "src"),
        SLURM_JOB_ID=str(job_id),
        STANDIN_LOG=str(tmp_path / "standin.log"),
        PATH=f"{bin_dir}:{venv_bin}:{env['PATH']}",
        OMP_NUM_THREADS="1",
    )

    # the command rules/common.smk generates for `nodes: 2, gpus: 1` (1 process per node), run by bash as
    # Snakemake runs a rule's shell
    cmd = launch.launcher(1, nodes=2, cpus_per_task=1) + " " + " ".join(_toy_args(two / "ck", two / "out"))
    t0 = time.time()
    agents = trainer_cli.start(["bash", "-euo", "pipefail", "-c", cmd], tmp_path / "two.log", cwd=REPO, env=env)
    ref = trainer_cli.start(
        trainer_cli.torchrun(2) + _toy_args(one / "ck", one / "out"),
        tmp_path / "one.log",
        cwd=REPO,
        env={k: v for k, v in env.items() if k != "SLURM_JOB_ID"},
    )
    try:
        rc_two, rc_one = agents.wait(timeout=240), ref.wait(timeout=240)
    finally:
        for p in (agents, ref):
            if p.poll() is None:
                p.kill()
    wall = time.time() - t0
    log_two, log_one = (tmp_path / "two.log").read_text(), (tmp_path / "one.log").read_text()
    assert rc_one == 0, log_one[-3000:]
    assert rc_two == 0, log_two[-3000:]
    assert wall < 120, f"took {wall:.0f} s"

    # what ran: the step launcher with one task per node, each task one agent of a 2-node c10d rendezvous
    # on the first node of the job's node list (looked up with squeue: SLURM_JOB_NODELIST was not set)
    standin = (tmp_path / "standin.log").read_text().splitlines()
    assert {
        "opt --nodes=2",
        "opt --ntasks-per-node=1",
        "opt --cpus-per-task=1",
        "opt --kill-on-bad-exit=1",
        "opt --mem=0",
    } <= set(standin), standin
    agent = [ln for ln in standin if ln.startswith("agent ")]
    assert len(agent) == 1, standin
    argv = agent[0].split()[1:]
    assert argv[:6] == [
        "torchrun",
        "--nnodes=2",
        "--nproc_per_node=1",
        "--rdzv-backend=c10d",
        f"--rdzv-id={job_id}",
        f"--rdzv-endpoint=127.0.0.1:{port}",
    ], argv
    assert (
        f"queue --noheader --format=%N --jobs={job_id}" in standin
        and "hostlist show hostnames fakenode[1-2]" in standin
    ), standin

    a, b = load_checkpoint(step_path(one / "ck", STEPS)), load_checkpoint(step_path(two / "ck", STEPS))
    assert a["world_size"] == b["world_size"] == 2 and a["step"] == b["step"] == STEPS
    assert a["model"].keys() == b["model"].keys() and len(a["model"]) == 4
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), f"weights differ at {k}"
    moved = max(float((a["model"][k] - engine_toy.make_model().state_dict()[k]).abs().max()) for k in a["model"])
    assert moved > 1e-3  # it trained
    for i, st in a["opt"]["state"].items():  # AdamW moments too
        for k, v in st.items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(b["opt"]["state"][i][k])), (i, k)
    la = [r["loss/mse"] for r in read_metrics(one / "ck" / "metrics.jsonl")]
    lb = [r["loss/mse"] for r in read_metrics(two / "ck" / "metrics.jsonl")]
    assert len(la) == STEPS and la == lb  # every logged loss (mean over both ranks), bit for bit

    # global rank 0 alone wrote the attempt records and the outputs; the node count is recorded
    for d, nodes in ((one, 1), (two, 2)):
        starts = [r for r in read_attempts(d / "ck") if r["event"] == "start"]
        assert len(starts) == 1 and starts[0]["world_size"] == 2 and starts[0]["nodes"] == nodes, starts
        conf = json.loads((d / "ck" / "config.json").read_text())
        assert conf["runtime"]["nodes"] == nodes and conf["runtime"]["backend"] == "gloo"
        assert (d / "out" / "checkpoint.json").exists()
    assert "world_size 2 on 2 node(s)" in log_two and "world_size 2 on 1 node(s)" in log_one
