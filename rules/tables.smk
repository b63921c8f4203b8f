# Stage 5: the paper's tables (Markdown, CSV, LaTeX) and plots from the result files only, then the
# model-card archive. `snakemake --forcerun tables --until tables` rebuilds just the tables.
from dreamer4_libero.reporting.tables import PLOT_NAMES, TABLE_KEYS

TABLE_OUT = "results/tables"
TABLE_FILES = [
    f"{TABLE_OUT}/{k}.{ext}" for k in TABLE_KEYS for ext in ("md", "csv", "tex")
]
PLOT_REPORT = {  # plot -> (report category, caption file in report/)
    "loss_curves": ("Dynamics variants", "loss_curves_all"),
    "aux_mse": ("Dynamics variants", "aux_mse_all"),
    "probe_r2": ("Probe", "probe_r2"),
    "h_curves": ("Probe", "h_curves"),
    "rollout_per_step": ("Rollout", "rollout_per_step_all"),
}
TRAIN_RUNS = [TOK_RUN] + list(DYN)


TABLES_CONFIG = {
    "variants": [
        {
            "name": n,
            "label": r["label"],
            "runnable": r["runnable"],
            "not_run_reason": r["not_run_reason"],
            "stand_in_for": r["stand_in_for"],
            "aux_weight": r["aux_weight"],
            "aux_input": r["aux_input"],
            "space_mode": r["model"]["space_mode"],
            "init_from": r["init_from"],
            "init_source": r["init_source"],
            "init_note": r["init_note"],
        }
        for n, r in DYN.items()
    ],
    "H_list": config["probe_eval"]["H_list"],
    "seeds": config["probe"]["seeds"],
    "bootstrap_B": config["probe_eval"]["bootstrap_B"],
    "tokenizer_run": TOK_RUN,
}
# every training run's record; a variant that cannot run has its not_run.json instead
TRAIN_FILES = [train_file(TOK_RUN), train_file(TOK_RUN, "metrics.jsonl")] + [
    f
    for n in DYN
    for f in (
        [train_file(n), train_file(n, "metrics.jsonl")]
        if n in DYN_RUN
        else [train_file(n, "not_run.json")]
    )
]
_EVAL_INPUTS = {
    "probe": expand(rules.probe.output.summary, variant=DYN_RUN)
    + [rules.probe_baselines.output.summary],
    "rollout": expand(rules.rollout_eval.output.json, variant=DYN_RUN),
    "tok": rules.tokenizer_eval.output.json,
    "train": TRAIN_FILES,
}


rule tables:
    input:
        **_EVAL_INPUTS,
    output:
        md=f"{TABLE_OUT}/tables.md",
        html=report(
            f"{TABLE_OUT}/tables.html",
            caption="../report/tables.rst",
            category="Tables",
        ),
        tables=[
            (
                report(
                    f,
                    caption="../report/table_csv.rst",
                    category="Tables",
                    subcategory="CSV files",
                )
                if f.endswith(".csv")
                else f
            )
            for f in TABLE_FILES
        ],
        plots=[
            report(
                f"{TABLE_OUT}/plots/{p}.png",
                caption=f"../report/{PLOT_REPORT[p][1]}.rst",
                category=PLOT_REPORT[p][0],
                subcategory="All variants",
            )
            for p in PLOT_NAMES
        ],
    log:
        "logs/tables/tables.log",
    benchmark:
        "benchmarks/tables/tables.tsv"
    conda:
        "../envs/pipeline.yaml"
    resources:
        **cpu_job("tables"),
    params:
        cfg=json_arg(TABLES_CONFIG),
        train_dirs=" ".join(f"{TRAIN}/{r}" for r in TRAIN_RUNS),
        out=parent_of("md"),
    shell:
        "python workflow_scripts/make_tables.py --tables-config {params.cfg} --probe-summaries {input.probe}"
        " --rollout {input.rollout} --tokenizer-eval {input.tok} --train-dirs {params.train_dirs}"
        " --out-dir {params.out} > {log} 2>&1"


rule archive:
    input:
        **_EVAL_INPUTS,
        tables=rules.tables.output.md,
        splits=rules.splits.output.summary,
        manifest=rules.preprocess.output.manifest,
    output:
        index="results/archive/README.md",
        cards=[f"results/archive/{r}/README.md" for r in [TOK_RUN] + DYN_RUN],
    log:
        "logs/archive/archive.log",
    benchmark:
        "benchmarks/archive/archive.tsv"
    conda:
        "../envs/pipeline.yaml"
    resources:
        **cpu_job("archive"),
    params:
        cfg=json_arg(TABLES_CONFIG),
        train_dirs=" ".join(f"{TRAIN}/{r}" for r in TRAIN_RUNS),
        rollout_dirs=" ".join(f"results/rollout/{n}" for n in DYN_RUN),
        splits=parent_of("splits"),
        tables=lambda wc, input: os.path.dirname(input.tables),
    shell:
        "python workflow_scripts/make_archive.py --tables-config {params.cfg} --probe-summaries {input.probe}"
        " --rollout {input.rollout} --tokenizer-eval {input.tok} --train-dirs {params.train_dirs}"
        " --tables-dir {params.tables} --rollout-dirs {params.rollout_dirs} --splits-dir {params.splits}"
        " --manifest {input.manifest} --out-dir results/archive > {log} 2>&1"
