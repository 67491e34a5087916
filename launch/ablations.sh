#!/usr/bin/env bash
# The ablations of the paper's study, each in its own workdirs beside a finished seeds.sh run,
# reusing that run's stage-1 teachers (copied, never modified), then one report over all.
#
#   launch/ablations.sh CONFIG PREFIX N [--config.K=V ...]
#   launch/ablations.sh configs/shared_trio.py runs/trio 3
# needs PREFIX/seed<i>/teachers (from launch/seeds.sh) and writes
#   PREFIX/abl_finetune/seed<i>   joint.finetune_teachers=True  (fine-tuned vs frozen teachers)
#   PREFIX/abl_fusion_stage2/...  joint.fusion_level=stage2      (fusion level; default stage3)
#   PREFIX/abl_fusion_stage4/...  joint.fusion_level=stage4      (fusion at the last map)
#   PREFIX/abl_per_dataset/...    joint.mode=per_dataset         (one joint teacher per dataset)
#   PREFIX/abl_levels_last/...    distill.method=mlfd_last       (in the seed's own workdir)
# and PREFIX/ablations/results.{md,png}. Rerunning skips finished work.
set -euo pipefail
config=$1 prefix=$2 n=$3; shift 3
declare -A ABLATIONS=(
  [abl_finetune]="--config.joint.finetune_teachers=True"
  [abl_fusion_stage2]="--config.joint.fusion_level=stage2"
  [abl_fusion_stage4]="--config.joint.fusion_level=stage4"
  [abl_per_dataset]="--config.joint.mode=per_dataset"
)
dirs=()
for ((s = 0; s < n; s++)); do
  base="$prefix/seed$s"
  [[ -d "$base/teachers" ]] || { echo "ablations.sh: no $base/teachers; run launch/seeds.sh first" >&2; exit 2; }
  python -m mlfd_jax.main --config="$config" --workdir="$base" --config.seed=$s \
      --config.stage=students --config.distill.method=mlfd_last "$@"
  dirs+=("$base")
  for name in "${!ABLATIONS[@]}"; do
    w="$prefix/$name/seed$s"
    if [[ ! -d "$w/teachers" ]]; then
      mkdir -p "$w" && cp -r "$base/teachers" "$w/teachers"
    fi
    # shellcheck disable=SC2086
    python -m mlfd_jax.main --config="$config" --workdir="$w" --config.seed=$s \
        ${ABLATIONS[$name]} "$@"
    dirs+=("$name=$w")
  done
done
python -m mlfd_jax.report "${dirs[@]}" --out "$prefix/ablations"
