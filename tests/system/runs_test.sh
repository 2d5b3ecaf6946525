#!/usr/bin/env bash
# System test: `stride runs`, `stride runs --compare` and `stride plot` on real run directories: two short
# Fashion-MNIST runs with different settings, one of them stopped early by --max-steps and evaluated, and a run
# whose process died (a coordinator.json naming a dead pid).
#   runs_test.sh STRIDE_BINARY WORK_DIR
set -euo pipefail
STRIDE=$1
WORK=$2
PY=/usr/bin/python3
rm -rf "$WORK" && mkdir -p "$WORK/runs"
"$STRIDE" shard --quiet --format fashion-mnist --input /usr/share/datasets/fashion-mnist --output "$WORK/data" \
  --samples-per-shard 10000 > /dev/null
common=(--model resnet20 --data-path "$WORK/data" --batch-size 32 --epochs 1 --threads 2 --workers 1 --print-freq 5)
"$STRIDE" train "${common[@]}" --max-steps 30 --lr 0.1 --output-dir "$WORK/runs/a" > "$WORK/a.log" 2>&1
"$STRIDE" train "${common[@]}" --max-steps 20 --lr 0.05 --nesterov --output-dir "$WORK/runs/b" > "$WORK/b.log" 2>&1
mkdir -p "$WORK/runs/dead" && cp "$WORK/runs/b/config.toml" "$WORK/runs/dead/"
sleep 0 & dead_pid=$!; wait "$dead_pid"
printf '{"pid": %d, "host": "%s", "status_url": "http://127.0.0.1:1/"}\n' "$dead_pid" "$(hostname)" \
  > "$WORK/runs/dead/coordinator.json"

"$STRIDE" runs "$WORK/runs" > "$WORK/runs.txt"
cat "$WORK/runs.txt"
"$STRIDE" runs "$WORK/runs" --json > "$WORK/runs.json"
"$STRIDE" runs --compare "$WORK/runs/a" "$WORK/runs/b" --json > "$WORK/compare.json"
"$STRIDE" runs --compare "$WORK/runs/a" "$WORK/runs/b" > "$WORK/compare.txt"
"$STRIDE" plot "$WORK/runs/a" "$WORK/runs/b" -o "$WORK/curves.svg" > /dev/null

$PY - "$WORK" <<'PYEOF'
import json, os, sys
import xml.etree.ElementTree as ET
work = sys.argv[1]
runs = {os.path.basename(r["dir"]): r for r in json.load(open(f"{work}/runs.json"))}
assert set(runs) == {"a", "b", "dead"}, runs.keys()
a, b, dead = runs["a"], runs["b"], runs["dead"]
# Against the runs' own files: metrics.jsonl's eval records and the checkpoint directories.
def evals(run):
    return [json.loads(l) for l in open(f"{work}/runs/{run}/metrics.jsonl") if '"eval"' in l]
for name, r, steps in (("a", a, 30), ("b", b, 20)):
    acc = [e["acc1"] for e in evals(name)]
    assert acc, name
    assert r["state"] == "finished" and r["step"] == steps and r["model"] == "resnet20", r
    assert r["last_acc1"] == acc[-1] and r["best_acc1"] == max(acc), (r, acc)
    assert r["checkpoint_step"] == steps and os.path.isdir(f"{work}/runs/{name}/checkpoints/step-{steps:08d}"), r
    assert r["wall_seconds"] > 0, r
assert dead["state"] == "interrupted" and dead["step"] == 0 and dead["checkpoint_step"] is None, dead
cmp = json.load(open(f"{work}/compare.json"))
keys = {c["key"]: c for c in cmp["config"]}
assert {"lr", "nesterov", "max-steps"} <= set(keys), keys
assert keys["lr"]["a"] == "0.1" and keys["lr"]["b"] == "0.05", keys["lr"]
assert "output-dir" not in keys and "model" not in keys, keys
assert cmp["metrics"]["eval.acc1"] == {"a": a["last_acc1"], "b": b["last_acc1"]}, cmp["metrics"]["eval.acc1"]
svg = ET.parse(f"{work}/curves.svg").getroot()
curves = [e for e in svg.iter() if e.get("class") == "curve"]
# loss, accuracy and throughput for both runs; a's loss curve has one point per train record.
assert len(curves) == 6, len(curves)
train_a = [l for l in open(f"{work}/runs/a/metrics.jsonl") if '"type":"train"' in l]
assert len(curves[0].get("points").split()) == len(train_a), (curves[0].get("points"), len(train_a))
print("PASS: runs, compare and plot agree with the runs' own files")
PYEOF
grep -Eq "^a +finished +resnet20 +30/" "$WORK/runs.txt" || { echo "FAIL: runs table"; exit 1; }
grep -Eq "^ +lr +0.1 -> 0.05" "$WORK/compare.txt" || { echo "FAIL: compare table"; cat "$WORK/compare.txt"; exit 1; }

set +e
"$STRIDE" runs "$WORK/nowhere" > /dev/null 2> "$WORK/err.txt"; rc1=$?
"$STRIDE" plot "$WORK/data" -o "$WORK/x.svg" > /dev/null 2>> "$WORK/err.txt"; rc2=$?
"$STRIDE" runs --compare "$WORK/runs/a" "$WORK/data" > /dev/null 2>> "$WORK/err.txt"; rc3=$?
set -e
[ "$rc1$rc2$rc3" = "222" ] || { echo "FAIL: exit codes $rc1 $rc2 $rc3"; cat "$WORK/err.txt"; exit 1; }
grep -q "$WORK/nowhere: no such folder" "$WORK/err.txt" && grep -q "$WORK/data: no metrics.jsonl in it" "$WORK/err.txt" &&
  grep -q "$WORK/data has no config.toml" "$WORK/err.txt" || { echo "FAIL: errors"; cat "$WORK/err.txt"; exit 1; }
echo "PASS"
