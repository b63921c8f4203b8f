# Stage 1: (synthetic data) -> preprocess -> splits.
# Shards live in results/preprocess/shards/, which is NOT a declared output: a failed or killed
# run keeps its finished shards and the rerun resumes (snakemake_slurm.md §4).
PROBE_FILES = [
    f"{PRE}/splits/probe/seed{s}/{k}.json"
    for s in config["probe"]["seeds"]
    for k in ("probe_train", "probe_eval_train", "probe_eval_test")
]


rule make_synthetic:
    output:
        gt=f"{LIBERO_ROOT}/_synthetic_ground_truth.json",
    log:
        "logs/make_synthetic/make_synthetic.log",
    benchmark:
        "benchmarks/make_synthetic/make_synthetic.tsv"
    priority: CRITICAL_PRIORITY
    conda:
        "../envs/pipeline.yaml"
    resources:
        **cpu_job("make_synthetic"),
    params:
        root=parent_of("gt"),
        tasks=lambda wc: (
            "demo"
            if config["synthetic"]["task_set"] == "demo"
            else config["synthetic"]["n_tasks"]
        ),
        s=config["synthetic"],
    shell:
        "python workflow_scripts/make_synthetic.py --root {params.root} --tasks {params.tasks}"
        " --per-suite {params.s[per_suite]} --demos {params.s[n_demos]}"
        " --len-min {params.s[len_min]} --len-max {params.s[len_max]} --seed {params.s[seed]}"
        " > {log} 2>&1"


rule preprocess:
    input:
        [rules.make_synthetic.output.gt] if config["synthetic"]["enabled"] else [],
    output:
        manifest=MANIFEST,
    log:
        "logs/preprocess/preprocess.log",
    benchmark:
        "benchmarks/preprocess/preprocess.tsv"
    priority: CRITICAL_PRIORITY
    conda:
        "../envs/pipeline.yaml"
    # the worker processes = the CPUs the job asks for (sbatch -c): --workers {resources.cpus_per_task}
    # ({threads} is capped by the submitting Snakemake's cores, not the job's)
    threads: config["data"]["workers"]
    resources:
        **cpu_job(
            "preprocess",
            mem_mb=2000 + 1500 * config["data"]["workers"],
            cpus=config["data"]["workers"],
        ),
    params:
        # workers: a resource; stage_to_local: how the trainers read the shards, not what is in them
        d={
            k: v
            for k, v in config["data"].items()
            if k not in ("workers", "stage_to_local")
        },
        resize=lambda wc: (
            f"--resize {config['data']['resize']}" if config["data"]["resize"] else ""
        ),
        convert=lambda wc: "--convert-dtype" if config["data"]["convert_dtype"] else "",
        out=parent_of("manifest"),
    shell:
        "python workflow_scripts/preprocess.py --libero-root {params.d[libero_root]} --out {params.out}"
        " --workers {resources.cpus_per_task} --on-bad-demo {params.d[on_bad_demo]}"
        " --min-demo-len {params.d[min_demo_len]} {params.resize} {params.convert} > {log} 2>&1"


rule splits:
    input:
        manifest=rules.preprocess.output.manifest,
    output:
        summary=f"{PRE}/splits/summary.json",
        splits=list(SPLITS.values()),
        probe=PROBE_FILES,
    log:
        "logs/splits/splits.log",
    benchmark:
        "benchmarks/splits/splits.tsv"
    priority: CRITICAL_PRIORITY
    conda:
        "../envs/pipeline.yaml"
    resources:
        **cpu_job("splits"),
    params:
        split=json_arg(config["split"]),
        probe=json_arg(config["probe"]),
        out=parent_of("summary"),
    shell:
        "python workflow_scripts/make_splits.py --manifest {input.manifest} --out {params.out}"
        " --split {params.split} --probe {params.probe} > {log} 2>&1"


rule data_sanity:
    input:
        manifest=rules.preprocess.output.manifest,
        probe=rules.splits.output.probe,
    output:
        json=f"{PRE}/sanity/frame_diff_probe.json",
        png=report(
            f"{PRE}/sanity/frame_diff_probe.png",
            caption="../report/sanity_probe.rst",
            category="Data",
        ),
        frames=report(
            f"{PRE}/sanity/sample_frames.png",
            caption="../report/sample_frames.rst",
            category="Data",
        ),
    log:
        "logs/data_sanity/data_sanity.log",
    benchmark:
        "benchmarks/data_sanity/data_sanity.tsv"
    conda:
        "../envs/pipeline.yaml"
    resources:
        **cpu_job("data_sanity"),
    params:
        probe_dir=lambda wc, input: os.path.dirname(input.probe[0]),
        seed=config["probe"]["seeds"][0],
        res=config["data"]["model_resolution"],
    shell:
        "python workflow_scripts/data_sanity.py --manifest {input.manifest} --probe-dir {params.probe_dir}"
        " --resolution {params.res} --seed {params.seed} --out-json {output.json} --out-png {output.png}"
        " --frames-png {output.frames} > {log} 2>&1"


PREPROCESS_OUTPUTS = [
    *rules.preprocess.output,
    *rules.splits.output,
    *rules.data_sanity.output,
]
