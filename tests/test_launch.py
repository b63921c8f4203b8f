"""How training jobs are launched and placed (training/launch.py, rules/common.smk): `gpus` is GPUs per node,
`nodes` the node count; every GPU job asks Slurm for exactly its nodes (`--nodes=1` for one node), and a
`nodes: N > 1` run asks for N tasks with the GPUs on each node, launched by one agent per node. The sbatch
flags are the real executor plugin's (2.8.0), computed from the resources of a dry run's jobs."""

from __future__ import annotations

import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import dry_run_jobs, snakemake_cmd, venv_env
from dreamer4_libero.config import ConfigError, dmcontrol_pretrain_runs, dynamics_variants, load_config
from dreamer4_libero.training import launch
from dreamer4_libero.training.identity import identity_dir, resolve_run_dir, run_identity

REPO = Path(__file__).resolve().parents[1]


# -- the launcher text -------------------------------------------------------------------------------------


def test_single_node_launchers():
    assert launch.launcher(0) == launch.launcher(1) == "python"
    toks = launch.launcher(4).split()
    assert toks[1:] == ["--standalone", "--nnodes=1", "--nproc_per_node=4"]
    assert launch.launcher(5, nodes=1, cpus_per_task=40).split()[1:] == [
        "--standalone",
        "--nnodes=1",
        "--nproc_per_node=5",
    ]


def test_multi_node_launcher_one_agent_per_node_on_a_c10d_rendezvous():
    cmd = launch.launcher(4, nodes=2, cpus_per_task=32)
    toks = cmd.split()
    step = toks[1 : toks.index("--nnodes=2") - 1]  # the step launcher's options, before the agent's name
    assert step == ["--nodes=2", "--ntasks-per-node=1", "--cpus-per-task=32", "--mem=0", "--kill-on-bad-exit=1"]
    agent = toks[toks.index("--nnodes=2") :]
    assert agent[:3] == ["--nnodes=2", "--nproc_per_node=4", "--rdzv-backend=c10d"]
    assert "--standalone" not in toks
    assert f"--rdzv-id={launch.SLURM_JOB_ID_SH}" in cmd
    assert f"--rdzv-endpoint={launch.FIRST_NODE_SH}:{launch.PORT_SH}" in cmd
    assert "show hostnames" in launch.FIRST_NODE_SH and "SLURM_JOB_NODELIST:-" in launch.FIRST_NODE_SH
    # the argv helper the launcher and the tests share
    assert launch.agent_args(2, 1, rdzv_endpoint="127.0.0.1:29600", rdzv_id="7", launcher=("x",)) == [
        "x",
        "--nnodes=2",
        "--nproc_per_node=1",
        "--rdzv-backend=c10d",
        "--rdzv-id=7",
        "--rdzv-endpoint=127.0.0.1:29600",
    ]


def test_node_resources():
    cpu = launch.slurm_node_resources(0, 1)
    assert cpu["nodes"] is None and cpu["gpu"] == 0 and cpu["mpi"] is None
    one = launch.slurm_node_resources(5, 1, "h100")
    assert {k: v for k, v in one.items() if v is not None} == {
        "nodes": 1,
        "gpu": 5,
        "gpu_model": "h100",
        "gpus_per_node": 5,
    }
    two = launch.slurm_node_resources(4, 2)
    assert two.pop("mpi")  # set: the job-step plugin runs the shell as is (it starts its own job steps)
    assert {k: v for k, v in two.items() if v is not None} == {
        "nodes": 2,
        "gpu": 0,
        "gres": "gpu:4",
        "tasks": 2,
        "tasks_per_gpu": 0,
        "gpus_per_node": 4,
    }
    assert launch.slurm_node_resources(4, 3, "a100")["gres"] == "gpu:a100:4"
    assert set(two) | {"mpi"} == set(launch.NODE_RESOURCE_KEYS)


# -- config ------------------------------------------------------------------------------------------------


def test_nodes_defaults_and_inconsistent_configs_name_the_key():
    cfg = load_config()
    assert cfg["tokenizer"]["nodes"] == 1
    assert all(r["nodes"] == 1 for r in dynamics_variants(cfg).values())
    with pytest.raises(
        ConfigError,
        match=r"'dynamics\.variants\.dynamics_phase3\.nodes': 2 nodes with "
        r"'dynamics\.variants\.dynamics_phase3\.gpus': 0",
    ):
        dynamics_variants(
            load_config(overrides={"dynamics": {"variants": {"dynamics_phase3": {"nodes": 2, "gpus": 0}}}})
        )
    with pytest.raises(ConfigError, match=r"'tokenizer\.nodes': 3 nodes with 'tokenizer\.gpus': 0"):
        load_config(overrides={"tokenizer": {"nodes": 3, "gpus": 0}})
    with pytest.raises(ConfigError, match=r"tokenizer\.nodes.*minimum"):
        load_config(overrides={"tokenizer": {"nodes": 0}})
    # the DMControl pretraining runs are resolved from the same keys (and checked the same way)
    runs = dmcontrol_pretrain_runs(load_config(overrides={"tokenizer": {"nodes": 2}}))
    assert runs["tokenizer"]["nodes"] == 2 and runs["dynamics"]["nodes"] == 1
    with pytest.raises(ConfigError, match=r"'dmcontrol_pretrain\.dynamics\.nodes': 2"):
        dmcontrol_pretrain_runs(load_config(overrides={"dmcontrol_pretrain": {"dynamics": {"nodes": 2, "gpus": 0}}}))


def test_nodes_do_not_change_the_run_identity_but_the_world_size_does(monkeypatch):
    run = {"batch_size": 4, "lr": 1e-4, "gpus": 5, "nodes": 1}
    h5, _ = run_identity(run, world_size=8, data_fingerprint="d")
    h2x4, _ = run_identity({**run, "gpus": 4, "nodes": 2}, world_size=8, data_fingerprint="d")
    assert h5 == h2x4  # same global batch (4 x 8): 2 nodes x 4 GPUs resume the 1 node x 8 GPUs checkpoints
    assert run_identity(run, world_size=4, data_fingerprint="d")[0] != h5


def test_only_global_rank_0_writes_the_identity_folder(tmp_path, monkeypatch):
    class Task:
        @staticmethod
        def identity_inputs():
            return {"data_fingerprint": "d"}

    section = {"name": "v", "batch_size": 4}
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "2")  # e.g. rank 2 = LOCAL_RANK 0 of the second node
    d = resolve_run_dir(tmp_path, section, Task.identity_inputs())
    assert d.parent == tmp_path / "v" and not d.exists()
    monkeypatch.setenv("RANK", "0")
    assert resolve_run_dir(tmp_path, section, Task.identity_inputs()) == d and (d / "identity.json").exists()
    h, ident = run_identity(section, world_size=4, data_fingerprint="d")
    assert identity_dir(tmp_path, "v", h, ident, write=False) == d


# -- the jobs of the paper config, with the real executor plugin's sbatch flags ----------------------------


def _jobs(out: str) -> list[dict]:
    """Every planned job of a dry run (-p) with resources (conftest.dry_run_jobs), resources as a dict (ints
    where they are)."""
    jobs = []
    for j in dry_run_jobs(out):
        if j["resources"]:
            pairs = (kv.split("=", 1) for kv in j["resources"].split(", "))
            jobs.append({**j, "resources": {k: int(v) if v.isdigit() else v for k, v in pairs}})
    return jobs


class _Resources(dict):
    def __getattr__(self, k):
        try:
            return self[k]
        except KeyError:
            raise AttributeError(k) from None


def _sbatch_flags(res: dict) -> list[str]:
    """The flags executor plugin 2.8.0 submits a job with these resources with (after its own checks)."""
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string
    from snakemake_executor_plugin_slurm.validation import validate_slurm_extra

    job = SimpleNamespace(resources=_Resources(res), threads=res.get("cpus_per_task", 1))
    validate_slurm_extra(job)
    params = {
        "run_uuid": "u",
        "slurm_logfile": "l",
        "comment_str": "c",
        "account": "",
        "partition": "",
        "workdir": "/w",
    }
    return (get_submit_command(job, params) + set_gres_string(job)).split()


@pytest.fixture(scope="module")
def two_node_dry_run(tmp_path_factory) -> list[dict]:
    """`snakemake --profile slurm -n` of the paper config, with the study tokenizer (and so the DMControl one,
    resolved from the same keys) on 2 nodes x 2 GPUs, dynamics_phase3 on 2 nodes x 4 GPUs, a GPU model."""
    tmp = tmp_path_factory.mktemp("nodes")
    prof = tmp / "xdg" / "snakemake" / "slurm"
    prof.mkdir(parents=True)
    prof.joinpath("config.yaml").write_text((REPO / "profiles" / "slurm" / "config.yaml").read_text())
    layer = tmp / "nodes.yaml"
    layer.write_text(
        "tokenizer: {nodes: 2, gpus: 2}\n"
        "dynamics: {variants: {dynamics_phase3: {nodes: 2, gpus: 4, cpus_per_gpu: 8}}}\n"
        "slurm: {gpu_model: h100}\n"
        "dmcontrol_init: {source: pretrain}\n"
    )
    r = subprocess.run(
        snakemake_cmd("--profile", "slurm", "-n", "--forceall", "-p", "--configfile", str(layer)),
        cwd=REPO,
        env={**venv_env(), "XDG_CONFIG_HOME": str(tmp / "xdg")},
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return _jobs(r.stdout + r.stderr)


def test_every_gpu_job_asks_for_exactly_its_nodes(two_node_dry_run):
    jobs = two_node_dry_run
    key = lambda j: (j["rule"], next(iter(j["wildcards"].values()), ""))  # noqa: E731
    by = {key(j): j for j in jobs}
    multi = {
        ("train_dynamics", "dynamics_phase3"): (4, 32),
        ("train_tokenizer", "tokenizer_v2_seq16"): (2, 32),
        ("train_tokenizer", "tokenizer_dmcontrol"): (2, 32),
    }
    assert multi.keys() <= by.keys(), sorted(by)
    n_single_gpu = 0
    for k, j in by.items():
        res, flags = j["resources"], _sbatch_flags(j["resources"])
        if k in multi:
            gpus, cpus = multi[k]
            assert res["nodes"] == 2 and res["gpus_per_node"] == gpus and res["gpu"] == 0 and "mpi" in res, (k, res)
            # 2 nodes, one task on each, the GPUs per node as gres, no --gpus (a total) nor --ntasks-per-gpu
            assert {"--nodes=2", "--ntasks=2", f"--cpus-per-task={cpus}", f"--gres=gpu:h100:{gpus}"} <= set(flags)
            assert not [f for f in flags if f.startswith(("--gpus", "--ntasks-per-gpu"))], flags
            assert j["shell"].startswith(launch.launcher(gpus, nodes=2, cpus_per_task=cpus) + " workflow_scripts/")
            assert f"--expect-gpus {gpus} --deadline-margin-s" in j["shell"]
        elif res.get("gpu") or res.get("gres"):
            n_single_gpu += 1
            gpus = res["gpu"]
            assert res["nodes"] == 1 and res["gpus_per_node"] == gpus and "mpi" not in res and "gres" not in res
            assert {"--nodes=1", f"--gpus=h100:{gpus}"} <= set(flags), (k, flags)
            assert not [f for f in flags if f.startswith(("--gres", "--ntasks"))], flags
            if j["rule"].startswith("train_"):
                assert j["shell"].startswith(launch.launcher(gpus) + " workflow_scripts/") and gpus in (4, 5)
                assert f"--expect-gpus {gpus} --deadline-margin-s" in j["shell"]
        else:  # CPU jobs: no node count, one task
            assert "nodes" not in res and "gpu_model" not in res, (k, res)
            assert "--ntasks=1" in flags and not [f for f in flags if f.startswith(("--nodes", "--gpus"))], flags
    # the other 6 dynamics variants, the DMControl world model, probes and rollouts: one node each
    assert n_single_gpu >= 10


def test_dry_run_refuses_nodes_without_gpus(tmp_path):
    layer = tmp_path / "bad.yaml"
    layer.write_text("tokenizer: {nodes: 2, gpus: 0}\n")
    r = subprocess.run(
        snakemake_cmd("-n", "--cores", "1", "--configfile", str(layer)),
        cwd=REPO,
        env=venv_env(),
        capture_output=True,
        text=True,
    )
    assert r.returncode != 0
    assert "config key 'tokenizer.nodes': 2 nodes with 'tokenizer.gpus': 0" in r.stdout + r.stderr
