# Dreamer 4 on LIBERO - the whole study as one DAG.
#   snakemake --profile slurm                               # paper scale on a Slurm cluster
#   snakemake --configfile config/demo.yaml --cores 2       # CPU demo on synthetic data (make demo)
# This file only loads and validates the config, includes one rule file per stage and defines `all`.
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config.yaml"


validate(config, "config/schema.yaml")


report: "report/workflow.rst"


# Each rule file uses names of common.smk only (tests/test_rule_files.py). A rule reads an upstream rule's
# outputs as rules.<name>.output.<key>, which Snakemake resolves when the line runs: the producing file comes
# first (preprocess before tokenizer, evaluation, tables, report; dynamics before evaluation; tokenizer and
# evaluation before tables; dmcontrol and tables before report). Any order that keeps these gives the same DAG.
include: "rules/common.smk"
include: "rules/assets.smk"
include: "rules/preprocess.smk"
include: "rules/dmcontrol.smk"
include: "rules/tokenizer.smk"
include: "rules/dynamics.smk"
include: "rules/evaluation.smk"
include: "rules/tables.smk"
include: "rules/report.smk"


rule all:
    default_target: True
    input:
        PREPROCESS_OUTPUTS,
        f"{TOK_OUT}/checkpoint.json",
        f"{TOK_EVAL}/psnr.json",
        DYN_OUTPUTS,
        EVAL_OUTPUTS,
        TABLE_FILES,
        "results/archive/README.md",
        REPORT_OUTPUTS,
