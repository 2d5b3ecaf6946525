#!/usr/bin/env bash
# The status dashboard in a real browser (ctest label `system`): a 1-rank training run serves it; headless
# Chromium (Debian's chromium) loads it, its script fetches /status and /history and renders (the DOM gets
# data-ready="1", the job name and the rank table); a screenshot is written and its path printed. With MPIRUN the
# job has 2 ranks, and the per-bucket overlap card (Note [Overlap timeline] in comm/timeline.h) must be drawn; then
# a supervised job (`stride launch`) has a rank killed, and once it recovered the recoveries card must list it.
#   dashboard_test.sh STRIDE_BINARY WORK_DIR [MPIRUN [MPIRUN FLAGS...]]
set -euo pipefail
STRIDE=$1
WORK=$2
shift 2
LAUNCH=()
[ $# -gt 0 ] && LAUNCH=("$@" -np 2)
CHROMIUM=$(command -v chromium || command -v chromium-browser || true)
if [ -z "$CHROMIUM" ]; then
  echo "SKIP: chromium is not installed (scripts/setup.sh installs it)"
  exit 77
fi
rm -rf "$WORK" && mkdir -p "$WORK"
trap 'pkill -9 -f "$WORK/" 2>/dev/null || true' EXIT
fail() {
  echo "FAIL: $*"
  tail -30 "$WORK/run.log" || true
  exit 1
}
"$STRIDE" shard --quiet --format fashion-mnist --input /usr/share/datasets/fashion-mnist --output "$WORK/data" \
  --samples-per-shard 5000 > /dev/null
"${LAUNCH[@]}" "$STRIDE" train --model resnet20 --data-path "$WORK/data" --epochs 1 --batch-size 64 --threads 1 --workers 1 \
  --print-freq 5 --status-port 0 --heartbeat-interval 0.25 --job dashboard-test --output-dir "$WORK/run" \
  > "$WORK/run.log" 2>&1 &
for _ in $(seq 1 1200); do [ -f "$WORK/run/coordinator.json" ] && break; sleep 0.05; done
url=$(/usr/bin/python3 -c "import json; print(json.load(open('$WORK/run/coordinator.json'))['status_url'])")
# Let a few intervals of training reach the plots.
for _ in $(seq 1 300); do
  step=$("$STRIDE" status --url "$url" --json | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["step"])')
  [ "$step" -ge 20 ] && break
  sleep 0.1
done
flags=(--headless=new --no-sandbox --disable-gpu --disable-dev-shm-usage --no-first-run --hide-scrollbars
       --user-data-dir="$WORK/chromium-profile" --window-size=1280,900 --virtual-time-budget=6000)
timeout 120 "$CHROMIUM" "${flags[@]}" --dump-dom "$url" > "$WORK/dom.html" 2> "$WORK/chromium.log" ||
  fail "chromium --dump-dom failed: $(tail -5 "$WORK/chromium.log")"
grep -q 'data-ready="1"' "$WORK/dom.html" || fail "the dashboard did not render (no data-ready)"
grep -q 'dashboard-test' "$WORK/dom.html" || fail "the job name is not on the page"
grep -q '<canvas' "$WORK/dom.html" || fail "no plots"
if [ ${#LAUNCH[@]} -gt 0 ]; then
  grep -q '<option value="1">rank 1</option>' "$WORK/dom.html" || fail "the overlap card lists no timeline of rank 1"
  card=$(grep -o 'id="ovl-card"[^>]*' "$WORK/dom.html")
  case $card in *none*) fail "the overlap card is hidden: $card" ;; esac
  grep -qE 'id="ovl-sum" class="muted">step [0-9]+ · backward [0-9.]+ ms' "$WORK/dom.html" ||
    fail "the overlap card has no summary: $(grep -o 'id="ovl-sum"[^<]*' "$WORK/dom.html")"
fi
timeout 120 "$CHROMIUM" "${flags[@]}" --screenshot="$WORK/dashboard.png" "$url" >> "$WORK/chromium.log" 2>&1 ||
  fail "chromium --screenshot failed"
size=$(stat -c %s "$WORK/dashboard.png")
# A blank or error page compresses to a few KB; plots, tables and text make it far larger.
[ "$size" -gt 30000 ] || fail "screenshot is only $size bytes"
echo "screenshot: $WORK/dashboard.png ($size bytes, 1280x900, step $step)"
[ ${#LAUNCH[@]} -gt 0 ] || exit 0

# A recovered failure on the dashboard: a 2-rank supervised job, rank 1 killed once it is training.
pkill -9 -f "$WORK/run" 2>/dev/null || true
"$STRIDE" launch -n 2 --status-port 0 --restart-backoff 0.2 -- --model resnet20 --data-path "$WORK/data" --epochs 1 \
  --batch-size 64 --threads 1 --workers 1 --print-freq 5 --heartbeat-interval 0.25 --snapshot-every 5 \
  --checkpoint-every 100 --job dashboard-recovery --output-dir "$WORK/sup" > "$WORK/sup.log" 2>&1 &
for _ in $(seq 1 1200); do [ -f "$WORK/sup/coordinator.json" ] && break; sleep 0.05; done
url=$(/usr/bin/python3 -c "import json; print(json.load(open('$WORK/sup/coordinator.json'))['status_url'])")
field() { "$STRIDE" status --url "$url" --json | /usr/bin/python3 -c "import json,sys; j=json.load(sys.stdin); print($1)"; }
for _ in $(seq 1 600); do [ "$(field 'j["step"]' 2>/dev/null || echo 0)" -ge 12 ] && break; sleep 0.1; done
victim=$(field '[r["pid"] for r in j["ranks"] if r["rank"] == 1][0]')
kill -9 "$victim"
for _ in $(seq 1 600); do [ "$(field 'len(j["recoveries"])' 2>/dev/null || echo 0)" -ge 1 ] && break; sleep 0.1; done
[ "$(field 'len(j["recoveries"])')" -ge 1 ] || fail "no recovery in /status: $(tail -5 "$WORK/sup.log")"
timeout 120 "$CHROMIUM" "${flags[@]}" --dump-dom "$url" > "$WORK/dom2.html" 2>> "$WORK/chromium.log" ||
  fail "chromium --dump-dom failed (recovery)"
card=$(grep -o 'id="rec-card"[^>]*' "$WORK/dom2.html")
case $card in *none*) fail "the recoveries card is hidden: $card" ;; esac
grep -qE 'id="rec-sum" class="muted">1 \((memory|disk) 1\), [0-9]+ step\(s\) redone' "$WORK/dom2.html" ||
  fail "the recoveries card has no summary: $(grep -o 'id="rec-sum"[^<]*' "$WORK/dom2.html")"
grep -q 'killed by signal 9' "$WORK/dom2.html" || fail "the recoveries card does not name the failure"
pkill -TERM -f "$STRIDE launch -n 2" 2>/dev/null || true
echo "recoveries card: $(grep -o 'id="rec-sum"[^<]*' "$WORK/dom2.html")"
