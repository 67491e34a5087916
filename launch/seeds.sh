#!/usr/bin/env bash
# Run a config for N seeds (one workdir each), then report mean ± std over them.
#   launch/seeds.sh configs/shared_trio.py runs/trio 3 [--config.K=V ...]
# -> runs/trio/seed0 .. seed2, and runs/trio/report/results.{md,png}.
# Rerunning resumes or skips each seed's finished stages.
set -euo pipefail
config=$1 prefix=$2 n=$3; shift 3
dirs=()
for ((s = 0; s < n; s++)); do
  python -m mlfd_jax.main --config="$config" --workdir="$prefix/seed$s" --config.seed=$s "$@"
  dirs+=("$prefix/seed$s")
done
python -m mlfd_jax.report "${dirs[@]}" --out "$prefix/report"
