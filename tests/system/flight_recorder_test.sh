#!/usr/bin/env bash
# The collective flight recorder and the hang verdict with real ranks (ctest label `system`):
# 3 MPI ranks (rank 0 hosts the coordinator); the test hook STRIDE_TEST_SKIP_ALLREDUCE=2:3:1 makes rank 2 never
# issue bucket 1's all-reduce of step 3, so ranks 0-1 wait in it for good. Checked:
# - the coordinator's verdict names rank 2, the collective's sequence number and its origin ("bucket 1 of step 3")
#   within --hang-report-after + 5 s of the hook firing, in the log, /status (`hang`) and `stride status`;
# - the job still ends (the collective times out: exit code 75) instead of hanging;
# - every rank dumped its ring (RUN/trace/rank-R.json) and `stride trace` merges them into valid JSON and a
#   Chrome trace with one track per rank, in which ranks 0-1 hold the collective open and rank 2 never entered it;
# - bad --flight-recorder / --hang-report-after values and a run directory without dumps are refused by name.
#   flight_recorder_test.sh STRIDE_BINARY WORK_DIR MPIRUN [MPIRUN FLAGS...]
set -euo pipefail
STRIDE=$1
WORK=$2
shift 2
MPIRUN=("$@")
PY=/usr/bin/python3
REPORT_AFTER=3
rm -rf "$WORK" && mkdir -p "$WORK"
cleanup() { pkill -9 -f "$WORK/" 2>/dev/null || true; }
trap cleanup EXIT
fail() {
  echo "FAIL: $*"
  for f in "$WORK"/*.log; do [ -f "$f" ] && { echo "--- $f"; tail -40 "$f"; }; done
  exit 1
}

# Bad input first: refused before anything starts, naming the flag.
for bad in "--flight-recorder -1" "--hang-report-after 0" "--hang-report-after nan"; do
  rc=0
  # shellcheck disable=SC2086
  "$STRIDE" train --model resnet20 --data-path "$WORK/none" --output-dir "$WORK/bad" $bad > "$WORK/bad.out" 2>&1 || rc=$?
  [ "$rc" == 2 ] || fail "'$bad' exited $rc, not 2"
  grep -q -- "${bad%% *}" "$WORK/bad.out" || fail "'$bad': the error does not name the flag: $(cat "$WORK/bad.out")"
done
rc=0
"$STRIDE" trace "$WORK/bad" > "$WORK/bad.out" 2>&1 || rc=$?
[ "$rc" == 2 ] && grep -q "no flight recorder dumps" "$WORK/bad.out" || fail "stride trace without dumps: rc $rc"

"$STRIDE" shard --quiet --format fashion-mnist --input /usr/share/datasets/fashion-mnist --output "$WORK/data" \
  --samples-per-shard 5000 > /dev/null
run=$WORK/run
STRIDE_TEST_SKIP_ALLREDUCE=2:3:1 setsid "${MPIRUN[@]}" -np 3 "$STRIDE" train --model resnet20 --data-path "$WORK/data" \
  --epochs 1 --batch-size 16 --lr 0.1 --seed 5 --threads 1 --workers 1 --print-freq 1 --status-port 0 \
  --heartbeat-interval 0.25 --hang-report-after $REPORT_AFTER --comm-timeout 25 --output-dir "$run" \
  > "$WORK/run.log" 2>&1 &
job=$!

# The moment the hook fires, then the verdict; both seen by polling the log.
t_hook=""
for _ in $(seq 1 2400); do
  grep -q "test hook STRIDE_TEST_SKIP_ALLREDUCE" "$WORK/run.log" && { t_hook=$(date +%s.%N); break; }
  kill -0 "$job" 2>/dev/null || fail "the job ended before the hook fired"
  sleep 0.05
done
[ -n "$t_hook" ] || fail "the hook never fired"
# (A slow start can give an earlier, true verdict about a setup collective: the one about the hook is awaited.)
verdict="coordinator: error: hang: .* allreduce #[0-9]+, bucket 1 of step 3"
t_verdict=""
for _ in $(seq 1 600); do
  grep -Eq "$verdict" "$WORK/run.log" && { t_verdict=$(date +%s.%N); break; }
  sleep 0.05
done
[ -n "$t_verdict" ] || fail "no hang verdict about bucket 1 of step 3 within 30 s of the hook"
line=$(grep -E -m1 "$verdict" "$WORK/run.log")
echo "$line"
$PY -c "import sys; d=$t_verdict-$t_hook; print(f'verdict {d:.1f} s after the hook'); sys.exit(0 if d <= $REPORT_AFTER + 5 else 1)" ||
  fail "the verdict took longer than --hang-report-after + 5 s"
echo "$line" | grep -Eq "hang: rank 2 on $(hostname) \(its last: allreduce #[0-9]+, .*\) never entered allreduce #[0-9]+, bucket 1 of step 3; ranks 0-1 wait there for [0-9.]+ s" ||
  fail "the verdict does not name rank 2, the collective and its origin"
seq=$(echo "$line" | sed -E 's/.*never entered allreduce #([0-9]+).*/\1/')

# /status and `stride status` while the job is still up.
"$STRIDE" status --run-dir "$run" --json > "$WORK/status.json" || fail "stride status --json"
$PY - "$WORK/status.json" "$seq" <<'EOF' || fail "/status has no matching hang object"
import json, sys
s = json.load(open(sys.argv[1]))
h = s["hang"]
assert h["missing_ranks"] == [2], h
assert h["waiting_ranks"] == [0, 1], h
assert h["seq"] == int(sys.argv[2]), h
assert h["origin"] == "bucket 1 of step 3", h
EOF
"$STRIDE" status --run-dir "$run" > "$WORK/status.txt" || fail "stride status"
grep -q "^HANG: rank 2 on" "$WORK/status.txt" || fail "stride status does not show the verdict"

# The job ends by itself: the waiting ranks' collective times out (--comm-timeout), no one waits forever.
timeout 120 tail --pid="$job" -f /dev/null || fail "the job did not end within 120 s of the verdict"
rc=0
wait "$job" || rc=$?
[ "$rc" != 0 ] || fail "the hung job exited 0"
echo "job ended with exit code $rc"

for r in 0 1 2; do [ -s "$run/trace/rank-$r.json" ] || fail "rank $r wrote no flight recorder dump"; done
"$STRIDE" trace "$run" --out "$WORK/trace.json" || fail "stride trace"
"$STRIDE" trace "$run" --format json > "$WORK/merged.json" || fail "stride trace --format json"
$PY - "$WORK/trace.json" "$WORK/merged.json" "$seq" <<'EOF' || fail "the trace is not what it should be"
import json, sys
trace = json.load(open(sys.argv[1]))
merged = json.load(open(sys.argv[2]))
seq = int(sys.argv[3])
events = trace["traceEvents"]
tracks = {e["pid"] for e in events if e["ph"] == "X"}
assert tracks == {0, 1, 2}, tracks
names = {e["pid"]: e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "process_name"}
assert sorted(names) == [0, 1, 2] and names[2].startswith("rank 2"), names
want = f"allreduce #{seq}"
held = {e["pid"]: e["args"]["state"] for e in events if e["ph"] == "X" and e["name"] == want and e["cat"] == "async"}
assert held.get(0) in ("open", "failed") and held.get(1) in ("open", "failed"), held
assert 2 not in held, held
assert [r["rank"] for r in merged["ranks"]] == [0, 1, 2]
print(f"trace: {len(events)} events on 3 tracks; ranks 0-1 hold {want}, rank 2 never entered it")
EOF
echo "ok: rank 2 named within --hang-report-after + 5 s, job ended ($rc), trace merged"
