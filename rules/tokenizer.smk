# Stage 2: train the causal video tokenizer, then score its reconstructions.
# Checkpoints live in <ckpt_root>/<run>/<run identity hash>/ (params, NOT outputs; training/identity.py): a failed or timed-out
# attempt keeps them, and Snakemake's retry (same runtime and memory) resumes (snakemake_slurm.md §4).
# The runs (TOK, TOK_RUN, TOKS: every tokenizer this rule trains) are in common.smk.
TOK_EVAL = f"results/tokenizer_eval/{TOK_RUN}"
TOK_EVAL_RES = config["job_resources"]["tokenizer_eval"]
TOK_WHERE = {
    TOK_RUN: "tokenizer",
    DMC_TOK_RUN: "dmcontrol_pretrain.tokenizer",
    DMC_FT_RUN: "dmcontrol_pretrain.finetune_tokenizer",
}  # config key of each run, for errors


rule train_tokenizer:
    input:
        unpack(_tok_inputs),
    output:
        checkpoint=train_file("{tok_run}"),
        metrics=train_file("{tok_run}", "metrics.jsonl"),
        config=train_file("{tok_run}", "config.json"),
    log:
        "logs/train_tokenizer/{tok_run}.log",
    benchmark:
        "benchmarks/train_tokenizer/{tok_run}.tsv"
    wildcard_constraints:
        tok_run="|".join(TOKS),
    # the study tokenizer is the DAG's critical path: start it before the DMControl pretraining's jobs
    priority: lambda wc: CRITICAL_PRIORITY if wc.tok_run == TOK_RUN else 0
    retries: retries({TOK_WHERE[n]: t for n, t in TOKS.items()})
    conda:
        "../envs/pipeline.yaml"
    threads: lambda wc: _tok(wc)["cpus_per_task"]
    resources:
        **job_resources(
            "train_tokenizer",
            gpu=lambda wc: _tok(wc)["gpus"],
            nodes=lambda wc: _tok(wc)["nodes"],
            cpus=lambda wc: _tok(wc)["cpus_per_task"],
            cpus_per_gpu=lambda wc: _tok(wc)["cpus_per_gpu"],
            # the same on every attempt: retries resume after a deadline stop (job_sizing.py)
            mem_mb=lambda wc: _tok(wc)["mem_mb"],
            runtime=lambda wc: _tok(wc)["runtime_min"],
            deadline_margin_s=lambda wc: str(_tok(wc)["deadline_margin_s"]),
            loader_workers=lambda wc: (
                "auto" if _tok(wc)["num_workers"] is None else _tok(wc)["num_workers"]
            ),
            launcher=lambda wc: run_launcher(_tok(wc)),
            monitor=monitor_args(),
        ),
    params:
        ckpt_root=config["paths"]["ckpt_root"],
        tok=lambda wc: json_arg(science(_tok(wc))),  # scheduling keys travel as resources
        res=config["data"]["model_resolution"],
        lpips=lpips_asset_arg,
        out=parent_of("checkpoint"),
    shell:
        "{resources.launcher} workflow_scripts/train_tokenizer.py --tokenizer {params.tok}"
        " --manifest {input.manifest} --train-split {input.train} --resolution {params.res} {params.lpips}"
        " --ckpt-root {params.ckpt_root} --out-dir {params.out} --time-limit-min {resources.runtime}"
        " --expect-gpus {resources.gpus_per_node} --deadline-margin-s {resources.deadline_margin_s}"
        " --num-workers {resources.loader_workers} {resources.monitor}"
        " > {log} 2>&1"


rule tokenizer_eval:
    input:
        checkpoint=TOK_CKPT,
        manifest=rules.preprocess.output.manifest,
        test_ood=SPLITS["test_ood"],
        val=SPLITS["val"],
    output:
        json=f"{TOK_EVAL}/psnr.json",
        png=report(
            f"{TOK_EVAL}/reconstructions.png",
            caption="../report/tokenizer_recon.rst",
            category="Tokenizer",
        ),
    log:
        f"logs/tokenizer_eval/{TOK_RUN}.log",
    benchmark:
        f"benchmarks/tokenizer_eval/{TOK_RUN}.tsv"
    conda:
        "../envs/pipeline.yaml"
    # one GPU at paper scale: ~179k frames x 106 GFLOP counted (config.yaml `job_resources.tokenizer_eval`)
    resources:
        **job_resources(
            "tokenizer_eval",
            gpu=TOK_EVAL_RES["gpus"],
            mem_mb=TOK_EVAL_RES["mem_mb"],
            runtime=TOK_EVAL_RES["runtime_min"],
            # chunks per pass: results do not depend on it, so it is no params (no rerun when it changes)
            eval_batch=TOK_EVAL_RES["batch"],
        ),
    params:
        ev=json_arg(TOK["eval"]),
        res=config["data"]["model_resolution"],
    shell:
        "python workflow_scripts/eval_tokenizer.py --checkpoint-json {input.checkpoint}"
        " --manifest {input.manifest} --test-ood {input.test_ood} --val {input.val} --resolution {params.res}"
        " --eval {params.ev} --batch {resources.eval_batch} --out-json {output.json} --out-png {output.png}"
        " --expect-gpus {resources.gpu} > {log} 2>&1"
