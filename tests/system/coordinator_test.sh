#!/usr/bin/env bash
# The coordinator with real ranks (ctest label `system`), one scenario per call:
#   kill    2 ranks; rank 1 is SIGKILLed while it writes the step-40 checkpoint (writes slowed by the test-only
#           STRIDE_FAULT_CHECKPOINT_DELAY_S): step 20 stays LATEST and verifies, step 40 never becomes a
#           checkpoint, and --resume auto continues from step 20.
#   sigstop 2 ranks with --heartbeat-timeout 3; rank 1 is SIGSTOPped: the coordinator declares it dead within the
#           timeout (plus one heartbeat), names rank, host and last step, and the job exits with code 75.
#   http    1 rank training while the status endpoint gets a burst of malformed requests and then 100 GET/s
#           for 5 s (loopback): every GET answers 200, training advances, /healthz stays ok, a foreign Host
#           gets 421, `stride status --checkpoint` finds the token in RUN/job_token (0600) or --token-file, and
#           a POST /stop with the job token stops the run with a committed checkpoint.
#   coordinator_test.sh STRIDE_BINARY WORK_DIR SCENARIO MPIRUN [MPIRUN FLAGS...]
set -euo pipefail
STRIDE=$1
WORK=$2
SCENARIO=$3
shift 3
MPIRUN=("$@")
PY=/usr/bin/python3
rm -rf "$WORK" && mkdir -p "$WORK"
cleanup() {
  pkill -CONT -f "$WORK/" 2>/dev/null || true
  pkill -9 -f "$WORK/" 2>/dev/null || true
}
trap cleanup EXIT
fail() {
  echo "FAIL: $*"
  for f in "$WORK"/*.log; do [ -f "$f" ] && { echo "--- $f"; tail -40 "$f"; }; done
  exit 1
}

"$STRIDE" shard --quiet --format fashion-mnist --input /usr/share/datasets/fashion-mnist --output "$WORK/data" \
  --samples-per-shard 5000 > /dev/null
common=(--model resnet20 --data-path "$WORK/data" --epochs 1 --lr 0.1 --lr-warmup-epochs 0.01 --seed 5 --threads 1
        --workers 1 --print-freq 5 --status-port 0 --heartbeat-interval 0.25)

# Waits (up to $2 s) for the file $1 to exist.
wait_for() {
  for _ in $(seq 1 $(( $2 * 20 ))); do [ -e "$1" ] && return 0; sleep 0.05; done
  return 1
}
status_json() { "$STRIDE" status --run-dir "$1" --json; }
# The pid of rank $2 once it has joined (retries while the endpoint starts).
rank_pid() {
  for _ in $(seq 1 600); do
    p=$(status_json "$1" 2>/dev/null | $PY -c "import json,sys; print(json.load(sys.stdin)['ranks'][$2]['pid'])" 2>/dev/null || echo 0)
    [ "$p" != 0 ] && { echo "$p"; return 0; }
    sleep 0.1
  done
  return 1
}
rank_step() { status_json "$1" | $PY -c "import json,sys; print(json.load(sys.stdin)['ranks'][$2]['step'])"; }

case $SCENARIO in
kill)
  run=$WORK/run
  # A committed step 20 first, then a resumed run whose step-40 writes are slowed (2 s before each file).
  "${MPIRUN[@]}" -np 2 "$STRIDE" train "${common[@]}" --batch-size 32 --max-steps 20 --checkpoint-every 20 \
    --output-dir "$run" > "$WORK/first.log" 2>&1 || fail "first run"
  [ "$(cat "$run/checkpoints/LATEST")" == "step-00000020" ] || fail "no step-20 commit"
  [ ! -e "$run/coordinator.json" ] || fail "coordinator.json left behind by a finished run"
  STRIDE_FAULT_CHECKPOINT_DELAY_S=2 setsid "${MPIRUN[@]}" -np 2 "$STRIDE" train "${common[@]}" --batch-size 32 \
    --max-steps 80 --checkpoint-every 20 --output-dir "$run" --resume auto > "$WORK/run.log" 2>&1 &
  job=$!
  wait_for "$run/coordinator.json" 60 || fail "no coordinator"
  pid1=$(rank_pid "$run" 1)
  wait_for "$run/checkpoints/step-00000040" 120 || fail "the step-40 checkpoint did not start"
  # Rank 1 writes optimizer.safetensors (2 s after the directory appears): kill it inside that window.
  [ ! -e "$run/checkpoints/step-00000040/optimizer.safetensors" ] || fail "too late: rank 1 already wrote its file"
  kill -9 "$pid1"
  echo "killed rank 1 (pid $pid1) during its step-40 writes"
  rc=0
  wait "$job" || rc=$?
  [ "$rc" != 0 ] || fail "the job succeeded although a rank was killed"
  [ "$(cat "$run/checkpoints/LATEST")" == "step-00000020" ] || fail "LATEST is $(cat "$run/checkpoints/LATEST")"
  [ ! -e "$run/checkpoints/step-00000040/MANIFEST" ] || fail "a partial step-40 checkpoint became visible"
  "$STRIDE" ckpt verify "$run" > "$WORK/verify.log" 2>&1 || fail "the surviving checkpoint does not verify"
  grep -q "step-00000040: interrupted" "$WORK/verify.log" || fail "step 40 not reported as interrupted"
  newest=$("$STRIDE" ckpt list --json "$run" | $PY -c 'import json,sys; print([c["step"] for c in json.load(sys.stdin) if c["valid"]][0])')
  [ "$newest" == 20 ] || fail "newest valid checkpoint is step $newest"
  "${MPIRUN[@]}" -np 2 "$STRIDE" train "${common[@]}" --batch-size 32 --max-steps 60 --checkpoint-every 20 \
    --output-dir "$run" --resume auto > "$WORK/resume.log" 2>&1 || fail "resume"
  grep -q "^resume: .*step-00000020 (step 20" "$WORK/resume.log" || fail "did not resume from step 20"
  [ "$(cat "$run/checkpoints/LATEST")" == "step-00000060" ] || fail "resumed run did not commit step 60"
  "$STRIDE" ckpt verify "$run" > /dev/null || fail "verify after resume"
  echo "ok: killed during checkpoint writes -> step 20 stayed LATEST, resumed to step 60"
  ;;
sigstop)
  run=$WORK/run
  setsid "${MPIRUN[@]}" -np 2 "$STRIDE" train "${common[@]}" --batch-size 32 --heartbeat-timeout 3 \
    --output-dir "$run" > "$WORK/run.log" 2>&1 &
  job=$!
  wait_for "$run/coordinator.json" 120 || fail "no coordinator"
  for _ in $(seq 1 600); do
    s=$(rank_step "$run" 1 2>/dev/null || echo 0)
    [ "$s" -ge 5 ] && break
    sleep 0.1
  done
  pid1=$(rank_pid "$run" 1)
  t0=$(date +%s.%N)
  kill -STOP "$pid1"
  echo "SIGSTOPped rank 1 (pid $pid1) at step $s"
  rc=0
  timeout 60 tail --pid="$job" -f /dev/null || fail "the job did not end within 60 s of the SIGSTOP"
  wait "$job" || rc=$?
  t1=$(date +%s.%N)
  line=$(grep -m1 "is dead" "$WORK/run.log" || true)
  [ -n "$line" ] || fail "no death report"
  echo "$line"
  echo "$line" | grep -q "rank 1 on $(hostname) (pid $pid1) is dead: no heartbeat for 3\.[0-9] s (last step [0-9]*)" ||
    fail "the report does not name rank, host, pid and last step"
  grep -q "exit code 75\|rank 0: the coordinator stopped the job" "$WORK/run.log" || fail "rank 0 was not told to stop"
  [ "$rc" == 75 ] || fail "the job exited $rc, not 75 (EX_TEMPFAIL, as the README promises)"
  $PY -c "import sys; d=$t1-$t0; print(f'job ended {d:.1f} s after the SIGSTOP'); sys.exit(0 if d < 15 else 1)" ||
    fail "detection took too long"
  ;;
http)
  run=$WORK/run
  "$STRIDE" train "${common[@]}" --batch-size 64 --output-dir "$run" > "$WORK/run.log" 2>&1 &
  job=$!
  wait_for "$run/coordinator.json" 120 || fail "no coordinator"
  url=$($PY -c "import json; print(json.load(open('$run/coordinator.json'))['status_url'])")
  # The token never needs to be on the command line: RUN/job_token (mode 0600) by default, or --token-file.
  [ "$(stat -c %a "$run/job_token")" == 600 ] || fail "job_token has mode $(stat -c %a "$run/job_token")"
  "$STRIDE" status --run-dir "$run" --checkpoint > "$WORK/token_default.log" 2>&1 || fail "--checkpoint with RUN/job_token"
  "$STRIDE" status --url "$url" --token-file "$run/job_token" --checkpoint > "$WORK/token_file.log" 2>&1 ||
    fail "--checkpoint with --token-file"
  rc=0
  "$STRIDE" status --url "$url" --token-file "$WORK/no_such_token" --checkpoint > "$WORK/token_missing.log" 2>&1 || rc=$?
  [ "$rc" == 2 ] && grep -q "no_such_token" "$WORK/token_missing.log" || fail "a missing --token-file: rc $rc"
  $PY - "$url" "$(cat "$run/job_token")" <<'PYEOF' || fail "HTTP load"
import http.client, json, socket, sys, time, urllib.parse
url, token = sys.argv[1], sys.argv[2]
u = urllib.parse.urlparse(url)
host, port = u.hostname, u.port
assert host == "127.0.0.1", host
def get(path):
    c = http.client.HTTPConnection(host, port, timeout=5)
    c.request("GET", path)
    r = c.getresponse()
    body = r.read()
    c.close()
    return r.status, body
# Wait until training runs.
for _ in range(600):
    st = json.loads(get("/status")[1])
    if st["step"] >= 2:
        break
    time.sleep(0.1)
step0 = st["step"]
# A burst of malformed requests: raw bytes, oversized headers, bad methods, truncated requests, slow closes.
junk = [b"GARBAGE\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n", b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n",
        b"POST /stop HTTP/1.1\r\nContent-Length: 10000000\r\n\r\n", b"\x00\x01\x02\xff\r\n\r\n",
        b"GET /status HTTP/1.1\r\nHost: x\r\n" + b"X-Junk: " + b"b" * 9000 + b"\r\n\r\n", b"GET /status HTT",
        b"POST /stop HTTP/1.1\r\nAuthorization: Bearer nope\r\nContent-Length: 0\r\n\r\n"]
for i in range(100):
    s = socket.create_connection((host, port), timeout=5)
    try:
        s.sendall(junk[i % len(junk)])
        s.shutdown(socket.SHUT_WR)
        s.recv(65536)
    except OSError:
        pass
    s.close()
assert get("/healthz") == (200, b"ok\n"), get("/healthz")
# 100 GET/s for 5 s, spread over the endpoints, one connection each.
paths = ["/status", "/metrics", "/history", "/healthz", "/"]
n, bad, t0 = 0, 0, time.time()
while n < 500:
    target = t0 + n / 100.0
    d = target - time.time()
    if d > 0:
        time.sleep(d)
    status, body = get(paths[n % len(paths)])
    bad += status != 200
    n += 1
elapsed = time.time() - t0
st = json.loads(get("/status")[1])
print(f"500 GETs in {elapsed:.1f} s, {bad} not 200; training step {step0} -> {st['step']}; state {st['state']}")
assert bad == 0
assert elapsed < 8, elapsed
assert st["step"] > step0, "training did not advance under load"
assert st["state"] in ("running", "checkpointing"), st["state"]
m = get("/metrics")[1].decode()
assert "stride_http_bad_requests_total" in m and "stride_http_bad_requests_total 0\n" not in m
# DNS rebinding: another Host name gets 421, for reads and for control.
c = http.client.HTTPConnection(host, port, timeout=5)
c.request("GET", "/status", headers={"Host": "rebind.example:%d" % port})
assert c.getresponse().status == 421
c = http.client.HTTPConnection(host, port, timeout=5)
c.request("POST", "/stop", headers={"Host": "rebind.example", "Authorization": "Bearer " + token})
assert c.getresponse().status == 421
assert json.loads(get("/status")[1])["state"] in ("running", "checkpointing")
# Stop with the token: the run checkpoints and exits 0.
c = http.client.HTTPConnection(host, port, timeout=5)
c.request("POST", "/stop", headers={"Authorization": "Bearer " + token})
assert c.getresponse().status == 202
PYEOF
  rc=0
  timeout 120 tail --pid="$job" -f /dev/null || fail "the run did not stop after POST /stop"
  wait "$job" || rc=$?
  [ "$rc" == 0 ] || fail "stopped run exited $rc"
  grep -q "^stopped at step [0-9]*: checkpoint .* committed" "$WORK/run.log" || fail "no committed stop checkpoint"
  "$STRIDE" ckpt verify "$run" > /dev/null || fail "verify"
  echo "ok: endpoint survived the burst and the load; POST /stop checkpointed and stopped the run"
  ;;
*)
  echo "unknown scenario $SCENARIO"
  exit 2
  ;;
esac
