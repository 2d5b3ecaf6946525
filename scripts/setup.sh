#!/usr/bin/env bash
# Installs what Stride needs from Debian 12's packages and builds it. Idempotent and quiet when nothing is
# missing. Run as root (or with sudo available).
#
# Environment:
#   STRIDE_BUILD_DIR   build directory (default: build)
#   STRIDE_WITH_NCCL   ON/OFF (default: ON when /usr/local/cuda/include/nccl.h exists)
#   STRIDE_SKIP_BUILD  1 to install packages only
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(
  build-essential cmake ninja-build ccache git pkg-config clang-format
  libtorch-dev python3-torch python3-torchvision libopenblas0-pthread
  python3-pil python3-yaml python3-protobuf  # test references: PIL resizes, deploy/ YAML, TFRecord events
  python3-onnx  # validates and runs the ONNX files python/export.py writes (tests/python/onnx_eval.py)
  libopenmpi-dev openmpi-bin
  libboost-dev libprotobuf-dev protobuf-compiler
  libssl-dev  # HMAC-SHA256: the ranks' challenge-response authentication with the coordinator
  libgtest-dev libgmock-dev libcli11-dev nlohmann-json3-dev libtomlplusplus-dev
  libturbojpeg0-dev libpng-dev zlib1g-dev
  dataset-fashion-mnist
  libgoogle-perftools4  # tcmalloc: bench/bf16_compare.sh preloads it for the PyTorch baselines
  libjemalloc2          # jemalloc: bench/ddp_ratio.sh preloads it for PyTorch DDP too
  chromium
  nginx  # a real HTTP server: the HTTP client's tests and tests/system/remote_data_test.sh
  openssl  # the test certificates of the https:// shard fetcher's tests
  slurmctld slurmd slurm-client munge
  gdb  # tests/system/lib.sh prints the threads of a command that hangs in a system test
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

[ "${STRIDE_SKIP_BUILD:-0}" = 1 ] && exit 0

BUILD_DIR=${STRIDE_BUILD_DIR:-build}
if [ -z "${STRIDE_WITH_NCCL:-}" ]; then
  STRIDE_WITH_NCCL=OFF
  [ -f /usr/local/cuda/include/nccl.h ] && STRIDE_WITH_NCCL=ON
fi
export CCACHE_DIR=${CCACHE_DIR:-$HOME/.cache/ccache}
ccache --max-size=5G >/dev/null 2>&1 || true

if [ ! -f "$BUILD_DIR/build.ninja" ] || [ "$(grep -s '^STRIDE_WITH_NCCL:' "$BUILD_DIR/CMakeCache.txt" | cut -d= -f2)" != "$STRIDE_WITH_NCCL" ]; then
  cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSTRIDE_WITH_NCCL="$STRIDE_WITH_NCCL" \
    -Wno-dev --log-level=WARNING >/dev/null
fi
# Two cores: two compile jobs. ninja prints nothing but "no work to do" when the build is current.
cmake --build "$BUILD_DIR" -j2 | grep -v '^ninja: no work to do' || true
test -x "$BUILD_DIR/stride"
