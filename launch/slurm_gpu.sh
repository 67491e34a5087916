#!/usr/bin/env bash
# SLURM GPU launch: one process per node (all its GPUs on one mesh), or one per GPU.
#
#   sbatch launch/slurm_gpu.sh CONFIG WORKDIR [--config.K=V ...]             # 1 node, 8 GPUs
#   sbatch --nodes=4 launch/slurm_gpu.sh CONFIG WORKDIR                      # 4 nodes
#   sbatch --nodes=2 launch/slurm_gpu.sh --per-gpu CONFIG WORKDIR            # 16 processes
#   launch/slurm_gpu.sh --dry-run [--per-gpu] CONFIG WORKDIR   # prints the srun line, runs nothing
#
# With more than one process, --distributed makes jax.distributed.initialize() read SLURM's
# environment (coordinator = the first node, process id = SLURM_PROCID). Rerunning the same job
# resumes from the latest checkpoints in WORKDIR.
#SBATCH --job-name=mlfd_jax
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=72:00:00
set -euo pipefail
dry=0 per_gpu=0
while [[ $# -gt 0 ]]; do
  case $1 in
    --dry-run) dry=1; shift ;;
    --per-gpu) per_gpu=1; shift ;;
    --*) echo "slurm_gpu.sh: unknown option $1; valid: --dry-run, --per-gpu" >&2; exit 2 ;;
    *) break ;;
  esac
done
if [[ $# -lt 2 ]]; then
  echo "slurm_gpu.sh: usage: launch/slurm_gpu.sh [--dry-run] [--per-gpu] CONFIG WORKDIR" \
       "[--config.K=V ...]" >&2
  exit 2
fi
config=$1 workdir=$2; shift 2
nodes=${SLURM_NNODES:-1} gpus=${SLURM_GPUS_ON_NODE:-8}

cmd=(srun)
if ((per_gpu)); then
  cmd+=(--ntasks-per-node="$gpus" --gpus-per-task=1)
fi
cmd+=(python -m mlfd_jax.main --config="$config" --workdir="$workdir")
if ((per_gpu)) || ((nodes > 1)); then
  cmd+=(--distributed)
fi
cmd+=("$@")
# shellcheck source=launch/run_or_print.sh
source launch/run_or_print.sh  # run(): runs a command, or prints it (--dry-run)
run "${cmd[@]}"
