#!/usr/bin/env bash
# Sets up, builds and runs every test level that runs on this machine (unit, mpi, system).
# Extra arguments go to ctest, e.g. `bash scripts/test.sh -L unit -R Parity`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
BUILD_DIR=${STRIDE_BUILD_DIR:-build}
exec ctest --test-dir "$BUILD_DIR" --output-on-failure -j2 --timeout 900 "$@"
