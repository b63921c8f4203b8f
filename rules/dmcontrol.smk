# Stage 2b: the offline DMControl pretraining, for the variants with `init_from: dmcontrol` when
# `dmcontrol_init.source` is pretrain (the paper config uses the released files instead, `released`):
# collect_dmcontrol renders episodes of stock dm_control tasks into shards; the tokenizer and dynamics
# rules (train_tokenizer, train_dynamics: the same trainers) pretrain on them; pretrain_dmcontrol writes
# the final weights in the upstream layout, where config.DMCONTROL_PRETRAIN_DIR says.
# The runs (DMC_TOK_RUN, DMC_DYN_RUN, ...) and the files they share with other stages are in common.smk.
from dreamer4_libero.config import DMCONTROL_PRETRAIN_DIR

DMC = config["dmcontrol_pretrain"]


rule collect_dmcontrol:
    output:
        **DMC_COLLECTED,
    log:
        "logs/collect_dmcontrol/collect_dmcontrol.log",
    benchmark:
        "benchmarks/collect_dmcontrol/collect_dmcontrol.tsv"
    conda:
        "../envs/pipeline.yaml"
    # one process (episodes are rendered one after the other): threads 1 = cpus_per_task 1 (job_resources)
    resources:
        **job_resources(
            "collect_dmcontrol",
            mem_mb=DMC["collect"]["mem_mb"],
            runtime=DMC["collect"]["runtime_min"],
        ),
    params:
        c=json_arg(science(DMC["collect"])),
        out=parent_of("manifest"),
    shell:
        "python workflow_scripts/collect_dmcontrol.py --collect {params.c} --out {params.out}"
        " --progress false > {log} 2>&1"


rule pretrain_dmcontrol:
    input:
        # made by rules train_tokenizer and train_dynamics (rules/tokenizer.smk, rules/dynamics.smk)
        tokenizer=train_file(DMC_TOK_RUN),
        dynamics=train_file(DMC_DYN_RUN),
        manifest=rules.collect_dmcontrol.output.manifest,
    output:
        tokenizer=f"{DMCONTROL_PRETRAIN_DIR}/tokenizer.pt",
        dynamics=f"{DMCONTROL_PRETRAIN_DIR}/dynamics.pt",
        record=f"{DMCONTROL_PRETRAIN_DIR}/pretrain.json",
    log:
        "logs/pretrain_dmcontrol/pretrain_dmcontrol.log",
    benchmark:
        "benchmarks/pretrain_dmcontrol/pretrain_dmcontrol.tsv"
    conda:
        "../envs/pipeline.yaml"
    resources:
        **job_resources("pretrain_dmcontrol", mem_mb=4000, runtime=30),
    params:
        out=parent_of("record"),
    shell:
        "python workflow_scripts/export_dmcontrol.py --tokenizer-checkpoint-json {input.tokenizer}"
        " --dynamics-checkpoint-json {input.dynamics} --collection-manifest {input.manifest}"
        " --out-dir {params.out} > {log} 2>&1"
