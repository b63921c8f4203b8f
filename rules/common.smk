# Shared names and helpers of the workflow (runs, paths, argument quoting, input functions). No science here.
# Every name that more than one rule file uses is defined here, and the functions read only names defined
# here: each rule file depends on this file alone (tests/test_rule_files.py). A rule reads an upstream
# rule's output as rules.<name>.output.<key> where that rule is defined earlier; the path constants below
# are for the functions here and for the files a rule file reads from a rule included after it.
import json
import os
import shlex

from dreamer4_libero.job_sizing import check_workers, job_cpus, retries_of, science
from dreamer4_libero.config import (
    check_launch,
    dmcontrol_pretrain_runs,
    dynamics_variants,
)
from dreamer4_libero.data.dmcontrol_release import check_dmcontrol_files
from dreamer4_libero.assets.lpips_files import (
    ASSET_DIR as LPIPS_ASSET,
    SIDECAR_FILENAME,
    WEIGHTS_FILENAME,
)
from dreamer4_libero.training.launch import launcher as train_launcher
from dreamer4_libero.training.launch import NODE_RESOURCE_KEYS, slurm_node_resources

# Rules call `python` from PATH: the project venv (make demo) or the rule's conda env.
LIBERO_ROOT = config["data"]["libero_root"]
# every job's checkpoint loading reads $D4L_TRUST_CHECKPOINT (fileio.safe_torch_load); a shell prefix
# reaches local and Slurm jobs alike
# likewise config `allow_cpu_fallback`: may a job given GPUs run on the CPU (training/devices.py)
shell.prefix(
    f"export D4L_TRUST_CHECKPOINT={int(config['trust_checkpoint'])}; "
    f"export D4L_ALLOW_CPU_FALLBACK={int(config['allow_cpu_fallback'])}; "
    f"export D4L_STAGE_TO_LOCAL={int(config['data']['stage_to_local'])}; "  # the trainers (data/staging.py)
)
# nodes > 1 needs gpus (per node) >= 1: checked here, before the DMControl runs that inherit these sections
check_launch(config["tokenizer"], "tokenizer")
check_launch(config["dynamics"].get("defaults") or {}, "dynamics.defaults")
# released / configured DMControl files missing: stop here, naming `make fetch-dmcontrol` and
# `source: pretrain` with its cost (a missing input would otherwise surface only as a MissingInputException)
check_dmcontrol_files(config)
# Snakemake job priority of the critical path (LIBERO data -> study tokenizer): with few cores the
# scheduler otherwise starts the DMControl pretraining first and the study tokenizer waits for it
CRITICAL_PRIORITY = 10

# -- the runs --
# the study tokenizer (rules/tokenizer.smk)
TOK = config["tokenizer"]
TOK_RUN = TOK["run_name"]
# the DMControl pretraining's runs (rules/dmcontrol.smk): trained by the tokenizer and dynamics rules
DMC_RUNS = dmcontrol_pretrain_runs(config)
DMC_TOK = DMC_RUNS["tokenizer"]
DMC_TOK_RUN = DMC_TOK["run_name"]
DMC_DYN = DMC_RUNS["dynamics"]
DMC_DYN_RUN = DMC_DYN["name"]
DMC_FT = DMC_RUNS["finetune_tokenizer"]  # dmcontrol_init.tokenizer_choice: finetune
DMC_FT_RUN = DMC_FT["run_name"]
# every tokenizer that rule train_tokenizer trains (the study's on LIBERO, the DMControl pretraining's and
# its LIBERO fine-tune)
TOKS = {TOK_RUN: TOK, DMC_TOK_RUN: DMC_TOK, DMC_FT_RUN: DMC_FT}
# the dynamics variants (rules/dynamics.smk); those that cannot run get a not_run.json
DYN = dynamics_variants(config)
DYN_RUN = [n for n, r in DYN.items() if r["runnable"]]
DYN_NOT_RUN = [n for n, r in DYN.items() if not r["runnable"]]

# -- paths that rules of different files share --
PRE = "results/preprocess"
MANIFEST = f"{PRE}/manifest.json"  # rule preprocess
# rule splits (one output list, `splits`, in this order)
SPLITS = {s: f"{PRE}/splits/{s}.json" for s in ("train", "val", "test_ood")}
DMC_DATA = "results/dmcontrol/collect"
# made by rule collect_dmcontrol (its shards' manifest and the train split, every episode)
DMC_COLLECTED = {
    "manifest": f"{DMC_DATA}/manifest.json",
    "train": f"{DMC_DATA}/splits/train.json",
}
# rule fetch_lpips (rules/assets.smk)
LPIPS_FILES = {
    "lpips": f"{LPIPS_ASSET}/{WEIGHTS_FILENAME}",
    "lpips_sidecar": f"{LPIPS_ASSET}/{SIDECAR_FILENAME}",
}
TRAIN = "results/train"
TOK_OUT = f"{TRAIN}/{TOK_RUN}"


def train_file(run, name="checkpoint.json"):
    """results/train/<run>/<name>: checkpoint.json, metrics.jsonl, config.json of a training run (rules
    train_tokenizer, train_dynamics) or its not_run.json (dynamics_not_run); `run` may be a wildcard.
    """
    return f"{TRAIN}/{run}/{name}"


TOK_CKPT = train_file(TOK_RUN)  # the study tokenizer, frozen in every later stage


def json_arg(obj):
    """A config section as one shell-quoted JSON argument."""
    return shlex.quote(json.dumps(obj, sort_keys=True))


def parent_of(name):
    """params function: the folder of the named input/output file."""
    return lambda wildcards, input, output: os.path.dirname(
        getattr(output, name, None) or getattr(input, name)
    )


def retries(runs):
    """A training rule's retries, for the Snakemake that submits the jobs only: the most any of its runs
    needs, `runs` = {config key path: run section} (job_sizing.retries_of: a number, or auto from
    max_steps and steps_per_s; too few attempts is an error naming the key). The runs' loader workers
    are checked against their CPUs here too. Inside a Slurm job the jobstep Snakemake would otherwise
    honour the rule's retries itself and restart the trainer in the same allocation."""
    for where, run in runs.items():
        check_workers(run, where)
    n = max(retries_of(run, where) for where, run in runs.items())
    return 0 if workflow.remote_exec else int(n)


def run_launcher(run):
    """python / single-node torchrun / one torchrun agent per node under srun for a training run
    (training/launch.py; snakemake_slurm.md §3). A resource of the job, not a param: a changed GPU or
    node count never reruns a finished run."""
    return train_launcher(int(run["gpus"] or 0), run["nodes"], job_cpus(run))


def monitor_args():
    """The trainers' live-view flags from config `monitoring` (training/monitor.py). A resource, not a param:
    turning TensorBoard, pictures or W&B on or off never reruns a finished run."""
    m, w = config["monitoring"], config["monitoring"]["wandb"]
    flags = [f"--tensorboard {str(m['tensorboard']).lower()}"]
    if m["image_every"] is not None:
        flags.append(f"--image-every {int(m['image_every'])}")
    flags.append(f"--wandb {w['mode'] if w['enabled'] else 'off'}")
    if w["enabled"]:
        flags.append(f"--wandb-project {w['project']}")
        if w["entity"]:
            flags.append(f"--wandb-entity {w['entity']}")
    return " ".join(flags)


def job_resources(rule, gpu=0, cpus=1, cpus_per_gpu=None, nodes=1, **res):
    """Rule `rule`'s Slurm resources: its own (gpu, CPUs, mem_mb, runtime, ...) plus the `slurm` section's
    partition / account / qos / constraint / gpu_model / extra, each only where the config sets it, so a
    site profile's default-resources stay in force otherwise (snakemake_slurm.md §2-§3). Settings under
    `slurm.rules.<rule>` beat the section's own for that rule's jobs.

    `cpus` is the rule's `threads` (default 1: one process), always sent as cpus_per_task, so that the
    workers a script starts equal the CPUs its job gets (a profile's default cpus_per_task would beat
    `threads` otherwise). `gpu`, `cpus` and `cpus_per_gpu` may be functions of the wildcards. A GPU
    job with `cpus_per_gpu` set asks for cpus_per_gpu x GPUs cores as --cpus-per-task (one task per
    node; the plugin would let any cpus_per_task, e.g. a profile default, win over --cpus-per-gpu).
    `nodes` (per-run config key, default 1; may be a function): a GPU job asks for exactly its node count,
    `gpu` is GPUs per node, and nodes > 1 asks for one task and `gpu` GPUs on each node
    (training/launch.py slurm_node_resources); `gpus_per_node` is what each node's trainer must see.
    """
    site = config["slurm"]
    own = site["rules"].get(rule) or {}
    call = lambda v, wc: v(wc) if callable(v) else v
    n_gpu = lambda wc: int(call(gpu, wc) or 0)
    res["gpu"] = gpu
    if cpus is not None:  # None: leave it to the profile
        res["cpus_per_task"] = lambda wc: (
            n_gpu(wc) * call(cpus_per_gpu, wc)
            if n_gpu(wc) and call(cpus_per_gpu, wc)
            else call(cpus, wc)
        )

    def pick(key, gpu_key=None):
        """The rule's own setting, else the GPU variant for jobs with GPUs, else the section's (per job)."""
        if own.get(key):
            return lambda wc: own[key]
        return lambda wc: (
            site[gpu_key] if gpu_key and n_gpu(wc) and site[gpu_key] else site[key]
        )

    # partition and constraint may depend on the job's GPUs; each is sent only where some job of this
    # rule gets a value (an empty -C would be sent as `-C ''`)
    for key, gpu_key, resource in (
        ("partition", "gpu_partition", "slurm_partition"),
        ("constraint", "gpu_constraint", "constraint"),
    ):
        if own.get(key) or site[key] or (site[gpu_key] and (callable(gpu) or gpu)):
            value = pick(key, gpu_key)
            res[resource] = value if callable(gpu) else value(None)
    for key, resource in (
        ("account", "slurm_account"),
        ("qos", "qos"),
        ("extra", "slurm_extra"),
    ):
        if own.get(key) or site[key]:
            res[resource] = own.get(key) or site[key]
    # --nodes, --gpus=[<model>:]<n> (one node) or --gres=gpu:[<model>:]<n> per node (several), only for GPU jobs
    node_res = lambda wc: slurm_node_resources(
        n_gpu(wc), call(nodes, wc), site["gpu_model"]
    )
    # per-run GPUs and nodes: decided per job (a key whose value is None is not sent)
    if callable(gpu) or callable(nodes):
        for key in NODE_RESOURCE_KEYS:
            res[key] = lambda wc, key=key: node_res(wc)[key]
    elif gpu:
        res.update({k: v for k, v in node_res(None).items() if v is not None})
    return res


def cpu_job(rule_name, mem_mb=None, cpus=1):
    """job_resources of a CPU-only job, from config `job_resources.<rule_name>`; `mem_mb` is the
    default used where the config leaves it null. `cpus` (the rule's `threads`, which its script's
    workers follow) is always sent as cpus_per_task: a profile's default-resources would win otherwise.
    """
    r = config["job_resources"][rule_name]
    return job_resources(
        rule_name, mem_mb=r["mem_mb"] or mem_mb, runtime=r["runtime_min"], cpus=cpus
    )


def lpips_cache_arg(wildcards):
    """--cache-dir of rule fetch_lpips when paths.lpips_cache is set."""
    c = config["paths"].get("lpips_cache")
    return f"--cache-dir {shlex.quote(c)}" if c else ""


def lpips_inputs(run):
    """The LPIPS asset files (rules/assets.smk) as inputs of a job of `run`, if its lpips_weight > 0.
    ancient: a re-made asset (same content) never reruns a finished training."""
    if run["lpips_weight"] > 0:
        return {k: ancient(v) for k, v in LPIPS_FILES.items()}
    return {}


def lpips_asset_arg(wildcards, input):
    """--lpips-cache: the folder fetch_lpips made, for a tokenizer run that uses LPIPS."""
    return (
        f"--lpips-cache {os.path.dirname(input.lpips)}"
        if "lpips" in input.keys()
        else ""
    )


# -- tokenizers (rules/tokenizer.smk) --
def _tok(wc):
    return TOKS[wc.tok_run]


def _tok_inputs(wc):
    if wc.tok_run == DMC_TOK_RUN:
        return {**DMC_COLLECTED, **lpips_inputs(_tok(wc))}
    ins = {"manifest": MANIFEST, "train": SPLITS["train"]}
    ins.update(lpips_inputs(_tok(wc)))
    # the DMControl tokenizer's LIBERO fine-tune starts from it
    init = TOKS[wc.tok_run].get("init_from")
    if init:
        ins["init"] = init
    return ins


# -- dynamics (rules/dynamics.smk) --
def _dyn(wc):
    return DMC_DYN if wc.variant == DMC_DYN_RUN else DYN[wc.variant]


def _dyn_inputs(wc):
    if wc.variant == DMC_DYN_RUN:  # the DMControl pretraining, with its own tokenizer
        return {**DMC_COLLECTED, "tokenizer": train_file(DMC_TOK_RUN)}
    run = DYN[wc.variant]
    init = run["init_paths"] or {}
    ins = {"manifest": MANIFEST, "train": SPLITS["train"]}
    if not init.get("tokenizer"):
        ins["tokenizer"] = TOK_CKPT  # the study tokenizer, frozen
    if init.get("dynamics"):  # configured files, or made by rule pretrain_dmcontrol
        ins["init"] = [p for p in (init.get("tokenizer"), init["dynamics"]) if p]
    return ins


def _tok_arg(wc, input):
    return (
        f"--tokenizer-checkpoint-json {input.tokenizer}"
        if "tokenizer" in input.keys()
        else ""
    )


def grandparent_of(name):
    """params function: the folder two levels above the first file of the named input."""
    return lambda wildcards, input: os.path.dirname(
        os.path.dirname(getattr(input, name)[0])
    )
