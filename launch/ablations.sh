#!/usr/bin/env bash
# The paper's stage-2 ablations, one knob each, beside the default MLFD run of every seed. Each
# ablation has its own workdirs and reuses the seed's stage-1 teachers (copied, never modified),
# so every ablation pairs with the default and with `individual`; then one report over all.
#
#   launch/ablations.sh CONFIG PREFIX N [--seeds "0 1"] [--lanes L] [--config.K=V ...]
#   launch/ablations.sh configs/shared_trio.py runs/trio 3
# needs PREFIX/seed<i>/teachers (from launch/seeds.sh, or copied there) and runs, in this order:
#   PREFIX/seed<i>                  the default (stage=all; skipped where seeds.sh finished it)
#   PREFIX/seed<i>                  distill.method=mlfd_last      (distilled levels: stage3 only)
#   PREFIX/abl_per_dataset/seed<i>  joint.mode=per_dataset        (one joint teacher per dataset)
#   PREFIX/abl_fusion_stage4/...    joint.fusion_level=stage4     (fusion at the last map)
#   PREFIX/abl_finetune/...         joint.finetune_teachers=True  (fine-tuned vs frozen teachers)
#   PREFIX/abl_fusion_stage2/...    joint.fusion_level=stage2     (an earlier fusion level)
# and PREFIX/ablations/results.{md,png} over the seeds 0..N-1. Rerunning skips finished work.
#
# --seeds picks which seeds to run now (default all N; the report still covers 0..N-1 once they
# are all there). --lanes L runs L seeds at a time, each pinned (taskset) to its own 1/L of the
# cores, with its log in PREFIX/ablations_seed<i>.log (see launch/seeds.sh on pinned arithmetic).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
if [[ $# -lt 3 ]]; then
  echo "ablations.sh: usage: launch/ablations.sh CONFIG PREFIX N [--seeds \"S ...\"]" \
       "[--lanes L] [--config.K=V ...]" >&2
  exit 2
fi
config=$1 prefix=$2 n=$3; shift 3
if [[ ! $n =~ ^[1-9][0-9]*$ ]]; then
  echo "ablations.sh: N needs a positive number of seeds; got $n" >&2; exit 2
fi
seeds=$(seq -s " " 0 $((n - 1))) lanes=1
parse_launch_options ablations.sh "--seeds --lanes" "$@"
set -- "${overrides[@]}"
ABLATIONS=(  # name and override, in the order they run
  "abl_per_dataset --config.joint.mode=per_dataset"
  "abl_fusion_stage4 --config.joint.fusion_level=stage4"
  "abl_finetune --config.joint.finetune_teachers=True"
  "abl_fusion_stage2 --config.joint.fusion_level=stage2"
)

for s in $seeds; do
  [[ -d "$prefix/seed$s/teachers" ]] || {
    echo "ablations.sh: no $prefix/seed$s/teachers; run launch/seeds.sh first" >&2; exit 2; }
done

run_seed() {  # seed, overrides...: the default, then every ablation of one seed
  local s=$1 base="$prefix/seed$1" name override w; shift
  python -m mlfd_jax.main --config="$config" --workdir="$base" --config.seed="$s" "$@"
  python -m mlfd_jax.main --config="$config" --workdir="$base" --config.seed="$s" \
      --config.stage=students --config.distill.method=mlfd_last "$@"
  for entry in "${ABLATIONS[@]}"; do
    read -r name override <<< "$entry"
    w="$prefix/$name/seed$s"
    if [[ ! -d "$w/teachers" ]]; then
      mkdir -p "$w" && cp -r "$base/teachers" "$w/teachers"
    fi
    python -m mlfd_jax.main --config="$config" --workdir="$w" --config.seed="$s" $override "$@"
  done
}

read -r -a seed_list <<< "$seeds"
if ((lanes <= 1)); then
  for s in "${seed_list[@]}"; do run_seed "$s" "$@"; done
else
  check_lanes ablations.sh "$lanes"
  pids=()
  for ((lane = 0; lane < lanes; lane++)); do
    lane_pin "$lanes" "$lane"
    (  # this lane's seeds, one after another, on its own cores
      for ((i = lane; i < ${#seed_list[@]}; i += lanes)); do
        s=${seed_list[i]}
        echo "seed $s: cores $cores, log $prefix/ablations_seed$s.log"
        "${pin[@]}" bash -c "set -euo pipefail; $(declare -f run_seed); \
            $(declare -p ABLATIONS); config='$config' prefix='$prefix' run_seed \"\$@\"" \
            run_seed "$s" "$@" > "$prefix/ablations_seed$s.log" 2>&1
      done
    ) &
    pids+=($!)
  done
  failed=0
  for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
  if ((failed)); then echo "ablations.sh: a seed failed: see $prefix/ablations_seed*.log" >&2; exit 1; fi
fi

dirs=()
for ((s = 0; s < n; s++)); do
  dirs+=("$prefix/seed$s")
  for entry in "${ABLATIONS[@]}"; do
    read -r name _ <<< "$entry"
    dirs+=("$name=$prefix/$name/seed$s")
  done
done
for d in "${dirs[@]}"; do
  if [[ ! -f "${d#*=}/results.json" ]]; then
    echo "ablations.sh: ${d#*=} has no results yet; the report waits for every seed"; exit 0
  fi
done
python -m mlfd_jax.report "${dirs[@]}" --out "$prefix/ablations"
