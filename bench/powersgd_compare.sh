#!/usr/bin/env bash
# PowerSGD vs plain all-reduce (and no communication) at 2 ranks x 1 thread: `stride bench step` runs alternated
# round by round (none, powersgd, no-comm, none, ...) so machine drift hits them alike; per round the ratio
# powersgd / none, reported as the median with min-max, and the bytes each all-reduces per step.
#   bash bench/powersgd_compare.sh [ROUNDS] [RANK] [-- extra bench step flags]   (results: docs/benchmarks.md)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-5}
RANK=${2:-4}
shift $(($# > 2 ? 2 : $#))
[ "${1:-}" = "--" ] && shift
STRIDE=${STRIDE:-build/stride}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
MPI=(mpirun --oversubscribe --bind-to none -np 2 -x OMP_NUM_THREADS)
ARGS=(--model resnet50 --batch-size 16 --image-size 64 --num-classes 100 --steps 6 --warmup 2 --threads 1 "$@")
echo "machine: $(getconf _NPROCESSORS_ONLN) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)," \
  "load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "bench step ${ARGS[*]}; powersgd rank $RANK"
OUTF=$(mktemp)
for r in $(seq 1 "$ROUNDS"); do
  for v in none powersgd no-comm; do
    case $v in
      none) line=$("${MPI[@]}" "$STRIDE" bench step "${ARGS[@]}") ;;
      powersgd) line=$("${MPI[@]}" "$STRIDE" bench step "${ARGS[@]}" --grad-compression powersgd --powersgd-rank "$RANK") ;;
      no-comm) line=$("${MPI[@]}" "$STRIDE" bench step "${ARGS[@]}" --no-comm) ;;
    esac
    echo "$r|$v|$line" | tee -a "$OUTF" | cut -c1-200
  done
done
/usr/bin/python3 - "$OUTF" <<'PYEOF'
import json, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    r, v, js = line.rstrip("\n").split("|", 2)
    runs.setdefault(v, {})[int(r)] = json.loads(js)
for v, by in runs.items():
    ips = [d["images_per_s"] for d in by.values()]
    d = next(iter(by.values()))
    print(f"{v:9s} images/s median {statistics.median(ips):7.1f} (min {min(ips):.1f}, max {max(ips):.1f}); "
          f"bytes/step {d.get('bytes_per_step', 0):,}; comm ms/step {statistics.median(x.get('comm_ms_per_step', 0) for x in by.values()):.1f}; "
          f"exposed ms/step {statistics.median(x.get('exposed_comm_ms_per_step', 0) for x in by.values()):.1f}")
def ratio(a, b):
    rs = [runs[a][r]["images_per_s"] / runs[b][r]["images_per_s"] for r in runs[a] if r in runs[b]]
    return f"{statistics.median(rs):.3f} (min {min(rs):.3f}, max {max(rs):.3f}, {len(rs)} pairs)"
print("powersgd / none   ", ratio("powersgd", "none"))
print("none / no-comm    ", ratio("none", "no-comm"))
print("powersgd / no-comm", ratio("powersgd", "no-comm"))
b = runs["none"][1]["bytes_per_step"] / runs["powersgd"][1]["bytes_per_step"]
print(f"bytes none / powersgd: {b:.1f}x")
PYEOF
