# Shared helpers for the rule files: paths and argument quoting. No science here.
import json
import shlex

PYTHON = "python"  # the interpreter on PATH (the project venv or the conda env)
LIBERO_ROOT = config["data"]["libero_root"]
PRE = "results/preprocess"


def json_arg(obj):
    """A config section as one shell-quoted JSON argument."""
    return shlex.quote(json.dumps(obj, sort_keys=True))
