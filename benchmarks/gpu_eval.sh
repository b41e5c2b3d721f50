#!/usr/bin/env bash
# Results table on a GPU: real-data floor and each sampler on a trained checkpoint, plus a
# class-conditional model trained for 3 epochs (guidance 3 at every step). Logs under ${OUT:-gpu_out}/summary.txt.
#   CKPT: the checkpoint to evaluate (default checkpoints/ddpm_checkpoint); MNIST_GZ as in gpu_check.sh.
set -uo pipefail
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"; export PYTHONUNBUFFERED=1
CKPT=${CKPT:-checkpoints/ddpm_checkpoint}; N=${N:-5000}
log() { echo "== $*" | tee -a "$OUT/summary.txt"; }
if [ -n "${MNIST_GZ:-}" ]; then
  mkdir -p data/MNIST/raw
  for f in "$MNIST_GZ"/*.gz; do gunzip -c "$f" > "data/MNIST/raw/$(basename "$f" .gz)"; done
fi
nvidia-smi -L | tee -a "$OUT/summary.txt"
ev() { python evaluate.py --batch_size $N "$@" 2>&1 | grep -E -A1 "^ +fid|sampling .* s" | grep -v "^ \+fid" | tee -a "$OUT/summary.txt"; }
log "evaluate, $N samples each"
ev --real --num_samples $N --out /tmp/real.json
# The default sampling (dpm++ 20 steps, guidance 0.1 on t/T in [0.25, 0.7]) against the 1000-step
# reference, with the same guidance and without, on two seeds: the default must stay within 10% of
# DDPM's FID (README, "Default sampler"); then cheaper and costlier variants.
for flags in "--seed 0" "--seed 1" "--sampler ddpm --seed 0" "--sampler ddpm --seed 1" \
             "--sampler ddpm --guidance 0" "--guidance 0" "--steps 50 --guidance 0" "--sampler ddim"; do
  log "$flags"; ev --checkpoint_path "$CKPT" --num_samples $N $flags --out /tmp/e.json
done
log "one epoch at batch 512 (lr 4e-3)"
python train.py --epochs 1 --batch_size 512 --lr 4e-3 --checkpoint_path /tmp/b512 --output_dir /tmp/o512 \
  --num_grid_samples 0 2>&1 | grep -E "done" | tee -a "$OUT/summary.txt"
log "class-conditional, 3 epochs"
python train.py --class_cond --epochs 3 --checkpoint_path /tmp/cond --output_dir /tmp/ocond 2>&1 | grep -E "done" | tee -a "$OUT/summary.txt"
python inference.py --checkpoint_path /tmp/cond --digit all --num_samples 100 --no_show --output_dir "$OUT/cond" \
  --gif "$OUT/cond/digits.gif" 2>&1 | tail -1 | tee -a "$OUT/summary.txt"
ev --checkpoint_path /tmp/cond --num_samples $N --guidance 3 --guidance_interval 0 1 --out /tmp/c.json
log "end"
