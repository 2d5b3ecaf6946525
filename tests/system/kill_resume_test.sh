#!/usr/bin/env bash
# System test: a training run killed with SIGKILL mid-run and resumed with --resume auto ends with weights
# bitwise identical to an uninterrupted run with the same seed (CPU, same thread count).
#   kill_resume_test.sh STRIDE_BINARY WORK_DIR [EXTRA TRAIN FLAGS...]
# With EXPECT_COMPUTE_DTYPE set (e.g. bfloat16 for the `--amp` variant), the final checkpoint's MANIFEST must
# record that compute dtype, so the variant cannot pass by silently training in float32.
set -euo pipefail
STRIDE=$1
WORK=$2
shift 2
EXTRA=("$@")
rm -rf "$WORK" && mkdir -p "$WORK"
trap 'pkill -9 -f "$WORK/" 2>/dev/null || true' EXIT

"$STRIDE" shard --quiet --format fashion-mnist --input /usr/share/datasets/fashion-mnist --output "$WORK/data" \
  --samples-per-shard 5000 > /dev/null

common=(--model resnet20 --data-path "$WORK/data" --batch-size 32 --epochs 1 --max-steps 36 --checkpoint-every 6
        --lr 0.1 --lr-warmup-epochs 0.01 --label-smoothing 0.1 --drop-path 0.1 --model-ema --seed 7
        --threads 1 --workers 1 --print-freq 1000 "${EXTRA[@]}")

echo "== uninterrupted run"
"$STRIDE" train "${common[@]}" --output-dir "$WORK/full" > "$WORK/full.log" 2>&1

echo "== run killed with SIGKILL after its second checkpoint"
"$STRIDE" train "${common[@]}" --output-dir "$WORK/killed" > "$WORK/killed.log" 2>&1 &
pid=$!
for _ in $(seq 1 600); do
  [ -f "$WORK/killed/checkpoints/step-00000012/MANIFEST" ] && break
  kill -0 "$pid" 2>/dev/null || { echo "FAIL: the run ended before it could be killed"; cat "$WORK/killed.log"; exit 1; }
  sleep 0.05
done
kill -9 "$pid"
wait "$pid" 2>/dev/null || true
last=$(ls "$WORK/killed/checkpoints" | grep '^step-' | sort | tail -1)
echo "killed; newest checkpoint directory: $last"
[ "$last" != "step-00000036" ] || { echo "FAIL: the run finished before the kill"; exit 1; }

echo "== resumed"
"$STRIDE" train "${common[@]}" --output-dir "$WORK/killed" --resume auto > "$WORK/resumed.log" 2>&1
grep -q "^resume: " "$WORK/resumed.log" || { echo "FAIL: did not resume"; cat "$WORK/resumed.log"; exit 1; }
grep "^resume: " "$WORK/resumed.log"

"$STRIDE" ckpt verify "$WORK/killed" > /dev/null
for f in model.safetensors ema.safetensors optimizer.safetensors; do
  if ! cmp "$WORK/full/checkpoints/step-00000036/$f" "$WORK/killed/checkpoints/step-00000036/$f"; then
    echo "FAIL: $f differs between the uninterrupted and the killed+resumed run"
    exit 1
  fi
done
if [ -n "${EXPECT_COMPUTE_DTYPE:-}" ]; then
  for run in full killed; do
    dtype=$("$STRIDE" ckpt list --json "$WORK/$run" |
      /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["precision"]["compute_dtype"])')
    [ "$dtype" = "$EXPECT_COMPUTE_DTYPE" ] ||
      { echo "FAIL: $run trained in $dtype, not $EXPECT_COMPUTE_DTYPE"; exit 1; }
  done
  echo "both runs computed in $EXPECT_COMPUTE_DTYPE"
fi
echo "PASS: final model, EMA and optimizer state are bitwise identical"
