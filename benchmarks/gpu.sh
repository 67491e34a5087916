#!/usr/bin/env bash
# The GPU benchmark in one prepared run (issue 12): bf16, ResNet-18 @ 32 px and ResNet-50 @ 224 px,
# JAX beside the PyTorch reference, MFU recorded, then the ResNet-50 student step with 3 frozen
# ResNet-50 teachers at the largest batch that fits. Installs nothing from the network: the one
# package a bare JAX + PyTorch GPU image lacks (ml-collections, which the configs import) comes
# from wheels in .whl/ (see below). Meant to finish in under 8 minutes on one H200.
#
#   # once, on a machine with PyPI (the folder is git-ignored):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl \
#       ml-collections==1.1.0
#   # on the GPU host, from the repository root:
#   OUT=/tmp/bench benchmarks/gpu.sh          # BUDGET_S=300 to end within 300 s
set -uo pipefail
out=${OUT:-benchmarks/gpu_out}
mkdir -p "$out"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=0.9
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
common=(--dtype bfloat16 --data synthetic --warmup 5 --iters 20 --pipeline_steps 0)
# BUDGET_S caps the whole script (default 470 s): each run gets at most 240 s of what is left,
# and a run with under 30 s left is skipped, so the script ends inside its budget.
budget=${BUDGET_S:-470}
run() {  # name, flags...
  local name=$1 left=$((budget - SECONDS)); shift
  if ((left < 30)); then echo "gpu.sh: $name skipped: ${left} s of ${budget} s left"; return 1; fi
  timeout $((left < 240 ? left : 240)) python3 -m benchmarks.throughput --json "$out/$name.json" \
      "${common[@]}" "$@" 2>&1 | grep -v "^[IW][0-9]" | tee "$out/$name.txt"
}
run r18_32 --model resnet18 --width 1 --image_size 32 --batch 256 \
    --stages teacher,joint,student:mlfd,student:kd,eval
run r50_224 --model resnet50 --width 1 --image_size 224 --batch 128 \
    --stages teacher,joint,student:mlfd,eval
for b in 512 384 256; do  # the largest student batch (3 frozen ResNet-50 teachers) that fits
  if run "r50_224_student_b$b" --model resnet50 --width 1 --image_size 224 --batch "$b" \
      --stages student:mlfd --no_torch; then
    grep -q "| student:mlfd |" "$out/r50_224_student_b$b.txt" && break
  fi
done
