#!/usr/bin/env bash
# System test: what people read of a job (Note [Progress lines] in trainer/run_output.h).
#   - under a bare mpirun writing to a file, ranks print plain progress lines (no carriage returns or escapes);
#   - `stride launch` into a file: plain lines without mpirun's [1,R]<stdout> tags, other ranks' lines after
#     "[rank R]", the raw tagged lines in RUN/logs/ranks.log; on a terminal (script(1) gives it one): one live
#     progress line for the job;
#   - `stride status --watch` shows the final state when the job ends and exits with its outcome, and
#     `stride status --run-dir` on a finished run reads it from the run directory; durations are readable.
#   output_test.sh STRIDE_BINARY WORK_DIR
set -euo pipefail
STRIDE=$1
WORK=$2
PY=/usr/bin/python3
HERE=$(cd "$(dirname "$0")/.." && pwd)
rm -rf "$WORK" && mkdir -p "$WORK"
cleanup() { pkill -9 -f "$WORK/" 2>/dev/null || true; }
trap cleanup EXIT
fail() { echo "FAIL: $*"; exit 1; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1

$PY "$HERE/python/make_webdataset.py" /usr/share/datasets/fashion-mnist "$WORK/raw" --train 1024 --test 256
"$STRIDE" shard --quiet --format fashion-mnist --input "$WORK/raw/idx" --output "$WORK/data" > /dev/null
flags=(--model resnet20 --data-path "$WORK/data" --epochs 1 --batch-size 16 --threads 1 --workers 1 --print-freq 4
       --heartbeat-interval 0.25)
no_escapes() { ! grep -q $'\r\|\033' "$1"; }

# 1. A bare mpirun into a file: plain lines.
mpirun -np 2 --bind-to none "$STRIDE" train "${flags[@]}" --max-steps 24 --status-port -1 --output-dir "$WORK/bare" \
  > "$WORK/bare.log" 2>&1 || { cat "$WORK/bare.log"; fail "bare mpirun"; }
no_escapes "$WORK/bare.log" || fail "bare mpirun into a file printed carriage returns or escape codes"
[ "$(grep -c '^epoch 1/1 step [0-9]*/24 loss' "$WORK/bare.log")" = 6 ] || { cat "$WORK/bare.log"; fail "bare: progress lines"; }

# 2. stride launch into a file.
"$STRIDE" launch -n 2 -- "${flags[@]}" --max-steps 24 --status-port -1 --output-dir "$WORK/launched" > "$WORK/launch.log" 2>&1 ||
  { cat "$WORK/launch.log"; fail "launch"; }
no_escapes "$WORK/launch.log" || fail "launch into a file printed carriage returns or escape codes"
! grep -q '<stdout>\|<stderr>\|@progress' "$WORK/launch.log" || fail "launch output carries mpirun tags or markers"
[ "$(grep -c '^epoch 1/1 step [0-9]*/24 loss' "$WORK/launch.log")" = 6 ] || { cat "$WORK/launch.log"; fail "launch: progress"; }
grep -q '^launch: finished' "$WORK/launch.log" || fail "launch: no verdict"
grep -q '^\[1,0\]<stdout>:@progress epoch 1/1 step 24/24' "$WORK/launched/logs/ranks.log" ||
  fail "RUN/logs/ranks.log misses the job's lines"

# 3. stride launch on a terminal: progress lines rewrite one live line.
script -qfec "'$STRIDE' launch -n 2 -- ${flags[*]} --max-steps 24 --status-port -1 --output-dir '$WORK/tty'" "$WORK/tty.raw" \
  > /dev/null 2>&1 || { cat "$WORK/tty.raw"; fail "launch on a terminal"; }
$PY - "$WORK/tty.raw" <<'PYEOF' || fail "launch on a terminal: no single live progress line"
import sys
raw = open(sys.argv[1], "rb").read().decode(errors="replace")
live = raw.count("\r\x1b[Kepoch 1/1 step ")
lines = [l for l in raw.replace("\r\n", "\n").split("\n") if "epoch 1/1 step" in l]
# Six updates of one line: every update starts with CR + erase, and they share a line until something else prints.
assert live == 6, f"{live} live updates"
assert len(lines) <= 2, f"progress spread over {len(lines)} lines"
PYEOF

# 4. stride status --watch follows the job to its end, then shows the final state from the run directory.
"$STRIDE" train "${flags[@]}" --max-steps 60 --status-port 0 --output-dir "$WORK/watched" > "$WORK/watched.log" 2>&1 &
job=$!
for _ in $(seq 1 200); do [ -f "$WORK/watched/coordinator.json" ] && break; sleep 0.05; done
set +e
timeout 120 "$STRIDE" status --run-dir "$WORK/watched" --watch 0.3 > "$WORK/watch.out" 2>&1
rc=$?
set -e
wait $job || fail "the watched job failed"
[ $rc = 0 ] || { tail -30 "$WORK/watch.out"; fail "status --watch exited $rc at the job's end"; }
# It ends either on the endpoint's last answer (state finished) or, when the endpoint closed between two polls, on
# RUN/status.json ("job ended (final state from ...)"): either way its last summary says finished.
grep '^job watched  state ' "$WORK/watch.out" | tail -1 | grep -q '^job watched  state finished ' ||
  { tail -30 "$WORK/watch.out"; fail "no final state"; }
! grep -q "e-0[0-9]s" "$WORK/watch.out" || fail "raw exponents in the rank table"
"$STRIDE" status --run-dir "$WORK/watched" > "$WORK/after.out" 2>&1 || { cat "$WORK/after.out"; fail "status after the end"; }
grep -q "finished" "$WORK/after.out" && grep -q "step 60/60" "$WORK/after.out" || { cat "$WORK/after.out"; fail "final state"; }
echo "PASS: plain lines in files, one live line on a terminal, status follows a job to its final state"
