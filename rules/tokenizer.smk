# Stage 2: train the causal video tokenizer, then score its reconstructions.
# Checkpoints live in <ckpt_root>/<run>/<run identity hash>/ (params, NOT outputs; training/identity.py): a failed or timed-out
# attempt keeps them, and Snakemake's retry (with a longer runtime) resumes (snakemake_slurm.md §4).
TOK = config["tokenizer"]
TOK_RUN = TOK["run_name"]
TOK_OUT = f"results/train/{TOK_RUN}"
TOK_EVAL = f"results/tokenizer_eval/{TOK_RUN}"


rule train_tokenizer:
    input:
        manifest=f"{PRE}/manifest.json",
        train=f"{PRE}/splits/train.json",
    output:
        checkpoint=f"{TOK_OUT}/checkpoint.json",
        metrics=f"{TOK_OUT}/metrics.jsonl",
        config=f"{TOK_OUT}/config.json",
    log:
        f"logs/train_tokenizer/{TOK_RUN}.log",
    benchmark:
        f"benchmarks/train_tokenizer/{TOK_RUN}.tsv"
    retries: retries(TOK["retries"])
    conda:
        "../envs/pipeline.yaml"
    threads: TOK["cpus_per_task"]
    resources:
        **job_resources(
            gpu=TOK["gpus"],
            cpus=TOK["cpus_per_task"],
            cpus_per_gpu=TOK["cpus_per_gpu"],
            mem_mb=lambda wc, attempt: TOK["mem_mb"] * attempt,
            runtime=lambda wc, attempt: TOK["runtime_min"] * attempt,
        ),
    params:
        launcher=launcher,
        ckpt_root=config["paths"]["ckpt_root"],
        tok=json_arg(TOK),
        res=config["data"]["model_resolution"],
        lpips=lpips_cache_arg,
        out=parent_of("checkpoint"),
    shell:
        "{params.launcher} workflow_scripts/train_tokenizer.py --tokenizer {params.tok}"
        " --manifest {input.manifest} --train-split {input.train} --resolution {params.res} {params.lpips}"
        " --ckpt-root {params.ckpt_root} --out-dir {params.out} --time-limit-min {resources.runtime}"
        " > {log} 2>&1"


rule tokenizer_eval:
    input:
        checkpoint=f"{TOK_OUT}/checkpoint.json",
        manifest=f"{PRE}/manifest.json",
        test_ood=f"{PRE}/splits/test_ood.json",
        val=f"{PRE}/splits/val.json",
    output:
        json=f"{TOK_EVAL}/psnr.json",
        png=report(f"{TOK_EVAL}/reconstructions.png", category="Tokenizer"),
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
