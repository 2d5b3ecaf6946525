#!/usr/bin/env bash
# Goodput under failures (#18): a reference 2-rank job under `stride launch`, then the same job while a failure
# process kills a random rank with kill -9 at exponentially distributed gaps of mean M seconds, once with disk
# checkpoints only and once with in-memory snapshots. Per variant: wall time, goodput (reference time / time),
# the restarts, recovery time (kill to the first step after it: the launcher's "recovered" lines), the steps redone
# per failure, and whether the final weights are bitwise equal to the reference's. Goodput is also given against
# the reference scaled by the ratio of the two runs' median step times, which takes out the vCPUs' drift between
# runs (the failures cost restarts and redone steps, not slower steps).
#   bash bench/goodput.sh [M_SECONDS=30] [STEPS=1200] [SNAPSHOT_EVERY=10] [CHECKPOINT_EVERY=100]
# MULTIHOST=1: the multi-host variant (needs root). Two emulated hosts (network namespaces, each with its own
# /dev/shm: tests/system/nsrsh, NSRSH_HOST_SHM), one rank each, started by `stride launch --hostfile` in host a.
# Besides the random rank kills, host b dies once, halfway through the run (HOST_KILL_AT of the reference's
# wall time): all its processes killed and its /dev/shm emptied, so with snapshots its rank resumes from its
# buddy copy on host a (the "buddy" count).
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
MULTIHOST=${MULTIHOST:-0}
if [ "$MULTIHOST" = 1 ]; then
  [ "$(id -u)" == 0 ] || { echo "bench/goodput.sh: MULTIHOST=1 needs root (network namespaces)" >&2; exit 2; }
  source tests/system/lib.sh
  tag=sgp$$
  A=${tag}a
  B=${tag}b
  F=${tag}f
  NET=10.82.$(( $$ % 200 + 20 ))
  export NSRSH_HOST_SHM=/dev/shm/stride-bench-hosts-$tag
  trap 'pkill -9 -f "$OUT/" 2>/dev/null || true; for ns in $A $B $F; do ip netns del "$ns" 2>/dev/null || true; done; rm -rf "$NSRSH_HOST_SHM"' EXIT
  make_hosts "$F" "$NET" "$A" "$B"
  printf "%s slots=1\n%s slots=1\n" "$A" "$B" > "$OUT/hosts"
fi
"$STRIDE" shard --quiet --format fashion-mnist --input /usr/share/datasets/fashion-mnist --output "$OUT/data" \
  --samples-per-shard 5000 > /dev/null
flags=(--model resnet20 --data-path "$OUT/data" --epochs 100 --batch-size 32 --seed 5 --threads 1 --workers 1
       --print-freq 1 --max-steps "$STEPS" --checkpoint-every "$CKPT" --heartbeat-interval 0.25 --heartbeat-timeout 5)
launch=(launch -n 2 --max-restarts 1000 --restart-backoff 0.2 --status-port -1)
prefix=()
if [ "$MULTIHOST" = 1 ]; then
  prefix=(ip netns exec "$A")
  launch+=(--hostfile "$OUT/hosts" --iface "$NET.0/24" --coordinator-host "$NET.1"
           --launcher-arg=--mca --launcher-arg=plm_rsh_agent --launcher-arg="$PWD/tests/system/nsrsh"
           --launcher-arg=--mca --launcher-arg=btl --launcher-arg=self,tcp)
fi

run() {  # run NAME FAILURES(0|1) EXTRA...: prints the wall time in seconds
  local name=$1 failures=$2
  shift 2
  local t0 t1 pid
  t0=$(date +%s.%N)
  "${prefix[@]}" "$STRIDE" "${launch[@]}" -- "${flags[@]}" --output-dir "$OUT/$name" "$@" > "$OUT/$name.log" 2>&1 &
  pid=$!
  if [ "$failures" = 1 ] && [ "$MULTIHOST" = 1 ]; then
    (
      sleep "$($PY -c "print($t_ref * ${HOST_KILL_AT:-0.5})")"
      for p in $(ip netns pids "$B"); do kill -9 "$p" 2>/dev/null || true; done
      rm -rf "${NSRSH_HOST_SHM:?}/$B"
      echo "host $(date +%s.%N)" >> "$OUT/$name.kills"
    ) &
  fi
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
recov, redone, sources, last, buddy = [], [], [], 0, 0
for line in log:
    m = re.search(r"step (\d+)/\d+ loss", line)
    if m:
        last = max(last, int(m.group(1)))
    m = re.match(r"resume: (\S+) \(step (\d+), ", line)
    if m:
        redone.append(last - int(m.group(2)))
        last = int(m.group(2))
        sources.append("disk" if m.group(1).startswith(f"{out}/{name}/") else "memory")
    if re.match(r"resume: rank \d+'s snapshot of step \d+ came from its buddy copy", line):
        buddy += 1
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
      f"resumed from memory {sources.count('memory')} ({buddy} rank(s) from a buddy copy), disk "
      f"{sources.count('disk')}; "
      f"final weights {'bitwise equal to' if same else 'DIFFERENT from'} the reference")
EOF
done
