#!/usr/bin/env bash
# Stride across two emulated hosts on a shaped link, against PyTorch DDP (gloo) on the same link (issue #16).
#   bash bench/multihost.sh RATE MODEL [ROUNDS] [RANKS_PER_HOST]
#     RATE            tc tbf rate of each host's link, each direction (1gbit, 500mbit, ...), or `none` (unshaped)
#     MODEL           resnet50 (3x64x64, 16 per rank) or resnet20 (1x28x28, 64 per rank)
#     ROUNDS          interleaved rounds of the training variants (default 5)
#     RANKS_PER_HOST  default 1; 2 oversubscribes this machine: take those numbers for bytes, not speed
# Two network namespaces (hosts a and b) with veth links into a bridge namespace; each host's eth0 egress is
# shaped with `tbf rate RATE burst 256kb latency 50ms` (this kernel has no netem). mpirun starts the ranks through
# tests/system/nsrsh. Reported:
#   1. `stride bench allreduce` 1-64 MiB: the ring (STRIDE_ALLREDUCE=ring) next to raw MPI_Allreduce, bus
#      bandwidth as a fraction of RATE;
#   2. training img/s, interleaved A,B,A,B in each round: Stride with MPI_Allreduce (STRIDE_ALLREDUCE=mpi), Stride
#      auto (ring / hierarchical), Stride without communication, DDP gloo (tcmalloc), DDP no_sync; ratios per
#      round, median (min-max) over rounds. VARIANTS="..." picks others, also stride-fp16 and stride-powersgd
#      (--grad-compression, PowerSGD rank 1 without warm-up), stride-bucketauto (--bucket-cap-mb auto, 3 timed
#      steps per candidate, then measured; the choice is printed); SKIP_BYTES=1 skips part 3;
#   3. bytes that crossed the link per training step, from the veth counters: the difference between a 2-step
#      and a 6-step run over 4 steps (set-up traffic such as the initial broadcast cancels out).
# Needs root (network namespaces). Env: STRIDE (binary, default build/stride), STEPS (timed steps per training
# run, default 20), SKIP_ALLREDUCE=1, SKIP_TRAIN=1, RAW_TCP=1 (raw TCP both ways first), AR_SWEEP="SEG:WIN:MCA ..."
# (the allreduce per ring segment size, window and mpirun MCA settings; Stride's own TCP setting is
# btl_tcp_flags=send,inplace,need-ack,need-csum, Open MPI's default adds put,hetero-rdma).
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${1:?usage: bench/multihost.sh RATE MODEL [ROUNDS] [RANKS_PER_HOST]}
MODEL=${2:?usage: bench/multihost.sh RATE MODEL [ROUNDS] [RANKS_PER_HOST]}
ROUNDS=${3:-5}
RPH=${4:-1}
STRIDE=$(realpath "${STRIDE:-build/stride}")
PY=/usr/bin/python3
TCMALLOC=${TCMALLOC:-/usr/lib/x86_64-linux-gnu/libtcmalloc.so.4}
case $MODEL in
  resnet50) margs=(--model resnet50 --batch-size 16 --image-size 64 --in-channels 3 --num-classes 1000) ;;
  resnet20) margs=(--model resnet20 --batch-size 64 --image-size 28 --in-channels 1 --num-classes 10) ;;
  *) echo "MODEL must be resnet50 or resnet20, not '$MODEL'" >&2; exit 2 ;;
esac
[ "$(id -u)" == 0 ] || { echo "bench/multihost.sh: network namespaces need root" >&2; exit 2; }
WORK=$(mktemp -d /tmp/stride-multihost.XXXXXX)
tag=sb$$
A=${tag}a
B=${tag}b
F=${tag}f
NET=10.79.$(( $$ % 200 + 20 ))
cleanup() {
  for ns in $A $B; do for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done; done
  for ns in $A $B $F; do ip netns del "$ns" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
source tests/system/lib.sh
make_hosts "$F" "$NET" "$A" "$B"
if [ "$RATE" != none ]; then
  for ns in $A $B; do ip netns exec "$ns" tc qdisc add dev eth0 root tbf rate "$RATE" burst 256kb latency 50ms; done
fi
printf "%s slots=%d\n%s slots=%d\n" "$A" "$RPH" "$B" "$RPH" > "$WORK/hosts"
NP=$((2 * RPH))
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
MPI=(mpirun -np $NP --hostfile "$WORK/hosts" --oversubscribe --bind-to none --mca plm_rsh_agent "$PWD/tests/system/nsrsh"
     --mca btl self,vader,tcp --mca btl_tcp_if_include $NET.0/24 --mca oob_tcp_if_include $NET.0/24 -x OMP_NUM_THREADS)
tx() { echo $(( $(ip netns exec "$A" cat /sys/class/net/eth0/statistics/tx_bytes) + \
                $(ip netns exec "$B" cat /sys/class/net/eth0/statistics/tx_bytes) )); }
rate_bytes=$($PY -c "
import re,sys
r='$RATE'
if r=='none': print(0); sys.exit()
m=re.fullmatch(r'([0-9.]+)([kmg]?)(bit|bps)', r.lower())
v=float(m.group(1))*{'':1,'k':1e3,'m':1e6,'g':1e9}[m.group(2)]
print(v/8 if m.group(3)=='bit' else v)")
echo "# bench/multihost.sh $*: 2 hosts x $RPH rank(s), link $RATE each way ($rate_bytes B/s), $MODEL"
echo "# machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(getconf _NPROCESSORS_ONLN) cpus, load $(cut -d' ' -f1-3 /proc/loadavg)"

# The link itself: raw TCP both ways at once, over one connection and over one connection per direction.
if [ "${RAW_TCP:-0}" == 1 ]; then
  echo "## raw TCP both ways at once (bench/tcp_bidir.py, 6 s each; MB/s received per side)"
  ip netns exec "$B" $PY bench/tcp_bidir.py server 5201 & srv=$!
  sleep 0.5
  for m in one two; do echo "connections: $m"; ip netns exec "$A" $PY bench/tcp_bidir.py client $NET.2 5201 $m 6; sleep 0.3; done
  kill $srv
fi

# What the TCP btl's protocol and the ring's segments do to the link: the allreduce at 1-16 MiB per variant,
# SEGMENT_KB:WINDOW:MCA (MCA: comma-separated name=value pairs passed to mpirun).
if [ -n "${AR_SWEEP:-}" ]; then
  for e in $AR_SWEEP; do
    IFS=: read -r seg win mca <<< "$e"
    extra=()
    for kv in ${mca//,/ }; do extra+=(--mca "${kv%%=*}" "${kv#*=}"); done
    echo "## sweep: ring segments ${seg} KiB x $win in flight, mpirun ${extra[*]:-(no extra MCA)}"
    ip netns exec "$A" "${MPI[@]}" "${extra[@]}" -x STRIDE_ALLREDUCE=ring -x STRIDE_RING_SEGMENT_KB="$seg" \
      -x STRIDE_RING_WINDOW="$win" "$STRIDE" bench allreduce --min-bytes $((1 << 20)) --max-bytes $((16 << 20)) \
      --rounds 2 --seconds-per-point 1 2> "$WORK/sweep.json" > /dev/null
    $PY - "$WORK/sweep.json" "$rate_bytes" <<'PYEOF'
import json, sys
rate = float(sys.argv[2]) or float("nan")
for line in open(sys.argv[1]):
    if line.startswith("{"):
        j = json.loads(line)
        print("  %3.0f MiB  ring %.3f GB/s (%.2f of link)  MPI_Allreduce %.3f GB/s (%.2f)" % (j["bytes"] / 2**20,
              j["stride_busbw_gbs"], j["stride_busbw_gbs"] * 1e9 / rate, j["mpi_busbw_gbs"], j["mpi_busbw_gbs"] * 1e9 / rate))
PYEOF
  done
fi

if [ "${SKIP_ALLREDUCE:-0}" != 1 ]; then
  echo "## allreduce across the link (stride column: STRIDE_ALLREDUCE=ring; mpi column: raw MPI_Allreduce)"
  ip netns exec "$A" "${MPI[@]}" -x STRIDE_ALLREDUCE=ring "$STRIDE" bench allreduce --min-bytes $((1 << 20)) \
    --max-bytes $((64 << 20)) --rounds 3 --seconds-per-point 0.5 2> "$WORK/ar.json" | tee "$WORK/ar.txt"
  $PY - "$WORK/ar.json" "$rate_bytes" <<'PYEOF'
import json, sys
rate = float(sys.argv[2])
print("%10s %14s %14s %10s %10s" % ("MiB", "ring_busGB/s", "mpi_busGB/s", "ring/link", "mpi/link"))
for line in open(sys.argv[1]):
    if not line.startswith("{"): continue
    j = json.loads(line)
    rs, ms = j["stride_busbw_gbs"], j["mpi_busbw_gbs"]
    f = (lambda x: "%10.3f" % (x * 1e9 / rate)) if rate else (lambda x: "%10s" % "-")
    print("%10.0f %14.3f %14.3f %s %s" % (j["bytes"] / 2**20, rs, ms, f(rs), f(ms)))
PYEOF
fi

# One training run; prints img/s. $1: variant.
port=29600
run_variant() {
  local v=$1 steps=${2:-${STEPS:-20}} warmup=${3:-3} line
  port=$((port + 1))
  case $v in
    stride-mpi) line=$(ip netns exec "$A" "${MPI[@]}" -x STRIDE_ALLREDUCE=mpi "$STRIDE" bench step "${margs[@]}" \
                       --threads 1 --warmup "$warmup" --steps "$steps" 2>&1 | grep '^{' | tail -1) ;;
    stride) line=$(ip netns exec "$A" "${MPI[@]}" "$STRIDE" bench step "${margs[@]}" --threads 1 --warmup "$warmup" \
                   --steps "$steps" 2>&1 | grep '^{' | tail -1) ;;
    stride-fp16|stride-powersgd)
      local comp=${v#stride-}
      line=$(ip netns exec "$A" "${MPI[@]}" "$STRIDE" bench step "${margs[@]}" --threads 1 --grad-compression "$comp" \
             --warmup "$warmup" --steps "$steps" 2>&1 | grep '^{' | tail -1) ;;
    stride-bucketauto)
      line=$(ip netns exec "$A" "${MPI[@]}" "$STRIDE" bench step "${margs[@]}" --threads 1 --bucket-cap-mb auto \
             --bucket-tune-steps 3 --warmup "$warmup" --steps "$steps" 2>&1 | grep '^{' | tail -1) ;;
    stride-nocomm) line=$(ip netns exec "$A" "${MPI[@]}" "$STRIDE" bench step "${margs[@]}" --threads 1 --no-comm \
                          --warmup "$warmup" --steps "$steps" 2>&1 | grep '^{' | tail -1) ;;
    ddp|ddp-nosync)
      local extra=()
      [ "$v" == ddp-nosync ] && extra=(--no-sync)
      line=$(cd bench && timeout 1200 ip netns exec "$A" "${MPI[@]}" -x LD_PRELOAD="$TCMALLOC" -x GLOO_SOCKET_IFNAME=eth0 \
             -x MASTER_ADDR=$NET.1 -x MASTER_PORT=$port $PY torch_ddp_step.py "${margs[@]}" --threads 1 \
             --warmup "$warmup" --steps "$steps" --port $port "${extra[@]}" 2>&1 | grep '^{' | tail -1) ;;
  esac
  echo "$line"
}

if [ "${SKIP_TRAIN:-0}" != 1 ]; then
  [ "${SKIP_BYTES:-0}" == 1 ] ||
    echo "## bytes crossing the link per training step (veth tx of both hosts; (6-step run - 2-step run) / 4)"
  [ "${SKIP_BYTES:-0}" == 1 ] || for v in stride-mpi stride ddp; do
    b0=$(tx); run_variant $v 2 1 > /dev/null; b1=$(tx); run_variant $v 6 1 > /dev/null; b2=$(tx)
    echo "$v $(( (b2 - b1 - (b1 - b0)) / 4 ))" | tee -a "$WORK/bytes.txt"
  done
  echo "## training img/s, interleaved, $ROUNDS rounds"
  VARIANTS=${VARIANTS:-stride-mpi stride stride-nocomm ddp ddp-nosync}
  for r in $(seq 1 "$ROUNDS"); do
    for v in $VARIANTS; do
      line=$(run_variant $v)
      ips=$(echo "$line" | $PY -c 'import json,sys; j=json.loads(sys.stdin.read()); print(j["images_per_s"])' 2>/dev/null || echo nan)
      echo "round $r $v $ips" | tee -a "$WORK/train.txt"
      case $line in *bucket_cap_auto*) echo "  $(echo "$line" | $PY -c 'import json,sys; print("bucket cap auto:", json.dumps(json.loads(sys.stdin.read())["bucket_cap_auto"]))')" ;; esac
    done
  done
  $PY - "$WORK/train.txt" <<'PYEOF'
import collections, statistics, sys
runs = collections.defaultdict(dict)
for line in open(sys.argv[1]):
    _, r, v, ips = line.split()
    runs[int(r)][v] = float(ips)
def ratio(a, b):
    rs = sorted(x[a] / x[b] for x in runs.values() if a in x and b in x and x[b] == x[b] and x[b] > 0)
    return "%.3f (%.3f-%.3f)" % (statistics.median(rs), rs[0], rs[-1]) if rs else "n/a"
for v in ["stride-mpi", "stride", "stride-bucketauto", "stride-fp16", "stride-powersgd", "stride-nocomm", "ddp",
          "ddp-nosync"]:
    vals = [x[v] for x in runs.values() if v in x]
    if vals:
        print("%-16s median img/s %.1f" % (v, statistics.median(vals)))
for name, a, b in [("Stride (auto) / DDP", "stride", "ddp"), ("Stride MPI_Allreduce / DDP", "stride-mpi", "ddp"),
                   ("Stride (auto) / Stride MPI_Allreduce", "stride", "stride-mpi"),
                   ("Stride comm efficiency (auto / no-comm)", "stride", "stride-nocomm"),
                   ("Stride MPI comm efficiency", "stride-mpi", "stride-nocomm"),
                   ("DDP comm efficiency (ddp / no_sync)", "ddp", "ddp-nosync"),
                   ("Stride fp16 / DDP", "stride-fp16", "ddp"), ("Stride PowerSGD / DDP", "stride-powersgd", "ddp"),
                   ("Stride PowerSGD / no-comm", "stride-powersgd", "stride-nocomm"),
                   ("Stride bucket cap auto / 25 MiB", "stride-bucketauto", "stride")]:
    print("%-42s %s" % (name, ratio(a, b)))
PYEOF
fi
