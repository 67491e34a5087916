#!/usr/bin/env bash
# One seed of a config with every core busy: its methods spread over L pinned lanes.
#
#   launch/seed_lanes.sh CONFIG PREFIX SEED [--methods "mlfd kd ..."] [--baseline_joint] \
#       [--lanes L] [--config.K=V ...]
#   launch/seed_lanes.sh configs/tiny_imagenet_subsets.py:budget=4 runs/tin 7 \
#       --methods "mlfd kd avg_kd amtml feed:feed_pre" --baseline_joint \
#       --config.joint.fusion_level=stage4
#
# 1. The teachers are dealt to the lanes (teacher k to lane k mod L; one already begun in
#    PREFIX/seed<S> stays in lane 0): lane 0 trains its own in PREFIX/seed<S>, lane i > 0 in
#    PREFIX/seed<S>_teachers<i> (`--config.teacher_datasets`), lane 1 after the joint baseline,
#    which needs no teacher (PREFIX/seed<S>_bj). Each lane's teachers are then copied into
#    PREFIX/seed<S>, where lane 0 trains the joint teacher.
# 2. Each lane i > 0 gets a copy of that workdir, PREFIX/seed<S>_lane<i> (a workdir belongs to
#    one run at a time). The students (one per method and dataset; methods default: mlfd;
#    METHOD:NAME names the students NAME), in --methods order, are cut into L equal runs, one per
#    lane (lane 0 takes the spare ones), so that no lane idles while another trains whole
#    methods: 5 methods of 3 students in 2 lanes are 8 and 7 students, not 9 and 6. A lane trains
#    its part of a method in one command (`--config.student_datasets` when it is not all of it).
# 3. The report merges the workdirs into one run of seed S: PREFIX/report/results.{md,png} and
#    PREFIX/report/seed<S>.results.json.
# Each lane logs to PREFIX/seed<S>.lane<i>.log. Rerunning resumes or skips what is finished (a
# lane's copy is made once). --lanes defaults to the number of usable cores; see launch/lib.sh
# on pinned arithmetic.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
if [[ $# -lt 3 ]]; then launch_usage seed_lanes.sh SEED; fi
config=$1 prefix=$2 seed=$3; shift 3
methods=mlfd baseline=0 lanes=$(nproc)
parse_launch_options seed_lanes.sh "--methods --baseline_joint --lanes" "$@"
set -- "${overrides[@]}"
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

IFS=, read -r -a datasets <<< "${checked_datasets:-}"
lane_teachers=()  # lane -> its teachers, comma-separated
for ((k = 0; k < ${#datasets[@]}; k++)); do
  lane=$((k % lanes))
  if [[ -d $w/teachers/${datasets[k]} ]]; then lane=0; fi
  lane_teachers[lane]+="${lane_teachers[lane]:+,}${datasets[k]}"
done

teacher_flags() {  # lane -> `tflags`: its teachers (none for lane 0 when it trains them all)
  tflags=()
  if ((lanes > 1)) && [[ ${lane_teachers[$1]:-} != "${checked_datasets:-}" ]]; then
    tflags=(--config.teacher_datasets="${lane_teachers[$1]}")
  fi
}

lane_stage1() {  # lane i > 0: (lane 1) the joint baseline, then its teachers
  local lane=$1; shift
  if ((baseline && lane == 1)); then in_lane 1 "${w}_bj" --config.stage=baseline_joint "$@"; fi
  if [[ -n ${lane_teachers[lane]:-} ]]; then
    teacher_flags "$lane"
    in_lane "$lane" "${w}_teachers$lane" --config.stage=teachers "${tflags[@]}" "$@"
  fi
}

echo "seed $seed: teachers ${lane_teachers[0]:-(all)} and the joint teacher in lane 0, log $prefix/seed$seed.lane0.log"
teacher_flags 0
in_lane 0 "$w" --config.stage=teachers "${tflags[@]}" "$@" &
teacher_pids=($!) other_pids=()
for ((lane = 1; lane < lanes; lane++)); do
  if ((baseline && lane == 1)); then echo "seed $seed: joint baseline in lane 1, ${w}_bj"; fi
  if [[ -n ${lane_teachers[lane]:-} ]]; then
    echo "seed $seed: teachers ${lane_teachers[lane]} in lane $lane, ${w}_teachers$lane"
  fi
  if ((baseline && lane == 1)) || [[ -n ${lane_teachers[lane]:-} ]]; then
    lane_stage1 "$lane" "$@" &
    if [[ -n ${lane_teachers[lane]:-} ]]; then teacher_pids+=($!); else other_pids+=($!); fi
  fi
done
wait_all() {  # PID...: waits for every one; fails if any failed
  local pid rc=0
  for pid in "$@"; do wait "$pid" || rc=1; done
  return $rc
}
if ! wait_all "${teacher_pids[@]}"; then
  wait_all "${other_pids[@]}" || true
  fail "stage 1, a teacher or the joint baseline"
fi
for ((lane = 1; lane < lanes; lane++)); do  # each lane's teachers into the joint teacher's workdir
  IFS=, read -r -a mine <<< "${lane_teachers[lane]:-}"
  for name in "${mine[@]}"; do
    if [[ ! -d $w/teachers/$name ]]; then
      rm -rf "$w/teachers.$name.tmp"
      mkdir -p "$w/teachers"
      cp -r "${w}_teachers$lane/teachers/$name" "$w/teachers.$name.tmp"
      mv "$w/teachers.$name.tmp" "$w/teachers/$name"
    fi
  done
done
if ! in_lane 0 "$w" --config.stage=joint "$@"; then
  wait_all "${other_pids[@]}" || true
  fail "stage 1, the joint teacher"
fi
if ((baseline && lanes == 1)); then
  in_lane 0 "${w}_bj" --config.stage=baseline_joint "$@" || fail "stage 1, the joint baseline"
fi
wait_all "${other_pids[@]}" || fail "stage 1, the joint baseline"

# The students, one per (method, dataset) in --methods order, cut into L runs of consecutive
# students (lane 0 takes the spare ones); a lane trains its share of a method in one command.
students=()  # "METHOD_INDEX DATASET"; an empty DATASET: all of the method's students
for ((m = 0; m < ${#method_list[@]}; m++)); do
  if ((${#datasets[@]} == 0)); then students+=("$m "); fi
  for name in "${datasets[@]}"; do students+=("$m $name"); done
done
share_start() {  # lane -> the index of its first student
  echo $(((${1} * ${#students[@]} + lanes - 1) / lanes))
}

method_run() {  # lane, dir, method index, its datasets here, overrides...: one students command
  local lane=$1 dir=$2 entry=${method_list[$3]} names=$4; shift 4
  local -a sflags=()
  if [[ -n $names && $names != "${checked_datasets:-}" ]]; then
    sflags=(--config.student_datasets="$names")
  fi
  echo "seed $seed: $entry${sflags[*]:+ (${names//,/, })} in lane $lane, $dir"
  method_flags "$entry"
  in_lane "$lane" "$dir" --config.stage=students "${mflags[@]}" "${sflags[@]}" "$@"
}

lane_students() {  # lane, dir, overrides...: the lane's share, one command per method, in order
  local lane=$1 dir=$2 k m name current="" names=""; shift 2
  for ((k = $(share_start "$lane"); k < $(share_start $((lane + 1))); k++)); do
    read -r m name <<< "${students[k]}"
    if [[ -n $current && $m != "$current" ]]; then
      method_run "$lane" "$dir" "$current" "$names" "$@" || return 1
      names=""
    fi
    current=$m names+="${names:+,}$name"
  done
  if [[ -n $current ]]; then method_run "$lane" "$dir" "$current" "$names" "$@"; fi
}

pids=() dirs=()
for ((lane = 0; lane < lanes && $(share_start "$lane") < ${#students[@]}; lane++)); do
  dir=$(lane_dir "$lane")
  dirs+=("$dir")
  if ((lane > 0)) && [[ ! -d $dir ]]; then  # the teachers, joint teacher and compiled programs
    mkdir -p "$dir.tmp"
    cp -r "$w/teachers" "$w/joint" "$w/results.json" "$dir.tmp/"
    if [[ -d $w/jax_cache ]]; then cp -r "$w/jax_cache" "$dir.tmp/"; fi
    mv "$dir.tmp" "$dir"
  fi
  lane_students "$lane" "$dir" "$@" &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid" || fail "a student method"; done

if ((${#dirs[@]} == 0)); then dirs=("$w"); fi
if ((baseline)); then dirs+=("${w}_bj"); fi
for ((lane = 1; lane < lanes; lane++)); do
  if [[ -d ${w}_teachers$lane ]]; then dirs+=("${w}_teachers$lane"); fi
done
python -m mlfd_jax.report "${dirs[@]}" --out "$prefix/report" --runs_out "$prefix/report"
