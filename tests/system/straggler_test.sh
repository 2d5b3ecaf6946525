#!/usr/bin/env bash
# Straggler detection with real ranks (ctest label `system`): 2 MPI ranks train; the test hook
# STRIDE_TEST_SLOW_RANK makes rank 1 sleep inside the compute part of steps [SLOW_FROM, SLOW_TO). The
# coordinator's /status must list rank 1 (and only rank 1) under `stragglers`, with its host, within 30 s of the
# slowdown's start, and clear it after the slowdown stops while the job still runs; the log names rank, host and
# how much slower, and the recovery (Note [Straggler detection] in cluster/straggler_detector.h).
# The same run checks the per-bucket overlap timeline (Note [Overlap timeline] in comm/timeline.h): every rank's
# /status entry carries its last step's buckets, ordered ready <= launched <= started <= done, the step count moves,
# and `stride status --timeline` prints them from the final status.json.
#   straggler_test.sh STRIDE_BINARY WORK_DIR MPIRUN [MPIRUN FLAGS...]
set -euo pipefail
STRIDE=$1
WORK=$2
shift 2
MPIRUN=("$@")
PY=/usr/bin/python3
rm -rf "$WORK" && mkdir -p "$WORK"
cleanup() { pkill -9 -f "$WORK/" 2>/dev/null || true; }
trap cleanup EXIT
fail() {
  echo "FAIL: $*"
  for f in "$WORK"/*.log; do [ -f "$f" ] && { echo "--- $f"; tail -40 "$f"; }; done
  exit 1
}

"$STRIDE" shard --quiet --format fashion-mnist --input /usr/share/datasets/fashion-mnist --output "$WORK/data" \
  --samples-per-shard 5000 > /dev/null
SLOW_FROM=10 SLOW_TO=60 STEPS=140
# The injected 250 ms sleep makes rank 1 several times slower than rank 0 (~30 ms of compute per step). Threshold 1.0
# (twice as slow) keeps that signal while ignoring the noise of a 2-core machine shared by 2 ranks, the coordinator
# and this poller: CI once saw rank 0 at 40% over rank 1 for 4 heartbeats after the slowdown, a real but harmless
# wobble that the default 0.2 rightly reports and that this test must not count as a wrong flag.
run=$WORK/run
STRIDE_TEST_SLOW_RANK="1:250:$SLOW_FROM:$SLOW_TO" "${MPIRUN[@]}" -np 2 -x STRIDE_TEST_SLOW_RANK \
  "$STRIDE" train --model resnet20 --data-path "$WORK/data" --epochs 1 --lr 0.1 --seed 5 --threads 1 --workers 1 \
  --batch-size 16 --max-steps $STEPS --print-freq 10 --status-port 0 --heartbeat-interval 0.25 \
  --straggler-threshold 1.0 --straggler-window 4 --output-dir "$run" > "$WORK/run.log" 2>&1 &
job=$!

# Polls /status until the job ends: when the flag was raised and cleared (rank steps, seconds since the slowdown
# began) and whether any other rank was ever flagged.
$PY - "$run" "$SLOW_FROM" "$SLOW_TO" "$STEPS" > "$WORK/poll.json" 2> "$WORK/poll.log" <<'EOF' || fail "poller"
import json, os, sys, time, urllib.request
run, slow_from, slow_to, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
out = {"flagged_at_step": None, "flagged_after_s": None, "cleared_at_step": None, "wrong": [], "host": None,
       "slower_percent": None, "breakdown": None, "overlap_first": None, "overlap_last": None}
url, slow_started, deadline = None, None, time.time() + 400
while time.time() < deadline:
    if url is None:
        try:
            url = json.load(open(os.path.join(run, "coordinator.json")))["status_url"].rstrip("/") + "/status"
        except (OSError, ValueError, KeyError):
            time.sleep(0.2)
            continue
    try:
        st = json.load(urllib.request.urlopen(url, timeout=5))
    except Exception as e:  # the job ended (the coordinator lives in rank 0)
        if out["flagged_at_step"] is not None:
            break
        print("status:", e, file=sys.stderr)
        time.sleep(0.2)
        continue
    step1 = st["ranks"][1]["step"]
    if slow_started is None and step1 >= slow_from:
        slow_started = time.time()
    flagged = [s["rank"] for s in st["stragglers"]]
    out["wrong"] += [r for r in flagged if r != 1 and r not in out["wrong"]]
    if 1 in flagged and out["flagged_at_step"] is None:
        s = next(s for s in st["stragglers"] if s["rank"] == 1)
        out.update(flagged_at_step=step1, host=s["host"], slower_percent=s["slower_percent"],
                   flagged_after_s=time.time() - (slow_started or time.time()), rank_host=st["ranks"][1]["host"],
                   breakdown=st["ranks"][1]["breakdown"])
    if out["flagged_at_step"] is not None and 1 not in flagged and out["cleared_at_step"] is None:
        out["cleared_at_step"] = step1
    if all(r.get("overlap") for r in st["ranks"]):
        ov = [r["overlap"] for r in st["ranks"]]
        out["overlap_last"] = ov
        out["overlap_first"] = out["overlap_first"] or ov
    if st["state"] in ("finished", "failed"):
        break
    time.sleep(0.25)
print(json.dumps(out))
EOF
wait $job || fail "the job failed"
cat "$WORK/poll.json"
$PY - "$WORK/poll.json" "$SLOW_FROM" "$SLOW_TO" "$STEPS" <<'EOF' || fail "status checks"
import json, sys
p = json.load(open(sys.argv[1]))
slow_from, slow_to, steps = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
assert p["flagged_at_step"] is not None, "rank 1 was never flagged"
assert slow_from <= p["flagged_at_step"] <= slow_to, p
assert p["flagged_after_s"] <= 30, f"flagged {p['flagged_after_s']:.1f} s after the slowdown began"
assert p["host"] and p["host"] == p["rank_host"], p
assert p["slower_percent"] > 100, p
assert p["breakdown"]["compute_s"] > 0.2, p  # the 250 ms sleep is compute
assert not p["wrong"], f"ranks wrongly flagged: {p['wrong']}"
assert p["cleared_at_step"] is not None, "the flag never cleared while the job ran"
assert slow_to <= p["cleared_at_step"] < steps, p
first, last = p["overlap_first"], p["overlap_last"]
assert first and last, "no rank ever reported an overlap timeline"
for rank, o in enumerate(last):
    assert o["step"] > first[rank]["step"], ("the timeline did not move", first[rank], o)
    assert o["buckets"], o
    assert 0.0 <= o["hidden_fraction"] <= 1.0, o
    for b in o["buckets"]:
        assert b["communicated"] and b["bytes"] > 0 and b["parameters"] > 0, b
        assert 0 <= b["ready_s"] <= b["launched_s"] <= b["started_s"] <= b["done_s"], b
        assert b["ready_s"] <= o["backward_s"], (b, o["backward_s"])
    # The same model and bucket layout on both ranks.
    assert [b["bytes"] for b in o["buckets"]] == [b["bytes"] for b in last[0]["buckets"]], last
EOF
grep -q "coordinator: warning: straggler: rank 1 on .* computes [0-9]*% slower than its peers" "$WORK/run.log" ||
  fail "no straggler line in the log"
grep -q "coordinator: straggler recovered: rank 1 on " "$WORK/run.log" || fail "no recovery line in the log"
! grep -q "straggler: rank 0" "$WORK/run.log" || fail "rank 0 was flagged"
"$STRIDE" status --run-dir "$run" --timeline > "$WORK/timeline.txt" || fail "stride status --timeline"
grep -q "^overlap of rank 1's step" "$WORK/timeline.txt" || fail "no timeline for rank 1: $(cat "$WORK/timeline.txt")"
grep -qE "^  0 +[0-9]+ +[0-9]+ " "$WORK/timeline.txt" || fail "no bucket rows: $(cat "$WORK/timeline.txt")"
echo "PASS: rank 1 flagged at step $($PY -c "import json; print(json.load(open('$WORK/poll.json'))['flagged_at_step'])") and cleared"
