#!/usr/bin/env bash
# --bucket-cap-mb auto across real Open MPI ranks (ctest label `mpi`; Note [Bucket cap tuning] in
# comm/bucket_tuner.h). resnet56's gradients (3.4 MB) make two distinct layouts among the candidates (1 MiB buckets,
# or the 1 MiB first bucket and one more), so with --bucket-tune-steps 2 the tuning takes steps 1-8
# (3 warm-up + 2 timed at 1 MiB, 1 settling + 2 timed at 64 MiB) and is decided at step 8:
#  1. rank 0 logs one line with both candidates' medians and the choice, and metrics.jsonl records it;
#  2. the run ends bitwise identical to a fixed --bucket-cap-mb 25 run (model from rank 0, optimizer state from
#     rank 1): the trial steps are ordinary training steps, and both ranks ended on the same weights;
#  3. killed after tuning and resumed, the run reuses the checkpoint's choice without tuning again and still ends
#     bitwise identical;
#  4. killed during tuning and resumed, it tunes again from there (and still ends identical: at 2 ranks the bucket
#     layout never changes the sums); a run that ends during tuning says so;
#  5. --bucket-cap-mb autox stops before training with an error naming the flag.
#   bucket_auto_test.sh STRIDE_BINARY WORK_DIR MPIRUN [MPIRUN FLAGS...]
set -euo pipefail
STRIDE=$1
WORK=$2
shift 2
# As `stride launch` does (launcher/launch.cpp): Open MPI 4.x's mpirun can see a rank's exit before its finalize
# and call a clean run "exiting improperly".
MPIRUN=("$@" --mca orte_allowed_exit_without_sync 1)
rm -rf "$WORK" && mkdir -p "$WORK"
trap 'pkill -9 -f "$WORK/" 2>/dev/null || true' EXIT

common=(--model resnet56 --dataset fashion-mnist --data-path "$WORK/data" --epochs 1 --lr 0.1
        --seed 3 --threads 1 --workers 1 --print-freq 10 --batch-size 16 --checkpoint-every 5)
auto=(--bucket-cap-mb auto --bucket-tune-steps 2)
decision='^bucket cap auto: 1 MiB [0-9.]+ ms, 64 MiB [0-9.]+ ms per step -> (1|64) MiB$'

train() {  # train NAME LOG [flags...]
  local name=$1 log=$2
  shift 2
  "${MPIRUN[@]}" -np 2 "$STRIDE" train "${common[@]}" --output-dir "$WORK/$name" "$@" > "$WORK/$log.log" 2>&1 ||
    { echo "FAIL: run $log"; cat "$WORK/$log.log"; exit 1; }
}
same_as_fixed() {  # same_as_fixed NAME
  for f in model.safetensors optimizer.safetensors; do
    cmp "$WORK/fixed/checkpoints/step-00000020/$f" "$WORK/$1/checkpoints/step-00000020/$f" ||
      { echo "FAIL: $1: $f differs from the fixed 25 MiB run"; exit 1; }
  done
}

echo "== fixed 25 MiB and auto, uninterrupted"
train fixed fixed --bucket-cap-mb 25 --max-steps 20
! grep -q "bucket cap auto" "$WORK/fixed.log" || { echo "FAIL: a fixed cap tuned"; exit 1; }
train auto auto "${auto[@]}" --max-steps 20
grep "^bucket cap auto" "$WORK/auto.log"
grep -q "^bucket cap auto: timing 1 and 64 MiB (3 other candidates give the same buckets) over steps 1-8" \
  "$WORK/auto.log" || { echo "FAIL: no tuning plan"; cat "$WORK/auto.log"; exit 1; }
[[ $(grep -cE "$decision" "$WORK/auto.log") == 1 ]] || { echo "FAIL: not one decision line"; cat "$WORK/auto.log"; exit 1; }
chosen=$(grep -E "$decision" "$WORK/auto.log" | sed -E 's/.*-> ([0-9]+) MiB$/\1/')
/usr/bin/python3 - "$WORK/auto/metrics.jsonl" "$chosen" <<'PYEOF' || { echo "FAIL: bad bucket_cap record"; exit 1; }
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1]) if '"type":"bucket_cap"' in l]
assert len(recs) == 1, recs
r = recs[0]
assert r["step"] == 8 and r["source"] == "tuned", r
assert r["candidates_mb"] == [1, 64] and len(r["median_ms"]) == 2 and all(m > 0 for m in r["median_ms"]), r
assert r["cap_mb"] == float(sys.argv[2]), (r, sys.argv[2])
print("bucket_cap record ok:", r)
PYEOF
same_as_fixed auto

# Killed (SIGKILL) after the step-N checkpoint, with rank 0 held 0.3 s per step from step N on (STRIDE_TEST_SLOW_RANK
# only sleeps: the arithmetic is untouched) so the kill lands before the next checkpoint.
killed_after() {  # killed_after NAME STEP
  local name=$1 n
  n=$(printf '%08d' "$2")
  STRIDE_TEST_SLOW_RANK="0:300:$2:20" setsid "${MPIRUN[@]}" -np 2 "$STRIDE" train "${common[@]}" "${auto[@]}" \
    --max-steps 20 --output-dir "$WORK/$name" > "$WORK/${name}_a.log" 2>&1 &
  local pid=$!
  for _ in $(seq 1 1200); do
    [ -f "$WORK/$name/checkpoints/step-$n/MANIFEST" ] && break
    kill -0 "$pid" 2>/dev/null || { echo "FAIL: $name ended before it could be killed"; cat "$WORK/${name}_a.log"; exit 1; }
    sleep 0.05
  done
  kill -9 -- "-$pid" 2>/dev/null || kill -9 "$pid"
  wait "$pid" 2>/dev/null || true
  pkill -9 -f "$WORK/$name" 2>/dev/null || true
  local last
  last=$(ls "$WORK/$name/checkpoints" | grep '^step-' | sort | tail -1)
  [ "$last" == "step-$n" ] || { echo "FAIL: $name: newest checkpoint $last, not step-$n"; exit 1; }
}

echo "== killed after the step-10 checkpoint (tuning ended at step 8), resumed: the checkpoint's choice"
killed_after after 10
after_chosen=$(grep -E "$decision" "$WORK/after_a.log" | sed -E 's/.*-> ([0-9]+) MiB$/\1/')
[ -n "$after_chosen" ] || { echo "FAIL: no decision before step 10"; cat "$WORK/after_a.log"; exit 1; }
train after after_b "${auto[@]}" --max-steps 20 --resume auto
grep -q "^bucket cap auto: $after_chosen MiB as decided at step 8 (from the checkpoint; not tuned again)$" \
  "$WORK/after_b.log" || { echo "FAIL: the choice was not reused"; cat "$WORK/after_b.log"; exit 1; }
! grep -qE "bucket cap auto: timing|$decision" "$WORK/after_b.log" || { echo "FAIL: tuned again"; exit 1; }
grep -q '"source":"checkpoint"' "$WORK/after/metrics.jsonl" || { echo "FAIL: no checkpoint record"; exit 1; }
same_as_fixed after

echo "== killed after the step-5 checkpoint (during tuning), resumed: tunes again from step 6"
killed_after during 5
train during during_b "${auto[@]}" --max-steps 20 --resume auto
grep -q "^bucket cap auto: timing 1 and 64 MiB .* over steps 6-13" "$WORK/during_b.log" ||
  { echo "FAIL: did not tune again from step 6"; cat "$WORK/during_b.log"; exit 1; }
grep -qE "$decision" "$WORK/during_b.log" || { echo "FAIL: no decision"; cat "$WORK/during_b.log"; exit 1; }
same_as_fixed during

echo "== stopped by --max-steps during tuning: says so"
train short short "${auto[@]}" --max-steps 4
grep -q "^bucket cap auto: the run ended during tuning (steps 1-8): nothing decided; a resumed run tunes again" \
  "$WORK/short.log" || { echo "FAIL: no note of the unfinished tuning"; cat "$WORK/short.log"; exit 1; }

echo "== --bucket-cap-mb autox is a usage error naming the flag"
rc=0
"$STRIDE" train "${common[@]}" --bucket-cap-mb autox --max-steps 20 --output-dir "$WORK/bad" > "$WORK/bad.log" 2>&1 || rc=$?
[[ $rc == 2 ]] || { echo "FAIL: exit code $rc, not 2"; cat "$WORK/bad.log"; exit 1; }
grep -q -- "--bucket-cap-mb must be positive (a size in MiB) or auto, got 'autox'" "$WORK/bad.log" ||
  { echo "FAIL: no clear error"; cat "$WORK/bad.log"; exit 1; }
echo "PASS: bucket cap auto decided once on rank 0 (chose $chosen MiB), bitwise equal to a fixed cap, reused on resume"
