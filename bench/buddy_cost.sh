#!/usr/bin/env bash
# What buddy copies of in-memory snapshots cost (issue #18, Note [Buddy copies] in trainer/snapshot.h): two
# emulated hosts with one rank each, each host's link shaped with tc tbf to RATE and its own /dev/shm
# (tests/system/nsrsh, NSRSH_HOST_SHM). Three variants of the same training run, interleaved in every round, the
# order rotating (DESIGN.md section 8):
#   none    no snapshots
#   local   --snapshot-every N --snapshot-buddy off (each rank's snapshots in its own host's RAM only)
#   buddy   --snapshot-every N (a copy of each rank's snapshots on the other host, sent across the link)
# Each run's step time is measured between its train records at step 50 and STEPS (start-up excluded). Reported:
# per round the three step times and the ratios buddy/local and buddy/none; the medians (min-max) over rounds; the
# bytes a rank sends to its buddy per snapshot (metrics.jsonl); and from rank 0's flight recorder
# (trace/rank-0.json) each run's first gradient bucket, its wait behind other collectives (enqueue to start) and
# its run time, medians over the steps, and the median time of a copy's chunk: a copy that holds up training
# shows there, through the noise of the step times.
#   bash bench/buddy_cost.sh [RATE=1gbit] [ROUNDS=4] [STEPS=400] [N=10] [MODEL=resnet20]
# Needs root (network namespaces).
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${1:-1gbit}
ROUNDS=${2:-4}
STEPS=${3:-400}
N=${4:-10}
MODEL=${5:-resnet20}
STRIDE=$(realpath "${STRIDE:-build/stride}")
PY=/usr/bin/python3
[ "$(id -u)" == 0 ] || { echo "bench/buddy_cost.sh: network namespaces need root" >&2; exit 2; }
source tests/system/lib.sh
OUT=${STRIDE_BENCH_DIR:-/tmp/stride-bench}/buddy_cost
rm -rf "$OUT" && mkdir -p "$OUT"
tag=sbb$$
A=${tag}a
B=${tag}b
F=${tag}f
NET=10.81.$(( $$ % 200 + 20 ))
export NSRSH_HOST_SHM=/dev/shm/stride-bench-hosts-$tag
cleanup() {
  for ns in $A $B; do for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done; done
  for ns in $A $B $F; do ip netns del "$ns" 2>/dev/null || true; done
  rm -rf "$NSRSH_HOST_SHM"
}
trap cleanup EXIT
make_hosts "$F" "$NET" "$A" "$B"
if [ "$RATE" != none ]; then
  for ns in $A $B; do ip netns exec "$ns" tc qdisc add dev eth0 root tbf rate "$RATE" burst 256kb latency 50ms; done
fi
printf "%s slots=1\n%s slots=1\n" "$A" "$B" > "$OUT/hosts"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
"$STRIDE" shard --quiet --format fashion-mnist --input /usr/share/datasets/fashion-mnist --output "$OUT/data" \
  --samples-per-shard 5000 > /dev/null
flags=(--model "$MODEL" --data-path "$OUT/data" --epochs 100 --batch-size 32 --seed 5 --threads 1 --workers 1
       --print-freq 10 --max-steps "$STEPS" --status-port -1 --coordinator-bind $NET.1)
run() {  # run VARIANT ROUND
  local extra=()
  case $1 in
    local) extra=(--snapshot-every "$N" --snapshot-buddy off --snapshot-dir /dev/shm/snap) ;;
    buddy) extra=(--snapshot-every "$N" --snapshot-buddy on --snapshot-dir /dev/shm/snap) ;;
  esac
  ip netns exec "$A" mpirun -np 2 --hostfile "$OUT/hosts" --bind-to none --mca plm_rsh_agent "$PWD/tests/system/nsrsh" \
    --mca btl self,tcp --mca btl_tcp_if_include $NET.0/24 --mca oob_tcp_if_include $NET.0/24 -x OMP_NUM_THREADS \
    "$STRIDE" train "${flags[@]}" "${extra[@]}" --output-dir "$OUT/$1$2" > "$OUT/$1$2.log" 2>&1 ||
    { tail -20 "$OUT/$1$2.log"; echo "bench/buddy_cost.sh: run $1$2 failed" >&2; exit 1; }
}
variants=(none local buddy)
echo "buddy copies: 2 hosts x 1 rank, link $RATE, $MODEL, batch 32 per rank, $STEPS steps, --snapshot-every $N"
for r in $(seq 1 "$ROUNDS"); do
  order=()
  for i in 0 1 2; do order+=("${variants[$(( (i + r - 1) % 3 ))]}"); done
  for v in "${order[@]}"; do run "$v" "$r"; done
  $PY - "$OUT" "$r" "$N" "${order[*]}" <<'PYEOF'
import json, statistics, sys
out, r, n, order = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
def step_time(run):
    recs = [json.loads(l) for l in open(f"{out}/{run}/metrics.jsonl") if '"type":"train"' in l]
    a = next(x for x in recs if x["step"] >= 50)
    return (recs[-1]["time"] - a["time"]) / (recs[-1]["step"] - a["step"])
t = {v: step_time(v + r) for v in ("none", "local", "buddy")}
def trace(run):
    ev = json.load(open(f"{out}/{run}/trace/rank-0.json"))["entries"]
    b0 = [e for e in ev if e["kind"] == "allreduce" and e.get("origin", "").startswith("bucket 0")]
    chunks = [(e["end_s"] - e["start_s"]) * 1e3 for e in ev if e["kind"] == "sendrecv" and e["bytes"] > 8]
    wait = statistics.median((e["start_s"] - e["enqueue_s"]) * 1e3 for e in b0)
    run_ms = statistics.median((e["end_s"] - e["start_s"]) * 1e3 for e in b0)
    return f"bucket 0 wait {wait:.2f} ms, run {run_ms:.2f} ms" + (
        f"; {len(chunks)} chunks, {statistics.median(chunks):.2f} ms each" if chunks else "")
for v in ("none", "local", "buddy"):
    print(f"  {v}{r}: {trace(v + r)}")
snaps = [json.loads(l) for l in open(f"{out}/buddy{r}/metrics.jsonl") if '"type":"snapshot"' in l]
sent = statistics.median(x["buddy_sent_bytes"] for x in snaps[2:]) / 1e6
kept = snaps[-1]["buddy_copies_written"]
stall = statistics.median(x["stall_seconds"] for x in snaps)
print(f"round {r} ({order}): none {t['none'] * 1e3:.2f} ms/step, local {t['local'] * 1e3:.2f}, "
      f"buddy {t['buddy'] * 1e3:.2f}; buddy/local {t['buddy'] / t['local']:.4f}, buddy/none "
      f"{t['buddy'] / t['none']:.4f}; {len(snaps)} snapshots, {sent:.2f} MB to the buddy each, {kept} copies of the other rank's written, "
      f"clone {stall * 1e3:.2f} ms", flush=True)
with open(f"{out}/ratios", "a") as f:
    f.write(f"{t['buddy'] / t['local']} {t['buddy'] / t['none']} {t['local'] / t['none']}\n")
PYEOF
done
$PY - "$OUT/ratios" <<'PYEOF'
import statistics, sys
rows = [list(map(float, l.split())) for l in open(sys.argv[1])]
for i, name in enumerate(("buddy/local", "buddy/none", "local/none")):
    v = [row[i] for row in rows]
    print(f"{name}: x{statistics.median(v):.4f} (min {min(v):.4f}, max {max(v):.4f}) over {len(v)} rounds")
PYEOF
