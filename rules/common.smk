# Shared helpers for the rule files: paths and argument quoting. No science here.
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
    return f"torchrun --standalone --nnodes=1 --nproc_per_node={n}" if n > 1 else "python"


def lpips_cache_arg(wildcards):
    """--lpips-cache when paths.lpips_cache is set."""
    c = config["paths"].get("lpips_cache")
    return f"--lpips-cache {c}" if c else ""
