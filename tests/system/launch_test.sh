#!/usr/bin/env bash
# `stride launch` supervising real Open MPI ranks (ctest label `system`), one scenario per call:
#   chaos          kill -9 a random rank at random moments (checkpoint writes slowed so some kills land inside
#                  them) three times, then SIGSTOP a rank (a hang): the launcher restarts every rank from the
#                  last commit each time; the job finishes, every committed checkpoint verifies, the final weights
#                  and optimizer state are bitwise identical to an uninterrupted run, and no process is left.
#   launcher_kill  kill -9 the launcher itself: its ranks exit on their own within the heartbeat timeout, and a
#                  new `stride launch ... --resume auto` finishes the job, again bitwise identical.
#   window         --max-restarts 1 --restart-window 2s: two kill -9s more than 2 s apart are each the only
#                  failure in the window, so the job restarts twice and finishes (a lifetime count of 1 would
#                  give up); each restart logs its reason, count and back-off, and where the recovery's seconds
#                  went, also in the final status's events.
#   snapshot       --snapshot-every 3: kill -9 a rank after a snapshot newer than the last commit, and the job
#                  resumes from memory (not the commit); remove one rank's snapshots and kill again, and it resumes
#                  from the commit, saying why; the end is bitwise identical and the snapshots are gone.
#   stop           SIGTERM to the launcher: every rank checkpoints and stops, the launcher exits 0, and
#                  --resume auto continues from that checkpoint to the identical end.
#   launch_test.sh STRIDE_BINARY WORK_DIR SCENARIO
set -euo pipefail
STRIDE=$1
WORK=$2
SCENARIO=$3
PY=/usr/bin/python3
rm -rf "$WORK" && mkdir -p "$WORK"
cleanup() {
  pkill -CONT -f "$WORK/" 2>/dev/null || true
  pkill -9 -f "$WORK/" 2>/dev/null || true
}
trap cleanup EXIT
fail() {
  echo "FAIL: $*"
  for f in "$WORK"/*.log; do [ -f "$f" ] && { echo "--- $f"; grep -v "step [0-9]*/[0-9]* loss" "$f" | tail -40; }; done
  exit 1
}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1

"$STRIDE" shard --quiet --format fashion-mnist --input /usr/share/datasets/fashion-mnist --output "$WORK/data" \
  --samples-per-shard 5000 > /dev/null
STEPS=120
flags=(--model resnet20 --data-path "$WORK/data" --epochs 1 --batch-size 32 --lr 0.1 --lr-warmup-epochs 0.01
       --seed 11 --threads 1 --workers 1 --print-freq 10 --checkpoint-every 10 --max-steps $STEPS
       --heartbeat-interval 0.25 --heartbeat-timeout 3)

echo "== reference: uninterrupted 2-rank run"
mpirun -np 2 --bind-to none "$STRIDE" train "${flags[@]}" --status-port -1 --output-dir "$WORK/ref" \
  > "$WORK/ref.log" 2>&1 || fail "reference run"

status_field() {  # status_field RUN_DIR PYTHON_EXPR(s)
  "$STRIDE" status --run-dir "$1" --json 2>/dev/null | $PY -c "import json,sys; s=json.load(sys.stdin); print($2)" 2>/dev/null
}
# Waits until both ranks of the current start have joined and rank 0 is past step $2; prints rank pids.
wait_running() {
  for _ in $(seq 1 1200); do
    r=$(status_field "$1" "' '.join(str(x['pid']) for x in s['ranks']) if all(x['joined'] and x['alive'] for x in s['ranks']) and s['ranks'][0]['step'] >= $2 else ''" || true)
    [ -n "$r" ] && { echo "$r"; return 0; }
    sleep 0.05
  done
  return 1
}
same_as_reference() {
  local last
  last=$(printf "step-%08d" $STEPS)
  for f in model.safetensors optimizer.safetensors; do
    cmp "$WORK/ref/checkpoints/$last/$f" "$1/checkpoints/$last/$f" ||
      fail "$f at step $STEPS differs from the uninterrupted run"
  done
  "$STRIDE" ckpt verify "$1" > "$WORK/verify.log" 2>&1 || fail "a committed checkpoint does not verify"
}
no_orphans() {
  for _ in $(seq 1 100); do
    pgrep -f "$STRIDE train.*$1" > /dev/null || return 0
    sleep 0.1
  done
  ps aux | grep "stride train" | grep -v grep
  fail "ranks of $1 outlived the job"
}

case $SCENARIO in
chaos)
  run=$WORK/chaos
  STRIDE_FAULT_CHECKPOINT_DELAY_S=0.15 "$STRIDE" launch -n 2 --max-restarts 8 --restart-backoff 0.2 \
    --status-port 0 -- "${flags[@]}" --output-dir "$run" > "$WORK/launch.log" 2>&1 &
  launcher=$!
  kills=0
  for round in 1 2 3 4; do
    pids=$(wait_running "$run" $((round * 12))) || fail "round $round: the job is not running"
    sleep "0.$((RANDOM % 9 + 1))"
    victim=$(echo "$pids" | tr ' ' '\n' | shuf -n 1)
    if [ "$round" -lt 4 ]; then
      kill -9 "$victim" 2>/dev/null && kills=$((kills + 1))
      echo "round $round: kill -9 rank pid $victim"
    else
      kill -STOP "$victim"
      echo "round $round: SIGSTOP rank pid $victim (a hang)"
    fi
    # Wait for the launcher to notice and restart (or for the end).
    for _ in $(seq 1 600); do
      [ "$(grep -c '^launch: start ' "$WORK/launch.log")" -gt "$round" ] && break
      kill -0 "$launcher" 2>/dev/null || break
      sleep 0.05
    done
  done
  rc=0
  timeout 300 tail --pid="$launcher" -f /dev/null || fail "the launcher did not finish"
  wait "$launcher" || rc=$?
  [ "$rc" == 0 ] || fail "launch exited $rc"
  grep "^launch: " "$WORK/launch.log" | grep -v "^launch: start" || true
  restarts=$(grep -c "restarting every rank" "$WORK/launch.log" || true)
  [ "$restarts" -ge 3 ] || fail "only $restarts restarts"
  grep -q "is dead: no heartbeat" "$WORK/launch.log" || fail "the hung rank was not declared dead"
  same_as_reference "$run"
  no_orphans "$run"
  echo "ok: $restarts restarts ($kills kills + 1 hang); final state bitwise identical to the uninterrupted run"
  ;;
window)
  run=$WORK/window
  "$STRIDE" launch -n 2 --max-restarts 1 --restart-window 2s --restart-backoff 0.2 --status-port 0 -- "${flags[@]}" \
    --output-dir "$run" > "$WORK/launch.log" 2>&1 &
  launcher=$!
  last_kill=0
  for round in 1 2; do
    pids=$(wait_running "$run" $((round * 25))) || fail "round $round: the job is not running"
    # More than the window since the last failure, whatever the machine's speed.
    while $PY -c "import sys, time; sys.exit(0 if time.time() - $last_kill < 2.5 else 1)"; do sleep 0.1; done
    victim=$(echo "$pids" | tr ' ' '\n' | shuf -n 1)
    kill -9 "$victim"
    last_kill=$(date +%s.%N)
    echo "round $round: kill -9 rank pid $victim"
    for _ in $(seq 1 600); do
      [ "$(grep -c '^launch: start ' "$WORK/launch.log")" -gt "$round" ] && break
      kill -0 "$launcher" 2>/dev/null || break
      sleep 0.05
    done
  done
  rc=0
  timeout 300 tail --pid="$launcher" -f /dev/null || fail "the launcher did not finish"
  wait "$launcher" || rc=$?
  grep "^launch: " "$WORK/launch.log" | grep -v "^launch: start" || true
  [ "$rc" == 0 ] || fail "launch exited $rc: two failures 2 s apart should fit --max-restarts 1 --restart-window 2s"
  n=$(grep -c "restarting every rank .*failure 1 of at most 1 within 2s; back-off 0.2s" "$WORK/launch.log" || true)
  [ "$n" == 2 ] || fail "expected 2 restarts, each the only failure in the window, got $n"
  grep -q "^launch: rank [01] (\(pid [0-9]* \)\?on .*) was killed by signal 9" "$WORK/launch.log" ||
    fail "the restart reason does not name the killed rank and signal"
  grep -q "^launch: recovered from failure 2 in .*: detection .*, back-off .*, start to every rank joined .*, joined to first step" \
    "$WORK/launch.log" || fail "no recovery timing line"
  status_field "$run" "'\n'.join(e['message'] for e in s['events'])" > "$WORK/events.txt"
  grep -q "failure 1 of at most 1 within 2s" "$WORK/events.txt" || fail "stride status does not show the restart reason"
  grep -q "recovered from failure" "$WORK/events.txt" || fail "stride status does not show the recovery timing"
  same_as_reference "$run"
  no_orphans "$run"
  echo "ok: two failures 2 s apart restarted under --max-restarts 1 --restart-window 2s; the job ended identical"
  ;;
snapshot)
  # --snapshot-every 3 between checkpoints every 10: a kill after a snapshot newer than the last commit resumes
  # from memory; once a "host" lost its copies (its snapshot directory removed), from the disk commit.
  run=$WORK/snap
  shm=/dev/shm/stride-test-snapshots-$$
  trap 'cleanup; rm -rf "$shm"' EXIT
  "$STRIDE" launch -n 2 --max-restarts 4 --restart-backoff 0.2 --status-port 0 -- "${flags[@]}" --output-dir "$run" \
    --snapshot-every 3 --snapshot-dir "$shm" > "$WORK/launch.log" 2>&1 &
  launcher=$!
  # Succeeds when rank 0's newest snapshot is complete on both ranks, newer than the last commit, and at least 4
  # steps before the next commit (so no commit can land between the kill and the restart: a rank is at most 2 steps
  # past its newest snapshot, and a commit started before it is older than it).
  snapshot_ahead() {
    local newest step n latest
    latest=$(cat "$run/checkpoints/LATEST" 2>/dev/null || echo step-00000000)
    latest=$((10#${latest#step-}))
    newest=$(ls "$shm/rank-0/checkpoints" 2>/dev/null | grep '^step-' | sort | tail -n 1)
    [ -n "$newest" ] || return 1
    n=$((10#${newest#step-}))
    [ "$n" -gt "$latest" ] && [ $((n % 10)) -le 6 ] && [ -f "$shm/rank-0/checkpoints/$newest/MANIFEST" ] &&
      [ -f "$shm/rank-1/checkpoints/$newest/MANIFEST" ]
  }
  wait_start() {  # wait_start N: the launcher has started the job N times
    for _ in $(seq 1 600); do
      [ "$(grep -c '^launch: start ' "$WORK/launch.log")" -ge "$1" ] && return 0
      kill -0 "$launcher" 2>/dev/null || return 0
      sleep 0.05
    done
  }
  pids=$(wait_running "$run" 31) || fail "the job is not running"
  # The condition is checked once per try: asked again after it held, the ranks may already have written the next
  # snapshot (step 9 of 10) or commit, and it would not hold any more.
  until_ahead() {
    for _ in $(seq 1 3000); do snapshot_ahead && return 0; sleep 0.01; done
    return 1
  }
  until_ahead || fail "no snapshot newer than the last commit on both ranks"
  victim=$(echo "$pids" | tr ' ' '\n' | shuf -n 1)
  kill -9 "$victim"
  echo "round 1: kill -9 rank pid $victim after a snapshot newer than the last commit"
  wait_start 2
  pids=$(wait_running "$run" 61) || fail "the job is not running after the first restart"
  until_ahead || fail "no snapshot newer than the last commit on both ranks (round 2): $(ls -R "$shm"; cat "$run/checkpoints/LATEST")"
  victim=$(echo "$pids" | cut -d' ' -f2)
  kill -9 "$victim"
  rm -rf "$shm/rank-1"
  echo "round 2: kill -9 rank 1 (pid $victim) and remove its snapshots"
  rc=0
  timeout 300 tail --pid="$launcher" -f /dev/null || fail "the launcher did not finish"
  wait "$launcher" || rc=$?
  [ "$rc" == 0 ] || fail "launch exited $rc"
  grep "^resume: \|^launch: recovered" "$WORK/launch.log" || true
  # Round 1: from memory, past the last commit.
  first=$(grep "^resume: from memory: \|^resume: snapshots: " "$WORK/launch.log" | sed -n 1p)
  echo "$first" | grep -q "^resume: from memory: the snapshot of step [0-9]* is newer than the newest checkpoint" ||
    fail "the first restart did not resume from memory: $first"
  step=$(echo "$first" | sed 's/.*snapshot of step \([0-9]*\) .*/\1/')
  # The launcher's recovery lines say where each restart came from and how many steps it redid: from memory at
  # most the snapshot interval, from disk (rank 1's copies gone) what followed the commit.
  rec1=$(grep -m1 "^launch: recovered from failure 1 in " "$WORK/launch.log") || fail "no recovery line for failure 1"
  echo "$rec1" | grep -q "; resumed from a snapshot in memory (step $step), [0-3] step(s) redone$" || fail "recovery 1: $rec1"
  rec2=$(grep -m1 "^launch: recovered from failure 2 in " "$WORK/launch.log") || fail "no recovery line for failure 2"
  echo "$rec2" | grep -q "; resumed from the checkpoint of step [0-9]*0, [0-9]* step(s) redone$" || fail "recovery 2: $rec2"
  # The same two recoveries, structured, in the final /status (RUN/status.json) and in `stride status`.
  /usr/bin/python3 - "$run/status.json" "$step" <<'PYEOF' || fail "the recoveries in status.json"
import json, sys
rec = json.load(open(sys.argv[1]))["recoveries"]
assert [r["source"] for r in rec] == ["memory", "disk"], rec
assert rec[0]["start_step"] == int(sys.argv[2]) and rec[0]["steps_redone"] <= 3, rec[0]
for r in rec:
    assert r["recovery_seconds"] > 0 and r["detection_seconds"] >= 0 and r["start_seconds"] > 0, r
    assert r["reason"] and r["failed_step"] > 0, r  # failed_step: rank 0's last heartbeat, so it may lag start_step
print("status.json: recoveries", [(r["restart"], r["source"], r["start_step"], r["steps_redone"]) for r in rec])
PYEOF
  "$STRIDE" status --run-dir "$run" > "$WORK/status.txt" 2>&1 || true
  grep -q "^recoveries: 2 (disk 1, memory 1)" "$WORK/status.txt" || fail "stride status: $(cat "$WORK/status.txt")"
  # Round 2: rank 1's copies are gone, so no snapshot is complete on every rank: the commit, and the line says so.
  second=$(grep "^resume: from memory: \|^resume: snapshots: " "$WORK/launch.log" | sed -n 2p)
  echo "$second" | grep -q "^resume: snapshots: 1 of 2 ranks hold snapshots newer than the disk checkpoint, but no step is complete on every rank; from the checkpoint" ||
    fail "the second restart: $second"
  [ ! -e "$shm" ] || fail "the finished job left its snapshots in $shm: $(ls -R "$shm" | head)"
  same_as_reference "$run"
  no_orphans "$run"
  echo "ok: restart 1 from memory (step $step), restart 2 from disk (a rank's copies gone); bitwise identical"
  ;;
launcher_kill)
  run=$WORK/lk
  setsid "$STRIDE" launch -n 2 --status-port 0 -- "${flags[@]}" --output-dir "$run" > "$WORK/launch1.log" 2>&1 &
  launcher=$!
  wait_running "$run" 30 > /dev/null || fail "the job is not running"
  kill -9 "$launcher"
  t0=$(date +%s.%N)
  echo "killed the launcher (pid $launcher)"
  for _ in $(seq 1 300); do
    pgrep -f "$STRIDE train.*$run" > /dev/null || break
    sleep 0.1
  done
  pgrep -f "$STRIDE train.*$run" > /dev/null && fail "ranks still running 30 s after the launcher died"
  $PY -c "import time; print(f'ranks and mpirun gone {time.time() - $t0:.1f} s after the launcher died')"
  # The launcher is gone, so the ranks' last words are in RUN/logs/ranks.log only.
  grep -q "lost the coordinator for 3 s" "$run/logs/ranks.log" || fail "the ranks did not give up after the heartbeat timeout"
  pkill -9 -f "mpirun.*$run" 2>/dev/null || true
  "$STRIDE" launch -n 2 --status-port 0 -- "${flags[@]}" --output-dir "$run" --resume auto \
    > "$WORK/launch2.log" 2>&1 || fail "the relaunch"
  grep -q "resume: .*step-000000" "$WORK/launch2.log" || fail "the relaunch did not resume"
  same_as_reference "$run"
  no_orphans "$run"
  echo "ok: ranks exited on their own; --resume auto finished the job identically"
  ;;
stop)
  run=$WORK/stop
  "$STRIDE" launch -n 2 --status-port 0 -- "${flags[@]}" --output-dir "$run" > "$WORK/launch1.log" 2>&1 &
  launcher=$!
  wait_running "$run" 25 > /dev/null || fail "the job is not running"
  kill -TERM "$launcher"
  rc=0
  wait "$launcher" || rc=$?
  [ "$rc" == 0 ] || fail "stopped launch exited $rc"
  grep -q "stopped at step" "$WORK/launch1.log" || fail "no stop checkpoint"
  stopped=$(cat "$run/checkpoints/LATEST")
  echo "stopped with $stopped committed"
  no_orphans "$run"
  "$STRIDE" launch -n 2 --status-port 0 -- "${flags[@]}" --output-dir "$run" --resume auto \
    > "$WORK/launch2.log" 2>&1 || fail "the continuation"
  grep -q "resume: .*$stopped" "$WORK/launch2.log" || fail "did not resume from $stopped"
  same_as_reference "$run"
  echo "ok: SIGTERM checkpointed and stopped the job; the continuation ended identical"
  ;;
*)
  echo "unknown scenario $SCENARIO"
  exit 2
  ;;
esac
