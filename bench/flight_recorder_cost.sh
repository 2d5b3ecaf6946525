#!/usr/bin/env bash
# What the collective flight recorder costs: `stride train` at 2 ranks x 1 thread with --flight-recorder 2000
# (the default) and 0 (off: the communicator is not wrapped), alternated round by round (on, off, on, off, ...)
# so machine drift hits both alike. Per run: the mean step time of the progress intervals after the first
# WARMUP steps (metrics.jsonl img/s). Per round the ratio on/off; reported as the median with min-max.
#   bash bench/flight_recorder_cost.sh [ROUNDS] [MODEL] [STEPS]   defaults 5 resnet20 60 (results: docs/benchmarks.md)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-5}
MODEL=${2:-resnet20}
STEPS=${3:-60}
WARMUP=${WARMUP:-10}
STRIDE=${STRIDE:-build/stride}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
MPI=(mpirun --oversubscribe --bind-to none -np 2 -x OMP_NUM_THREADS)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
"$STRIDE" shard --quiet --format fashion-mnist --input /usr/share/datasets/fashion-mnist --output "$WORK/data" \
  --samples-per-shard 5000 > /dev/null
echo "machine: $(getconf _NPROCESSORS_ONLN) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)," \
  "load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "train --model $MODEL --batch-size 32 --max-steps $STEPS, 2 ranks x 1 thread; warm-up $WARMUP steps"
OUTF=$WORK/results
for r in $(seq 1 "$ROUNDS"); do
  for n in 2000 0; do
    out=$WORK/run-$r-$n
    "${MPI[@]}" "$STRIDE" train --model "$MODEL" --data-path "$WORK/data" --epochs 1 --batch-size 32 --lr 0.1 \
      --seed 5 --threads 1 --workers 1 --print-freq 5 --status-port -1 --max-steps "$STEPS" \
      --flight-recorder "$n" --output-dir "$out" > "$out.log" 2>&1
    ips=$(/usr/bin/python3 -c "
import json, sys
rows = [json.loads(l) for l in open('$out/metrics.jsonl') if '\"train\"' in l]
rows = [r for r in rows if r['type'] == 'train' and r['step'] > $WARMUP]
print(sum(r['img_per_s'] for r in rows) / len(rows))")
    echo "$r $n $ips" | tee -a "$OUTF"
  done
done
/usr/bin/python3 - "$OUTF" <<'PYEOF'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
by = {}
for r, n, ips in rows:
    by.setdefault(r, {})[n] = float(ips)
# step time on / step time off = img/s off / img/s on
ratios = sorted(v["0"] / v["2000"] for v in by.values() if "0" in v and "2000" in v)
print(f"step time with / without the flight recorder: median {statistics.median(ratios):.4f} "
      f"(min {ratios[0]:.4f}, max {ratios[-1]:.4f}) over {len(ratios)} rounds")
PYEOF
