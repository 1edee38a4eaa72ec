#!/usr/bin/env bash
# The GPU figures of the README's performance section, in one run on a machine with a CUDA device:
#
#     bash scripts/bench_gpu.sh [OUT]    # default OUT: gpu-bench/
#
# 1. the tests of the code paths a GPU run takes (tests/test_gpu_paths.py, the stacked launcher's), on CUDA;
# 2. bench_stacked_step: 16-member LeNet-5 and VGG-5 stacks against their 16 separate steps, and a 64-member
#    LeNet-5 stack, each in fp32 and in bf16, with samples/s per member and in all;
# 3. bench_loop: LeNet-5 and VGG-5 with losslab's loop and the DataLoader loop, fp32, tf32 and bf16, against the
#    GPU's matmul peak.
# Each step's output is printed and kept in OUT/<step>.txt. DEVICE=cpu, STEPS="--steps 1 --repeat 1" and
# MODELS=lenet run the same commands on the CPU in a minute (the test of this script; VGG-5 on the CPU takes
# seconds a step).
set -euo pipefail
out=${1:-gpu-bench}
device=${DEVICE:-cuda}
steps=${STEPS:-}
models=${MODELS:-lenet vgg5}
mkdir -p "$out"
python - "$device" <<'PY'
import sys, torch
device = sys.argv[1]
if device.startswith("cuda") and not torch.cuda.is_available():
    sys.exit("bench_gpu.sh: no CUDA device is visible to torch " + torch.__version__ + "; run it on a GPU machine")
print(f"torch {torch.__version__} on {torch.cuda.get_device_name() if device.startswith('cuda') else 'the CPU'}")
PY
git log -1 --format='commit %h %s' 2>/dev/null | tee "$out/commit.txt" || true
if [[ $device == cuda* ]]; then
    python -m pytest -q -p no:cacheprovider tests/test_gpu_paths.py tests/test_stacked_launcher.py \
        tests/test_stacked.py 2>&1 | tee "$out/tests.txt"
fi
for precision in fp32 bf16; do
    # shellcheck disable=SC2086  # $models and $steps hold several words
    python scripts/bench_stacked_step.py --device "$device" --models $models --precision "$precision" $steps \
        | tee "$out/stacked16_$precision.txt"
    # shellcheck disable=SC2086
    python scripts/bench_stacked_step.py --device "$device" --models lenet --members 64 --precision "$precision" \
        $steps | tee "$out/stacked64_$precision.txt"
done
loop_steps=${steps:+--steps 2 --vgg5-steps 1}
# shellcheck disable=SC2086
python scripts/bench_loop.py --device "$device" --models $models --precisions fp32 tf32 bf16 $loop_steps \
    | tee "$out/loop.txt"
