#!/usr/bin/env bash
# System test: transfer learning. Weights from one run's checkpoint load into a new run with a different number
# of classes (a new head); frozen stages keep their weights and BatchNorm statistics; the rest trains.
#   transfer_test.sh STRIDE_BINARY WORK_DIR
set -euo pipefail
STRIDE=$1
WORK=$2
PY=/usr/bin/python3
HERE=$(cd "$(dirname "$0")/.." && pwd)
rm -rf "$WORK" && mkdir -p "$WORK"
"$STRIDE" shard --quiet --format fashion-mnist --input /usr/share/datasets/fashion-mnist --output "$WORK/data" \
  --samples-per-shard 10000 > /dev/null
common=(--model resnet20 --data-path "$WORK/data" --batch-size 32 --epochs 1 --threads 1 --workers 1 --print-freq 1000)

"$STRIDE" train "${common[@]}" --output-dir "$WORK/source" --max-steps 4 > "$WORK/source.log" 2>&1
src=$(ls -d "$WORK"/source/checkpoints/step-* | tail -1)
"$STRIDE" train "${common[@]}" --output-dir "$WORK/target" --max-steps 3 --weights "$src" --num-classes 12 \
  --freeze stem,layer1 > "$WORK/target.log" 2>&1
grep -q "the head is new (12 classes)" "$WORK/target.log" || { echo "FAIL: no new head"; cat "$WORK/target.log"; exit 1; }
"$STRIDE" ckpt export "$WORK/source" -o "$WORK/source.safetensors" > /dev/null
"$STRIDE" ckpt export "$WORK/target" -o "$WORK/target.safetensors" > /dev/null

PYTHONPATH="$HERE/python" $PY - "$WORK/source.safetensors" "$WORK/target.safetensors" <<'PYEOF'
import sys
import torch
import safetensors_np
src, dst = safetensors_np.load(sys.argv[1]), safetensors_np.load(sys.argv[2])
assert dst["fc.weight"].shape == (12, 64), dst["fc.weight"].shape
frozen = [k for k in src if k.startswith(("conv1.", "bn1.", "layer1."))]
trained = [k for k in src if k.startswith("layer3.") and k.endswith("conv1.weight")]
assert frozen and trained
for k in frozen:
    assert torch.equal(src[k], dst[k]), f"frozen tensor {k} changed"
for k in trained:
    assert not torch.equal(src[k], dst[k]), f"trainable tensor {k} did not change"
print(f"PASS: {len(frozen)} frozen tensors (weights and BN statistics) unchanged, new 12-class head, layer3 trained")
PYEOF
