#!/usr/bin/env bash
# Data-parallel training with real Open MPI ranks (ctest label `mpi`):
#  1. `mpirun -np 2 stride train` shards the dataset on first use (once, both ranks wanting it), runs, logs once
#     (rank 0), checkpoints with world_size 2;
#  2. the same run killed (mpirun and its ranks, SIGKILL) after a checkpoint and resumed with --resume auto ends
#     with model and optimizer state bitwise identical to the uninterrupted run;
#  3. the 2-rank checkpoint resumes on 1 rank with the same global batch (64 per rank instead of 32);
#  4. a misspelt STRIDE_SHM_WAIT, or a malformed STRIDE_SHM_STAGING_KB, stops a 2-rank job with a clear error;
#  5. `stride bench step --interleave default,mpi` with shared memory turned off fails before the model is built.
#   train_mpi_test.sh STRIDE_BINARY WORK_DIR MPIRUN [MPIRUN FLAGS...]
set -euo pipefail
STRIDE=$1
WORK=$2
shift 2
MPIRUN=("$@")
rm -rf "$WORK" && mkdir -p "$WORK"
trap 'pkill -9 -f "$WORK/" 2>/dev/null || true' EXIT

# No shards yet: the first run's two ranks make them on first use, one rank while the other waits.
common=(--model resnet20 --dataset fashion-mnist --data-path "$WORK/data" --epochs 1 --checkpoint-every 10 --lr 0.1
        --lr-warmup-epochs 0.01 --label-smoothing 0.1 --seed 3 --threads 1 --workers 1 --print-freq 10)

echo "== 2 ranks, uninterrupted"
"${MPIRUN[@]}" -np 2 "$STRIDE" train "${common[@]}" --max-steps 30 --batch-size 32 --output-dir "$WORK/full" > "$WORK/full.log" 2>&1 ||
  { echo "FAIL: 2-rank run"; cat "$WORK/full.log"; exit 1; }
[[ $(grep -c "^stride: sharding fashion-mnist" "$WORK/full.log") == 1 ]] || { echo "FAIL: not sharded once"; cat "$WORK/full.log"; exit 1; }
grep -q "2 ranks over mpi" "$WORK/full.log" || { echo "FAIL: not 2 MPI ranks"; cat "$WORK/full.log"; exit 1; }
[[ $(grep -c '^train: ' "$WORK/full.log") == 1 ]] || { echo "FAIL: more than one rank logged"; exit 1; }
# Logged loss and training error are real numbers summed over both ranks.
/usr/bin/python3 - "$WORK/full/metrics.jsonl" <<'PYEOF' || { echo "FAIL: bad training metrics"; exit 1; }
import json, sys
train = [json.loads(l) for l in open(sys.argv[1]) if '"type":"train"' in l]
assert len(train) == 3, train
for r in train:
    assert 0.1 < r["loss"] < 5 and 0 < r["train_err"] < 100, r
print("metrics ok:", [round(r["loss"], 3) for r in train])
PYEOF
world=$("$STRIDE" ckpt list --json "$WORK/full" | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["world_size"])')
[[ $world == 2 ]] || { echo "FAIL: checkpoint world_size $world"; exit 1; }
"$STRIDE" ckpt verify "$WORK/full" > /dev/null

echo "== 2 ranks, killed with SIGKILL after the step-10 checkpoint, then resumed"
setsid "${MPIRUN[@]}" -np 2 "$STRIDE" train "${common[@]}" --max-steps 30 --batch-size 32 --output-dir "$WORK/killed" \
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
"${MPIRUN[@]}" -np 2 "$STRIDE" train "${common[@]}" --max-steps 30 --batch-size 32 --output-dir "$WORK/killed" --resume auto \
  > "$WORK/resumed.log" 2>&1 || { echo "FAIL: resume"; cat "$WORK/resumed.log"; exit 1; }
grep "^resume: " "$WORK/resumed.log"
for f in model.safetensors optimizer.safetensors; do
  cmp "$WORK/full/checkpoints/step-00000030/$f" "$WORK/killed/checkpoints/step-00000030/$f" ||
    { echo "FAIL: $f differs between the uninterrupted and the killed+resumed 2-rank run"; exit 1; }
done

echo "== the 2-rank checkpoint continues on 1 rank (same global batch)"
"$STRIDE" train "${common[@]}" --max-steps 40 --batch-size 64 --output-dir "$WORK/full" --resume auto \
  > "$WORK/one.log" 2>&1 || { echo "FAIL: 1-rank resume"; cat "$WORK/one.log"; exit 1; }
grep -q "^resume: .*step 30" "$WORK/one.log" || { echo "FAIL: did not resume at step 30"; cat "$WORK/one.log"; exit 1; }
[ -f "$WORK/full/checkpoints/step-00000040/MANIFEST" ] || { echo "FAIL: no step-40 checkpoint"; exit 1; }
echo "== a misspelt STRIDE_SHM_WAIT stops the job with a clear error (exit code 2), before any training"
rc=0
STRIDE_SHM_WAIT=spinn "${MPIRUN[@]}" -np 2 -x STRIDE_SHM_WAIT "$STRIDE" train "${common[@]}" --max-steps 5 \
  --batch-size 32 --output-dir "$WORK/badenv" > "$WORK/badenv.log" 2>&1 || rc=$?
[[ $rc != 0 ]] || { echo "FAIL: the job ran with STRIDE_SHM_WAIT=spinn"; exit 1; }
grep -q "STRIDE_SHM_WAIT must be auto, spin or sleep, not 'spinn'" "$WORK/badenv.log" ||
  { echo "FAIL: no clear error for STRIDE_SHM_WAIT"; cat "$WORK/badenv.log"; exit 1; }
[ ! -d "$WORK/badenv/checkpoints" ] || { echo "FAIL: the job trained"; exit 1; }
echo "== a malformed STRIDE_SHM_STAGING_KB stops the job naming it (it used to turn shared memory off silently)"
rc=0
STRIDE_SHM_STAGING_KB=abc "${MPIRUN[@]}" -np 2 -x STRIDE_SHM_STAGING_KB "$STRIDE" train "${common[@]}" --max-steps 5 \
  --batch-size 32 --output-dir "$WORK/badkb" > "$WORK/badkb.log" 2>&1 || rc=$?
[[ $rc != 0 ]] || { echo "FAIL: the job ran with STRIDE_SHM_STAGING_KB=abc"; exit 1; }
grep -q "STRIDE_SHM_STAGING_KB must be a whole number from 1 to 1048576, not 'abc'" "$WORK/badkb.log" ||
  { echo "FAIL: no clear error for STRIDE_SHM_STAGING_KB"; cat "$WORK/badkb.log"; exit 1; }
[ ! -d "$WORK/badkb/checkpoints" ] || { echo "FAIL: the job trained"; exit 1; }

echo "== --interleave ...,mpi without shared memory is a usage error (exit code 2) before the model is built"
rc=0
# An unknown model name: had the model been built first, the error would be about that.
STRIDE_SHM=0 "${MPIRUN[@]}" -np 2 -x STRIDE_SHM "$STRIDE" bench step --model no-such-model --batch-size 8 \
  --image-size 28 --in-channels 1 --num-classes 10 --threads 1 --steps 1 --rounds 1 --interleave default,mpi \
  > "$WORK/noshm.log" 2>&1 || rc=$?
[[ $rc == 2 ]] || { echo "FAIL: exit code $rc, not 2"; cat "$WORK/noshm.log"; exit 1; }
grep -q "collectives do not use shared memory here" "$WORK/noshm.log" ||
  { echo "FAIL: no clear error for --interleave mpi without shared memory"; cat "$WORK/noshm.log"; exit 1; }
! grep -qi "no-such-model" "$WORK/noshm.log" || { echo "FAIL: the model was built before the check"; exit 1; }
echo "PASS: 2-rank training, bitwise kill/resume, 2 -> 1 rank resume, bad STRIDE_SHM_WAIT, --interleave mpi without shm"
