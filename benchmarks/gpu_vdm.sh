#!/usr/bin/env bash
# VDM's long run on one GPU (about 10 minutes with the defaults): the recipe of docs/RESULTS.md at
# a batch two cores cannot afford, for MINUTES of training, then VDM's bound of every saved step on
# the same test images, times and noise (paired_bound.py: the curve in steps), the same on training
# images (how far the run overfits) and the final checkpoint's terms (likelihood.py). Writes
# summary.txt under ${OUT:-gpu_out}/.
#   B (batch, default 256), LR (2e-3), MINUTES (7), SAVE (save every this many steps, 4000),
#   IMAGES (images scored per split, 200), DEVICE (auto), EXTRA (more train.py flags, e.g.
#   "--dropout 0.1"); MNIST_GZ as in gpu_check.sh. A smoke test of the script on a CPU:
#   DEVICE=cpu B=16 MINUTES=0.2 SAVE=5 IMAGES=4 bash benchmarks/gpu_vdm.sh
set -uo pipefail
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"; export PYTHONUNBUFFERED=1
S="$OUT/summary.txt"; CK=${CK:-/tmp/gpu_vdm}; rm -rf "$CK"; mkdir -p "$CK"
B=${B:-256}; LR=${LR:-2e-3}; MINUTES=${MINUTES:-7}; SAVE=${SAVE:-4000}; DEVICE=${DEVICE:-auto}; IMAGES=${IMAGES:-200}
EXTRA=${EXTRA:-}
log() { echo "== $* [$(date +%T)]" | tee -a "$S"; }
source "$(dirname "$0")/gpu_common.sh"

log "VDM, batch $B, LR $LR, $MINUTES minutes $EXTRA"
python train.py --process vdm --fourier_features 7 8 --batch_size "$B" --base_channels 32 --channel_mults 1 2 2 \
  --lr "$LR" --minutes "$MINUTES" --save_every "$SAVE" --keep_last 50 --num_grid_samples 0 \
  --device "$DEVICE" --checkpoint_path "$CK/vdm" --output_dir "$OUT/vdm" $EXTRA 2>&1 \
  | tr '\r' '\n' | grep -E "budget|device|done|rror" | tee -a "$S"

for split in test train; do
  log "VDM's bound of each saved step, paired ($IMAGES $split images, 20 t, seed 0)"
  python -m benchmarks.paired_bound --device "$DEVICE" --split $split --num_images "$IMAGES" --t_samples 20 \
    --checkpoints $(ls "$CK"/vdm_step* | sort) 2>&1 | tr '\r' '\n' | grep -v -e "pairs:" -e "^ *$" | tee -a "$S"
done
log "the final checkpoint, 100 t, with its terms"
python likelihood.py --checkpoint_path "$CK/vdm" --device "$DEVICE" --method bound --num_images "$IMAGES" --t_samples 100 \
  2>&1 | tr '\r' '\n' | grep -E "^VDM bound|terms|rror" | tee -a "$S"
log "end"
