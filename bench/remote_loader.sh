#!/usr/bin/env bash
# Loader throughput from local shards against the same shards over HTTP (nginx on 127.0.0.1) with a warm cache and
# with a cold one (an empty --cache-dir each round). One epoch of Fashion-MNIST's training split per run through
# `stride bench loader --epochs 1` (uint8, no crop: the loader's I/O path, not augmentation), interleaved
# local / warm / cold per round; reports per-round ratios as the median (min-max) over rounds, and the cold runs'
# download rate.
#   bash bench/remote_loader.sh [ROUNDS] [WORKERS]     ROUNDS default 5, WORKERS default 2
# Run it under the CPU lock on a shared machine: flock /work/locks/cpu.lock bash bench/remote_loader.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-5}
WORKERS=${2:-2}
STRIDE=$(realpath build/stride)
WORK=$(mktemp -d /tmp/stride-remote-bench.XXXXXX)
trap '[ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")"; rm -rf "$WORK"' EXIT
"$STRIDE" shard --quiet --format fashion-mnist --input /usr/share/datasets/fashion-mnist --output "$WORK/www/fm" \
  --samples-per-shard 5000 > /dev/null
PORT=$(/usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mkdir -p "$WORK/nginx"
cat > "$WORK/nginx.conf" <<EOF
$([ "$(id -u)" = 0 ] && echo "user root;")
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/nginx/error.log;
events { worker_connections 64; }
http {
  access_log off;
  client_body_temp_path $WORK/nginx/body;
  proxy_temp_path $WORK/nginx/proxy;
  fastcgi_temp_path $WORK/nginx/fastcgi;
  uwsgi_temp_path $WORK/nginx/uwsgi;
  scgi_temp_path $WORK/nginx/scgi;
  server { listen 127.0.0.1:$PORT; root $WORK/www; }
}
EOF
"$(command -v nginx || echo /usr/sbin/nginx)" -c "$WORK/nginx.conf" -p "$WORK/nginx"
sleep 0.5
run() {  # DATA_PATH [flags] -> "seconds bytes_fetched"
  "$STRIDE" bench loader --data-path "$1" "${@:2}" --epochs 1 --batch-size 256 --workers "$WORKERS" --crop none \
    --no-flip --uint8 --trace /dev/null 2>&1 |
    sed -n 's/^replay: [0-9]* batches in \([0-9.]*\) s;.*fetched \([0-9]*\) bytes.*/\1 \2/p'
}
URL=http://127.0.0.1:$PORT/fm
run "$URL" --cache-dir "$WORK/warm" > /dev/null  # fills the warm cache (and warms the page cache)
run "$WORK/www/fm" > /dev/null
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(getconf _NPROCESSORS_ONLN) cores;" \
  "load $(cut -d' ' -f1-3 /proc/loadavg); workers $WORKERS; 60000 samples in 12 shards"
printf '%-6s %10s %10s %10s %12s\n' round local_s warm_s cold_s cold_MB/s
: > "$WORK/ratios"
for r in $(seq "$ROUNDS"); do
  read -r l _ < <(run "$WORK/www/fm")
  read -r w _ < <(run "$URL" --cache-dir "$WORK/warm")
  rm -rf "$WORK/cold"
  read -r c bytes < <(run "$URL" --cache-dir "$WORK/cold")
  printf '%-6s %10.2f %10.2f %10.2f %12.1f\n' "$r" "$l" "$w" "$c" "$(echo "$bytes / $c / 1000000" | bc -l)"
  echo "$l $w $c" >> "$WORK/ratios"
done
/usr/bin/python3 - "$WORK/ratios" <<'PYEOF'
import statistics, sys
rows = [tuple(map(float, l.split())) for l in open(sys.argv[1])]
for name, k in (("warm", 1), ("cold", 2)):
    r = [row[0] / row[k] for row in rows]  # throughput relative to local (time ratio inverted)
    print(f"HTTP {name} / local throughput: median {statistics.median(r):.3f} (min {min(r):.3f}, max {max(r):.3f})")
PYEOF
