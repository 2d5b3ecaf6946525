#!/usr/bin/env bash
# What --snapshot-every costs a run without failures: 2 ranks (mpirun, 1 thread each), interleaved pairs A (no
# snapshots) and B (--snapshot-every N), the order alternating (A B, B A, ...). Each run's step time is measured
# between its train records at steps 50 and STEPS (start-up and warm-up excluded); the result is the median of the
# per-pair ratios B/A with min-max (DESIGN.md section 8). Each pair also prints the snapshot's own figures from
# metrics.jsonl: the clone on the training thread and the write on the writer thread, as a share of N steps.
#   bash bench/snapshot_cost.sh [PAIRS=4] [STEPS=600] [N=10] [MODEL=resnet20]
set -euo pipefail
cd "$(dirname "$0")/.."
PAIRS=${1:-4}
STEPS=${2:-600}
N=${3:-10}
MODEL=${4:-resnet20}
STRIDE=$(realpath "${STRIDE:-build/stride}")
OUT=${STRIDE_BENCH_DIR:-/tmp/stride-bench}/snapshot_cost
PY=/usr/bin/python3
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
rm -rf "$OUT" && mkdir -p "$OUT"
"$STRIDE" shard --quiet --format fashion-mnist --input /usr/share/datasets/fashion-mnist --output "$OUT/data" \
  --samples-per-shard 5000 > /dev/null
flags=(--model "$MODEL" --data-path "$OUT/data" --epochs 100 --batch-size 32 --seed 5 --threads 1 --workers 1
       --print-freq 10 --max-steps "$STEPS" --status-port -1)
run_a() { mpirun -np 2 --bind-to none "$STRIDE" train "${flags[@]}" --output-dir "$OUT/a$1" > "$OUT/a$1.log" 2>&1; }
run_b() {
  mpirun -np 2 --bind-to none "$STRIDE" train "${flags[@]}" --output-dir "$OUT/b$1" --snapshot-every "$N" \
    > "$OUT/b$1.log" 2>&1
}
step_time() {  # RUN_DIR -> seconds per step between step 50 and the last train record
  $PY -c "import json, sys
recs = [json.loads(l) for l in open(sys.argv[1]) if '\"type\":\"train\"' in l]
a = next(r for r in recs if r['step'] >= 50)
b = recs[-1]
print((b['time'] - a['time']) / (b['step'] - a['step']))" "$1/metrics.jsonl"
}
ratios=()
for p in $(seq 1 "$PAIRS"); do
  if [ $((p % 2)) = 1 ]; then run_a "$p" && run_b "$p"; else run_b "$p" && run_a "$p"; fi
  a=$(step_time "$OUT/a$p")
  b=$(step_time "$OUT/b$p")
  r=$($PY -c "print($b / $a)")
  ratios+=("$r")
  $PY -c "import json, statistics, sys
recs = [json.loads(l) for l in open(sys.argv[1]) if '\"type\":\"snapshot\"' in l]
p, a, b, r, n = sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6])
clone = statistics.median(x['stall_seconds'] for x in recs)
write = statistics.median(x['write_seconds'] for x in recs[1:])
mb = statistics.median(x['bytes'] for x in recs[1:]) / 2**20
print(f'pair {p}: no snapshots {a * 1000:.2f} ms/step, --snapshot-every {n} {b * 1000:.2f} ms/step (ratio {r:.4f}); '
      f'{len(recs)} snapshots of {mb:.1f} MiB: clone {clone * 1000:.2f} ms on the training thread, write '
      f'{write * 1000:.2f} ms on the writer thread = {(clone + write) / (n * a) * 100:.2f}% of {n} steps')" \
    "$OUT/b$p/metrics.jsonl" "$p" "$a" "$b" "$r" "$N"
done
$PY -c "import statistics, sys; r = [float(x) for x in sys.argv[1:]]; print(f'snapshot cost: step time x{statistics.median(r):.4f} (min {min(r):.4f}, max {max(r):.4f}) over {len(r)} interleaved pairs')" "${ratios[@]}"
