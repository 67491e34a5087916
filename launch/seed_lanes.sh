#!/usr/bin/env bash
# One seed of a config with every core busy: its methods spread over L pinned lanes.
#
#   launch/seed_lanes.sh CONFIG PREFIX SEED [--methods "mlfd kd ..."] [--baseline_joint] \
#       [--lanes L] [--config.K=V ...]
#   launch/seed_lanes.sh configs/tiny_imagenet_subsets.py:budget=4 runs/tin 7 \
#       --methods "mlfd kd avg_kd amtml feed:feed_pre" --baseline_joint \
#       --config.joint.fusion_level=stage4
#
# 1. Lane 0 trains the stage-1 teachers and the joint teacher in PREFIX/seed<S>; the joint
#    baseline, which needs neither, trains beside them in lane 1, in PREFIX/seed<S>_bj.
# 2. Each lane i > 0 gets a copy of that workdir, PREFIX/seed<S>_lane<i> (a workdir belongs to
#    one run at a time), and the methods (default: mlfd; METHOD:NAME names the students NAME) are
#    dealt to the lanes in turn: method k trains its students in lane k mod L, one lane's methods
#    one after another.
# 3. The report merges the workdirs into one run of seed S: PREFIX/report/results.{md,png} and
#    PREFIX/report/seed<S>.results.json.
# Each lane logs to PREFIX/seed<S>.lane<i>.log. Rerunning resumes or skips what is finished (a
# lane's copy is made once). --lanes defaults to the number of usable cores; see launch/lib.sh
# on pinned arithmetic.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
config=$1 prefix=$2 seed=$3; shift 3
methods=mlfd baseline=0 lanes=$(nproc)
while [[ $# -gt 0 ]]; do
  case $1 in
    --methods) methods=$2; shift 2 ;;
    --baseline_joint) baseline=1; shift ;;
    --lanes) lanes=$2; shift 2 ;;
    *) break ;;
  esac
done
check_lanes seed_lanes.sh "$lanes"
read -r -a method_list <<< "$methods"
w="$prefix/seed$seed"
mkdir -p "$prefix"

in_lane() {  # lane, workdir, main.py's flags...: one training command, pinned, logged
  local lane=$1 dir=$2; shift 2
  lane_pin "$lanes" "$lane"
  "${pin[@]}" python -m mlfd_jax.main --config="$config" --workdir="$dir" --config.seed="$seed" \
      "$@" >> "$prefix/seed$seed.lane$lane.log" 2>&1
}

lane_dir() {  # lane -> its workdir
  if (($1 == 0)); then echo "$w"; else echo "${w}_lane$1"; fi
}

fail() {
  echo "seed_lanes.sh: $1 failed: see $prefix/seed$seed.lane*.log; nothing was reported" >&2
  exit 1
}

check_methods seed_lanes.sh "$config" "$w" "$seed" "$methods" "$@"

stage1() {  # lane 0: the teachers, the joint teacher, then (with one lane) the joint baseline
  in_lane 0 "$w" --config.stage=teachers "$@"
  in_lane 0 "$w" --config.stage=joint "$@"
  if ((baseline && lanes == 1)); then in_lane 0 "${w}_bj" --config.stage=baseline_joint "$@"; fi
}
echo "seed $seed: teachers and joint teacher in lane 0, log $prefix/seed$seed.lane0.log"
stage1 "$@" &
pids=($!)
if ((baseline && lanes > 1)); then
  echo "seed $seed: joint baseline in lane 1, ${w}_bj"
  in_lane 1 "${w}_bj" --config.stage=baseline_joint "$@" &
  pids+=($!)
fi
for pid in "${pids[@]}"; do wait "$pid" || fail "stage 1, the joint teacher or the joint baseline"; done

pids=() dirs=()
for ((lane = 0; lane < lanes && lane < ${#method_list[@]}; lane++)); do
  dir=$(lane_dir "$lane")
  dirs+=("$dir")
  if ((lane > 0)) && [[ ! -d $dir ]]; then  # the teachers, joint teacher and compiled programs
    mkdir -p "$dir.tmp"
    cp -r "$w/teachers" "$w/joint" "$w/results.json" "$dir.tmp/"
    if [[ -d $w/jax_cache ]]; then cp -r "$w/jax_cache" "$dir.tmp/"; fi
    mv "$dir.tmp" "$dir"
  fi
  (  # this lane's methods, one after another
    for ((k = lane; k < ${#method_list[@]}; k += lanes)); do
      echo "seed $seed: ${method_list[k]} in lane $lane, $dir"
      method_flags "${method_list[k]}"
      in_lane "$lane" "$dir" --config.stage=students "${mflags[@]}" "$@"
    done
  ) &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid" || fail "a student method"; done

if ((${#dirs[@]} == 0)); then dirs=("$w"); fi
if ((baseline)); then dirs+=("${w}_bj"); fi
python -m mlfd_jax.report "${dirs[@]}" --out "$prefix/report" --runs_out "$prefix/report"
