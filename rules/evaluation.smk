# Stage 4: evaluation. One `probe` job and one `rollout_eval` job per trained variant, one
# `probe_baselines` job for the feature sets that need no world model (evaluation.md §1-§2).
# The tokenizer's own PSNR is rules/tokenizer.smk `tokenizer_eval` (§3).
PROBE_EVAL = config["probe_eval"]
ROLL_EVAL = config["rollout_eval"]


rule probe:
    input:
        checkpoint=rules.train_dynamics.output.checkpoint,
        manifest=rules.preprocess.output.manifest,
        probe=rules.splits.output.probe,
    output:
        summary="results/probe/{variant}/summary.json",
    log:
        "logs/probe/{variant}.log",
    benchmark:
        "benchmarks/probe/{variant}.tsv"
    wildcard_constraints:
        variant="|".join(DYN_RUN) or "__none__",
    conda:
        "../envs/pipeline.yaml"
    threads: PROBE_EVAL["cpus_per_task"]
    resources:
        **job_resources(
            "probe",
            gpu=PROBE_EVAL["gpus"],
            cpus=PROBE_EVAL["cpus_per_task"],
            mem_mb=PROBE_EVAL["mem_mb"],
            runtime=PROBE_EVAL["runtime_min"],
        ),
    params:
        ev=json_arg(science(PROBE_EVAL)),
        root=grandparent_of("probe"),
        seeds=" ".join(str(s) for s in config["probe"]["seeds"]),
        res=config["data"]["model_resolution"],
        out=parent_of("summary"),
    shell:
        "python workflow_scripts/probe.py --checkpoint-json {input.checkpoint} --manifest {input.manifest}"
        " --probe-root {params.root} --seeds {params.seeds} --resolution {params.res} --eval {params.ev}"
        " --out-dir {params.out} --expect-gpus {resources.gpu} > {log} 2>&1"


rule probe_baselines:
    input:
        tokenizer=TOK_CKPT,
        manifest=rules.preprocess.output.manifest,
        probe=rules.splits.output.probe,
    output:
        summary="results/probe/baselines/summary.json",
    log:
        "logs/probe_baselines/baselines.log",
    benchmark:
        "benchmarks/probe_baselines/baselines.tsv"
    conda:
        "../envs/pipeline.yaml"
    threads: PROBE_EVAL["cpus_per_task"]
    # tok_latent encodes the probe windows with the study tokenizer: the probe jobs' GPU
    resources:
        **job_resources(
            "probe_baselines",
            gpu=PROBE_EVAL["gpus"],
            cpus=PROBE_EVAL["cpus_per_task"],
            mem_mb=PROBE_EVAL["mem_mb"],
            runtime=PROBE_EVAL["runtime_min"],
        ),
    params:
        ev=json_arg(science(PROBE_EVAL)),
        root=grandparent_of("probe"),
        seeds=" ".join(str(s) for s in config["probe"]["seeds"]),
        res=config["data"]["model_resolution"],
        window=config["dynamics"]["defaults"]["seq_len"],
        out=parent_of("summary"),
    shell:
        "python workflow_scripts/probe.py --baselines --tokenizer-checkpoint-json {input.tokenizer}"
        " --manifest {input.manifest} --probe-root {params.root} --seeds {params.seeds} --resolution {params.res}"
        " --window {params.window} --eval {params.ev} --out-dir {params.out} --expect-gpus {resources.gpu}"
        " > {log} 2>&1"


rule rollout_eval:
    input:
        checkpoint=rules.train_dynamics.output.checkpoint,
        tokenizer=TOK_CKPT,
        manifest=rules.preprocess.output.manifest,
        test_ood=SPLITS["test_ood"],
        val=SPLITS["val"],
    output:
        json="results/rollout/{variant}/rollout.json",
        strips=report(
            "results/rollout/{variant}/strips.png",
            caption="../report/rollout_strips.rst",
            category="Rollout",
            subcategory="{variant}",
        ),
        gif=report(
            "results/rollout/{variant}/rollout.gif",
            caption="../report/rollout_gif.rst",
            category="Rollout",
            subcategory="{variant}",
        ),
        curve=report(
            "results/rollout/{variant}/per_step_psnr.png",
            caption="../report/rollout_psnr.rst",
            category="Rollout",
            subcategory="{variant}",
        ),
    log:
        "logs/rollout_eval/{variant}.log",
    benchmark:
        "benchmarks/rollout_eval/{variant}.tsv"
    wildcard_constraints:
        variant="|".join(DYN_RUN) or "__none__",
    conda:
        "../envs/pipeline.yaml"
    resources:
        **job_resources(
            "rollout_eval",
            gpu=ROLL_EVAL["gpus"],
            mem_mb=ROLL_EVAL["mem_mb"],
            runtime=ROLL_EVAL["runtime_min"],
        ),
    params:
        ev=json_arg(science(ROLL_EVAL)),
        res=config["data"]["model_resolution"],
        out=parent_of("json"),
    shell:
        "python workflow_scripts/rollout_eval.py --checkpoint-json {input.checkpoint} --manifest {input.manifest}"
        " --test-ood {input.test_ood} --val {input.val} --resolution {params.res} --eval {params.ev}"
        " --study-tokenizer-checkpoint-json {input.tokenizer} --progress false --out-dir {params.out}"
        " --expect-gpus {resources.gpu} > {log} 2>&1"


EVAL_OUTPUTS = (
    expand(rules.probe.output.summary, variant=DYN_RUN)
    + [rules.probe_baselines.output.summary]
    + expand(rules.rollout_eval.output.json, variant=DYN_RUN)
)
