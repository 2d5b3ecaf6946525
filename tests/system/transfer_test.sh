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

# Grayscale: torchvision's RGB resnet18 weights on 1-channel Fashion-MNIST. The stem is adapted as timm does (summed
# over RGB, --adapt-stem sum); with the stem frozen, the trained model's conv1 is exactly that sum. Then the
# reverse: the 1-channel model loads into torchvision's resnet18 with a 1-channel conv1, as docs/training.md says.
PYTHONPATH="$HERE/python" $PY - "$WORK/rgb18.safetensors" <<'PYEOF'
import sys
import torch, torchvision
import safetensors_np
torch.manual_seed(0)
m = torchvision.models.resnet18(num_classes=1000)
safetensors_np.save(sys.argv[1], dict(m.state_dict()))
PYEOF
gray=(--model resnet18 --data-path "$WORK/data" --batch-size 8 --epochs 1 --threads 1 --workers 1 --print-freq 1000
      --max-steps 2 --weights "$WORK/rgb18.safetensors")
if "$STRIDE" train "${gray[@]}" --output-dir "$WORK/refuse" --adapt-stem none > "$WORK/refuse.log" 2>&1; then
  echo "FAIL: --adapt-stem none accepted RGB weights on 1-channel data"; exit 1
fi
grep -q "conv1.weight takes 3 input channels but the model has 1" "$WORK/refuse.log" ||
  { echo "FAIL: no clear refusal"; cat "$WORK/refuse.log"; exit 1; }
"$STRIDE" train "${gray[@]}" --output-dir "$WORK/gray" --freeze stem > "$WORK/gray.log" 2>&1 ||
  { echo "FAIL: RGB weights on grayscale data"; cat "$WORK/gray.log"; exit 1; }
grep -q "conv1 adapted from 3 to 1 input channels (sum" "$WORK/gray.log" || { echo "FAIL: no adaptation line"; exit 1; }
"$STRIDE" ckpt export "$WORK/gray" -o "$WORK/gray.safetensors" > /dev/null
PYTHONPATH="$HERE/python" $PY - "$WORK/rgb18.safetensors" "$WORK/gray.safetensors" <<'PYEOF'
import sys
import torch, torchvision
import safetensors_np
rgb, gray = safetensors_np.load(sys.argv[1]), safetensors_np.load(sys.argv[2])
assert gray["conv1.weight"].shape == (64, 1, 7, 7), gray["conv1.weight"].shape
assert torch.allclose(gray["conv1.weight"], rgb["conv1.weight"].sum(1, keepdim=True), atol=1e-6), "stem is not the RGB sum"
m = torchvision.models.resnet18(num_classes=10)
m.conv1 = torch.nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
missing, unexpected = m.load_state_dict(gray, strict=False)
assert unexpected == [] and all(k.endswith("num_batches_tracked") for k in missing), (missing, unexpected)
m.eval()
assert m(torch.randn(2, 1, 28, 28)).shape == (2, 10)
print("PASS: RGB resnet18 weights adapted to 1 channel (sum), and the 1-channel model loads into torchvision")
PYEOF
