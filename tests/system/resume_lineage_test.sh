#!/usr/bin/env bash
# System test: what a run reports and where it resumes.
#   - a --max-steps run evaluates at its real end, and a score is credited only to the step that produced it;
#   - resuming an older checkpoint explicitly starts a branch that --resume auto and `ckpt export RUN` then
#     follow (not the abandoned branch's newer checkpoints), and garbage collection keeps that branch;
#   - resuming with settings that change the result is refused (exit 2, nothing written) unless
#     --allow-config-change; operational changes only get a note; every start keeps its config.<N>.toml.
#   resume_lineage_test.sh STRIDE_BINARY WORK_DIR
set -euo pipefail
STRIDE=$1
WORK=$2
PY=/usr/bin/python3
HERE=$(cd "$(dirname "$0")/.." && pwd)
rm -rf "$WORK" && mkdir -p "$WORK"
source "$(dirname "$0")/lib.sh"

bounded 300 "$WORK/prep.log" $PY "$HERE/python/make_webdataset.py" /usr/share/datasets/fashion-mnist "$WORK/raw" \
  --train 2048 --test 512 || { cat "$WORK/prep.log"; fail "make_webdataset.py"; }
bounded 180 "$WORK/shard.log" "$STRIDE" shard --quiet --format fashion-mnist --input "$WORK/raw/idx" \
  --output "$WORK/data" || { cat "$WORK/shard.log"; fail "stride shard"; }
RUN=$WORK/run
common=(--model resnet20 --data-path "$WORK/data" --batch-size 32 --epochs 4 --threads 1 --workers 1
        --print-freq 5 --status-port -1 --output-dir "$RUN" --keep-checkpoints 3)
ckpt_metrics() {  # STEP -> "acc1=..." or "" from the checkpoint's MANIFEST (ckpt list --json)
  timeout 60 "$STRIDE" ckpt list "$RUN" --json | $PY -c "import json,sys
for c in json.load(sys.stdin):
    if c['step'] == $1: print(c.get('metrics', {}).get('acc1', ''))"
}

# 1. A --max-steps run evaluates where it stops; mid-epoch checkpoints before it carry no score.
bounded 180 "$WORK/a.log" "$STRIDE" train "${common[@]}" --max-steps 30 --checkpoint-every 10 || { cat "$WORK/a.log"; fail "run a"; }
grep -q "^eval at step 30 (epoch 0.47): acc1" "$WORK/a.log" || { cat "$WORK/a.log"; fail "no evaluation at the --max-steps end"; }
grep -q "^done: 30 steps in .*, test acc1 " "$WORK/a.log" || { cat "$WORK/a.log"; fail "done line of run a"; }
[ -n "$(ckpt_metrics 30)" ] || fail "step 30 has no score"
[ -z "$(ckpt_metrics 20)" ] || fail "step 20 credited with a score it did not produce"
$PY -c "import json,sys
train = [json.loads(l) for l in open(sys.argv[1]) if '\"type\":\"train\"' in l]
sys.exit(not train or any(r['epoch'] != 1 for r in train))" "$RUN/metrics.jsonl" || fail "train records do not count epochs from 1"

# 2. An explicit resume from step 10 starts a branch; its score is its own.
bounded 180 "$WORK/b.log" "$STRIDE" train "${common[@]}" --max-steps 15 --resume "$RUN/checkpoints/step-00000010" ||
  { cat "$WORK/b.log"; fail "run b"; }
grep -q "holds newer checkpoints (up to step 30) of another branch" "$WORK/b.log" || { cat "$WORK/b.log"; fail "no branch warning"; }
grep -q "^done: 5 steps (10 -> 15) in .*, test acc1 " "$WORK/b.log" || { cat "$WORK/b.log"; fail "done line of run b"; }
b_acc=$(sed -n 's/.*test acc1 \([0-9.]*\)%.*/\1/p' "$WORK/b.log")
[ -n "$(ckpt_metrics 15)" ] || fail "step 15 has no score"
[ "$(cat "$RUN/checkpoints/LATEST")" = "step-00000015" ] || fail "LATEST is not step 15"
[ -d "$RUN/checkpoints/step-00000030" ] || fail "the other branch's step 30 was removed before being passed"

# 3. --resume auto follows the branch (step 15, not the newer step 30), and so does ckpt export.
bounded 180 "$WORK/c.log" "$STRIDE" train "${common[@]}" --max-steps 17 --resume auto || { cat "$WORK/c.log"; fail "run c"; }
grep -q "^resume: $RUN/checkpoints/step-00000015 " "$WORK/c.log" || { cat "$WORK/c.log"; fail "auto did not follow the branch"; }
timeout 60 "$STRIDE" ckpt export "$RUN" -o "$WORK/w.safetensors" | grep -q "(step 17)" || fail "ckpt export did not take step 17"

# 4. Settings that change the result are refused before anything is written; operational ones are noted.
before=$(ls "$RUN" | sort)
set +e
bounded 180 "$WORK/d.log" "$STRIDE" train "${common[@]}" --max-steps 20 --resume auto --lr 0.2 --nesterov
rc=$?
set -e
[ $rc = 2 ] || { cat "$WORK/d.log"; fail "changed lr: exit $rc, expected 2"; }
grep -q "settings that change the result: .*lr 0.1 -> 0.2.*nesterov false -> true.*--allow-config-change" "$WORK/d.log" ||
  { cat "$WORK/d.log"; fail "the refusal does not name lr and nesterov"; }
[ "$(ls "$RUN" | sort)" = "$before" ] || fail "the refused start wrote into the run directory"
bounded 180 "$WORK/e.log" "$STRIDE" train "${common[@]}" --max-steps 20 --resume auto --eval-freq 2 || { cat "$WORK/e.log"; fail "run e"; }
grep -q "settings changed since the checkpoint: eval-freq 1 -> 2" "$WORK/e.log" || { cat "$WORK/e.log"; fail "no note"; }
bounded 180 "$WORK/f.log" "$STRIDE" train "${common[@]}" --max-steps 22 --resume auto --lr 0.2 --allow-config-change ||
  { cat "$WORK/f.log"; fail "run f"; }
grep -q "warning: resuming with settings that change the result (--allow-config-change): lr 0.1 -> 0.2" "$WORK/f.log" ||
  { cat "$WORK/f.log"; fail "no warning under --allow-config-change"; }
for n in 1 2 3 4 5; do [ -f "$RUN/config.$n.toml" ] || fail "config.$n.toml missing"; done
[ ! -f "$RUN/config.6.toml" ] || fail "the refused start left a config.6.toml"
grep -q "^lr = 0.2" "$RUN/config.5.toml" && grep -q "^lr = 0.1" "$RUN/config.1.toml" || fail "start configs not kept"

# 5. Garbage collection keeps the committing branch: once the branch passes step 30, the other branch is gone.
bounded 180 "$WORK/g.log" "$STRIDE" train "${common[@]}" --max-steps 35 --resume auto --lr 0.2 --checkpoint-every 10 ||
  { cat "$WORK/g.log"; fail "run g"; }
steps=$(ls "$RUN/checkpoints" | grep '^step-' | tr '\n' ' ')
[ "$steps" = "step-00000022 step-00000030 step-00000035 " ] || fail "checkpoints after GC: $steps"
echo "PASS: evaluation at the real end, scores credited to their step ($b_acc% at 15), lineage followed, config changes checked"
