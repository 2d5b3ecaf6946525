#!/usr/bin/env bash
# The degradation experiment (He et al. 2015, figure 1 / 6): plain20, plain56, resnet20, resnet56 trained with
# the same budget and recipe on Fashion-MNIST; running training error against epochs into docs/degradation.svg.
#   bash bench/degradation.sh [EPOCHS]
set -euo pipefail
cd "$(dirname "$0")/.."
EPOCHS=${1:-2}
STRIDE=${STRIDE:-build/stride}
OUT=${STRIDE_BENCH_DIR:-/tmp/stride-bench}/degradation
mkdir -p "$OUT"
for m in plain20 resnet20 plain56 resnet56; do
  rm -rf "$OUT/$m"
  /usr/bin/time -f "$m: %e s" "$STRIDE" train --model "$m" --dataset fashion-mnist --data-path datasets/fashion-mnist \
    --epochs "$EPOCHS" --batch-size 128 --lr 0.1 --momentum 0.9 --weight-decay 1e-4 --lr-scheduler cosine \
    --lr-warmup-epochs 0.1 --crop pad-crop --pad 2 --threads 2 --workers 1 --print-freq 50 --seed 0 \
    --output-dir "$OUT/$m" | grep -E "^eval|^done"
done
/usr/bin/python3 bench/plot_curves.py --metric train_err --title "Fashion-MNIST: running training error (%), same recipe" \
  --out docs/degradation.svg plain20="$OUT/plain20" plain56="$OUT/plain56" resnet20="$OUT/resnet20" \
  resnet56="$OUT/resnet56"
