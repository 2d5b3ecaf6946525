#!/usr/bin/env bash
# Step time of `stride train` with and without 100 GET/s on the status endpoint (the issue's 2% budget).
# Alternates unloaded (A) and loaded (B) runs, PAIRS pairs after a warm-up run, and reports the median of the
# per-pair img/s ratios B/A with min-max (docs/benchmarks.md). The load (`stride bench http`, C++, so the
# generator itself costs little CPU) spreads over /status, /metrics, /history, /healthz and / (one connection
# per request, loopback).
#   bash bench/status_load.sh [PAIRS]     (env STRIDE, THREADS, STEPS, RATE)
set -euo pipefail
cd "$(dirname "$0")/.."
PAIRS=${1:-5}
STRIDE=${STRIDE:-build/stride}
THREADS=${THREADS:-2}
STEPS=${STEPS:-120}
WORK=${WORK:-/tmp/stride-status-load}
PY=/usr/bin/python3
mkdir -p "$WORK"
[ -f "$WORK/data/index.pb" ] || [ -n "$(ls "$WORK/data" 2>/dev/null)" ] ||
  "$STRIDE" shard --quiet --format fashion-mnist --input /usr/share/datasets/fashion-mnist --output "$WORK/data" > /dev/null

run() {  # run NAME LOAD(0|1) -> prints median img/s after the first 30 steps
  local dir=$WORK/$1
  rm -rf "$dir"
  "$STRIDE" train --model resnet20 --data-path "$WORK/data" --epochs 1 --batch-size 128 --threads "$THREADS" \
    --workers 1 --max-steps "$STEPS" --print-freq 10 --status-port 0 --output-dir "$dir" > "$dir.log" 2>&1 &
  local pid=$!
  if [ "$2" == 1 ]; then
    for _ in $(seq 1 600); do [ -f "$dir/coordinator.json" ] && break; sleep 0.05; done
    url=$($PY -c "import json; print(json.load(open('$dir/coordinator.json'))['status_url'])")
    # LOADGEN_NICE=19 (default) stands in for a scraper on another machine: on 2 cores the generator's own CPU
    # would otherwise be counted against the endpoint. LOADGEN_NICE=0 measures both together.
    nice -n "${LOADGEN_NICE:-19}" "$STRIDE" bench http --url "$url" --rate "${RATE:-100}" --seconds 3600 \
      --until-pid "$pid" >&2 &
  fi
  wait "$pid"
  wait 2>/dev/null || true
  $PY -c "
import json, statistics, sys
r = [json.loads(l) for l in open('$dir/metrics.jsonl') if '\"type\":\"train\"' in l]
print(statistics.median(x['img_per_s'] for x in r if x['step'] > 30))"
}

echo "machine: $(nproc --all) cores, load $(cut -d' ' -f1-3 /proc/loadavg); resnet20 b128, $THREADS threads, $STEPS steps," \
  "load generator nice ${LOADGEN_NICE:-19}"
run warmup 0 > /dev/null
ratios=()
for i in $(seq 1 "$PAIRS"); do
  a=$(run a 0)
  b=$(run b 1)
  r=$($PY -c "print(f'{$b / $a:.4f}')")
  ratios+=("$r")
  echo "pair $i: unloaded $a img/s, loaded $b img/s, ratio $r"
done
$PY -c "
import statistics
r = [float(x) for x in '${ratios[*]}'.split()]
print(f'loaded/unloaded img/s: median {statistics.median(r):.4f} (min {min(r):.4f}, max {max(r):.4f}) over {len(r)} pairs')"
