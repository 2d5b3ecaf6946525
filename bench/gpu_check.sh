#!/usr/bin/env bash
# The GPU check of issue 8, in one script with two halves:
#
#   bash bench/gpu_check.sh pack   # on the Debian development machine: unpack the Debian packages the build
#                                  # needs (protobuf, CLI11, nlohmann-json, toml++, turbojpeg, libpng, zlib,
#                                  # GoogleTest) into .gpudeps/ (ignored by git, ~10 MiB), nothing vendored
#   bash bench/gpu_check.sh run    # on the GPU machine, from the repository root, with .gpudeps/ beside it:
#                                  # configure against the pip torch's LibTorch (CUDA) and NCCL, build, run the
#                                  # GPU unit tests, then `stride bench step` and bench/torch_train_step.py on
#                                  # resnet50 (batch 256, 224x224, AMP fp16 + channels-last), alternating, and
#                                  # print the ratio; then a short real `stride train` on the GPU (Fashion-MNIST,
#                                  # AMP + channels-last). Logs and JSON go to $OUT (or gpu-check-out/).
#
# The GPU machine has CUDA, nvcc, cmake, ninja and a python3 with torch, and none of the Debian libraries above; the
# build needs neither MPI nor Boost (on the H100 image of 2026-11-27 CMake did find an Open MPI there and built the
# MPI communicator too). Measured there: configure 15 s, build 128 s (16 cores), whole `run` 200 s. Knobs for `run`: STRIDE_GPU_BUILD (build directory, default
# /tmp/stride-gpu-build), STEPS (timed steps per benchmark, default 40), ROUNDS (alternations, default 2),
# BATCH (default 256), GPU_TESTS (default 1; 0 skips the GPU unit tests), ROUNDS=0 skips
# the GPU benchmarks, TRAIN_EPOCHS (default 1; 0 skips the training run), MPI_CHECK_TIMEOUT (seconds for the MPI
# suites and the 2-rank CPU step benchmarks, where an MPI was found, default 300; 0 skips; MPI_TESTS=0 skips the
# suites, DP_MODELS, DP_VARIANTS and DP_ROUNDS choose the benchmarks), TARGETS (what to build, default
# "stride stride_unit_tests"), OTHER_TESTS_TIMEOUT (seconds for the non-GPU unit tests afterwards, default 90; 0 skips).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DEPS=$ROOT/.gpudeps
ARCH=x86_64-linux-gnu

PACKAGES=(libprotobuf-dev libprotobuf32 protobuf-compiler libprotoc32 libcli11-dev nlohmann-json3-dev
  libtomlplusplus-dev libtomlplusplus3 libturbojpeg0-dev libturbojpeg0 libpng-dev libpng16-16 zlib1g-dev zlib1g
  libgtest-dev libgmock-dev libssl-dev libssl3)

# ---------------------------------------------------------------------------------------------------------
# pack (development machine)
# ---------------------------------------------------------------------------------------------------------
pack() {
  rm -rf "$DEPS"
  mkdir -p "$DEPS/debs"
  for p in "${PACKAGES[@]}"; do
    # The installed version, so the GPU build uses exactly what the Debian build uses.
    local ver deb
    ver=$(dpkg-query -W -f='${Version}' "$p")
    deb=$(ls /var/cache/apt/archives/"${p}_${ver//:/%3a}"_*.deb 2>/dev/null | head -1 || true)
    if [[ -z $deb ]]; then
      (cd "$DEPS/debs" && apt-get download -q "$p=$ver" 2>&1 | grep -v unsandboxed || true)
      deb=$(ls "$DEPS/debs/${p}_"*.deb | head -1)
    fi
    dpkg-deb -x "$deb" "$DEPS"
    echo "packed $p $ver"
  done
  rm -rf "$DEPS/debs" "$DEPS/usr/share/doc" "$DEPS/usr/share/man" "$DEPS/usr/share/lintian"
  # Absolute links (libz.so -> /lib/.../libz.so.1.2.13) would point into the GPU machine's own system: make them
  # relative inside .gpudeps, and drop links to what was not packed (GoogleTest's sources).
  local link target
  while IFS= read -r link; do
    target=$(readlink "$link")
    if [[ $target == /* && -e $DEPS$target ]]; then
      ln -sfn "$(realpath -s --relative-to="$(dirname "$link")" "$DEPS$target")" "$link"
    fi
  done < <(find "$DEPS" -type l)
  find "$DEPS" -xtype l -delete
  # Static archives are not linked (the shared libraries are), except GoogleTest's, which ships only those.
  find "$DEPS/usr/lib" -name '*.a' ! -name 'libgtest*' ! -name 'libgmock*' -delete
  # protoc runs during the build and needs its own libprotoc/libprotobuf, which the GPU machine lacks.
  mkdir -p "$DEPS/bin"
  cat >"$DEPS/bin/protoc" <<'EOF'
#!/bin/sh
d=$(cd "$(dirname "$0")/.." && pwd)
LD_LIBRARY_PATH="$d/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "$d/usr/bin/protoc" "$@"
EOF
  chmod +x "$DEPS/bin/protoc"
  local exclude
  exclude=$(git rev-parse --git-path info/exclude)
  mkdir -p "$(dirname "$exclude")"
  grep -qxF '/.gpudeps/' "$exclude" 2>/dev/null || echo '/.gpudeps/' >>"$exclude"
  # The real Fashion-MNIST (30 MB) for a short GPU training run, when Debian's dataset-fashion-mnist is installed.
  if [[ -d /usr/share/datasets/fashion-mnist ]]; then
    mkdir -p "$DEPS/fashion-mnist"
    cp /usr/share/datasets/fashion-mnist/*.gz "$DEPS/fashion-mnist/"
  fi
  "$DEPS/bin/protoc" --version
  du -sh "$DEPS"
}

# ---------------------------------------------------------------------------------------------------------
# run (GPU machine)
# ---------------------------------------------------------------------------------------------------------
# Prints the directory holding include/nccl.h and lib/libnccl.so, making one from the pip wheel if needed.
nccl_home() {
  local build=$1
  if [[ -f /usr/local/cuda/include/nccl.h ]] && ls /usr/local/cuda/lib64/libnccl.so >/dev/null 2>&1; then
    echo /usr/local/cuda
    return
  fi
  local header
  header=$(python3 - <<'EOF'
import glob, os, site
for sp in site.getsitepackages() + [site.getusersitepackages()]:
    hits = glob.glob(os.path.join(sp, "nvidia", "**", "nccl.h"), recursive=True)
    if hits:
        print(hits[0])
        break
EOF
)
  [[ -n $header ]] || { echo "no nccl.h in /usr/local/cuda or the pip nvidia wheels" >&2; return 1; }
  local wheel lib
  wheel=$(dirname "$(dirname "$header")")
  lib=$(ls "$wheel"/lib/libnccl.so* | head -1)
  # The wheel ships only libnccl.so.2; find_library wants the unversioned name.
  mkdir -p "$build/nccl/lib"
  ln -sfn "$wheel/include" "$build/nccl/include"
  ln -sf "$lib" "$build/nccl/lib/libnccl.so"
  echo "$build/nccl"
}

run() {
  OUT=${OUT:-$ROOT/gpu-check-out}
  mkdir -p "$OUT"
  exec > >(tee -a "$OUT/gpu_check.log") 2>&1
  local build=${STRIDE_GPU_BUILD:-/tmp/stride-gpu-build}
  local steps=${STEPS:-40} rounds=${ROUNDS:-2} batch=${BATCH:-256}
  local t0=$SECONDS
  [[ -d $DEPS/usr ]] || { echo "no .gpudeps/: run 'bash bench/gpu_check.sh pack' on the development machine and carry it"; exit 1; }
  echo "== machine"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
  echo "cores: $(nproc); $(uname -r)"
  python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version(), torch.cuda.get_device_name(0))'
  local torch_prefix nvcc nccl
  torch_prefix=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')
  nvcc=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
  mkdir -p "$build"
  nccl=$(nccl_home "$build")
  echo "torch cmake: $torch_prefix; nvcc: $nvcc; NCCL: $nccl"

  echo "== configure"
  # A pip torch links its own protobuf into libtorch and, unless protobuf::libprotobuf already exists, defines
  # it as an empty stand-in (Caffe2Config.cmake); find Debian's protobuf first so stride_proto links the real one.
  cat >"$build/prelude.cmake" <<'EOF'
find_package(Protobuf REQUIRED)
EOF
  # The pip torch also ships protobuf 3.13 headers in torch/include, which comes first on the include path:
  # put Debian's (those protoc 3.21 generates for) ahead of it with -I, which GCC searches before -isystem.
  mkdir -p "$build/protobuf-include"
  ln -sfn "$DEPS/usr/include/google" "$build/protobuf-include/google"
  export NCCL_HOME=$nccl TORCH_CUDA_ARCH_LIST=9.0
  local cmake_args=(-S "$ROOT" -B "$build" -G Ninja
    -DCMAKE_PREFIX_PATH="$torch_prefix;$DEPS/usr"
    -DCMAKE_PROJECT_INCLUDE="$build/prelude.cmake"
    -DProtobuf_PROTOC_EXECUTABLE="$DEPS/bin/protoc"
    -DCMAKE_CUDA_COMPILER="$nvcc" -DCMAKE_CUDA_ARCHITECTURES=90 -DCUDAToolkit_ROOT="$(dirname "$(dirname "$nvcc")")"
    -DCMAKE_CXX_FLAGS="-I$build/protobuf-include" -DSTRIDE_REFERENCE_PYTHON="$(command -v python3)")
  if ! cmake "${cmake_args[@]}" -DSTRIDE_WITH_NCCL=ON; then
    echo "== configure with NCCL failed; configuring without it"
    cmake "${cmake_args[@]}" -DSTRIDE_WITH_NCCL=OFF
  fi
  echo "configure: $((SECONDS - t0)) s"

  echo "== build"
  local targets=(${TARGETS:-stride stride_unit_tests})
  # The MPI tests too, where CMake found an MPI on this machine.
  # (Not `| grep -q`: under pipefail, grep exiting at the first match fails the pipeline with ninja's SIGPIPE.)
  if [[ $(ninja -C "$build" -t targets all 2>/dev/null) == *$'\n'stride_mpi_tests:* ]]; then
    targets+=(stride_mpi_tests)
  fi
  if ! cmake --build "$build" -j"$(nproc)" --target "${targets[@]}" -- -k 0; then
    # Keep the AMP measurement possible when only the NCCL communicator fails to build.
    echo "== build with NCCL failed; building without it"
    cmake "$build" -DSTRIDE_WITH_NCCL=OFF
    cmake --build "$build" -j"$(nproc)" --target stride stride_unit_tests
  fi
  echo "build done: $((SECONDS - t0)) s"
  "$build/stride" version || true

  local tests_rc=0
  if ((${GPU_TESTS:-1})); then
    echo "== GPU unit tests"
    "$build/tests/stride_unit_tests" --gtest_filter='Gpu.*:Amp.*' --gtest_output="xml:$OUT/gpu_tests.xml" ||
      tests_rc=$?
    echo "GPU tests rc=$tests_rc: $((SECONDS - t0)) s"
  fi

  if ((rounds > 0)); then
  echo "== resnet50 training step, batch $batch, 224x224, AMP fp16, channels-last"
  local args=(--model resnet50 --batch-size "$batch" --image-size 224 --device cuda --amp --channels-last
    --warmup 10 --steps "$steps")
  : >"$OUT/step_results.jsonl"
  for ((r = 1; r <= rounds; r++)); do
    "$build/stride" bench step "${args[@]}" | tee -a "$OUT/step_results.jsonl" || echo "stride bench rc=$?"
    python3 bench/torch_train_step.py "${args[@]}" | tee -a "$OUT/step_results.jsonl" || echo "torch bench rc=$?"
  done
  python3 - "$OUT/step_results.jsonl" <<'EOF' | tee "$OUT/summary.txt" || echo "no complete benchmark pair"
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
s = [r["images_per_s"] for r in rows if r["impl"] == "stride"]
p = [r["images_per_s"] for r in rows if r["impl"] == "pytorch"]
ratios = [a / b for a, b in zip(s, p)]
dev = rows[0].get("device_name", "?")
print(f"device: {dev}; torch {next((r['torch'] for r in rows if 'torch' in r), '?')}")
print(f"stride  img/s: {', '.join(f'{x:.0f}' for x in s)}  (median {statistics.median(s):.0f})")
print(f"pytorch img/s: {', '.join(f'{x:.0f}' for x in p)}  (median {statistics.median(p):.0f})")
print(f"stride/pytorch per round: {', '.join(f'{x:.3f}' for x in ratios)}  median {statistics.median(ratios):.3f}")
EOF
  echo "benchmarks done: $((SECONDS - t0)) s"
  fi

  local epochs=${TRAIN_EPOCHS:-1}
  if ((epochs > 0)) && [[ -d $DEPS/fashion-mnist ]]; then
    echo "== stride train on the GPU: resnet20, Fashion-MNIST, $epochs epoch(s), AMP fp16 + channels-last"
    local t1=$SECONDS
    "$build/stride" train --config configs/fashion_mnist_resnet20.toml --epochs "$epochs" --device cuda --amp \
      --channels-last --threads 4 --workers 4 --dataset-source "$DEPS/fashion-mnist" --data-path /tmp/stride-fm \
      --output-dir /tmp/stride-fm-run --print-freq 100 2>&1 | tr '\r' '\n' | tail -8 || echo "train rc=$?"
    cp /tmp/stride-fm-run/metrics.jsonl "$OUT/train_metrics.jsonl" 2>/dev/null || true
    "$build/stride" ckpt verify /tmp/stride-fm-run 2>&1 | tail -2 || echo "ckpt verify rc=$?"
    echo "train: $((SECONDS - t1)) s"
  fi

  local mpi_timeout=${MPI_CHECK_TIMEOUT:-300}
  if ((mpi_timeout > 0)) && [[ -x $build/tests/stride_mpi_tests || ${MPI_TESTS:-1} == 0 ]]; then
    timeout "$mpi_timeout" bash "$ROOT/bench/gpu_check.sh" mpi "$build" || echo "MPI check rc=$?"
  fi

  local other=${OTHER_TESTS_TIMEOUT:-90}
  if ((other > 0)); then
    echo "== other unit tests (CPU; informational, at most ${other} s)"
    timeout "$other" "$build/tests/stride_unit_tests" --gtest_filter='-Gpu.*:Amp.*' --gtest_brief=1 \
      --gtest_output="xml:$OUT/other_tests.xml" || echo "other unit tests rc=$?"
  fi
  echo "total: $((SECONDS - t0)) s; GPU tests rc=$tests_rc"
  return "$tests_rc"
}

# The CPU data-parallel path on this (larger, quieter) host: the MPI suites over shared memory and over Open MPI,
# the peer-killed test, and the interleaved 2-rank x 1-thread step benchmarks of docs/benchmarks.md.
mpi_check() {
  local build=$1
  local t0=$SECONDS
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
  echo "== MPI: $(mpirun --version 2>&1 | head -1); usable CPUs: $(env -u OMP_NUM_THREADS nproc)"
  if ((${MPI_TESTS:-1})); then
    ctest --test-dir "$build" -R '^mpi[.](np2|np3|np2_no_shm|np2_shm_spin|peer_killed)$' --output-on-failure \
      --timeout 120 || echo "MPI tests rc=$?"
    echo "MPI tests: $((SECONDS - t0)) s"
  fi
  local rounds=${DP_ROUNDS:-6}
  local run=(mpirun -np 2 --oversubscribe --bind-to none -x OMP_NUM_THREADS=1 "$build/stride" bench step --threads 1
    --interleave "${DP_VARIANTS:-default,no-comm,no-overlap,mpi,sync-bn,shm-sleep}" --rounds "$rounds")
  local model
  for model in ${DP_MODELS:-resnet50 resnet20}; do
    echo "== interleaved step benchmark, $model, 2 ranks x 1 thread"
    if [[ $model == resnet20 ]]; then
      "${run[@]}" --model resnet20 --batch-size 64 --image-size 28 --in-channels 1 --num-classes 10 --steps 20
    else
      "${run[@]}" --model "$model" --batch-size 16 --image-size 64 --num-classes 100 --steps 4
    fi | tee "$OUT/dp_$model.json" || echo "$model bench rc=$?"
  done
  echo "MPI check: $((SECONDS - t0)) s"
}

case "${1:-}" in
  pack) pack ;;
  run) run ;;
  mpi)
    OUT=${OUT:-$ROOT/gpu-check-out}
    mpi_check "$2"
    ;;
  *)
    echo "usage: bash bench/gpu_check.sh pack|run" >&2
    exit 2
    ;;
esac
