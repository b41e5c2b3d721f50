#!/usr/bin/env bash
# Results table on a GPU: the real-data floor and the samplers on a trained checkpoint (by default the
# class-conditional default model). Logs under ${OUT:-gpu_out}/summary.txt.
#   CKPT: the checkpoint to evaluate (default checkpoints/ddpm_checkpoint); MNIST_GZ as in gpu_check.sh.
set -uo pipefail
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"; export PYTHONUNBUFFERED=1
CKPT=${CKPT:-checkpoints/ddpm_checkpoint}; N=${N:-5000}
log() { echo "== $*" | tee -a "$OUT/summary.txt"; }
source "$(dirname "$0")/gpu_common.sh"
ev() { python evaluate.py --batch_size $N "$@" 2>&1 | grep -E -A1 "^ +fid|sampling .* s" | grep -v "^ \+fid" | tee -a "$OUT/summary.txt"; }
log "evaluate, $N samples each"
ev --real --num_samples $N --out /tmp/real.json
# The default sampling (dpm++ 8 steps, guidance 0.1 on t/T in [0.25, 0.7]) on two seeds against the
# 1000-step reference, with the same guidance and without: the default must stay within 10% of
# DDPM's FID (docs/NOTEBOOK.md, 2026-11-26); then variants of docs/RESULTS.md's sampler table.
for flags in "--seed 0" "--seed 1" "--sampler ddpm" "--sampler ddpm --guidance 0" \
             "--guidance 0" "--steps 20" "--steps 50 --guidance 0" "--sampler ddim"; do
  log "$flags"; ev --checkpoint_path "$CKPT" --num_samples $N $flags --out /tmp/e.json
done
log "end"
