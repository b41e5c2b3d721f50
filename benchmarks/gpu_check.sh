#!/usr/bin/env bash
# One short GPU check (a few minutes): the CUDA path of training with autocast, sampling, a
# checkpoint round trip to the CPU, and the benchmarks. Writes its logs under ${OUT:-gpu_out}/.
#   MNIST must be reachable: either in data/MNIST/raw/, or as the four .gz files in $MNIST_GZ.
set -uo pipefail
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"; export PYTHONUNBUFFERED=1
log() { echo "== $*" | tee -a "$OUT/summary.txt"; }
if [ -n "${MNIST_GZ:-}" ]; then
  mkdir -p data/MNIST/raw
  for f in "$MNIST_GZ"/*.gz; do gunzip -c "$f" > "data/MNIST/raw/$(basename "$f" .gz)"; done
fi
if ! python -c "from timm.utils import ModelEmaV3" 2>/dev/null && ls "${MNIST_GZ:-.}"/whl/*.whl >/dev/null 2>&1; then
  python -m pip install -q --no-index --no-deps --target /tmp/site "$MNIST_GZ"/whl/*.whl && export PYTHONPATH=/tmp/site
fi
nvidia-smi -L | tee -a "$OUT/summary.txt"
python -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/summary.txt"
CK=/tmp/gpu_ck; rm -rf $CK; mkdir -p $CK

log "one epoch, defaults (bf16 autocast on this GPU)"
python train.py --epochs 1 --checkpoint_path $CK/default --output_dir "$OUT/train" \
  --num_grid_samples 64 2>&1 | tr '\r' '\n' | grep -E "device|img_s|done|wall|rror" | tail -4 | tee -a "$OUT/summary.txt"
log "resume on the GPU for 2 more epochs (epochs 2-3)"
python train.py --epochs 3 --checkpoint_path $CK/default --output_dir "$OUT/train" 2>&1 | tr '\r' '\n' \
  | grep -E "resuming|done|rror" | tail -3 | tee -a "$OUT/summary.txt"
log "one epoch, batch 512"
python train.py --epochs 1 --batch_size 512 --lr 4e-3 --checkpoint_path $CK/b512 --output_dir /tmp/o512 \
  --num_grid_samples 0 2>&1 | tr '\r' '\n' | grep -E "img_s" | tail -1 | tee -a "$OUT/summary.txt"
log "one epoch, --compile"
python train.py --epochs 1 --compile --checkpoint_path $CK/comp --output_dir /tmp/oc \
  --num_grid_samples 0 2>&1 | tr '\r' '\n' | grep -E "img_s|wall|rror" | tail -2 | tee -a "$OUT/summary.txt"
log "fp16 with GradScaler, 100 steps"
python train.py --max_steps 100 --precision fp16 --checkpoint_path $CK/fp16 --output_dir /tmp/of --num_grid_samples 0 \
  2>&1 | tr '\r' '\n' | grep -E "device|img_s|done|rror" | tail -3 | tee -a "$OUT/summary.txt"
log "checkpoint round trip: the GPU checkpoint sampled on the CPU and on the GPU"
python inference.py --checkpoint_path $CK/default --device cpu --num_samples 16 --no_show --output_dir "$OUT/cpu_inf" 2>&1 | tail -1 | tee -a "$OUT/summary.txt"
python inference.py --checkpoint_path $CK/default --num_samples 64 --no_show --output_dir "$OUT/gpu_inf" 2>&1 | tail -1 | tee -a "$OUT/summary.txt"
log "benchmarks"
python benchmarks/train_throughput.py --repeats 5 --steps 20 2>&1 | tail -4 | tee -a "$OUT/summary.txt"
python benchmarks/sample_throughput.py --checkpoint_path $CK/default 2>&1 | tail -5 | tee -a "$OUT/summary.txt"
log "end"
