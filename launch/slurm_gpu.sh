#!/usr/bin/env bash
# One 8-GPU node (single process, all GPUs on one mesh):
#   sbatch launch/slurm_gpu.sh configs/imagenet_subsets.py runs/in3 --config.data_dir=/data/tfds
# Several nodes: set --nodes=N and --ntasks-per-node=1; jax.distributed.initialize() reads the
# SLURM environment when --distributed is passed.
#SBATCH --job-name=mlfd_jax
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=72:00:00
set -euo pipefail
config=$1 workdir=$2; shift 2
distributed=""
[ "${SLURM_NNODES:-1}" -gt 1 ] && distributed="--distributed"
# Rerunning the same job resumes from the latest checkpoints in $workdir.
srun python -m mlfd_jax.main --config="$config" --workdir="$workdir" $distributed "$@"
