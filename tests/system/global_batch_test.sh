#!/usr/bin/env bash
# --global-batch across a change of world size (ctest label `system`): a LARS run with --global-batch 64 and
# --batch-size 32 goes 2 ranks (32 x 2, no accumulation) to step 6, then 1 rank (32 x 1 x 2 accumulation steps)
# to step 12, resumed without --allow-config-change. Every optimizer step consumed exactly the samples of an
# uninterrupted 2-rank run's step (--trace-samples), and 3 ranks, which cannot share 64 evenly, are refused with
# exit code 2 naming the flag.
#   global_batch_test.sh STRIDE_BINARY WORK_DIR
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
flags=(--model resnet20 --data-path "$WORK/data" --epochs 1 --seed 3 --threads 1 --workers 1 --print-freq 6
       --checkpoint-every 6 --status-port -1 --trace-samples --opt lars --lars-eta 0.02 --lr-scheduler poly
       --global-batch 64 --batch-size 32)
mpi=(mpirun --bind-to none --oversubscribe)
"${mpi[@]}" -np 2 "$STRIDE" train "${flags[@]}" --max-steps 12 --output-dir "$WORK/ref" > "$WORK/ref.log" 2>&1 ||
  fail "reference"
"${mpi[@]}" -np 2 "$STRIDE" train "${flags[@]}" --max-steps 6 --output-dir "$WORK/run" > "$WORK/a.log" 2>&1 ||
  fail "2 ranks to step 6"
grep -q "batch: --global-batch 64 = 32 per rank x 2 rank(s) x 1 accumulation step(s)" "$WORK/a.log" ||
  fail "2 ranks: no batch line"
mv "$WORK/run/samples" "$WORK/samples-2ranks"
"$STRIDE" train "${flags[@]}" --max-steps 12 --output-dir "$WORK/run" --resume auto > "$WORK/b.log" 2>&1 ||
  fail "1 rank to step 12"
grep -q "resume: .*step-00000006" "$WORK/b.log" || fail "1-rank run did not resume from step 6"
grep -q "^batch: --global-batch 64 = 32 per rank x 1 rank(s) x 2 accumulation step(s)" "$WORK/b.log" ||
  fail "1 rank: no batch line"
grep -q "global batch 64" "$WORK/b.log" || fail "1 rank: global batch not 64"
/usr/bin/python3 - "$WORK/ref/samples" "$WORK/samples-2ranks" "$WORK/run/samples" <<'PYEOF' || fail "samples differ"
import collections, glob, sys
def steps(d, micro_per_step):
    # Trace lines are "epoch loader-step ids...": a loader step is one micro-batch over all ranks.
    by = collections.defaultdict(list)
    for f in glob.glob(d + "/rank-*.txt"):
        for line in open(f):
            e, s, *ids = map(int, line.split())
            by[(e, s // micro_per_step)].extend(ids)
    return {k: sorted(v) for k, v in by.items()}
ref = steps(sys.argv[1], 1)
run = steps(sys.argv[2], 1)
run.update(steps(sys.argv[3], 2))
assert sorted(ref) == sorted(run), f"steps differ: {sorted(set(ref) ^ set(run))[:5]}"
bad = [k for k in ref if ref[k] != run[k]]
assert not bad, f"{len(bad)} optimizer steps consumed other samples, first {bad[0]}"
assert all(len(v) == 64 for v in run.values()), "an optimizer step did not take 64 samples"
print(f"{len(ref)} optimizer steps of 64 samples: 2 ranks x 32, then 1 rank x 32 x 2 accumulation, as uninterrupted")
PYEOF
set +e
"${mpi[@]}" -np 3 "$STRIDE" train "${flags[@]}" --max-steps 1 --output-dir "$WORK/three" > "$WORK/three.log" 2>&1
code=$?
set -e
[ "$code" -ne 0 ] || fail "3 ranks with --global-batch 64 were accepted"
grep -q "global-batch 64 is not a multiple of the 3 ranks" "$WORK/three.log" || fail "3 ranks: no clear error"
echo "ok"
