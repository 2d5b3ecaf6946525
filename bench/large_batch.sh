#!/usr/bin/env bash
# Large-batch comparison (issue #23): ResNet-20 on Fashion-MNIST, the same number of epochs, at global batch 128
# (SGD, the 8-minute recipe) and 2,048 / 8,192 (LARS with the MLPerf-style recipe, and SGD with linear lr
# scaling). One rank; --global-batch fills in gradient accumulation (micro-batches of at most 128).
#   bash bench/large_batch.sh EPOCHS RUN...      RUN: sgd128 sgd2048 lars2048 sgd8192 lars8192 | plot
# Writes runs under $STRIDE_BENCH_DIR/large_batch (default /tmp/stride-bench); `plot` draws test top-1 per epoch
# into docs/large_batch.svg.
set -euo pipefail
cd "$(dirname "$0")/.."
EPOCHS=$1
shift
STRIDE=${STRIDE:-build/stride}
OUT=${STRIDE_BENCH_DIR:-/tmp/stride-bench}/large_batch
mkdir -p "$OUT"
# The 8-minute recipe's data and regularisation (configs/fashion_mnist_8min.toml), for every run.
common=(--model resnet20 --dataset fashion-mnist --data-path datasets/fashion-mnist --epochs "$EPOCHS"
        --batch-size 128 --weight-decay 5e-4 --label-smoothing 0.1 --crop pad-crop --pad 2 --hflip
        --threads 2 --workers 1 --seed 0 --eval-freq 1)
# SGD as in the recipe: Nesterov momentum 0.9, no decay on BN and bias, cosine after a linear warm-up.
sgd=(--opt sgd --momentum 0.9 --nesterov --norm-weight-decay 0 --lr-scheduler cosine)
# LARS as in the MLPerf reference: eta 0.001, momentum 0.9, BN and bias excluded, poly decay of power 2.
lars=(--opt lars --lars-eta 0.001 --momentum 0.9 --lr-scheduler poly --lr-power 2 --lr-min 1e-4
      --lr-warmup-decay 0)
for run in "$@"; do
  case $run in
    # lr 0.2 at 128 is lr 0.4 per 256: --lr-scaling linear gives 3.2 at 2,048 and 12.8 at 8,192.
    sgd128) flags=("${sgd[@]}" --global-batch 128 --lr 0.2 --lr-warmup-epochs 0.3 --print-freq 100) ;;
    sgd2048) flags=("${sgd[@]}" --global-batch 2048 --lr 0.4 --lr-scaling linear --lr-warmup-epochs 1 --print-freq 10) ;;
    sgd8192) flags=("${sgd[@]}" --global-batch 8192 --lr 0.4 --lr-scaling linear --lr-warmup-epochs 1 --print-freq 2) ;;
    lars2048) flags=("${lars[@]}" --global-batch 2048 --lr 5 --lr-warmup-epochs 1 --print-freq 10) ;;
    lars8192) flags=("${lars[@]}" --global-batch 8192 --lr 10 --lr-warmup-epochs 1 --print-freq 2) ;;
    plot)
      args=()
      for r in sgd128 sgd2048 lars2048 sgd8192 lars8192; do
        [ -f "$OUT/$r/metrics.jsonl" ] && args+=("$r=$OUT/$r")
      done
      /usr/bin/python3 bench/plot_curves.py --metric acc1 --records eval \
        --title "ResNet-20, Fashion-MNIST, $EPOCHS epochs: test top-1 (%) by global batch" \
        --out docs/large_batch.svg "${args[@]}"
      continue ;;
    *) echo "unknown run $run" >&2; exit 2 ;;
  esac
  rm -rf "${OUT:?}/$run"
  /usr/bin/time -f "$run: %e s" "$STRIDE" train "${common[@]}" "${flags[@]}" --output-dir "$OUT/$run" |
    grep -E "^batch|^eval|^done"
done
