#!/usr/bin/env bash
# Issue 10's Tiny ImageNet study at a size the paper would recognise, on one GPU: full-width
# ResNet-18s (64..512 channels) at 32 px, 4x the CPU steps (2,400 a stage), fusion at the last
# map, the frozen parts precomputed, bf16; N seeds at once, one process (and one lane of CPU
# cores) a seed sharing the GPU, since one 32 px ResNet-18 at batch 128 leaves most of an H200
# idle. Each seed: individual teachers, joint teacher, mlfd students, then kd students.
#
#   launch/gpu_study.sh PREFIX N [--config.K=V ...]
#   launch/gpu_study.sh runs/tin_gpu 3 --config.data_root=../shared/data
#   STUDY_CONFIG=configs/tiny_imagenet_subsets.py:tiny,width=1.0 launch/gpu_study.sh /tmp/t 2
# -> PREFIX/seed0 .. seed<N-1> and PREFIX/report/results.{md,png} (as launch/seeds.sh).
set -euo pipefail
if [[ $# -lt 2 || ! ${2:-} =~ ^[1-9][0-9]*$ ]]; then
  echo "gpu_study.sh: usage: launch/gpu_study.sh PREFIX N [--config.K=V ...] (N: seeds, a" \
       "positive number)" >&2
  exit 2
fi
prefix=$1 n=$2; shift 2
# Each process takes its share of the GPU's memory rather than JAX's default 75%.
export XLA_PYTHON_CLIENT_MEM_FRACTION
XLA_PYTHON_CLIENT_MEM_FRACTION=$(awk -v n="$n" 'BEGIN { printf "%.2f", 0.9 / n }')
config=${STUDY_CONFIG:-configs/tiny_imagenet_subsets.py:width=1.0,budget=4}
exec "$(dirname "$0")/seeds.sh" "$config" "$prefix" "$n" \
    --lanes "$n" --methods kd \
    --config.joint.fusion_level=stage4 --config.joint.precompute_teachers=True \
    --config.distill.precompute_targets=True \
    --config.teacher_train.dtype=bfloat16 --config.joint_train.dtype=bfloat16 \
    --config.student_train.dtype=bfloat16 "$@"
