#!/usr/bin/env bash
# Two emulated hosts (ctest label `system`): network namespaces st<pid>a and st<pid>b with 10.78.x.1/.2 on veth
# pairs joined by a bridge in a third namespace; nothing is added to the root namespace. `stride launch` runs
# in host a and starts one rank per host with mpirun's ssh-style agent (tests/system/nsrsh) over that network.
# The job trains and commits checkpoints; then host b's link is cut:
#   cut   the coordinator declares b's rank dead (no heartbeat), the launcher stops the job and, once the link
#         is back, restarts every rank from the last commit; the job finishes and its checkpoints verify.
#   gone  the link never comes back: with --min-ranks 1 the launcher drops b when its rank cannot join a new
#         start and finishes on host a alone with the same global batch (--batch-size 64 instead of 32).
#   buddy each emulated host has its own /dev/shm (tests/system/nsrsh, NSRSH_HOST_SHM); with --snapshot-every 3
#         host a keeps a copy of b's rank's snapshots. Host b dies with its RAM (its processes killed, its
#         /dev/shm emptied): the restart resumes from memory, b's rank from its buddy copy on a, and the job ends
#         bitwise identical to an uninterrupted run on the same two hosts.
#   multihost_test.sh STRIDE_BINARY WORK_DIR cut|gone|buddy
set -euo pipefail
STRIDE=$1
WORK=$2
SCENARIO=${3:-cut}
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/lib.sh"
[ "$(id -u)" == 0 ] || { echo "SKIP: network namespaces need root"; exit 77; }
command -v unshare > /dev/null || { echo "SKIP: unshare is not installed"; exit 77; }
rm -rf "$WORK" && mkdir -p "$WORK"
tag=st$$
A=${tag}a
B=${tag}b
F=${tag}f
NET=10.78.$(( $$ % 200 + 20 ))
cleanup() {
  for ns in $A $B; do for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done; done
  pkill -9 -f "$WORK/" 2>/dev/null || true
  for ns in $A $B $F; do ip netns del "$ns" 2>/dev/null || true; done
}
trap cleanup EXIT
fail() {
  echo "FAIL: $*"
  grep -v "step [0-9]*/[0-9]* loss" "$WORK/launch.log" | tail -50 || true
  exit 1
}
make_hosts "$F" "$NET" "$A" "$B"
printf "%s slots=1\n%s slots=1\n" "$A" "$B" > "$WORK/hosts"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

"$STRIDE" shard --quiet --format fashion-mnist --input /usr/share/datasets/fashion-mnist --output "$WORK/data" \
  --samples-per-shard 5000 > /dev/null
run=$WORK/run
mca=(--mca plm_rsh_agent "$HERE/nsrsh" --mca btl self,tcp
     --mca oob_tcp_keepalive_time 2 --mca oob_tcp_keepalive_intvl 1 --mca oob_tcp_keepalive_probes 3)
extra=""
[ "$SCENARIO" == gone ] && extra="--min-ranks 1"
largs=()
for a in "${mca[@]}"; do largs+=("--launcher-arg=$a"); done
if [ "$SCENARIO" == buddy ]; then
  export NSRSH_HOST_SHM=/dev/shm/stride-test-hosts-$tag
  trap 'cleanup; rm -rf "$NSRSH_HOST_SHM"' EXIT
  bflags=(--model resnet20 --data-path "$WORK/data" --epochs 1 --batch-size 32 --seed 11 --threads 1 --workers 1
          --print-freq 10 --checkpoint-every 40 --max-steps 120 --heartbeat-interval 0.25 --heartbeat-timeout 4
          --snapshot-every 3 --snapshot-dir /dev/shm/snap)
  blaunch() {  # blaunch RUN_DIR: the job on both hosts, supervised
    ip netns exec "$A" "$STRIDE" launch -n 2 --hostfile "$WORK/hosts" --iface $NET.0/24 --coordinator-host $NET.1 \
      --max-restarts 3 --restart-backoff 0.5 --start-timeout 20 --status-port 0 --status-bind $NET.1 "${largs[@]}" \
      -- "${bflags[@]}" --output-dir "$1"
  }
  blaunch "$WORK/ref" > "$WORK/ref.log" 2>&1 || { cat "$WORK/ref.log"; fail "the uninterrupted run"; }
  grep -q "snapshots: each rank's also kept by a rank on another host (rank 0's by rank 1)" "$WORK/ref.log" ||
    fail "no buddy copies across the two hosts"
  blaunch "$run" > "$WORK/launch.log" 2>&1 &
  launcher=$!
  own=$NSRSH_HOST_SHM/$A/snap/rank-0/checkpoints
  copies=$NSRSH_HOST_SHM/$A/snap/rank-1/checkpoints
  # Host a holds rank 0's snapshot of a step and its copy of rank 1's, newer than the last commit (step 40 or
  # later, so the snapshots continue a commit) and far enough from the next (every 40) that none lands before the
  # kill stops the job.
  copy_ahead() {
    local latest newest n
    latest=$(cat "$run/checkpoints/LATEST" 2>/dev/null || echo step-00000000)
    latest=$((10#${latest#step-}))
    newest=$(ls "$copies" 2>/dev/null | grep '^step-' | sort | tail -n 1)
    [ -n "$newest" ] || return 1
    n=$((10#${newest#step-}))
    [ "$latest" -ge 40 ] && [ "$n" -gt "$latest" ] && [ $((n % 40)) -le 30 ] && [ -f "$copies/$newest/MANIFEST" ] &&
      [ -f "$own/$newest/MANIFEST" ]
  }
  for _ in $(seq 1 6000); do
    copy_ahead && break
    kill -0 $launcher 2>/dev/null || fail "the launcher ended early"
    sleep 0.01
  done
  copy_ahead || fail "host $A never held a copy of rank 1's snapshot newer than the last commit: $(ls -R "$NSRSH_HOST_SHM")"
  for p in $(ip netns pids "$B"); do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "${NSRSH_HOST_SHM:?}/$B"
  echo "host $B killed with its RAM (its snapshots gone)"
  rc=0
  timeout 300 tail --pid=$launcher -f /dev/null || fail "the job did not finish after the restart"
  wait $launcher || rc=$?
  [ "$rc" == 0 ] || fail "launch exited $rc"
  grep "^resume: \|^launch: recovered" "$WORK/launch.log" || true
  line=$(grep -m1 "^resume: from memory: the snapshot of step [0-9]* is newer than the newest checkpoint (step [48]0)" \
    "$WORK/launch.log") || fail "the restart did not resume from memory"
  step=$(echo "$line" | sed 's/.*snapshot of step \([0-9]*\) .*/\1/')
  grep -q "^resume: rank 1's snapshot of step $step came from its buddy copy on rank 0$" "$WORK/launch.log" ||
    fail "rank 1's snapshot did not come from its buddy copy on rank 0"
  grep -q "^launch: recovered from failure 1 in .*; resumed from a snapshot in memory (step $step)" \
    "$WORK/launch.log" || fail "the recovery line does not name the snapshot"
  for f in model.safetensors optimizer.safetensors; do
    cmp "$WORK/ref/checkpoints/step-00000120/$f" "$run/checkpoints/step-00000120/$f" ||
      fail "$f at step 120 differs from the uninterrupted run"
  done
  "$STRIDE" ckpt verify "$run" > /dev/null || fail "checkpoints do not verify"
  for h in $A $B; do
    [ ! -e "$NSRSH_HOST_SHM/$h/snap" ] || fail "the finished job left snapshots on $h: $(ls -R "$NSRSH_HOST_SHM/$h")"
  done
  echo "ok (buddy): host $B lost its RAM; rank 1 resumed from its copy on $A at step $step; bitwise identical"
  exit 0
fi
ip netns exec "$A" "$STRIDE" launch -n 2 --hostfile "$WORK/hosts" --iface $NET.0/24 --coordinator-host $NET.1 \
  --max-restarts 6 --restart-backoff 2 --start-timeout 20 --status-port 0 --status-bind $NET.1 "${largs[@]}" \
  $extra -- \
  --model resnet20 --data-path "$WORK/data" --epochs 1 --batch-size 32 --threads 1 --workers 1 --print-freq 10 \
  --checkpoint-every 10 --max-steps 120 --heartbeat-interval 0.25 --heartbeat-timeout 4 --output-dir "$run" \
  > "$WORK/launch.log" 2>&1 &
launcher=$!
status() { ip netns exec "$A" "$STRIDE" status --run-dir "$run" --json 2>/dev/null; }
for _ in $(seq 1 1200); do
  s=$(status | /usr/bin/python3 -c 'import json,sys; s=json.load(sys.stdin); print(s["checkpoint"]["last_committed_step"] or 0)' 2>/dev/null || echo 0)
  [ "$s" -ge 20 ] && break
  kill -0 $launcher 2>/dev/null || fail "the launcher ended early"
  sleep 0.1
done
[ "$s" -ge 20 ] || fail "no checkpoint committed across the two hosts"
hosts=$(status | /usr/bin/python3 -c 'import json,sys; print(" ".join(r["host"] for r in json.load(sys.stdin)["ranks"]))')
[ "$hosts" == "$A $B" ] || fail "ranks ran on '$hosts', not on $A and $B"
if [ "$SCENARIO" == cut ]; then
  # Control across hosts (Note [HTTP control requests] in cluster/auth.h): from host B a bearer token is refused,
  # so it never crosses the network; stride status proves the token with an HMAC over a nonce instead.
  url=$(/usr/bin/python3 -c "import json; print(json.load(open('$run/coordinator.json'))['status_url'])")
  case $url in "http://$NET.1:"*) ;; *) fail "the status endpoint is $url, not on $NET.1" ;; esac
  code=$(ip netns exec "$B" /usr/bin/python3 - "$url" "$run/job_token" <<'PYEOF'
import sys, urllib.error, urllib.request
token = open(sys.argv[2]).read().strip()
req = urllib.request.Request(sys.argv[1] + "checkpoint", data=b"", method="POST",
                             headers={"Authorization": "Bearer " + token})
try:
    print(urllib.request.urlopen(req, timeout=5).status)
except urllib.error.HTTPError as e:
    print(e.code)
PYEOF
)
  [ "$code" == 401 ] || fail "a bearer token sent from $B was answered $code, not 401"
  ip netns exec "$B" "$STRIDE" status --url "$url" --token-file "$run/job_token" --checkpoint > "$WORK/ctl.txt" ||
    fail "stride status --checkpoint from $B: $(cat "$WORK/ctl.txt")"
  grep -q "checkpoint requested" "$WORK/ctl.txt" || fail "no signed checkpoint request from $B"
fi
echo "training across $hosts; committed step $s; cutting $B's link"
ip -n "$B" link set eth0 down
if [ "$SCENARIO" == cut ]; then
  sleep 7
  ip -n "$B" link set eth0 up
  echo "link of $B restored"
fi
rc=0
timeout 300 tail --pid=$launcher -f /dev/null || fail "the job did not finish after the link returned"
wait $launcher || rc=$?
[ "$rc" == 0 ] || fail "launch exited $rc"
grep "^launch: " "$WORK/launch.log" | grep -v "^launch: start"
grep -q "rank 1 on $B .* is dead\|restarting every rank" "$WORK/launch.log" || fail "the cut was not detected"
grep -q "resume: .*step-000000" "$WORK/launch.log" || fail "the restart did not resume from a commit"
if [ "$SCENARIO" == gone ]; then
  grep -q "dropping unreachable host(s) $B: continuing on 1 rank(s) ($A:1) with --batch-size 64" "$WORK/launch.log" ||
    fail "host $B was not dropped"
  world=$("$STRIDE" ckpt list --json "$run" | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["world_size"])')
  [ "$world" == 1 ] || fail "the last checkpoint was written by $world ranks, not 1"
fi
[ "$(cat "$run/checkpoints/LATEST")" == "step-00000120" ] || fail "the job did not reach step 120"
"$STRIDE" ckpt verify "$run" > /dev/null || fail "checkpoints do not verify"
if [ "$SCENARIO" == cut ]; then
  grep -q "HTTP POST /checkpoint from $NET.2" "$WORK/launch.log" || fail "the signed request from $B was not carried out"
fi
echo "ok ($SCENARIO): 2 hosts trained, the cut host was detected, the job restarted from its last commit and finished"
