# Stage 2: train the causal video tokenizer, then score its reconstructions.
# Checkpoints live in <ckpt_root>/<run>/<run identity hash>/ (params, NOT outputs; training/identity.py): a failed or timed-out
# attempt keeps them, and Snakemake's retry (with a longer runtime) resumes (snakemake_slurm.md §4).
TOK = config["tokenizer"]
TOK_RUN = TOK["run_name"]
TOK_OUT = f"results/train/{TOK_RUN}"
TOK_EVAL = f"results/tokenizer_eval/{TOK_RUN}"
# one rule trains every tokenizer: the study's (LIBERO), the DMControl pretraining's and its LIBERO fine-tune
# (rules/dmcontrol.smk)
TOKS = {TOK_RUN: TOK, DMC_TOK_RUN: DMC_TOK, DMC_FT_RUN: DMC_FT}


rule train_tokenizer:
    input:
        unpack(_tok_inputs),
    output:
        checkpoint="results/train/{tok_run}/checkpoint.json",
        metrics="results/train/{tok_run}/metrics.jsonl",
        config="results/train/{tok_run}/config.json",
    log:
        "logs/train_tokenizer/{tok_run}.log",
    benchmark:
        "benchmarks/train_tokenizer/{tok_run}.tsv"
    wildcard_constraints:
        tok_run="|".join(TOKS),
    # the study tokenizer is the DAG's critical path: start it before the DMControl pretraining's jobs
    priority: lambda wc: CRITICAL_PRIORITY if wc.tok_run == TOK_RUN else 0
    retries: retries(max(t["retries"] for t in TOKS.values()))
    conda:
        "../envs/pipeline.yaml"
    threads: lambda wc: _tok(wc)["cpus_per_task"]
    resources:
        **job_resources(
            gpu=lambda wc: _tok(wc)["gpus"],
            cpus=lambda wc: _tok(wc)["cpus_per_task"],
            cpus_per_gpu=lambda wc: _tok(wc)["cpus_per_gpu"],
            mem_mb=lambda wc, attempt: _tok(wc)["mem_mb"] * attempt,
            runtime=lambda wc, attempt: _tok(wc)["runtime_min"] * attempt,
        ),
    params:
        launcher=launcher,
        ckpt_root=config["paths"]["ckpt_root"],
        tok=lambda wc: json_arg(_tok(wc)),
        res=config["data"]["model_resolution"],
        lpips=lpips_asset_arg,
        out=parent_of("checkpoint"),
    shell:
        "{params.launcher} workflow_scripts/train_tokenizer.py --tokenizer {params.tok}"
        " --manifest {input.manifest} --train-split {input.train} --resolution {params.res} {params.lpips}"
        " --ckpt-root {params.ckpt_root} --out-dir {params.out} --time-limit-min {resources.runtime}"
        " --expect-gpus {resources.gpu}"
        " > {log} 2>&1"


rule tokenizer_eval:
    input:
        checkpoint=f"{TOK_OUT}/checkpoint.json",
        manifest=f"{PRE}/manifest.json",
        test_ood=f"{PRE}/splits/test_ood.json",
        val=f"{PRE}/splits/val.json",
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
    resources:
        **cpu_job("tokenizer_eval"),
    params:
        ev=json_arg(TOK["eval"]),
        res=config["data"]["model_resolution"],
    shell:
        "python workflow_scripts/eval_tokenizer.py --checkpoint-json {input.checkpoint}"
        " --manifest {input.manifest} --test-ood {input.test_ood} --val {input.val} --resolution {params.res}"
        " --eval {params.ev} --out-json {output.json} --out-png {output.png} > {log} 2>&1"
