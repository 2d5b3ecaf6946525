#!/usr/bin/env bash
# torchvision's recipe augmentations end to end (ctest label `system`): 2 ranks under mpirun train a few steps
# with --auto-augment ta_wide --ra-sampler --color-jitter; every global batch of 32 holds 11 samples, each 3 times
# (the last one twice) across the two ranks (--trace-samples); config.toml keeps the flags for resume and predict;
# a bad policy is refused with `stride: error:` naming the flag.
#   auto_augment_test.sh STRIDE_BINARY WORK_DIR
set -euo pipefail
STRIDE=$1
WORK=$2
rm -rf "$WORK" && mkdir -p "$WORK"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fail() {
  echo "FAIL: $*"
  for f in "$WORK"/*.log; do echo "--- $f"; tail -20 "$f"; done
  exit 1
}
"$STRIDE" shard --quiet --format fashion-mnist --input /usr/share/datasets/fashion-mnist --output "$WORK/data" \
  --samples-per-shard 5000 > /dev/null
flags=(--model resnet20 --data-path "$WORK/data" --epochs 1 --seed 5 --threads 1 --workers 1 --print-freq 2
       --status-port -1 --trace-samples --batch-size 16 --max-steps 4 --auto-augment ta_wide --ra-sampler
       --color-jitter 0.4,0.4,0.4)
mpirun --bind-to none --oversubscribe -np 2 "$STRIDE" train "${flags[@]}" --output-dir "$WORK/run" \
  > "$WORK/train.log" 2>&1 || fail "2-rank training"
grep -q "trivialaugment-wide, colour jitter 0.4/0.4/0.4, repeated augmentation x3" "$WORK/train.log" ||
  fail "the data line does not name the augmentations"
grep -Eq "^auto-augment = ['\"]ta_wide['\"]" "$WORK/run/config.toml" || fail "config.toml lacks auto-augment"
grep -q '^ra-sampler = true' "$WORK/run/config.toml" || fail "config.toml lacks ra-sampler"
/usr/bin/python3 - "$WORK/run/samples" <<'PYEOF' || fail "repeated augmentation layout"
import collections, glob, sys
by = collections.defaultdict(list)
for f in glob.glob(sys.argv[1] + "/rank-*.txt"):
    for line in open(f):
        e, s, *ids = map(int, line.split())
        by[(e, s)].extend(ids)
assert len(by) >= 4, f"only {len(by)} steps traced"
for step, ids in by.items():
    counts = sorted(collections.Counter(ids).values())
    assert len(ids) == 32 and counts == [2] + [3] * 10, f"step {step}: copies {counts}"
print(f"{len(by)} steps of 32 positions: 11 samples, 3 copies each (the last 2)")
PYEOF
set +e
"$STRIDE" train --auto-augment randaug --data-path "$WORK/data" --output-dir "$WORK/bad" > "$WORK/bad.log" 2>&1
code=$?
set -e
[ "$code" = 2 ] || fail "a bad --auto-augment exited $code, not 2"
grep -q "^stride: error: --auto-augment must be one of ra, ta_wide, imagenet, cifar10, svhn" "$WORK/bad.log" ||
  fail "no clear error for a bad --auto-augment"
[ ! -e "$WORK/bad" ] || fail "a bad flag left a run directory"
echo "PASS"
