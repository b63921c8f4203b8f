# Shared helpers of the workflow (paths, argument quoting, input functions). No science here.
# Functions live here only; they read the stage globals (DYN, TOK_OUT, ...) when Snakemake calls them.
import json
import os
import shlex

# Rules call `python` from PATH: the project venv (make demo) or the rule's conda env.
LIBERO_ROOT = config["data"]["libero_root"]
PRE = "results/preprocess"


def json_arg(obj):
    """A config section as one shell-quoted JSON argument."""
    return shlex.quote(json.dumps(obj, sort_keys=True))


def parent_of(name):
    """params function: the folder of the named input/output file."""
    return lambda wildcards, input, output: os.path.dirname(
        getattr(output, name, None) or getattr(input, name)
    )


def launcher(wildcards, resources):
    """torchrun for multi-GPU jobs, plain python otherwise (snakemake_slurm.md §3)."""
    n = int(resources.gpu or 0)
    return (
        f"torchrun --standalone --nnodes=1 --nproc_per_node={n}" if n > 1 else "python"
    )


def lpips_cache_arg(wildcards):
    """--lpips-cache when paths.lpips_cache is set."""
    c = config["paths"].get("lpips_cache")
    return f"--lpips-cache {c}" if c else ""


# -- dynamics (rules/dynamics.smk) --
def _dyn(wc):
    return DYN[wc.variant]


def _dyn_inputs(wc):
    ins = {"manifest": f"{PRE}/manifest.json", "train": f"{PRE}/splits/train.json"}
    if not (DYN[wc.variant]["init_paths"] or {}).get("tokenizer"):
        ins["tokenizer"] = f"{TOK_OUT}/checkpoint.json"  # the study tokenizer, frozen
    return ins


def _tok_arg(wc, input):
    return (
        f"--tokenizer-checkpoint-json {input.tokenizer}"
        if "tokenizer" in input.keys()
        else ""
    )


# -- evaluation (rules/evaluation.smk) --
def _ckpt_json(wc):
    return f"results/train/{wc.variant}/checkpoint.json"


# -- tables (rules/tables.smk) --
def _train_files(wc):
    files = [f"{TOK_OUT}/checkpoint.json", f"{TOK_OUT}/metrics.jsonl"]
    for n in DYN:
        files += (
            [f"results/train/{n}/checkpoint.json", f"results/train/{n}/metrics.jsonl"]
            if n in DYN_RUN
            else [f"results/train/{n}/not_run.json"]
        )
    return files


def grandparent_of(name):
    """params function: the folder two levels above the first file of the named input."""
    return lambda wildcards, input: os.path.dirname(
        os.path.dirname(getattr(input, name)[0])
    )
