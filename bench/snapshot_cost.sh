#!/usr/bin/env bash
# What --snapshot-every costs a run without failures: 2 ranks (mpirun, 1 thread each), ResNet-20, interleaved
# pairs A (no snapshots) and B (--snapshot-every N). The step time of each run is measured between its train
# records at steps 50 and STEPS (start-up and warm-up excluded); the result is the median of the per-pair ratios
# B/A with min-max (DESIGN.md section 8).
#   bash bench/snapshot_cost.sh [PAIRS=3] [STEPS=600] [N=10] [MODEL=resnet20]
set -euo pipefail
cd "$(dirname "$0")/.."
PAIRS=${1:-3}
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
step_time() {  # RUN_DIR -> seconds per step between step 50 and the last train record
  $PY - "$1/metrics.jsonl" << 'EOF'
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1]) if '"type":"train"' in l]
a = next(r for r in recs if r["step"] >= 50)
b = recs[-1]
print((b["time"] - a["time"]) / (b["step"] - a["step"]))
EOF
}
ratios=()
for p in $(seq 1 "$PAIRS"); do
  mpirun -np 2 --bind-to none "$STRIDE" train "${flags[@]}" --output-dir "$OUT/a$p" > "$OUT/a$p.log" 2>&1
  mpirun -np 2 --bind-to none "$STRIDE" train "${flags[@]}" --output-dir "$OUT/b$p" --snapshot-every "$N" \
    > "$OUT/b$p.log" 2>&1
  a=$(step_time "$OUT/a$p")
  b=$(step_time "$OUT/b$p")
  taken=$(grep -c '"type":"snapshot"' "$OUT/b$p/metrics.jsonl" || true)
  stall=$($PY -c "import json,statistics,sys; print(statistics.median(json.loads(l)['stall_seconds'] for l in open(sys.argv[1]) if '\"type\":\"snapshot\"' in l) * 1000)" "$OUT/b$p/metrics.jsonl")
  r=$($PY -c "print($b / $a)")
  ratios+=("$r")
  printf 'pair %d: no snapshots %.2f ms/step, --snapshot-every %d %.2f ms/step (ratio %.4f; %d snapshots, clone %.2f ms median)\n' \
    "$p" "$($PY -c "print($a * 1000)")" "$N" "$($PY -c "print($b * 1000)")" "$r" "$taken" "$stall"
done
$PY -c "import statistics, sys; r = [float(x) for x in sys.argv[1:]]; print(f'snapshot cost: step time x{statistics.median(r):.4f} (min {min(r):.4f}, max {max(r):.4f}) over {len(r)} interleaved pairs')" "${ratios[@]}"
