#!/usr/bin/env bash
# One shard of a bnbench study per SLURM array task. Submit from the repository, e.g.:
#   sbatch --array=1-8 scripts/slurm_sweep.sh configs/studies/lr_sensitivity.yaml
# Every task writes into the same shared folder (OUT_DIR); shards never share a run, so no lock is needed
# across nodes. A task preempted or out of time gets SIGTERM first: its run stops as `interrupted` with a
# checkpoint, and submitting the same array again resumes it (completed runs are skipped).
#SBATCH --job-name=bnbench
#SBATCH --cpus-per-task=2
#SBATCH --time=02:00:00
#SBATCH --signal=TERM@120
#SBATCH --output=slurm-%A_%a.out
set -euo pipefail
STUDY=${1:?usage: sbatch --array=1-N scripts/slurm_sweep.sh STUDY [extra sweep options]}
shift
OUT_DIR=${OUT_DIR:-runs}
TASK=${SLURM_ARRAY_TASK_ID:?run as a SLURM array task (sbatch --array=1-N)}
COUNT=${SLURM_ARRAY_TASK_COUNT:?run as a SLURM array task (sbatch --array=1-N)}
BNBENCH=${BNBENCH:-.venv/bin/bnbench}
# exec: SLURM's SIGTERM reaches bnbench itself, which stops its runs cleanly (exit 130)
exec "$BNBENCH" sweep "$STUDY" --shard "$TASK/$COUNT" --out-dir "$OUT_DIR" \
    --jobs "${SLURM_CPUS_PER_TASK:-1}" --threads-per-job 1 "$@"
