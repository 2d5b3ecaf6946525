#!/usr/bin/env bash
# The README's main job: set up, build, and show the model zoo.
# (Replaced by a short Fashion-MNIST training run once `stride train` lands.)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
BUILD_DIR=${STRIDE_BUILD_DIR:-build}
"$BUILD_DIR/stride" version
"$BUILD_DIR/stride" models
