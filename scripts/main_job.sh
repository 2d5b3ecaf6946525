#!/usr/bin/env bash
# The README's main job: set up, build, then a short real training run of ResNet-20 on Fashion-MNIST
# (configs/fashion_mnist_resnet20.toml; shards are made from Debian's dataset-fashion-mnist on first use).
# Extra arguments go to `stride train`, e.g. `bash scripts/main_job.sh --epochs 8`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
BUILD_DIR=${STRIDE_BUILD_DIR:-build}
# Running the main job again starts a fresh run: an earlier run's directory is kept aside, not overwritten
# (stride train refuses to train from scratch over a run's checkpoints). Pass --resume auto to continue it.
RUN=runs/fashion_mnist_resnet20
if [ -d "$RUN/checkpoints" ] && [[ " $* " != *" --resume"* && " $* " != *" --output-dir"* ]]; then
  kept="$RUN.$(date +%Y%m%d-%H%M%S)"
  mv "$RUN" "$kept"
  echo "main_job: the previous run is kept in $kept"
fi
exec "$BUILD_DIR/stride" train --config configs/fashion_mnist_resnet20.toml "$@"
