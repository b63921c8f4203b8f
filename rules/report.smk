# Stage 6: what `snakemake --report` shows besides the stages' own files: training curves of every
# trained run, probe R² per action dimension, the data summary, runtime and memory per job, and the
# provenance page (results/report/). `make report` then builds results/report.html from existing results.
REPORT = "results/report"
_INITS = [DYN[n]["init_paths"] or {} for n in DYN_RUN]
# a variant initialised from the pipeline's own DMControl pretraining (config._dmcontrol_init)
_USES_PRETRAIN = any(DYN[n]["init_source"] == "pretrain" for n in DYN_RUN)
_FT_CKPT = train_file(DMC_FT_RUN)
TOK_TRAINED = (
    [TOK_RUN]
    + ([DMC_TOK_RUN] if _USES_PRETRAIN else [])
    + ([DMC_FT_RUN] if any(i.get("tokenizer") == _FT_CKPT for i in _INITS) else [])
)
DYN_TRAINED = DYN_RUN + ([DMC_DYN_RUN] if _USES_PRETRAIN else [])
REPORT_OUTPUTS = (
    [f"{REPORT}/{f}" for f in ("data_summary.html", "probe_per_dim.png")]
    + [f"{REPORT}/{f}" for f in ("runtime.html", "runtime.png", "provenance.html")]
    + [f"{REPORT}/training/{r}.png" for r in TOK_TRAINED + DYN_TRAINED]
)
REPORT_TRAIN_FILES = [
    train_file(r, f)
    for r in TOK_TRAINED + DYN_TRAINED
    for f in ("config.json", "metrics.jsonl", "checkpoint.json")
]


rule report_assets:
    input:
        # the result records that rule tables reads
        probe=rules.tables.input.probe,
        rollout=rules.tables.input.rollout,
        tok=rules.tables.input.tok,
        train=rules.tables.input.train,
        runs=REPORT_TRAIN_FILES,
        manifest=rules.preprocess.output.manifest,
        splits=rules.splits.output.summary,
        dmc=[rules.collect_dmcontrol.output.manifest] if _USES_PRETRAIN else [],
        # last stage: the benchmark files of every other job exist by then
        archive=rules.archive.output.index,
    output:
        data=report(
            f"{REPORT}/data_summary.html",
            caption="../report/data_summary.rst",
            category="Data",
        ),
        tok_curves=[
            report(
                f"{REPORT}/training/{r}.png",
                caption="../report/training_curves.rst",
                category="Tokenizer",
                subcategory="Training curves",
            )
            for r in TOK_TRAINED
        ],
        dyn_curves=[
            report(
                f"{REPORT}/training/{r}.png",
                caption="../report/training_curves.rst",
                category="Dynamics variants",
                subcategory="Training curves",
            )
            for r in DYN_TRAINED
        ],
        probe=report(
            f"{REPORT}/probe_per_dim.png",
            caption="../report/probe_per_dim.rst",
            category="Probe",
        ),
        runtime_html=report(
            f"{REPORT}/runtime.html",
            caption="../report/runtime.rst",
            category="Runtime",
        ),
        runtime_png=report(
            f"{REPORT}/runtime.png",
            caption="../report/runtime.rst",
            category="Runtime",
        ),
        provenance=report(
            f"{REPORT}/provenance.html",
            caption="../report/provenance.rst",
            category="Provenance",
        ),
    log:
        "logs/report_assets/report_assets.log",
    benchmark:
        "benchmarks/report_assets/report_assets.tsv"
    conda:
        "../envs/pipeline.yaml"
    resources:
        **cpu_job("report_assets"),
    params:
        cfg=rules.tables.params.cfg,
        runs=" ".join(TOK_TRAINED + DYN_TRAINED),
        dmc=lambda wc, input: (
            f"--dmcontrol-manifest {input.dmc[0]}" if input.dmc else ""
        ),
        out=parent_of("data"),
    shell:
        "python workflow_scripts/make_report_assets.py --tables-config {params.cfg} --probe-summaries {input.probe}"
        " --rollout {input.rollout} --tokenizer-eval {input.tok} --runs {params.runs} --manifest {input.manifest}"
        " --splits-summary {input.splits} {params.dmc} --benchmarks benchmarks --out-dir {params.out} > {log} 2>&1"
