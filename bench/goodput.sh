#!/usr/bin/env bash
# Goodput under failures (#18): a reference 2-rank job under `stride launch`, then the same job while a failure
# process kills a random rank with kill -9 at exponentially distributed gaps of mean M seconds, once with disk
# checkpoints only and once with in-memory snapshots. Per variant: wall time, goodput (reference time / time),
# the restarts, recovery time (kill to the first step after it: the launcher's "recovered" lines), the steps redone
# per failure, and whether the final weights are bitwise equal to the reference's. Goodput is also given against
# the reference scaled by the ratio of the two runs' median step times, which takes out the vCPUs' drift between
# runs (the failures cost restarts and redone steps, not slower steps).
#   bash bench/goodput.sh [M_SECONDS=30] [STEPS=1200] [SNAPSHOT_EVERY=10] [CHECKPOINT_EVERY=100]
set -euo pipefail
cd "$(dirname "$0")/.."
M=${1:-30}
STEPS=${2:-1200}
SNAP=${3:-10}
CKPT=${4:-100}
STRIDE=$(realpath "${STRIDE:-build/stride}")
OUT=${STRIDE_BENCH_DIR:-/tmp/stride-bench}/goodput
PY=/usr/bin/python3
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
rm -rf "$OUT" && mkdir -p "$OUT"
trap 'pkill -9 -f "$OUT/" 2>/dev/null || true' EXIT
"$STRIDE" shard --quiet --format fashion-mnist --input /usr/share/datasets/fashion-mnist --output "$OUT/data" \
  --samples-per-shard 5000 > /dev/null
flags=(--model resnet20 --data-path "$OUT/data" --epochs 100 --batch-size 32 --seed 5 --threads 1 --workers 1
       --print-freq 1 --max-steps "$STEPS" --checkpoint-every "$CKPT" --heartbeat-interval 0.25 --heartbeat-timeout 5)
launch=(launch -n 2 --max-restarts 1000 --restart-backoff 0.2 --status-port -1)

run() {  # run NAME FAILURES(0|1) EXTRA...: prints the wall time in seconds
  local name=$1 failures=$2
  shift 2
  local t0 t1 pid
  t0=$(date +%s.%N)
  "$STRIDE" "${launch[@]}" -- "${flags[@]}" --output-dir "$OUT/$name" "$@" > "$OUT/$name.log" 2>&1 &
  pid=$!
  if [ "$failures" = 1 ]; then
    (
      while kill -0 "$pid" 2>/dev/null; do
        sleep "$($PY -c "import random; print(random.expovariate(1 / $M))")"
        victim=$(pgrep -f "^$STRIDE train .*--output-dir $OUT/$name( |$)" | shuf -n 1 || true)  # ranks, not mpirun
        [ -n "$victim" ] && kill -9 "$victim" 2>/dev/null && echo "kill $(date +%s.%N)" >> "$OUT/$name.kills"
      done
    ) &
  fi
  wait "$pid"
  t1=$(date +%s.%N)
  $PY -c "print(f'{$t1 - $t0:.2f}')"
}

echo "== reference (no failures)"
t_ref=$(run ref 0)
echo "reference: $t_ref s"
for variant in disk snapshot; do
  extra=()
  [ "$variant" = snapshot ] && extra=(--snapshot-every "$SNAP")
  echo "== $variant under kill -9 every ${M} s on average"
  t=$(run "$variant" 1 "${extra[@]}")
  $PY - "$OUT" "$variant" "$t_ref" "$t" "$STEPS" << 'EOF'
import re, statistics, subprocess, sys
out, name, t_ref, t, steps = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
log = open(f"{out}/{name}.log").read().splitlines()
recov, redone, sources, last = [], [], [], 0
for line in log:
    m = re.search(r"step (\d+)/\d+ loss", line)
    if m:
        last = max(last, int(m.group(1)))
    m = re.match(r"resume: (\S+) \(step (\d+), ", line)
    if m:
        redone.append(last - int(m.group(2)))
        last = int(m.group(2))
        sources.append("disk" if m.group(1).startswith(f"{out}/{name}/") else "memory")
    m = re.match(r"launch: recovered from failure \d+ in ([0-9.]+) s", line)
    if m:
        recov.append(float(m.group(1)))
def step_time(run):  # median seconds per step between consecutive train records (print-freq 1) of one start
    import json
    recs = [json.loads(l) for l in open(f"{out}/{run}/metrics.jsonl") if '"type":"train"' in l]
    d = [b["time"] - a["time"] for a, b in zip(recs, recs[1:]) if b["step"] == a["step"] + 1]
    return statistics.median(d)
# The vCPUs' speed drifts between runs: the reference's time scaled by the two runs' own step times takes that out.
drift = step_time(name) / step_time("ref")
final = f"step-{steps:08d}"
same = subprocess.run(["cmp", f"{out}/ref/checkpoints/{final}/model.safetensors",
                       f"{out}/{name}/checkpoints/{final}/model.safetensors"], capture_output=True).returncode == 0
med = statistics.median(recov) if recov else float("nan")
print(f"{name}: {t:.1f} s, goodput {t_ref / t:.3f} ({t_ref * drift / t:.3f} with the reference scaled by the step "
      f"time ratio {drift:.3f}); {len(recov)} recoveries, median {med:.2f} s, max "
      f"{max(recov) if recov else float('nan'):.2f} s; steps redone per failure: "
      f"median {statistics.median(redone) if redone else 0}, max {max(redone) if redone else 0}; "
      f"resumed from memory {sources.count('memory')}, disk {sources.count('disk')}; "
      f"final weights {'bitwise equal to' if same else 'DIFFERENT from'} the reference")
EOF
done
