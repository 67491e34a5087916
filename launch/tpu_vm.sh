#!/usr/bin/env bash
# Run a config on every host of a TPU VM slice, from your workstation's checkout.
#
#   launch/tpu_vm.sh [--dry-run] [--create TYPE [--version V]] [--delete] \
#       TPU_NAME ZONE CONFIG WORKDIR [--config.K=V ...]
#   launch/tpu_vm.sh --dry-run --create v4-32 in3 us-central2-b configs/imagenet_subsets.py \
#       gs://BUCKET/mlfd/in3
#
# 1. --create TYPE: create the slice (accelerator TYPE, runtime --version, default
#    tpu-ubuntu2204-base) unless one of that name exists; without it the slice must exist.
# 2. Copy this checkout (tracked and untracked files, not .git, runs/ or .venv/) to ~/mlfd_jax
#    on every worker and install its requirements with jax[tpu].
# 3. Start the same command on every worker with --distributed (jax.distributed reads the TPU
#    topology), each worker's log in ~/mlfd_jax/run.log, and stream worker 0's until it ends.
# 4. --delete: delete the slice afterwards (the workdir should then be a gs:// bucket).
# --dry-run prints the commands, one a line, and runs none of them. Rerunning the same command
# resumes from the checkpoints in WORKDIR.
set -euo pipefail
dry=0 create="" version="tpu-ubuntu2204-base" delete=0
while [[ $# -gt 0 ]]; do
  case $1 in
    --dry-run) dry=1; shift ;;
    --create) create=$2; shift 2 ;;
    --version) version=$2; shift 2 ;;
    --delete) delete=1; shift ;;
    --*) echo "tpu_vm.sh: unknown option $1; valid: --dry-run, --create TYPE, --version V," \
              "--delete" >&2; exit 2 ;;
    *) break ;;
  esac
done
if [[ $# -lt 4 ]]; then
  echo "tpu_vm.sh: usage: launch/tpu_vm.sh [--dry-run] [--create TYPE [--version V]]" \
       "[--delete] TPU_NAME ZONE CONFIG WORKDIR [--config.K=V ...]" >&2
  exit 2
fi
tpu=$1 zone=$2 config=$3 workdir=$4; shift 4
overrides=""
for o in "$@"; do overrides+=" $(printf '%q' "$o")"; done

# shellcheck source=launch/run_or_print.sh
source launch/run_or_print.sh  # run(): runs a command, or prints it (--dry-run)

vm=(gcloud compute tpus tpu-vm)
archive=/tmp/mlfd_jax_code.tgz
if [[ -n $create ]]; then
  if ((dry)) || ! "${vm[@]}" describe "$tpu" --zone "$zone" > /dev/null 2>&1; then
    run "${vm[@]}" create "$tpu" --zone "$zone" --accelerator-type "$create" --version "$version"
  fi
fi
run tar -czf "$archive" --exclude=.git --exclude=./runs --exclude=./.venv -C "$(pwd)" .
run "${vm[@]}" scp "$archive" "$tpu:~/mlfd_jax_code.tgz" --zone "$zone" --worker=all
run "${vm[@]}" ssh "$tpu" --zone "$zone" --worker=all --command \
    "rm -rf ~/mlfd_jax && mkdir -p ~/mlfd_jax && tar -xzf ~/mlfd_jax_code.tgz -C ~/mlfd_jax && cd ~/mlfd_jax && pip install -q -r requirements.txt 'jax[tpu]'"
run "${vm[@]}" ssh "$tpu" --zone "$zone" --worker=all --command \
    "cd ~/mlfd_jax && nohup python -m mlfd_jax.main --config=$(printf '%q' "$config") --workdir=$(printf '%q' "$workdir") --distributed$overrides > run.log 2>&1 < /dev/null &"
run "${vm[@]}" ssh "$tpu" --zone "$zone" --worker=0 --command \
    "cd ~/mlfd_jax && sleep 5 && tail -n +1 -F run.log --pid=\$(pgrep -f 'python -m mlfd_jax[.]main' | head -1)"
if ((delete)); then
  run "${vm[@]}" delete "$tpu" --zone "$zone" --quiet
fi
