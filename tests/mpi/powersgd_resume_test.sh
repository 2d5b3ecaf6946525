#!/usr/bin/env bash
# PowerSGD across real Open MPI ranks (ctest label `mpi`), with its state in checkpoints:
#  1. `mpirun -np 2 stride train --grad-compression powersgd` trains, and every checkpoint holds each rank's
#     PowerSGD state (powersgd-rank-0/1.safetensors: error feedback and Q);
#  2. the same run killed (SIGKILL) after a checkpoint taken while compressing and resumed with --resume auto ends
#     bitwise identical (model, optimizer and PowerSGD state) to the uninterrupted run; without the state restored
#     the residuals and Q would start afresh and the weights would differ;
#  3. resuming with another --powersgd-rank is refused naming the key; a checkpoint written without PowerSGD
#     resumes with it (--allow-config-change), the state starting afresh;
#  4. --powersgd-rank 0 stops before training with an error naming the flag.
#   powersgd_resume_test.sh STRIDE_BINARY WORK_DIR MPIRUN [MPIRUN FLAGS...]
set -euo pipefail
STRIDE=$1
WORK=$2
shift 2
MPIRUN=("$@")
rm -rf "$WORK" && mkdir -p "$WORK"
trap 'pkill -9 -f "$WORK/" 2>/dev/null || true' EXIT

common=(--model resnet20 --dataset fashion-mnist --data-path "$WORK/data" --epochs 1 --checkpoint-every 10 --lr 0.1
        --seed 3 --threads 1 --workers 1 --print-freq 10 --batch-size 32)
psgd=(--grad-compression powersgd --powersgd-rank 2 --powersgd-warmup-steps 3)

echo "== 2 ranks with PowerSGD, uninterrupted"
"${MPIRUN[@]}" -np 2 "$STRIDE" train "${common[@]}" "${psgd[@]}" --max-steps 30 --output-dir "$WORK/full" \
  > "$WORK/full.log" 2>&1 || { echo "FAIL: 2-rank PowerSGD run"; cat "$WORK/full.log"; exit 1; }
for r in 0 1; do
  [ -f "$WORK/full/checkpoints/step-00000010/powersgd-rank-$r.safetensors" ] ||
    { echo "FAIL: no PowerSGD state of rank $r in the checkpoint"; ls "$WORK/full/checkpoints/step-00000010"; exit 1; }
done
"$STRIDE" ckpt verify "$WORK/full" > /dev/null
# The ranks' error feedback differs (each keeps what its own gradient lost).
! cmp -s "$WORK/full/checkpoints/step-00000030/powersgd-rank-0.safetensors" \
  "$WORK/full/checkpoints/step-00000030/powersgd-rank-1.safetensors" ||
  { echo "FAIL: both ranks saved the same PowerSGD state"; exit 1; }

echo "== killed with SIGKILL after the step-10 checkpoint, then resumed"
setsid "${MPIRUN[@]}" -np 2 "$STRIDE" train "${common[@]}" "${psgd[@]}" --max-steps 30 --output-dir "$WORK/killed" \
  > "$WORK/killed.log" 2>&1 &
pid=$!
for _ in $(seq 1 1200); do
  [ -f "$WORK/killed/checkpoints/step-00000010/MANIFEST" ] && break
  kill -0 "$pid" 2>/dev/null || { echo "FAIL: the run ended before it could be killed"; cat "$WORK/killed.log"; exit 1; }
  sleep 0.05
done
kill -9 -- "-$pid" 2>/dev/null || kill -9 "$pid"
wait "$pid" 2>/dev/null || true
pkill -9 -f "$WORK/killed" 2>/dev/null || true
last=$(ls "$WORK/killed/checkpoints" | grep '^step-' | sort | tail -1)
echo "killed; newest checkpoint: $last"
[ "$last" != "step-00000030" ] || { echo "FAIL: the run finished before the kill"; exit 1; }
"${MPIRUN[@]}" -np 2 "$STRIDE" train "${common[@]}" "${psgd[@]}" --max-steps 30 --output-dir "$WORK/killed" \
  --resume auto > "$WORK/resumed.log" 2>&1 || { echo "FAIL: resume"; cat "$WORK/resumed.log"; exit 1; }
grep "^resume: " "$WORK/resumed.log"
! grep -q "PowerSGD.*starts afresh" "$WORK/resumed.log" || { echo "FAIL: the state was not restored"; exit 1; }
for f in model.safetensors optimizer.safetensors powersgd-rank-0.safetensors powersgd-rank-1.safetensors; do
  cmp "$WORK/full/checkpoints/step-00000030/$f" "$WORK/killed/checkpoints/step-00000030/$f" ||
    { echo "FAIL: $f differs between the uninterrupted and the killed+resumed PowerSGD run"; exit 1; }
done

echo "== another --powersgd-rank on resume is refused, naming the key"
rc=0
"${MPIRUN[@]}" -np 2 "$STRIDE" train "${common[@]}" --grad-compression powersgd --powersgd-rank 4 \
  --powersgd-warmup-steps 3 --max-steps 40 --output-dir "$WORK/full" --resume auto > "$WORK/rank4.log" 2>&1 || rc=$?
[[ $rc != 0 ]] || { echo "FAIL: resumed with another --powersgd-rank"; exit 1; }
grep -q "powersgd-rank 2 -> 4" "$WORK/rank4.log" || { echo "FAIL: no clear error"; cat "$WORK/rank4.log"; exit 1; }

echo "== a checkpoint written without PowerSGD resumes with it"
"${MPIRUN[@]}" -np 2 "$STRIDE" train "${common[@]}" --max-steps 10 --output-dir "$WORK/plain" > "$WORK/plain.log" 2>&1 ||
  { echo "FAIL: plain run"; cat "$WORK/plain.log"; exit 1; }
"${MPIRUN[@]}" -np 2 "$STRIDE" train "${common[@]}" "${psgd[@]}" --max-steps 15 --output-dir "$WORK/plain" \
  --resume auto --allow-config-change > "$WORK/plain2.log" 2>&1 || { echo "FAIL: resume"; cat "$WORK/plain2.log"; exit 1; }
grep -q "holds no PowerSGD state" "$WORK/plain2.log" || { echo "FAIL: no note"; cat "$WORK/plain2.log"; exit 1; }
[ -f "$WORK/plain/checkpoints/step-00000015/powersgd-rank-1.safetensors" ] || { echo "FAIL: no state saved"; exit 1; }

echo "== --powersgd-rank 0 is a usage error naming the flag"
rc=0
"$STRIDE" train "${common[@]}" --grad-compression powersgd --powersgd-rank 0 --max-steps 1 --output-dir "$WORK/bad" \
  > "$WORK/bad.log" 2>&1 || rc=$?
[[ $rc == 2 ]] || { echo "FAIL: exit code $rc, not 2"; cat "$WORK/bad.log"; exit 1; }
grep -q -- "--powersgd-rank must be positive" "$WORK/bad.log" || { echo "FAIL: no clear error"; cat "$WORK/bad.log"; exit 1; }
echo "PASS: PowerSGD training, bitwise kill/resume with its state, rank change refused, plain checkpoint resumes"
