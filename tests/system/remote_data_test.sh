#!/usr/bin/env bash
# System test (ctest label `system`): --data-path from a real nginx on 127.0.0.1 and from pipe: commands, through
# the shard cache (Note [Shard cache] in data/shard_source.h). A small sharded Fashion-MNIST (2048 training
# samples in 16 shards); `stride bench loader --epochs` replays the loader and writes every batch's sample ids.
#   - HTTP, cold and warm cache: the same batches as the local shards, every sample once per epoch; the warm run
#     downloads no shard; two readers sharing a cache download each shard once (nginx's access log);
#   - resume from a cold, a warm, a partially evicted and a damaged cache continues the uninterrupted sequence;
#   - --cache-limit below the dataset: the cache directory (polled) never exceeds it, the batches are the same;
#   - nginx stopped mid-epoch and restarted within the retry budget: the run goes on; stopped for good: exit 1
#     and an error naming the URL and the rank; a damaged shard: the CRC check refuses it; 404: an error;
#   - pipe:cat gives the same batches; a response damaged once is fetched again; a failing command's stderr is
#     in the error;
#   - `stride train` over HTTP consumes the same samples as over the local directory;
#   - https:// with the test CA in SSL_CERT_FILE gives the local batches; without it, exit 1 and an error naming the
#     certificate problem and the URL.
#   remote_data_test.sh STRIDE_BINARY WORK_DIR
set -euo pipefail
STRIDE=$(realpath "$1")
WORK=$2
PY=/usr/bin/python3
HERE=$(cd "$(dirname "$0")/.." && pwd)
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
[ -x "$NGINX" ] || { echo "nginx is missing (scripts/setup.sh installs it)"; exit 1; }
rm -rf "$WORK" && mkdir -p "$WORK"
WORK=$(realpath "$WORK")
trap 'stop_nginx; pkill -9 -f "$WORK/" 2>/dev/null || true' EXIT
fail() {
  echo "FAIL: $*"
  for f in "$WORK"/*.log; do echo "--- $f"; tail -15 "$f"; done
  exit 1
}

# --- data: 2048 + 512 samples, 128 per shard
$PY "$HERE/python/make_webdataset.py" /usr/share/datasets/fashion-mnist "$WORK/src" --train 2048 --test 512 \
  --per-shard 512 > /dev/null
"$STRIDE" shard --quiet --format fashion-mnist --input "$WORK/src/idx" --output "$WORK/www/data" \
  --samples-per-shard 128 > /dev/null
DATA=$WORK/www/data
nshards=$(ls "$DATA/train" | grep -c '\.tar$')
[ "$nshards" = 16 ] || fail "expected 16 training shards, got $nshards"

# --- nginx on a free port, private configuration, serving $WORK/www; the same over TLS on a second port, with a
# certificate for 127.0.0.1 signed by a test CA
PORT=$($PY -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
TLS_PORT=$($PY -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mkdir -p "$WORK/nginx" "$WORK/tls"
(
  cd "$WORK/tls"
  printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' > ext.cnf
  ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
  openssl req -x509 "${ec[@]}" -keyout ca.key -out ca.pem -days 2 -subj /CN=stride-test-ca
  openssl req "${ec[@]}" -keyout server.key -out server.csr -subj /CN=127.0.0.1
  openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile ext.cnf -out server.pem
) > "$WORK/tls/openssl.log" 2>&1 || fail "making the test certificates: $(cat "$WORK/tls/openssl.log")"
user_line=""
[ "$(id -u)" = 0 ] && user_line="user root;"
cat > "$WORK/nginx/nginx.conf" <<EOF
$user_line
worker_processes 1;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log;
events { worker_connections 64; }
http {
  access_log $WORK/nginx/access.log;
  client_body_temp_path $WORK/nginx/body;
  proxy_temp_path $WORK/nginx/proxy;
  fastcgi_temp_path $WORK/nginx/fastcgi;
  uwsgi_temp_path $WORK/nginx/uwsgi;
  scgi_temp_path $WORK/nginx/scgi;
  keepalive_timeout 30;
  server {
    listen 127.0.0.1:$PORT;
    root $WORK/www;
    # /slow/ serves the same files at 512 kB/s per connection, so a run is still mid-epoch when the server stops.
    location /slow/ { alias $WORK/www/; limit_rate 512k; }
  }
  server {
    listen 127.0.0.1:$TLS_PORT ssl;
    root $WORK/www;
    ssl_certificate $WORK/tls/server.pem;
    ssl_certificate_key $WORK/tls/server.key;
  }
}
EOF
start_nginx() {
  "$NGINX" -c "$WORK/nginx/nginx.conf" -p "$WORK/nginx" 2> "$WORK/nginx/start.err" || fail "nginx: $(cat "$WORK/nginx/start.err")"
  for _ in $(seq 50); do
    $PY -c "import socket; socket.create_connection(('127.0.0.1', $PORT), 1)" 2>/dev/null && return
    sleep 0.1
  done
  fail "nginx did not listen on $PORT"
}
stop_nginx() {
  [ -f "$WORK/nginx/nginx.pid" ] || return 0
  local pid
  pid=$(cat "$WORK/nginx/nginx.pid")
  kill -TERM "$pid" 2>/dev/null || true  # fast shutdown: open connections are cut
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  rm -f "$WORK/nginx/nginx.pid"
}
start_nginx
URL=http://127.0.0.1:$PORT/data
gets() { grep -c "GET /data/train/$1 " "$WORK/nginx/access.log" || true; }

replay=(bench loader --batch-size 32 --workers 2 --seed 5 --crop none --no-flip --uint8)
# Every sample of each epoch exactly once (16 x 128 = 2048 = 64 batches of 32: nothing dropped).
once_per_epoch() {
  $PY - "$1" <<'PYEOF' || fail "$1: a sample is missing or repeated in an epoch"
import collections, sys
by = collections.defaultdict(list)
for line in open(sys.argv[1]):
    e, s, *ids = map(int, line.split())
    by[e].extend(ids)
for e, ids in by.items():
    assert sorted(ids) == list(range(2048)), f"epoch {e}: {len(ids)} ids, {len(set(ids))} distinct"
PYEOF
}

echo "== local reference"
"$STRIDE" "${replay[@]}" --data-path "$DATA" --epochs 2 --trace "$WORK/ref.txt" 2> "$WORK/ref.log" ||
  fail "local replay"
once_per_epoch "$WORK/ref.txt"

echo "== HTTP, cold cache"
"$STRIDE" "${replay[@]}" --data-path "$URL" --cache-dir "$WORK/cache" --epochs 2 --trace "$WORK/cold.txt" \
  2> "$WORK/cold.log" || fail "HTTP cold replay"
cmp -s "$WORK/ref.txt" "$WORK/cold.txt" || fail "HTTP (cold) batches differ from the local ones"
grep -q "in 16 shards, 0 cache hits" "$WORK/cold.log" || fail "cold: expected 16 downloads: $(tail -1 "$WORK/cold.log")"
for f in "$DATA"/train/*.tar; do
  n=$(gets "$(basename "$f")")
  [ "$n" = 1 ] || fail "$(basename "$f") was downloaded $n times in a cold run"
done

echo "== HTTP, warm cache"
"$STRIDE" "${replay[@]}" --data-path "$URL" --cache-dir "$WORK/cache" --epochs 2 --trace "$WORK/warm.txt" \
  2> "$WORK/warm.log" || fail "HTTP warm replay"
cmp -s "$WORK/ref.txt" "$WORK/warm.txt" || fail "HTTP (warm) batches differ from the local ones"
grep -q "in 0 shards, 16 cache hits" "$WORK/warm.log" || fail "warm: expected no download: $(tail -1 "$WORK/warm.log")"

echo "== HTTPS: the test CA trusted through SSL_CERT_FILE, then not trusted"
SSL_CERT_FILE=$WORK/tls/ca.pem "$STRIDE" "${replay[@]}" --data-path "https://127.0.0.1:$TLS_PORT/data" \
  --cache-dir "$WORK/cache-tls" --epochs 2 --trace "$WORK/tls.txt" 2> "$WORK/tls.log" || fail "HTTPS replay"
cmp -s "$WORK/ref.txt" "$WORK/tls.txt" || fail "HTTPS batches differ from the local ones"
grep -q "in 16 shards, 0 cache hits" "$WORK/tls.log" || fail "https: expected 16 downloads: $(tail -1 "$WORK/tls.log")"
set +e
"$STRIDE" "${replay[@]}" --data-path "https://127.0.0.1:$TLS_PORT/data" --cache-dir "$WORK/cache-untrusted" \
  --epochs 1 2> "$WORK/untrusted.log" > /dev/null
rc=$?
set -e
[ "$rc" = 1 ] || fail "an untrusted certificate: exit $rc, expected 1"
grep -q "cannot fetch https://127.0.0.1:$TLS_PORT/data/train/index.pb: TLS handshake failed: the server's certificate does not verify" \
  "$WORK/untrusted.log" || fail "an untrusted certificate: $(tail -2 "$WORK/untrusted.log")"

echo "== two readers sharing one cache download each shard once"
: > "$WORK/nginx/access.log"
kill -USR1 "$(cat "$WORK/nginx/nginx.pid")"  # reopen the log
pids=()
for r in 0 1; do
  "$STRIDE" "${replay[@]}" --world-size 2 --rank $r --data-path "$DATA" --epochs 1 \
    --trace "$WORK/ref-r$r.txt" 2> /dev/null
done
for r in 0 1; do
  "$STRIDE" "${replay[@]}" --world-size 2 --rank $r --data-path "$URL" \
    --cache-dir "$WORK/shared" --epochs 1 --trace "$WORK/shared-r$r.txt" 2> "$WORK/shared-r$r.log" &
  pids+=($!)
done
wait "${pids[0]}" && wait "${pids[1]}" || fail "shared-cache readers"
for r in 0 1; do cmp -s "$WORK/ref-r$r.txt" "$WORK/shared-r$r.txt" || fail "shared cache: rank $r's batches differ"; done
sleep 0.2
for f in "$DATA"/train/*.tar; do
  n=$(gets "$(basename "$f")")
  [ "$n" = 1 ] || fail "shared cache: $(basename "$f") was downloaded $n times by two readers"
done

echo "== resume from cold, warm, partially evicted and damaged caches"
head -n 20 "$WORK/ref.txt" > "$WORK/ref-head.txt"
resume_check() {  # NAME CACHE_DIR [extra flags]: 20 batches, then the rest from the printed cursor
  local name=$1 cache=$2
  shift 2
  "$STRIDE" "${replay[@]}" --data-path "$URL" --cache-dir "$cache" --epochs 2 --max-batches 20 "$@" \
    --trace "$WORK/$name-1.txt" 2> "$WORK/$name-1.log" || fail "$name: first part"
  cmp -s "$WORK/ref-head.txt" "$WORK/$name-1.txt" || fail "$name: the first 20 batches differ"
  local cursor
  cursor=$(sed -n 's/.*next cursor \([0-9]*:[0-9]*\);.*/\1/p' "$WORK/$name-1.log")
  [ "$cursor" = "0:640" ] || fail "$name: cursor after 20 batches is '$cursor', expected 0:640"
  [ -z "${BEFORE_RESUME:-}" ] || eval "$BEFORE_RESUME"
  "$STRIDE" "${replay[@]}" --data-path "$URL" --cache-dir "$cache" --epochs 2 --start "$cursor" "$@" \
    --trace "$WORK/$name-2.txt" 2> "$WORK/$name-2.log" || fail "$name: resumed part"
  cat "$WORK/$name-1.txt" "$WORK/$name-2.txt" | head -n "$(wc -l < "$WORK/ref.txt")" > "$WORK/$name.txt"
  cmp -s "$WORK/ref.txt" "$WORK/$name.txt" || fail "$name: the resumed sequence differs from the uninterrupted one"
}
BEFORE_RESUME='rm -rf "$WORK/cold-resume"' resume_check cold "$WORK/cold-resume"
resume_check warm "$WORK/cache"
# Partially evicted: a limit of 6 shards while running, then a few shards deleted by hand before the resume.
BEFORE_RESUME='ls "$WORK/partial"/*/shard-*.tar | head -n 2 | xargs rm -f' \
  resume_check partial "$WORK/partial" --cache-limit $((6 * $(stat -c %s "$DATA/train/shard-000000.tar") + 300000))
# Damaged: one cached shard has a flipped byte and one is truncated; both are found and fetched again.
BEFORE_RESUME='f=$(ls "$WORK/cache"/*/shard-000003.tar); printf "\xff\xff\xff\xff" | dd of="$f" bs=1 seek=3100 conv=notrunc status=none;
  truncate -s 1000 "$(ls "$WORK/cache"/*/shard-000007.tar)"' resume_check damaged "$WORK/cache"
grep -q "cached shard .*shard-000003.tar fails its check (CRC32C mismatch" "$WORK/damaged-2.log" ||
  fail "damaged cache: the flipped byte was not reported"
grep -q "cached shard .*shard-000007.tar fails its check (1000 bytes" "$WORK/damaged-2.log" ||
  fail "damaged cache: the truncated shard was not reported"

echo "== --cache-limit below the dataset size: the directory never exceeds it"
shard_bytes=$(stat -c %s "$DATA/train/shard-000000.tar")
limit=$((10 * shard_bytes + 300000))  # 10 of 16 shards and the index
data_bytes=$(du -cb "$DATA"/train/*.tar | tail -1 | cut -f1)
[ "$limit" -lt "$data_bytes" ] || fail "the limit $limit is not below the data ($data_bytes)"
mkdir -p "$WORK/limited"
$PY - "$WORK/limited" "$WORK/limited.max" <<'PYEOF' &
import os, sys, time
root, out = sys.argv[1], sys.argv[2]
peak = 0
while not os.path.exists(out + ".stop"):
    total = 0
    for d, _, files in os.walk(root):
        for f in files:
            try:
                total += os.lstat(os.path.join(d, f)).st_size
            except FileNotFoundError:
                pass
    peak = max(peak, total)
    time.sleep(0.002)
open(out, "w").write(str(peak))
PYEOF
poller=$!
"$STRIDE" "${replay[@]}" --data-path "$URL" --cache-dir "$WORK/limited" --cache-limit "$limit" --epochs 2 \
  --trace "$WORK/limited.txt" 2> "$WORK/limited.log" || fail "limited replay"
touch "$WORK/limited.max.stop"
wait $poller
peak=$(cat "$WORK/limited.max")
cmp -s "$WORK/ref.txt" "$WORK/limited.txt" || fail "limited cache: batches differ"
[ "$peak" -le "$limit" ] || fail "the cache reached $peak bytes over its limit of $limit"
grep -q "evicted" "$WORK/limited.log" && ! grep -q ", 0 evicted" "$WORK/limited.log" || fail "limited: nothing evicted"
echo "cache peak $peak bytes <= limit $limit (data $data_bytes bytes); $(sed -n 's/.*fetched \([0-9]* bytes in [0-9]* shards\).*/\1/p' "$WORK/limited.log")"

echo "== server stopped mid-epoch, restarted within the retry budget"
cached() { find "$1" -name 'shard-*.tar' 2> /dev/null | wc -l; }
wait_for_shards() {  # DIR N: until N shards are in the cache (past the first window of 8: batches are out)
  for _ in $(seq 400); do
    [ "$(cached "$1")" -ge "$2" ] && return
    sleep 0.05
  done
  fail "no progress in $1"
}
"$STRIDE" "${replay[@]}" --data-path "http://127.0.0.1:$PORT/slow/data" --cache-dir "$WORK/restart" \
  --prefetch-shards 1 --epochs 1 --trace "$WORK/restart.txt" 2> "$WORK/restart.log" &
run=$!
wait_for_shards "$WORK/restart" 9
stop_nginx
[ "$(cached "$WORK/restart")" -lt 16 ] || fail "restart: the epoch was complete before the server stopped"
sleep 1.5
start_nginx
wait $run || fail "the run did not survive a server restart"
head -n 64 "$WORK/ref.txt" | cmp -s - "$WORK/restart.txt" || fail "restart: batches differ"
grep -q "warning: rank 0: fetching http://127.0.0.1:$PORT/slow/data/train/shard-.* failed (.*); retry 1 of 6" \
  "$WORK/restart.log" || fail "restart: no retry was logged"

echo "== server stopped for good: exit 1, the URL and the rank in the error"
"$STRIDE" "${replay[@]}" --data-path "http://127.0.0.1:$PORT/slow/data" --cache-dir "$WORK/gone" \
  --prefetch-shards 1 --fetch-retries 2 --epochs 1 --trace "$WORK/gone.txt" 2> "$WORK/gone.log" &
run=$!
wait_for_shards "$WORK/gone" 9
stop_nginx
[ "$(cached "$WORK/gone")" -lt 16 ] || fail "server gone: the epoch was complete before the server stopped"
set +e
wait $run
rc=$?
set -e
[ $rc = 1 ] || fail "server gone: exit code $rc, expected 1"
grep -q "rank 0: cannot fetch http://127.0.0.1:$PORT/slow/data/train/shard-[0-9]*.tar after 3 attempts" \
  "$WORK/gone.log" || fail "server gone: the error does not name the URL and rank: $(tail -1 "$WORK/gone.log")"
start_nginx

echo "== a damaged shard on the server; 404s"
cp -r "$DATA" "$WORK/www/bad"
printf '\xff\xff\xff\xff' | dd of="$WORK/www/bad/train/shard-000005.tar" bs=1 seek=3100 conv=notrunc status=none
rm "$WORK/www/bad/test/shard-000001.tar"
set +e
"$STRIDE" "${replay[@]}" --data-path "http://127.0.0.1:$PORT/bad" --cache-dir "$WORK/bad" --epochs 1 \
  --trace /dev/null 2> "$WORK/bad.log"
rc_bad=$?
"$STRIDE" "${replay[@]}" --data-path "http://127.0.0.1:$PORT/bad" --split test --cache-dir "$WORK/bad" --epochs 1 \
  --trace /dev/null 2> "$WORK/missing.log"
rc_missing=$?
"$STRIDE" "${replay[@]}" --data-path "http://127.0.0.1:$PORT/nothing" --cache-dir "$WORK/bad" --epochs 1 \
  2> "$WORK/404.log"
rc_404=$?
set -e
[ $rc_bad = 1 ] || fail "damaged shard: exit code $rc_bad"
grep -q "warning: rank 0: shard http://127.0.0.1:$PORT/bad/train/shard-000005.tar fails its check (CRC32C mismatch" \
  "$WORK/bad.log" || fail "damaged shard: no re-fetch warning"
grep -q "shard http://127.0.0.1:$PORT/bad/train/shard-000005.tar fails its check twice" "$WORK/bad.log" ||
  fail "damaged shard: no clear error"
[ $rc_missing = 1 ] || fail "missing shard: exit code $rc_missing"
grep -q "rank 0: cannot fetch http://127.0.0.1:$PORT/bad/test/shard-000001.tar: HTTP 404 Not Found" \
  "$WORK/missing.log" || fail "missing shard: $(tail -1 "$WORK/missing.log")"
[ $rc_404 = 1 ] || fail "404 index: exit code $rc_404"
grep -q "cannot fetch http://127.0.0.1:$PORT/nothing/train/index.pb: HTTP 404 Not Found" "$WORK/404.log" ||
  fail "404 index: $(tail -1 "$WORK/404.log")"

echo "== pipe:"
"$STRIDE" "${replay[@]}" --data-path "pipe:cat $DATA/{split}/{shard}" --cache-dir "$WORK/pipe" --epochs 2 \
  --trace "$WORK/pipe.txt" 2> "$WORK/pipe.log" || fail "pipe:cat replay"
cmp -s "$WORK/ref.txt" "$WORK/pipe.txt" || fail "pipe:cat batches differ from the local ones"
# A command that damages its first answer for one shard: the check catches it, the second fetch is good.
cat > "$WORK/flaky.sh" <<'EOF'
#!/bin/sh
if [ "$(basename "$1")" = shard-000002.tar ] && mkdir "$2" 2> /dev/null; then
  head -c 5000 "$1"; exit 0
fi
exec cat "$1"
EOF
chmod +x "$WORK/flaky.sh"
"$STRIDE" "${replay[@]}" --data-path "pipe:$WORK/flaky.sh $DATA/{split}/{shard} $WORK/flaky.once" \
  --cache-dir "$WORK/flaky" --epochs 1 --trace "$WORK/flaky.txt" 2> "$WORK/flaky.log" || fail "flaky pipe"
head -n 64 "$WORK/ref.txt" | cmp -s - "$WORK/flaky.txt" || fail "flaky pipe: batches differ"
grep -q "shard-000002.tar .* fails its check (5000 bytes but the index records" "$WORK/flaky.log" ||
  fail "flaky pipe: the short answer was not caught"
set +e
"$STRIDE" "${replay[@]}" --data-path "pipe:cat $WORK/nope/{split}/{shard}" --cache-dir "$WORK/pipe" --epochs 1 \
  2> "$WORK/pipe-fail.log"
rc=$?
set -e
[ $rc = 1 ] || fail "failing pipe: exit code $rc"
grep -q "\`cat $WORK/nope/train/index.pb\` failed with exit code 1; stderr: cat: $WORK/nope/train/index.pb: No such file" \
  "$WORK/pipe-fail.log" || fail "failing pipe: stderr not in the error: $(tail -1 "$WORK/pipe-fail.log")"

echo "== stride train over HTTP consumes the local run's samples"
train=(train --model resnet20 --batch-size 32 --epochs 1 --max-steps 6 --threads 1 --workers 1 --seed 4
       --print-freq 100 --status-port -1 --trace-samples)
"$STRIDE" "${train[@]}" --data-path "$DATA" --output-dir "$WORK/train-local" > "$WORK/train-local.log" 2>&1 ||
  fail "local training"
"$STRIDE" "${train[@]}" --data-path "$URL" --cache-dir "$WORK/train-cache" --output-dir "$WORK/train-http" \
  > "$WORK/train-http.log" 2>&1 || fail "training over HTTP"
cmp -s "$WORK/train-local/samples/rank-0.txt" "$WORK/train-http/samples/rank-0.txt" ||
  fail "training over HTTP consumed other samples"
# The rank's fetch totals reach the job's status (heartbeat fields 40-45): downloads over HTTP, none locally.
$PY - "$WORK/train-http/status.json" "$WORK/train-local/status.json" <<'PYEOF' || fail "data source totals in status.json"
import json, sys
http, local = (json.load(open(p))["ranks"][0]["data"] for p in sys.argv[1:3])
assert http["bytes_fetched"] > 0 and http["shards_fetched"] >= 1 and http["cache_hits"] == 0, http
assert all(v == 0 for v in local.values()), local
PYEOF
stop_nginx
set +e
"$STRIDE" "${train[@]}" --data-path "$URL" --cache-dir "$WORK/train-cache2" --fetch-retries 1 \
  --output-dir "$WORK/train-gone" > "$WORK/train-gone.log" 2>&1
rc=$?
set -e
[ $rc = 1 ] || fail "training with the server gone: exit code $rc"
grep -q "rank 0: cannot fetch http://127.0.0.1:$PORT/data/train/index.pb after 2 attempts" "$WORK/train-gone.log" ||
  fail "training with the server gone: $(tail -1 "$WORK/train-gone.log")"
echo "PASS: HTTP and pipe: sources read the local batches through every cache state and fault"
