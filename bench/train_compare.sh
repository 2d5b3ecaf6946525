#!/usr/bin/env bash
# Single-process training throughput: `stride bench step` vs PyTorch eager (bench/torch_train_step.py) on the
# same model, batch, threads and synthetic data, alternating A B (DESIGN.md section 8). The PyTorch side runs
# twice per pair: as is, and with glibc told to keep freed memory (the same malloc settings `stride` applies
# at start-up), to show how much of the gap is the allocator.
#   bash bench/train_compare.sh [PAIRS]
set -euo pipefail
cd "$(dirname "$0")/.."
PAIRS=${1:-5}
STRIDE=${STRIDE:-build/stride}
PY=/usr/bin/python3
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load $(cut -d' ' -f1-3 /proc/loadavg)"
run_case() {
  local label=$1; shift
  local args=("$@")
  local r1=() r2=()
  for i in $(seq 1 "$PAIRS"); do
    s=$("$STRIDE" bench step "${args[@]}")
    p=$($PY bench/torch_train_step.py "${args[@]}")
    q=$(MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=536870912 $PY bench/torch_train_step.py "${args[@]}")
    echo "stride         $s"
    echo "pytorch        $p"
    echo "pytorch+malloc $q"
    r1+=("$($PY -c "import json,sys; print(json.loads(sys.argv[1])['images_per_s']/json.loads(sys.argv[2])['images_per_s'])" "$s" "$p")")
    r2+=("$($PY -c "import json,sys; print(json.loads(sys.argv[1])['images_per_s']/json.loads(sys.argv[2])['images_per_s'])" "$s" "$q")")
  done
  $PY - "$label" "${#r1[@]}" "${r1[@]}" "${r2[@]}" <<'PYEOF'
import statistics, sys
label, n = sys.argv[1], int(sys.argv[2])
a = sorted(map(float, sys.argv[3:3 + n])); b = sorted(map(float, sys.argv[3 + n:]))
print(f"{label}: stride/pytorch median {statistics.median(a):.2f}x ({a[0]:.2f}-{a[-1]:.2f}); "
      f"stride/pytorch+malloc median {statistics.median(b):.2f}x ({b[0]:.2f}-{b[-1]:.2f})")
PYEOF
}
run_case "resnet20 28x28x1 batch 128, 2 threads" --model resnet20 --batch-size 128 --image-size 28 --in-channels 1 \
  --num-classes 10 --threads 2 --steps 20 --warmup 3
run_case "resnet50 224x224x3 batch 16, 2 threads" --model resnet50 --batch-size 16 --image-size 224 --threads 2 \
  --steps 3 --warmup 1
