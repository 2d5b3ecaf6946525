#!/usr/bin/env bash
# --bucket-cap-mb auto against the fixed default (25 MiB): `stride bench step` under mpirun, the two alternated
# process by process (A B A B ...) so the machine's drift hits both alike. The auto process tunes after --warmup
# (Note [Bucket cap tuning]) and then measures --steps steps at the cap it chose. Prints one JSON line per process
# and, per pair, img/s auto / fixed; then the median with min-max, and what auto chose.
#   bucket_auto_compare.sh PAIRS STEPS [bench step flags...]
#   e.g. bash bench/bucket_auto_compare.sh 5 10 --model resnet50 --image-size 64 --batch-size 16 --num-classes 10
set -euo pipefail
cd "$(dirname "$0")/.."
PAIRS=$1
STEPS=$2
shift 2
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
out=$(mktemp)
run() {  # run CAP [flags...]
  local cap=$1
  shift
  mpirun --oversubscribe --bind-to none --mca orte_allowed_exit_without_sync 1 -np 2 build/stride bench step \
    --threads 1 --warmup 2 --steps "$STEPS" --bucket-cap-mb "$cap" "$@" 2>/dev/null | grep '^{' | sed "s/^/$cap /"
}
echo "load: $(cut -d' ' -f1-3 /proc/loadavg)"
for i in $(seq 1 "$PAIRS"); do
  run 25 "$@" | tee -a "$out"
  run auto "$@" | tee -a "$out"
done
/usr/bin/python3 - "$out" <<'PYEOF'
import json, statistics, sys
rows = [l.split(" ", 1) for l in open(sys.argv[1])]
fixed = [json.loads(j) for k, j in rows if k == "25"]
auto = [json.loads(j) for k, j in rows if k == "auto"]
ratios = [a["images_per_s"] / f["images_per_s"] for f, a in zip(fixed, auto)]
print("img/s fixed 25 MiB: median %.1f" % statistics.median(f["images_per_s"] for f in fixed))
print("img/s auto (after tuning): median %.1f" % statistics.median(a["images_per_s"] for a in auto))
print("auto / fixed per pair:", " ".join("%.3f" % r for r in ratios))
print("median %.3f (min %.3f, max %.3f) over %d pairs" % (statistics.median(ratios), min(ratios), max(ratios), len(ratios)))
print("auto chose (MiB):", [a["bucket_cap_auto"]["chosen_mb"] for a in auto])
for a in auto:
    t = a["bucket_cap_auto"]
    print("  candidates", t["candidates_mb"], "median ms", [round(m, 1) for m in t.get("median_ms", [])],
          "tuning %d steps in %.1f s" % (t["tuning_steps"], t["tuning_seconds"]))
print("fixed step s: median %.3f" % statistics.median(f["seconds"] / f["steps"] for f in fixed))
PYEOF
rm -f "$out"
