#!/usr/bin/env bash
# System test: `stride predict`. A short Fashion-MNIST run, then the 10,000 test images written as PNG files by
# PIL (not by Stride). Predicting them from the checkpoint alone (no dataset) must reproduce the run's own test
# accuracy, which it only does when the images are prepared exactly as evaluation prepared them (channels, crop,
# normalisation). Then text output, class names, --classes, a corrupt file among good ones, and bad arguments.
#   predict_test.sh STRIDE_BINARY WORK_DIR
set -euo pipefail
STRIDE=$1
WORK=$2
PY=/usr/bin/python3
rm -rf "$WORK" && mkdir -p "$WORK"
"$STRIDE" shard --quiet --format fashion-mnist --input /usr/share/datasets/fashion-mnist --output "$WORK/data" \
  --samples-per-shard 10000 > /dev/null
"$STRIDE" train --model resnet20 --data-path "$WORK/data" --batch-size 64 --epochs 1 --max-steps 120 --threads 2 \
  --workers 1 --print-freq 1000 --output-dir "$WORK/run" > "$WORK/train.log" 2>&1 ||
  { echo "FAIL: training"; cat "$WORK/train.log"; exit 1; }
mv "$WORK/data" "$WORK/data.moved"  # predict needs the checkpoint only

$PY - /usr/share/datasets/fashion-mnist "$WORK/images" <<'PYEOF'
import gzip, os, sys
import numpy as np
from PIL import Image
src, out = sys.argv[1], sys.argv[2]
with gzip.open(os.path.join(src, "t10k-images-idx3-ubyte.gz")) as f:
    images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
with gzip.open(os.path.join(src, "t10k-labels-idx1-ubyte.gz")) as f:
    labels = np.frombuffer(f.read(), np.uint8, offset=8)
for i, (img, label) in enumerate(zip(images, labels)):
    d = os.path.join(out, str(i // 1000))  # nested folders: predict searches recursively
    os.makedirs(d, exist_ok=True)
    Image.fromarray(img, "L").save(os.path.join(d, f"{i:05d}_{label}.png"))
PYEOF

"$STRIDE" predict "$WORK/run" "$WORK/images" --json --top-k 3 --threads 2 > "$WORK/all.json"
"$STRIDE" ckpt list "$WORK/run" --json > "$WORK/ckpt.json"
$PY - "$WORK/all.json" "$WORK/ckpt.json" <<'PYEOF'
import json, os, sys
out, ckpts = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
preds = out["predictions"]
assert len(preds) == 10000, len(preds)
names = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
correct = 0
for p in preds:
    top = p["top"]
    assert len(top) == 3, p
    probs = [t["p"] for t in top]
    assert probs == sorted(probs, reverse=True) and 0 < probs[0] <= 1 and sum(probs) <= 1 + 1e-5, p
    for t in top:
        assert t["name"] == names[t["class"]], t
    label = int(os.path.basename(p["path"]).split("_")[1].split(".")[0])
    correct += top[0]["class"] == label
acc = 100.0 * correct / len(preds)
newest = ckpts[0]
assert newest["step"] == 120, newest
assert out["step"] == 120 and out["checkpoint"] == newest["path"], (out["step"], out["checkpoint"])
expected = newest["metrics"]["acc1"]
print(f"predict top-1 {acc:.2f}% on 10,000 PNG files; the run's own evaluation {expected:.2f}%")
# Identical preprocessing and weights: only a tie broken differently by another batch composition may differ.
assert abs(acc - expected) <= 0.05, (acc, expected)
assert expected > 50, expected  # trained, not chance (10%)
PYEOF

# Text output, names from a --classes file, a JPEG, a corrupt PNG among good ones (answered, then exit 1).
cp "$WORK/images/0/00000_9.png" "$WORK/images/0/00001_2.png" "$WORK"/
$PY -c "from PIL import Image; Image.open('$WORK/00000_9.png').convert('RGB').save('$WORK/rgb.jpg')"
head -c 100 "$WORK/00001_2.png" > "$WORK/broken.png"
printf 'c0\nc1\nc2\nc3\nc4\nc5\nc6\nc7\nc8\nc9\n' > "$WORK/classes.txt"
set +e
"$STRIDE" predict "$WORK/run" "$WORK/00000_9.png" "$WORK/broken.png" "$WORK/rgb.jpg" --classes "$WORK/classes.txt" \
  -k 2 > "$WORK/text.out" 2> "$WORK/text.err"
rc=$?
set -e
[ "$rc" -eq 1 ] || { echo "FAIL: a corrupt image must make predict exit 1, got $rc"; cat "$WORK/text.err"; exit 1; }
grep -q "1 of 3 images could not be read" "$WORK/text.err" || { echo "FAIL: no summary"; cat "$WORK/text.err"; exit 1; }
grep -q "^$WORK/broken.png: error: " "$WORK/text.out" || { echo "FAIL: broken file not named"; cat "$WORK/text.out"; exit 1; }
grep -Eq "^$WORK/00000_9.png: c[0-9] [0-9.]+%, c[0-9] [0-9.]+%$" "$WORK/text.out" ||
  { echo "FAIL: text line"; cat "$WORK/text.out"; exit 1; }
grep -Eq "^$WORK/rgb.jpg: c[0-9] " "$WORK/text.out" || { echo "FAIL: JPEG (RGB) not predicted"; cat "$WORK/text.out"; exit 1; }
grep -q "step 120, resnet20; none (28x28, the images' own size); mean 0.286 std 0.353" "$WORK/text.err" ||
  { echo "FAIL: the preprocessing is not stated"; cat "$WORK/text.err"; exit 1; }

# Bad arguments: exit 2 naming the path.
expect_usage() {
  local want=$1; shift
  set +e
  "$STRIDE" predict "$@" > /dev/null 2> "$WORK/usage.err"
  local rc=$?
  set -e
  [ "$rc" -eq 2 ] || { echo "FAIL: exit $rc for $*"; cat "$WORK/usage.err"; exit 1; }
  grep -qF -- "$want" "$WORK/usage.err" || { echo "FAIL: '$want' not in:"; cat "$WORK/usage.err"; exit 1; }
}
expect_usage "$WORK/nope.png: no such file or folder" "$WORK/run" "$WORK/nope.png"
expect_usage "$WORK/classes.txt: not an image" "$WORK/run" "$WORK/classes.txt"
expect_usage "no valid checkpoint under $WORK/images" "$WORK/images" "$WORK/00000_9.png"
expect_usage "--top-k must be at least 1" "$WORK/run" "$WORK/00000_9.png" --top-k 0
echo "PASS: predict reproduces the run's test accuracy from the checkpoint alone; errors named"
