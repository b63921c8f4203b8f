#!/bin/bash
# The Snakemake controller as a Slurm job of its own, for a study that runs for days (README "Running on
# Slurm", docs/slurm.md): it only submits and watches jobs, so one CPU and little memory do. Submit from the repository
# root, with extra snakemake arguments after the script:
#     sbatch --partition=<long CPU partition> --time=7-00:00:00 profiles/slurm/controller.sh
#     sbatch ... profiles/slurm/controller.sh --configfile my_site.yaml
# Its own log: snakemake-controller-<job id>.log (repository root: Slurm opens it before the script runs). If it ends before the study does (time limit), the training jobs
# it submitted keep running; resubmit it once they have ended (`squeue -u $USER`): finished outputs are
# kept, incomplete ones rerun and the trainers resume from their checkpoints.
#SBATCH --job-name=d4l-controller
#SBATCH --cpus-per-task=1
#SBATCH --mem=4G
#SBATCH --output=snakemake-controller-%j.log
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-.}"
if [ -z "${VIRTUAL_ENV:-}" ] && [ -f .venv/bin/activate ]; then
    # shellcheck disable=SC1091
    source .venv/bin/activate
fi
exec snakemake --profile "${D4L_SLURM_PROFILE:-slurm}" "$@"
