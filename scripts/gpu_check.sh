#!/usr/bin/env bash
# The GPU checks in one call (issues 10 and 19; under 10 minutes: the steps' time limits add up to
# 590 s): the CUDA-only tests, scripts/bench_gpu.py's matrix (DataLoader vs device-resident
# data x fp32/bf16 x compile, the seed-style loop, % of the speed of light, a step profile), the
# 16-run study one by one vs packed, and one real 20-epoch training on the device path at 256 px.
# Everything it makes goes to "$OUT" (logs, the benchmarks' JSON, the training's records and
# figures; no checkpoints: they are large); the console gets each step's command, exit code, time
# and the tail of its output.
#
#   OUT=/path/to/results bash scripts/gpu_check.sh        # from anywhere; runs in the repo root
#
# Needs Python with a CUDA build of torch and segbench's dependencies installed (it does not
# install anything and downloads nothing: HF_HUB_OFFLINE=1, synthetic data, random weights); it
# uses the checkout's own code (PYTHONPATH=src). Each step has a time limit, and a failed or
# timed-out step does not stop the next one. The exit code is the number of failed steps.
set -u
: "${OUT:?set OUT to the folder that should receive the results}"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 MPLBACKEND=Agg PYTHONUNBUFFERED=1
export SEGBENCH_CACHE="${SEGBENCH_CACHE:-${TMPDIR:-/tmp}/segbench-gpu-check-cache}"
WORK="${TMPDIR:-/tmp}/segbench-gpu-check-$$"
mkdir -p "$WORK"
PY=${PYTHON:-python}
FAILED=0
T0=$(date +%s)

# step <name> <seconds> <command...>: run it with a time limit, output to $OUT/<name>.txt
step() {
    local name=$1 limit=$2
    shift 2
    local cmd="$*"
    echo "=== [$(( $(date +%s) - T0 ))s] $name (limit ${limit}s): ${cmd:0:300}" \
        | tee -a "$OUT/gpu_check.log"
    local start rc
    start=$(date +%s)
    timeout --kill-after=15 "$limit" "$@" > "$OUT/$name.txt" 2>&1
    rc=$?
    [ "$rc" -eq 124 ] && echo "(timed out after ${limit}s)" >> "$OUT/$name.txt"
    tail -n "${TAIL:-30}" "$OUT/$name.txt"
    echo "=== $name: exit $rc after $(( $(date +%s) - start ))s" | tee -a "$OUT/gpu_check.log"
    [ "$rc" -eq 0 ] || FAILED=$((FAILED + 1))
    return 0
}

# 0. What runs where: the GPU, torch, and whether segbench's dependencies import (no install).
step environment 30 bash -c "nvidia-smi; $PY - <<'EOF'
import importlib, platform, sys
import torch
print('python', platform.python_version(), 'torch', torch.__version__, 'cuda', torch.version.cuda,
      'available', torch.cuda.is_available(), 'devices', torch.cuda.device_count())
for i in range(torch.cuda.device_count()):
    print(' ', i, torch.cuda.get_device_name(i), 'bf16', torch.cuda.is_bf16_supported())
missing = []
for m in ('segmentation_models_pytorch', 'albumentations', 'hydra', 'omegaconf', 'cv2', 'scipy',
          'tifffile', 'matplotlib', 'tensorboard', 'tqdm', 'pytest', 'segbench',
          'hydra_plugins.hydra_joblib_launcher'):
    try:
        importlib.import_module(m)
    except Exception as err:
        missing.append(f'{m} ({type(err).__name__}: {err})')
print('missing:', ', '.join(missing) if missing else 'none')
sys.exit(1 if missing or not torch.cuda.is_available() else 0)
EOF"

# 1. The CUDA-only tests: AMP bf16 and fp16 + GradScaler, channels-last, pinned memory and
#    persistent workers, the device data path with compile, a short training resumed on the GPU,
#    DDP with NCCL (skipped on 1 GPU).
step cuda_tests 110 "$PY" -m pytest -m cuda tests/test_cuda.py -p no:cacheprovider -q -rA \
    --durations=10

# 2. The benchmark matrix (U-Net/ResNet-34, 256 px, batch 32, 1024 images per epoch): the seed-style
#    loop, then DataLoader (8 workers) vs device-resident data x fp32/bf16 (channels-last) x
#    compile, images/s, % of the speed of light, peak memory; a profile of one device-path step.
TAIL=20 step bench_gpu 170 "$PY" scripts/bench_gpu.py --device cuda --batch 32 --images 1024 \
    --variants fp32-w,bf16-cl-w,fp32-dev,bf16-dev,bf16-cl-dev,bf16-cl-dev-c \
    --profile bf16-cl-dev --json "$OUT/bench_gpu.json"

# 3. A 16-run study at 128 px (2 epochs of 128 images each), one job at a time, then packed 4
#    per GPU.
step bench_study 170 "$PY" scripts/bench_gpu.py --device cuda --study --study-runs 16 \
    --study-jobs-per-gpu 4 --study-epochs 2 --study-images 128 --json "$OUT/bench_study.json"

# 4. One real training on the device path (trainer.data_on_device=auto: on): 20 epochs of
#    U-Net/ResNet-34 on 1100 synthetic frames (128 px, cached at 256 px), bf16 autocast,
#    channels-last, flips/affine augmentation as tensor operations; validation in every epoch's
#    time; test + HD95.
step train20 110 "$PY" -m segbench train dataset=synthetic dataset.num_train=1000 \
    dataset.num_test=100 resolution=256 model=unet trainer.max_epochs=20 trainer.batch_size=32 \
    trainer.num_workers=8 trainer.early_stopping.patience=20 scheduler=cosine optimizer.lr=1e-3 \
    logger=none trainer.progress_bar=false "hydra.run.dir=$WORK/train20"
mkdir -p "$OUT/train20"
for f in metrics.json history.csv train.log curves.png predictions.png per_case.csv config.yaml \
         status.json; do
    [ -f "$WORK/train20/$f" ] && cp "$WORK/train20/$f" "$OUT/train20/"
done
rm -rf "$WORK"

echo "=== done in $(( $(date +%s) - T0 ))s; $FAILED step(s) failed; results in $OUT" \
    | tee -a "$OUT/gpu_check.log"
exit "$FAILED"
