#!/usr/bin/env bash
# Stride's loader vs torchvision's ImageFolder + DataLoader on the same JPEG files, same worker count, same
# machine, alternating A B A B (DESIGN.md section 8). Also measures Fashion-MNIST npy shards (crop + flip).
#
#   bash bench/loader_compare.sh [PAIRS] [SECONDS] [WORKERS]
# Needs a build (scripts/setup.sh). Writes its datasets under ${STRIDE_BENCH_DIR:-/tmp/stride-bench}.
set -euo pipefail
cd "$(dirname "$0")/.."
PAIRS=${1:-5}
SECONDS_PER_RUN=${2:-8}
WORKERS=${3:-1}
STRIDE=${STRIDE:-build/stride}
DIR=${STRIDE_BENCH_DIR:-/tmp/stride-bench}
PY=/usr/bin/python3
mkdir -p "$DIR"

if [ ! -f "$DIR/jpeg/train/index.pb" ]; then
  $PY bench/make_jpeg_dataset.py --out "$DIR/jpeg-folder" --images 3000
  "$STRIDE" shard --quiet --format imagefolder --input "$DIR/jpeg-folder" --output "$DIR/jpeg"
fi
if [ ! -f "$DIR/fmnist/train/index.pb" ]; then
  "$STRIDE" shard --quiet --format fashion-mnist --input /usr/share/datasets/fashion-mnist --output "$DIR/fmnist"
fi

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== (a) Fashion-MNIST npy shards, pad-crop 28 + flip, float output, $WORKERS worker(s)"
for i in $(seq 1 3); do
  "$STRIDE" bench loader --json --data-path "$DIR/fmnist" --workers "$WORKERS" --batch-size 256 \
    --crop pad-crop --pad 4 --seconds "$SECONDS_PER_RUN"
done

echo "== (b) 224x224 RandomResizedCrop + flip + normalise on ~500x375 JPEGs, $WORKERS worker(s), $PAIRS pairs"
ratios=()
for i in $(seq 1 "$PAIRS"); do
  s=$("$STRIDE" bench loader --json --data-path "$DIR/jpeg" --workers "$WORKERS" --batch-size 64 \
      --crop random-resized --size 224 --normalize imagenet --seconds "$SECONDS_PER_RUN")
  t=$($PY bench/torchvision_loader.py --data-path "$DIR/jpeg-folder" --workers "$WORKERS" --batch-size 64 \
      --seconds "$SECONDS_PER_RUN")
  echo "stride      $s"
  echo "torchvision $t"
  ratios+=("$($PY -c "import json,sys; print(json.loads(sys.argv[1])['images_per_s'] / json.loads(sys.argv[2])['images_per_s'])" "$s" "$t")")
done
$PY - "${ratios[@]}" <<'PYEOF'
import statistics, sys
r = sorted(float(x) for x in sys.argv[1:])
print(f"stride / torchvision images/s: median {statistics.median(r):.2f}x (min {r[0]:.2f}x, max {r[-1]:.2f}x) over {len(r)} pairs")
PYEOF
