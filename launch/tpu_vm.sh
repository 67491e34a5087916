#!/usr/bin/env bash
# Run a config on every host of a TPU VM pod slice (e.g. v4-32), from your workstation.
#   launch/tpu_vm.sh TPU_NAME ZONE configs/imagenet_subsets.py gs://BUCKET/mlfd/in3 [--config.K=V ...]
# The repo must be cloned at ~/mlfd_jax on every host (or use --worker=all scp first).
set -euo pipefail
tpu=$1 zone=$2 config=$3 workdir=$4; shift 4
gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command "
  cd ~/mlfd_jax && pip install -q -r requirements.txt 'jax[tpu]' &&
  python -m mlfd_jax.main --config=$config --workdir=$workdir --distributed $*"
