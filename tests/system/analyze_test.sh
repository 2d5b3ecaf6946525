#!/usr/bin/env bash
# System test: `stride analyze lesion` and `stride analyze landscape` on real runs (ctest label `system`). Short
# resnet20 and plain20 Fashion-MNIST runs, then the lesion study of both, the 1-D and 2-D landscapes on 1 rank and
# on 2 ranks under mpirun (the 2-rank grid must equal the 1-rank grid), the JSON and SVG files parsed, and bad
# input refused with one clear line.
#   analyze_test.sh STRIDE_BINARY WORK_DIR
set -euo pipefail
STRIDE=$1
WORK=$2
PY=/usr/bin/python3
rm -rf "$WORK" && mkdir -p "$WORK"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fail() {
  echo "FAIL: $*"
  for f in "$WORK"/*.log; do echo "--- $f"; tail -20 "$f"; done
  exit 1
}
"$STRIDE" shard --quiet --format fashion-mnist --input /usr/share/datasets/fashion-mnist --output "$WORK/data" \
  --samples-per-shard 10000 > /dev/null
for model in resnet20 plain20; do
  "$STRIDE" train --model $model --data-path "$WORK/data" --batch-size 64 --epochs 1 --max-steps 40 --threads 2 \
    --workers 1 --print-freq 1000 --status-port -1 --output-dir "$WORK/$model" > "$WORK/train-$model.log" 2>&1 ||
    fail "training $model"
done

# Lesion: both models, 500 test images, k = 1 and 3 with two draws each.
"$STRIDE" analyze lesion "$WORK/resnet20" "$WORK/plain20" --model resnet20 plain20 --samples 500 --k 1 3 \
  --repeats 2 --threads 2 -o "$WORK/lesion" > "$WORK/lesion.out" 2> "$WORK/lesion.log" || fail "lesion"
grep -q "layer2.0 .*skipped: the block changes shape" "$WORK/lesion.out" || fail "lesion table: no skipped block"
grep -q "^resnet20 (.*): top-1 .* with every block" "$WORK/lesion.out" || fail "lesion table: no resnet20 line"

# Landscape: 1-D on 1 rank and on 2 ranks, 2-D on 2 ranks and on 1 rank.
common=(--samples 96 --threads 1 --grid 5 --range=-0.5:0.5 --seed 4)
"$STRIDE" analyze landscape "$WORK/resnet20" "$WORK/plain20" "${common[@]}" -o "$WORK/line1" \
  > "$WORK/line1.out" 2> "$WORK/line1.log" || fail "landscape 1-D, 1 rank"
mpirun --bind-to none --oversubscribe -np 2 "$STRIDE" analyze landscape "$WORK/resnet20" "$WORK/plain20" \
  "${common[@]}" -o "$WORK/line2" > "$WORK/line2.out" 2> "$WORK/line2.log" || fail "landscape 1-D, 2 ranks"
grep -q "rank 1: point 2/2 alpha" "$WORK/line2.log" || fail "landscape: no progress of rank 1"
mpirun --bind-to none --oversubscribe -np 2 "$STRIDE" analyze landscape "$WORK/resnet20" "${common[@]}" --dims 2 \
  -o "$WORK/surface2" > "$WORK/surface2.out" 2> "$WORK/surface2.log" || fail "landscape 2-D, 2 ranks"
"$STRIDE" analyze landscape "$WORK/resnet20" "${common[@]}" --dims 2 -o "$WORK/surface1" \
  > "$WORK/surface1.out" 2> "$WORK/surface1.log" || fail "landscape 2-D, 1 rank"

$PY - "$WORK" <<'PYEOF' || fail "outputs"
import json, math, sys
import xml.etree.ElementTree as ET
work = sys.argv[1]
NS = "{http://www.w3.org/2000/svg}"
def svg(name):
    return ET.parse(f"{work}/{name}.svg").getroot()  # raises when not well-formed

les = json.load(open(f"{work}/lesion.json"))
assert les["experiment"] == "lesion", les
res, plain = les["models"]
assert res["model"] == "resnet20" and plain["model"] == "plain20", (res["model"], plain["model"])
for m in (res, plain):
    assert m["test_samples"] == 500, m["test_samples"]
    assert len(m["blocks"]) == 9, m["blocks"]
    skipped = [b["block"] for b in m["blocks"] if "skipped" in b]
    assert skipped == ["layer2.0", "layer3.0"], skipped
    for b in m["blocks"]:
        if "skipped" not in b:
            assert abs(b["drop"] - (m["acc1"] - b["acc1"])) < 1e-9 and 0 <= b["acc1"] <= 100, b
    assert [r["k"] for r in m["random"]] == [1, 3], m["random"]
    assert all(len(r["acc1"]) == 2 and len(r["deleted"][0]) == r["k"] for r in m["random"]), m["random"]
assert res["acc1"] > 30, res["acc1"]  # trained, not chance
curves = svg("lesion").findall(f".//{NS}polyline")
assert len(curves) == 4, len(curves)  # two models x (one block deleted, k random blocks)

def grid(name):
    j = json.load(open(f"{work}/{name}.json"))
    return j, [[p["loss"] for p in m["points"]] for m in j["models"]]
l1, g1 = grid("line1")
l2, g2 = grid("line2")
assert l1["ranks"] == 1 and l2["ranks"] == 2, (l1["ranks"], l2["ranks"])
assert len(g1) == 2 and all(len(g) == 5 for g in g1), g1
for a, b in zip(g1, g2):
    for x, y in zip(a, b):
        assert math.isfinite(x) and abs(x - y) <= 1e-6 * max(1.0, abs(x)), (a, b)
for m in l1["models"]:
    mid = m["points"][2]
    assert mid["alpha"] == 0 and abs(mid["loss"] - m["centre"]["loss"]) < 1e-6, (mid, m["centre"])
    assert m["train_samples"] == 96, m["train_samples"]
assert len(svg("line1").findall(f".//{NS}polyline")) == 2
s1, h1 = grid("surface1")
s2, h2 = grid("surface2")
assert len(h1) == 1 and len(h1[0]) == 25 and len(h2[0]) == 25, (h1, h2)
assert all(abs(x - y) <= 1e-6 * max(1.0, abs(x)) for x, y in zip(h1[0], h2[0])), (h1, h2)
centre = [p for p in s2["models"][0]["points"] if p["alpha"] == 0 and p["beta"] == 0]
assert len(centre) == 1 and abs(centre[0]["loss"] - s2["models"][0]["centre"]["loss"]) < 1e-6, centre
cells = [r for r in svg("surface2").iter(f"{NS}rect") if r.get("class") == "cell"]
assert len(cells) == 25, len(cells)
print("lesion: resnet20 top-1 %.1f%%, plain20 %.1f%%; landscape 1 rank == 2 ranks" % (res["acc1"], plain["acc1"]))
PYEOF

# Bad input: one line naming the thing, exit code 2.
expect_error() {
  local pattern=$1
  shift
  set +e
  "$STRIDE" "$@" > "$WORK/bad.out" 2> "$WORK/bad.err"
  local rc=$?
  set -e
  [ $rc -eq 2 ] || fail "$* exited $rc, expected 2: $(cat "$WORK/bad.err")"
  grep -q "^stride: error: $pattern" "$WORK/bad.err" || fail "$*: expected '$pattern', got: $(cat "$WORK/bad.err")"
}
expect_error ".*resnet20/checkpoints/.* holds a resnet20 model, not the plain20 asked for" \
  analyze lesion "$WORK/resnet20" --model plain20
expect_error "--grid must be at least 1, got 0" analyze landscape "$WORK/resnet20" --grid 0
expect_error "$WORK/missing is neither a checkpoint nor a run directory" analyze lesion "$WORK/missing"
expect_error "$WORK/missing is neither a checkpoint nor a run directory" analyze landscape "$WORK/missing"
expect_error "--k 8: the model has 7 blocks that can be deleted" analyze lesion "$WORK/resnet20" --k 8 --samples 10
expect_error "--model: give one name per checkpoint" analyze lesion "$WORK/resnet20" "$WORK/plain20" --model plain20
echo "PASS"
