#!/usr/bin/env bash
# A ferkit study split across a SLURM job array: each array task runs one share of the runs
# (--shard I/N) in a folder every task can see; a dependent job writes the table and plot.
#
#   sbatch --array=1-8 scripts/slurm_study.sh            # 8 tasks, each one share of the runs
#   sbatch --dependency=afterok:<array job id> --export=ALL,REPORT=1 scripts/slurm_study.sh
#
# Any set of machines sharing STUDY_DIR works the same way without SLURM: run the same command
# with --shard 1/N ... --shard N/N, one per machine, then once more with --report. Finished runs
# are skipped, so a failed or pre-empted task is simply submitted again.
#SBATCH --job-name=ferkit-study
#SBATCH --cpus-per-task=4
#SBATCH --mem=8G
#SBATCH --time=24:00:00
#SBATCH --output=ferkit-study-%A_%a.log
set -euo pipefail

FERKIT=${FERKIT:-ferkit}                       # e.g. /path/to/ferkit/.venv/bin/ferkit
STUDY_DIR=${STUDY_DIR:-$HOME/ferkit-study}     # on a filesystem every node sees
DATA=${DATA:-$HOME/data}                       # real/{train,val,test}, synth/ (class folders or manifests)

args=(study --real-train "$DATA/real/train" --val "$DATA/real/val" --test "$DATA/real/test"
      --synthetic "procedural=$DATA/synth" --ratios 0,1,2,5 --seeds 3 --real-per-class 50,200
      --recipe fer2013 --out "$STUDY_DIR" --no-progress)

if [ -n "${REPORT:-}" ]; then
  exec "$FERKIT" "${args[@]}" --report
fi
: "${SLURM_ARRAY_TASK_ID:?submit as a job array: sbatch --array=1-N $0}"
: "${SLURM_ARRAY_TASK_COUNT:=${SLURM_ARRAY_TASK_MAX}}"
export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}
exec "$FERKIT" "${args[@]}" --shard "$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT" --jobs 1
