# Stage 3: one rule trains every dynamics variant (wildcard = the variant's run name). Variants are
# config (config.yaml `dynamics.variants`), not code. A variant that cannot run (a DMControl init
# without a configured checkpoint, or enabled: false) gets a not_run.json that says why instead.
# The variants (DYN, DYN_RUN, DYN_NOT_RUN) are in common.smk.
# train_dynamics also trains the DMControl pretraining's dynamics (rules/dmcontrol.smk); it is not a variant
DYN_TRAIN = DYN_RUN + [DMC_DYN_RUN]
# config key path -> run section of every run it trains (rule retries, checks)
DYN_TRAIN_RUNS = {
    **{f"dynamics.variants.{n}": DYN[n] for n in DYN_RUN},
    "dmcontrol_pretrain.dynamics": DMC_DYN,
}


# Writing a variant's not_run.json is not worth a Slurm job.
localrules:
    dynamics_not_run,


rule train_dynamics:
    input:
        unpack(_dyn_inputs),
    output:
        checkpoint=train_file("{variant}"),
        metrics=train_file("{variant}", "metrics.jsonl"),
        config=train_file("{variant}", "config.json"),
    log:
        "logs/train_dynamics/{variant}.log",
    benchmark:
        "benchmarks/train_dynamics/{variant}.tsv"
    wildcard_constraints:
        variant="|".join(DYN_TRAIN),
    retries: retries(DYN_TRAIN_RUNS)
    conda:
        "../envs/pipeline.yaml"
    threads: lambda wc: _dyn(wc)["cpus_per_task"]
    resources:
        **job_resources(
            "train_dynamics",
            gpu=lambda wc: _dyn(wc)["gpus"],
            nodes=lambda wc: _dyn(wc)["nodes"],
            cpus=lambda wc: _dyn(wc)["cpus_per_task"],
            cpus_per_gpu=lambda wc: _dyn(wc)["cpus_per_gpu"],
            # the same on every attempt: retries resume after a deadline stop (job_sizing.py)
            mem_mb=lambda wc: _dyn(wc)["mem_mb"],
            runtime=lambda wc: _dyn(wc)["runtime_min"],
            deadline_margin_s=lambda wc: str(_dyn(wc)["deadline_margin_s"]),
            loader_workers=lambda wc: (
                "auto" if _dyn(wc)["num_workers"] is None else _dyn(wc)["num_workers"]
            ),
            launcher=lambda wc: run_launcher(_dyn(wc)),
            monitor=monitor_args(),
        ),
    params:
        ckpt_root=config["paths"]["ckpt_root"],
        run=lambda wc: json_arg(science(_dyn(wc))),  # scheduling keys travel as resources
        tok=_tok_arg,
        out=parent_of("checkpoint"),
    shell:
        "{resources.launcher} workflow_scripts/train_dynamics.py --variant {params.run}"
        " --manifest {input.manifest} --train-split {input.train} {params.tok}"
        " --ckpt-root {params.ckpt_root} --out-dir {params.out} --time-limit-min {resources.runtime}"
        " --expect-gpus {resources.gpus_per_node} --deadline-margin-s {resources.deadline_margin_s}"
        " --num-workers {resources.loader_workers} {resources.monitor}"
        " > {log} 2>&1"


rule dynamics_not_run:
    output:
        train_file("{variant}", "not_run.json"),
    log:
        "logs/dynamics_not_run/{variant}.log",
    benchmark:
        "benchmarks/dynamics_not_run/{variant}.tsv"
    wildcard_constraints:
        variant="|".join(DYN_NOT_RUN) or "__none__",
    conda:
        "../envs/pipeline.yaml"
    resources:
        **job_resources("dynamics_not_run", mem_mb=500, runtime=5),
    params:
        info=lambda wc: json_arg(
            {
                "variant": wc.variant,
                "status": "not_run",
                "reason": DYN[wc.variant]["not_run_reason"],
            }
        ),
    shell:
        "python workflow_scripts/write_status.py --json {params.info} --out {output} > {log} 2>&1"


DYN_OUTPUTS = expand(rules.train_dynamics.output.checkpoint, variant=DYN_RUN) + expand(
    rules.dynamics_not_run.output, variant=DYN_NOT_RUN
)
