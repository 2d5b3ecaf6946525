#!/usr/bin/env bash
# System test: a WebDataset written by third-party tools (Python's tarfile, numpy, PIL; no Stride code), indexed
# with `stride shard --index-only`, trains and evaluates like the same samples sharded by `stride shard`:
#   - the index records the images' shape and channel count (grayscale stays 1-channel);
#   - training and evaluation run at the same size (Note [One transform rule] in trainer/data_setup.h);
#   - npy and PNG members (lossless) give bit-identical accuracy to `stride shard`'s shards of the same samples;
#     JPEG within a few points;
#   - images of different sizes without --crop random-resized are a clear error before anything is written.
#   webdataset_test.sh STRIDE_BINARY WORK_DIR
set -euo pipefail
STRIDE=$1
WORK=$2
PY=/usr/bin/python3
HERE=$(cd "$(dirname "$0")/.." && pwd)
rm -rf "$WORK" && mkdir -p "$WORK"
fail() { echo "FAIL: $*"; exit 1; }

make() {  # FORMAT -> $WORK/FORMAT
  $PY "$HERE/python/make_webdataset.py" /usr/share/datasets/fashion-mnist "$WORK/$1" --train 4096 --test 1024 \
    --per-shard 512 --format "$1"
}
for f in npy png jpg; do make $f; done

# The reference: the same 2048 + 512 samples through `stride shard`, in shards of the same size.
"$STRIDE" shard --quiet --format fashion-mnist --input "$WORK/npy/idx" --output "$WORK/ref" --samples-per-shard 512 \
  > /dev/null

common=(--model resnet20 --batch-size 64 --epochs 2 --threads 2 --workers 2 --print-freq 1000 --seed 3
        --mean 0.286 --std 0.353)
acc() { sed -n 's/.*eval epoch 2: acc1 \([0-9.]*\)%.*/\1/p' "$1"; }

"$STRIDE" train "${common[@]}" --data-path "$WORK/ref" --output-dir "$WORK/run-ref" > "$WORK/ref.log" 2>&1 ||
  { cat "$WORK/ref.log"; fail "reference run"; }
ref=$(acc "$WORK/ref.log")
echo "stride shard: acc1 $ref%"

for f in npy png jpg; do
  "$STRIDE" shard --index-only "$WORK/$f" > "$WORK/index-$f.log"
  grep -q "train: indexed 4096 samples in 8 shards (10 classes, 28x28x1, 1 channel)" "$WORK/index-$f.log" ||
    { cat "$WORK/index-$f.log"; fail "$f: index does not record 28x28x1"; }
  "$STRIDE" train "${common[@]}" --data-path "$WORK/$f" --output-dir "$WORK/run-$f" > "$WORK/$f.log" 2>&1 ||
    { cat "$WORK/$f.log"; fail "$f run"; }
  grep -q "data: train pad-crop 28x28 (pad 4), hflip; eval none (28x28, the images' own size); 1 channel" \
    "$WORK/$f.log" || { cat "$WORK/$f.log"; fail "$f: train and eval transforms"; }
  grep -q "resnet20 (269434 parameters)" "$WORK/$f.log" || { grep train: "$WORK/$f.log"; fail "$f: not 1-channel"; }
  grep -q "^# eval transform: none (28x28" "$WORK/run-$f/config.toml" || fail "$f: config.toml lacks the transforms"
  a=$(acc "$WORK/$f.log")
  echo "$f (tarfile + index-only): acc1 $a%"
  case $f in
    npy | png) [ "$a" = "$ref" ] || fail "$f: acc1 $a% differs from stride shard's $ref% on the same samples" ;;
    jpg) $PY -c "import sys; sys.exit(abs($a - $ref) > 4.0)" || fail "jpg: acc1 $a% too far from $ref%" ;;
  esac
done

# Images of different sizes: pad-crop cannot batch them; the error names the flag, and no run directory appears.
$PY "$HERE/python/make_webdataset.py" /usr/share/datasets/fashion-mnist "$WORK/mixed" --train 64 --test 64 \
  --format mixed-size
"$STRIDE" shard --index-only "$WORK/mixed" > "$WORK/index-mixed.log"
grep -q "images of different sizes, 1 channel" "$WORK/index-mixed.log" || { cat "$WORK/index-mixed.log"; fail "mixed index"; }
set +e
"$STRIDE" train "${common[@]}" --data-path "$WORK/mixed" --output-dir "$WORK/run-mixed" > "$WORK/mixed.log" 2>&1
rc=$?
set -e
[ $rc = 2 ] || { cat "$WORK/mixed.log"; fail "mixed sizes: exit code $rc, expected 2"; }
grep -q "holds images of different sizes.*--crop random-resized" "$WORK/mixed.log" ||
  { cat "$WORK/mixed.log"; fail "mixed sizes: the error does not name --crop random-resized"; }
[ ! -e "$WORK/run-mixed" ] || fail "mixed sizes: the failed start left $WORK/run-mixed behind"
# With random-resized they train, and evaluate at the training side after a resize.
"$STRIDE" train "${common[@]}" --data-path "$WORK/mixed" --output-dir "$WORK/run-mixed" --crop random-resized \
  --image-size 24 --max-steps 1 > "$WORK/mixed-rrc.log" 2>&1 || { cat "$WORK/mixed-rrc.log"; fail "mixed + rrc"; }
grep -q "eval resize 27, centre crop 24x24" "$WORK/mixed-rrc.log" || { cat "$WORK/mixed-rrc.log"; fail "mixed eval"; }
echo "PASS: third-party WebDataset (npy, png, jpg) trains and evaluates like stride shard's shards ($ref%)"
