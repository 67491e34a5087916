#!/usr/bin/env bash
# Run a config for N seeds (one workdir each), optionally with more student methods and the
# joint baseline in the same workdirs, then report mean ± std over the seeds.
#
#   launch/seeds.sh CONFIG PREFIX N [--methods "kd mlfd_last ..."] [--baseline_joint] \
#       [--config.K=V ...]
#   launch/seeds.sh configs/shared_trio.py runs/trio 3 --methods "kd mlfd_last" --baseline_joint
# -> runs/trio/seed0 .. seed2 (teachers, joint teacher, mlfd students, then each method's
#    students and the joint baseline beside them), and runs/trio/report/results.{md,png}.
# Rerunning resumes or skips each seed's finished stages and methods.
set -euo pipefail
config=$1 prefix=$2 n=$3; shift 3
methods="" baseline=0
while [[ $# -gt 0 ]]; do
  case $1 in
    --methods) methods=$2; shift 2 ;;
    --baseline_joint) baseline=1; shift ;;
    *) break ;;
  esac
done
dirs=()
for ((s = 0; s < n; s++)); do
  w="$prefix/seed$s"
  python -m mlfd_jax.main --config="$config" --workdir="$w" --config.seed=$s "$@"
  if ((baseline)); then
    python -m mlfd_jax.main --config="$config" --workdir="$w" --config.seed=$s \
        --config.stage=baseline_joint "$@"
  fi
  for m in $methods; do
    python -m mlfd_jax.main --config="$config" --workdir="$w" --config.seed=$s \
        --config.stage=students --config.distill.method="$m" "$@"
  done
  dirs+=("$w")
done
python -m mlfd_jax.report "${dirs[@]}" --out "$prefix/report"
