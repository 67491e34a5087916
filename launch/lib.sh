# Sourced by the launch scripts: what they share.
#
# Lanes: each lane pinned (taskset) to its own 1/L of the usable cores. Two pinned processes
# train about 1.13x the images per second of one process on both cores of a 2-core machine
# (benchmarks/RESULTS.md), but a pinned run's arithmetic differs from an unpinned one's (XLA:CPU
# uses as many threads as usable cores).

# check_lanes SCRIPT L: exits 2 with one line when L lanes would share a core.
check_lanes() {
  if (($2 > $(nproc))); then
    echo "$1: --lanes $2 is more than the $(nproc) usable cores" >&2; exit 2
  fi
}

# lane_pin L I: sets `cores` to lane I's share of the cores and `pin` to the command prefix that
# keeps a command on them (empty on a host without util-linux's taskset: lanes run unpinned).
lane_pin() {
  local per=$(($(nproc) / $1))
  cores="$(($2 * per))-$(($2 * per + per - 1))"
  pin=(taskset -c "$cores")
  command -v taskset > /dev/null || pin=()
}

# method_flags ENTRY: sets `mflags` to the student flags of one --methods entry, METHOD or
# METHOD:NAME (NAME: the students' folder and report column, e.g. feed:feed_pre for FEED with
# precomputed teacher outputs beside a live `feed`).
method_flags() {
  mflags=(--config.distill.method="${1%%:*}")
  if [[ $1 == *:* ]]; then mflags+=(--config.distill.name="${1#*:}"); fi
}

# check_methods SCRIPT CONFIG WORKDIR SEED "METHODS" [--config.K=V ...]: `stage=check` of the
# config with each student method, before anything trains; exits 2 naming the first that fails
# (its own one-line error is printed above), so a bad method given for a later command does not
# cost the hours of the earlier ones. Sets `checked_datasets` to the config's datasets, comma-
# separated, as the check prints them.
check_methods() {
  local script=$1 config=$2 dir=$3 seed=$4 m out; local -a list; read -r -a list <<< "$5"; shift 5
  for m in "${list[@]}"; do
    method_flags "$m"
    out=$(python -m mlfd_jax.main --config="$config" --workdir="$dir" --config.seed="$seed" \
              --config.stage=check "${mflags[@]}" "$@") \
      || { echo "$script: the config with method $m does not check (above); nothing trained" >&2
           exit 2; }
    checked_datasets=$(sed -n 's/^datasets: //p' <<< "$out" | tail -n 1)
  done
}

# launch_usage SCRIPT THIRD: exits 2 with the usage line of seeds.sh (THIRD: N) or seed_lanes.sh
# (THIRD: SEED).
launch_usage() {
  echo "$1: usage: launch/$1 CONFIG PREFIX $2 [--methods \"M ...\"] [--baseline_joint]" \
       "[--lanes L] [--config.K=V ...]" >&2
  exit 2
}

# parse_launch_options SCRIPT "OPTIONS" ARG...: the launch scripts' options, in any order.
# OPTIONS names the ones SCRIPT takes, from --methods "M ..." (sets `methods`), --seeds "S ..."
# (`seeds`), --baseline_joint (`baseline=1`) and --lanes L (`lanes`, a positive number); the
# caller's defaults stay where an option is absent. Sets `overrides` (each --config.K=V, passed
# on to every command); exits 2 with one line on anything else, before anything runs.
parse_launch_options() {
  local script=$1 allowed=" $2 " valid="" o; shift 2
  for o in $allowed; do
    case $o in
      --methods) valid+='--methods "M ...", ' ;;
      --seeds) valid+='--seeds "S ...", ' ;;
      --lanes) valid+="--lanes L, " ;;
      *) valid+="$o, " ;;
    esac
  done
  overrides=()
  while (($#)); do
    if [[ $1 == --config.*=* ]]; then overrides+=("$1"); shift; continue; fi
    if [[ $1 == *" "* || $allowed != *" $1 "* ]]; then
      echo "$script: unknown option $1; valid: ${valid}--config.K=V" >&2; exit 2
    fi
    if [[ $1 == --baseline_joint ]]; then baseline=1; shift; continue; fi
    if (($# < 2)); then echo "$script: $1 needs a value" >&2; exit 2; fi
    case $1 in
      --methods) methods=$2 ;;
      --seeds) seeds=$2 ;;
      --lanes)
        if [[ ! $2 =~ ^[1-9][0-9]*$ ]]; then
          echo "$script: --lanes needs a positive number of lanes; got $2" >&2; exit 2
        fi
        lanes=$2 ;;
    esac
    shift 2
  done
}
