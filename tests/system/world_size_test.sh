#!/usr/bin/env bash
# Resume with a different world size keeps the global sample order (ctest label `system`): a 2-rank run
# (32 per rank) stops at step 20, continues on 1 rank (64 per rank, the same global batch) to step 40, then on 2
# ranks again to step 60. Every step consumed exactly the samples an uninterrupted 2-rank run consumed at that
# step (--trace-samples records each rank's sample ids).
#   world_size_test.sh STRIDE_BINARY WORK_DIR
set -euo pipefail
STRIDE=$1
WORK=$2
rm -rf "$WORK" && mkdir -p "$WORK"
trap 'pkill -9 -f "$WORK/" 2>/dev/null || true' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fail() {
  echo "FAIL: $*"
  for f in "$WORK"/*.log; do echo "--- $f"; tail -20 "$f"; done
  exit 1
}
"$STRIDE" shard --quiet --format fashion-mnist --input /usr/share/datasets/fashion-mnist --output "$WORK/data" \
  --samples-per-shard 5000 > /dev/null
flags=(--model resnet20 --data-path "$WORK/data" --epochs 1 --seed 9 --threads 1 --workers 1 --print-freq 10
       --checkpoint-every 20 --status-port -1 --trace-samples)
mpi=(mpirun --bind-to none --oversubscribe)
"${mpi[@]}" -np 2 "$STRIDE" train "${flags[@]}" --batch-size 32 --max-steps 60 --output-dir "$WORK/ref" \
  > "$WORK/ref.log" 2>&1 || fail "reference"
"${mpi[@]}" -np 2 "$STRIDE" train "${flags[@]}" --batch-size 32 --max-steps 20 --output-dir "$WORK/run" \
  > "$WORK/a.log" 2>&1 || fail "2 ranks to step 20"
"$STRIDE" train "${flags[@]}" --batch-size 64 --max-steps 40 --output-dir "$WORK/run" --resume auto \
  > "$WORK/b.log" 2>&1 || fail "1 rank to step 40"
"${mpi[@]}" -np 2 "$STRIDE" train "${flags[@]}" --batch-size 32 --max-steps 60 --output-dir "$WORK/run" --resume auto \
  > "$WORK/c.log" 2>&1 || fail "2 ranks to step 60"
grep -q "resume: .*step-00000020" "$WORK/b.log" || fail "1-rank run did not resume from step 20"
grep -q "resume: .*step-00000040" "$WORK/c.log" || fail "2-rank run did not resume from step 40"
/usr/bin/python3 - "$WORK/ref/samples" "$WORK/run/samples" <<'PYEOF' || fail "sample order differs"
import collections, glob, sys
def steps(d):
    by = collections.defaultdict(list)
    for f in glob.glob(d + "/rank-*.txt"):
        for line in open(f):
            e, s, *ids = map(int, line.split())
            by[(e, s)].extend(ids)
    return {k: sorted(v) for k, v in by.items()}
ref, run = steps(sys.argv[1]), steps(sys.argv[2])
assert sorted(ref) == sorted(run), f"steps differ: {sorted(set(ref) ^ set(run))[:5]}"
bad = [k for k in ref if ref[k] != run[k]]
assert not bad, f"{len(bad)} steps consumed other samples, first {bad[0]}"
n = sum(len(v) for v in run.values())
assert n == len(set(i for v in run.values() for i in v)), "a sample was consumed twice"
print(f"{len(ref)} steps, {n} samples: 2 -> 1 -> 2 ranks consumed exactly the uninterrupted run's samples per step")
PYEOF
# Evaluation of the final checkpoint, plain and with test-time flip averaging, both over the whole test set.
for tta in "" --eval-hflip; do
  "$STRIDE" train --model resnet20 --data-path "$WORK/data" --threads 1 --workers 1 --status-port -1 --test-only \
    --resume "$WORK/run/checkpoints/step-00000060" --output-dir "$WORK/eval" $tta > "$WORK/eval$tta.log" 2>&1 ||
    fail "--test-only $tta"
  grep -q "^test: acc1 [0-9.]*% .*(10000 images)" "$WORK/eval$tta.log" || fail "no evaluation result ($tta)"
  grep "^test: " "$WORK/eval$tta.log"
done
echo "ok"
