#!/usr/bin/env bash
# One GPU session (about 8 minutes on an H100): the CUDA-graph step checked against the eager one,
# the default run on the GPU preset with its time to quality, throughput, 10k-sample evaluation,
# exact resume, a GPU checkpoint sampled on the CPU, and (NEIGHBOURS=1, 3 more minutes) the
# preset's neighbours in batch size.
# Writes summary.txt and JSON under ${OUT:-gpu_out}/. MNIST: data/MNIST/raw/, or the four .gz in $MNIST_GZ.
set -uo pipefail
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"; export PYTHONUNBUFFERED=1
S="$OUT/summary.txt"; CK=/tmp/gpu_ck; rm -rf $CK; mkdir -p $CK
log() { echo "== $* [$(date +%T)]" | tee -a "$S"; }
keep() { tr '\r' '\n' | grep -E "$1" | tail -${2:-3} | tee -a "$S"; }
ev() {  # evaluate.py, one line of its results
  python evaluate.py "$@" 2>&1 | tr '\r' '\n' | grep -E "rror" | tail -2
  python -c "import json,sys; r=json.load(open(sys.argv[1])); print({k: r.get(k) for k in \
('fid','confident','sample_seconds','total_seconds','num_samples')})" "${@: -1}" | tee -a "$S"
}
source "$(dirname "$0")/gpu_common.sh"
python -c "import torch; print('torch', torch.__version__)" | tee -a "$S"

log "graph vs eager, guard in the graph, determinism (30 steps, batch 1024, bf16)"
timeout 120 python -m benchmarks.gpu_step_check --steps 30 --batch_size 1024 2>"$OUT/step_check.err" | tee -a "$S"
tail -3 "$OUT/step_check.err" | tee -a "$S"

log "python train.py on its defaults (the GPU preset: 1-minute budget)"
/usr/bin/time -f "process %e s" python train.py --checkpoint_path $CK/preset --output_dir "$OUT/preset" 2>&1 \
  | keep "preset|budget|device|done|process|rror" 6
cp "$OUT/preset/train_log.csv" "$OUT/preset_log.csv" 2>/dev/null
log "floor and the preset model at 1k samples (seeds 0, 1)"
ev --real --num_samples 1000 --out "$OUT/real_1k.json"
ev --checkpoint_path $CK/preset --num_samples 1000 --out "$OUT/preset_1k_s0.json"
ev --checkpoint_path $CK/preset --num_samples 1000 --seed 1 --out "$OUT/preset_1k_s1.json"

log "throughput of the step (bf16), eager and graphed"
for b in 256 1024; do
  timeout 90 python -m benchmarks.train_throughput --batch_size $b --no_fp32 --repeats 5 --steps 20 2>&1 | tail -5 | tee -a "$S"
done
log "batch 4096 (a device-side assert in the label embedding on an H200 when the graph shared the eager model)"
CUDA_LAUNCH_BLOCKING=1 timeout 90 python -m benchmarks.train_throughput --batch_size 4096 --no_fp32 --repeats 1 --steps 2 \
  2>&1 | grep -v Assertion | tail -5 | tee -a "$S"

log "10k samples: sampling speed and evaluate.py"
timeout 90 python -m benchmarks.sample_throughput --checkpoint_path $CK/preset --num_samples 10000 --batch_size 10000 2>&1 | tail -2 | tee -a "$S"
timeout 90 python -m benchmarks.sample_throughput --checkpoint_path $CK/preset --num_samples 10000 --batch_size 2500 2>&1 | tail -1 | tee -a "$S"
ev --real --num_samples 10000 --out "$OUT/real_10k.json"
ev --checkpoint_path $CK/preset --num_samples 10000 --batch_size 10000 --out "$OUT/preset_10k.json"

log "quality per epoch: the preset for 4 epochs (the CPU default run is 3.9 epochs)"
python train.py --epochs 4 --checkpoint_path $CK/e4 --output_dir /tmp/e4 --num_grid_samples 0 2>&1 | keep "done"
ev --checkpoint_path $CK/e4 --num_samples 1000 --out "$OUT/e4_1k.json"

log "exact resume with the graph: 60 steps straight vs 30 + 30 in two processes"
common="--total_steps 60 --num_grid_samples 0 --save_every 30"
python train.py $common --checkpoint_path $CK/straight --output_dir /tmp/r1 2>&1 | keep "done|rror" 1
python train.py $common --max_steps 30 --checkpoint_path $CK/split --output_dir /tmp/r2 2>&1 | keep "done|rror" 1
python train.py --checkpoint_path $CK/split --output_dir /tmp/r2 --max_steps 60 2>&1 | keep "done|rror" 1
python - $CK/straight $CK/split <<'PY' | tee -a "$S"
import sys, torch
from utils.checkpoint import load_checkpoint
a, b = (load_checkpoint(p)[0] for p in sys.argv[1:])
same = {k: all(torch.equal(a[k][n], b[k][n]) for n in a[k]) for k in ("model", "ema")}
same["optimizer"] = all(torch.equal(x, y) for s, t in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values())
                        for x, y in zip(s.values(), t.values()))
print("resume bit-exact:", same, "steps", a["step"], b["step"])
PY

log "the GPU checkpoint sampled on the CPU"
python inference.py --checkpoint_path $CK/preset --device cpu --num_samples 16 --no_show --output_dir "$OUT/cpu_inf" 2>&1 | tail -1 | tee -a "$S"
if [ "${NEIGHBOURS:-0}" = 1 ]; then
  log "the preset's neighbours, 1-minute budget each"
  for bl in "512 3e-3" "2048 6e-3"; do
    set -- $bl
    python train.py --batch_size $1 --lr $2 --checkpoint_path $CK/b$1 --output_dir /tmp/b$1 --num_grid_samples 0 2>&1 \
      | keep "budget|done" 2
    ev --checkpoint_path $CK/b$1 --num_samples 1000 --out "$OUT/b$1_1k.json"
  done
fi
log "end"
