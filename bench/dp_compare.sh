#!/usr/bin/env bash
# Data-parallel training throughput at 2 ranks x 1 thread (issue: communication efficiency, overlap, SyncBN cost,
# Stride vs PyTorch DistributedDataParallel), all variants alternated round by round in one run so machine drift
# hits them alike; medians reported.
#   bash bench/dp_compare.sh [ROUNDS]        (results: docs/benchmarks.md)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
STRIDE=${STRIDE:-build/stride}
PY=/usr/bin/python3
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
MPI=(mpirun --oversubscribe --bind-to none -np 2 -x OMP_NUM_THREADS)
echo "machine: $(nproc --all) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load $(cut -d' ' -f1-3 /proc/loadavg)"
OUTF=$(mktemp)
run_case() {
  local label=$1; shift
  local args=("$@")
  for r in $(seq 1 "$ROUNDS"); do
    for v in overlap no-comm no-overlap sync-bn one-rank ddp ddp-nosync; do
      case $v in
        overlap) line=$("${MPI[@]}" "$STRIDE" bench step "${args[@]}" --threads 1) ;;
        no-comm) line=$("${MPI[@]}" "$STRIDE" bench step "${args[@]}" --threads 1 --no-comm) ;;
        no-overlap) line=$("${MPI[@]}" "$STRIDE" bench step "${args[@]}" --threads 1 --no-overlap) ;;
        sync-bn) line=$("${MPI[@]}" "$STRIDE" bench step "${args[@]}" --threads 1 --sync-bn) ;;
        one-rank) line=$("$STRIDE" bench step "${args[@]}" --threads 1 --comm-backend single) ;;
        # A fresh rendezvous port each time (a port still in TIME_WAIT from the last run can stall gloo's store).
        ddp) line=$(timeout 600 "${MPI[@]}" $PY bench/torch_ddp_step.py "${args[@]}" --threads 1 \
                      --port $((20000 + RANDOM % 20000)) 2>"$OUTF.err" | grep '^{') ;;
        ddp-nosync) line=$(timeout 600 "${MPI[@]}" $PY bench/torch_ddp_step.py "${args[@]}" --threads 1 --no-sync \
                      --port $((20000 + RANDOM % 20000)) 2>"$OUTF.err" | grep '^{') ;;
      esac
      pkill -9 -f bench/torch_ddp_step.py 2>/dev/null || true  # never let a straggler steal a core from the next run
      echo "$label|$v|$line" | tee -a "$OUTF" | cut -c1-220
    done
  done
}
run_case resnet20 --model resnet20 --batch-size 64 --image-size 28 --in-channels 1 --num-classes 10 --steps 30 --warmup 3
run_case resnet50 --model resnet50 --batch-size 16 --image-size 64 --num-classes 100 --steps 6 --warmup 2
$PY - "$OUTF" <<'PYEOF'
import json, statistics, sys
rows = {}
extra = {}
for line in open(sys.argv[1]):
    label, variant, js = line.rstrip("\n").split("|", 2)
    d = json.loads(js)
    rows.setdefault((label, variant), []).append(d["images_per_s"])
    if "hidden_fraction" in d:
        extra.setdefault((label, variant), []).append((d["hidden_fraction"], d["comm_ms_per_step"], d["exposed_comm_ms_per_step"]))
for label in dict.fromkeys(k[0] for k in rows):
    med = {v: statistics.median(x) for (l, v), x in rows.items() if l == label}
    print(f"\n{label}: median images/s over {len(rows[(label, 'overlap')])} rounds (2 ranks x 1 thread unless noted)")
    for v, m in med.items():
        print(f"  {v:12s} {m:9.1f}")
    print(f"  communication efficiency (overlap / no-comm)      {med['overlap'] / med['no-comm']:.3f}")
    print(f"  overlap on / off                                  {med['overlap'] / med['no-overlap']:.3f}")
    print(f"  SyncBN step-time cost (overlap / sync-bn - 1)     {med['overlap'] / med['sync-bn'] - 1:+.3f}")
    print(f"  2 ranks / 1 rank (weak scaling)                   {med['overlap'] / med['one-rank']:.3f}")
    print(f"  Stride / PyTorch DDP                              {med['overlap'] / med['ddp']:.3f}")
    print(f"  PyTorch DDP efficiency (ddp / ddp-nosync)         {med['ddp'] / med['ddp-nosync']:.3f}")
    h = extra.get((label, "overlap"))
    if h:
        print(f"  hidden fraction of comm time (overlap)            {statistics.median(x[0] for x in h):.3f} "
              f"(comm {statistics.median(x[1] for x in h):.1f} ms/step, exposed {statistics.median(x[2] for x in h):.1f} ms/step)")
PYEOF
rm -f "$OUTF" "$OUTF.err"
