#!/usr/bin/env bash
# Run a config for N seeds (one workdir each), optionally with more student methods and the
# joint baseline in the same workdirs, then report mean ± std over the seeds.
#
#   launch/seeds.sh CONFIG PREFIX N [--methods "kd feed:feed_pre ..."] [--baseline_joint] \
#       [--lanes L] [--config.K=V ...]
#   launch/seeds.sh configs/shared_trio.py runs/trio 3 --methods "kd mlfd_last" --baseline_joint
# -> runs/trio/seed0 .. seed2 (teachers, joint teacher, mlfd students, then each method's
#    students and the joint baseline beside them), and runs/trio/report/results.{md,png}.
# A --methods entry METHOD:NAME trains METHOD's students under the name NAME.
# Rerunning resumes or skips each seed's finished stages and methods.
#
# --lanes L runs L seeds at a time, each pinned (taskset) to its own 1/L of the CPU cores, with
# its log in PREFIX/seed<i>.log. On a 2-core machine 2 lanes train about 1.13x the images per
# second of one seed at a time (benchmarks/RESULTS.md), but a pinned run's arithmetic differs
# from an unpinned one's (XLA:CPU uses as many threads as usable cores): compare seeds run the
# same way, and pair models only within a seed.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
if [[ $# -lt 3 ]]; then launch_usage seeds.sh N; fi
config=$1 prefix=$2 n=$3; shift 3
methods="" baseline=0 lanes=1
parse_launch_options seeds.sh "--methods --baseline_joint --lanes" "$@"
set -- "${overrides[@]}"

run_seed() {  # seed, overrides...: every command of one seed, in order
  local s=$1 w="$prefix/seed$1"; shift
  python -m mlfd_jax.main --config="$config" --workdir="$w" --config.seed="$s" "$@"
  if ((baseline)); then
    python -m mlfd_jax.main --config="$config" --workdir="$w" --config.seed="$s" \
        --config.stage=baseline_joint "$@"
  fi
  for m in $methods; do
    method_flags "$m"
    python -m mlfd_jax.main --config="$config" --workdir="$w" --config.seed="$s" \
        --config.stage=students "${mflags[@]}" "$@"
  done
}

if [[ -n $methods ]]; then
  check_methods seeds.sh "$config" "$prefix/seed0" 0 "$methods" "$@"
fi
dirs=()
if ((lanes <= 1)); then
  for ((s = 0; s < n; s++)); do
    run_seed "$s" "$@"
    dirs+=("$prefix/seed$s")
  done
else
  check_lanes seeds.sh "$lanes"
  mkdir -p "$prefix"
  pids=()
  for ((lane = 0; lane < lanes; lane++)); do
    lane_pin "$lanes" "$lane"
    (  # this lane's seeds, one after another, on its own cores
      for ((s = lane; s < n; s += lanes)); do
        echo "seed $s: cores $cores, log $prefix/seed$s.log"
        "${pin[@]}" bash -c "set -euo pipefail; $(declare -f run_seed method_flags); \
            config='$config' \
            prefix='$prefix' methods='$methods' baseline=$baseline run_seed \"\$@\"" \
            run_seed "$s" "$@" > "$prefix/seed$s.log" 2>&1
      done
    ) &
    pids+=($!)
  done
  failed=0
  for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
  if ((failed)); then echo "a seed failed: see $prefix/seed*.log" >&2; exit 1; fi
  for ((s = 0; s < n; s++)); do dirs+=("$prefix/seed$s"); done
fi
python -m mlfd_jax.report "${dirs[@]}" --out "$prefix/report"
