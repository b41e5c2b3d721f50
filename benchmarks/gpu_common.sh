# Sourced by the gpu_*.sh scripts once $OUT exists: MNIST from the four gzipped files in $MNIST_GZ
# (for a machine that cannot download them), and the card's name at the top of $OUT/summary.txt.
if [ -n "${MNIST_GZ:-}" ]; then
  mkdir -p data/MNIST/raw
  for f in "$MNIST_GZ"/*.gz; do gunzip -c "$f" > "data/MNIST/raw/$(basename "$f" .gz)"; done
fi
nvidia-smi -L 2>/dev/null | tee -a "$OUT/summary.txt"
