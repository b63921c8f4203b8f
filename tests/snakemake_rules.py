"""Print every rule of the workflow as JSON: {rule: {"local", "declared_local", "shell"}}.

Run as a subprocess in the repository root (tests/test_assets.py): `python tests/snakemake_rules.py
[configfile ...]`. Loads the Snakefile through Snakemake's API, so "local" is what Snakemake itself
decides (`localrule: True` / `localrules:`), not a text search; a dry run does not print it.
"""

import json
import sys
from pathlib import Path

from snakemake.api import SnakemakeApi
from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings

if __name__ == "__main__":
    with SnakemakeApi(OutputSettings()) as api:
        wf = api.workflow(
            resource_settings=ResourceSettings(cores=1),
            config_settings=ConfigSettings(configfiles=[Path(f) for f in sys.argv[1:]]),
            snakefile=Path("Snakefile"),
            workdir=Path.cwd(),
        )
        workflow = wf._workflow
        # Workflow.is_local without its "everything is local without an executor" shortcut
        rules = {
            r.name: {
                "local": r.group is None and (r.name in workflow._localrules or r.norun or r.is_template_engine),
                "declared_local": r.name in workflow._localrules,
                "shell": r.shellcmd,
            }
            for r in workflow.rules
        }
    print("RULES_JSON " + json.dumps(rules))
