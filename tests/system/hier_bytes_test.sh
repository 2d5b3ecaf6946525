#!/usr/bin/env bash
# The hierarchical allreduce really halves what crosses the link between hosts (ctest label `system`): two
# emulated hosts (network namespaces joined by veth pairs and a bridge, as in multihost_test.sh), 2 ranks each,
# train resnet20 for a few steps (`stride bench step`) with the flat MPI_Allreduce (STRIDE_ALLREDUCE=mpi) and with
# the default path (auto: shared memory within a host, the ring between hosts). Bytes per step come from both
# hosts' eth0 tx counters as the difference of a 6-step and a 2-step run over 4 steps, so set-up traffic (MPI
# wire-up, the initial broadcast) cancels. Asserts hierarchical <= (1/2 + 5%) of flat, and that training still
# gives the flat path's loss.
#   hier_bytes_test.sh STRIDE_BINARY WORK_DIR
# NOT YET REGISTERED in tests/CMakeLists.txt: its first run did not finish within 330 s on the shared 2-core VM
# (4 oversubscribed ranks: 4.6-6.7 img/s), so its threshold is unverified. For 2 hosts the hierarchy sends the
# bucket once per host (2(H-1)/H); a flat ring over 4 ranks sends 1.5x that, recursive doubling 2x: whether
# "<= 1/2 + 5% of flat" holds depends on the algorithm Open MPI picks for the flat run.
set -euo pipefail
STRIDE=$1
WORK=$2
HERE=$(cd "$(dirname "$0")" && pwd)
[ "$(id -u)" == 0 ] || { echo "SKIP: network namespaces need root"; exit 77; }
command -v unshare > /dev/null || { echo "SKIP: unshare is not installed"; exit 77; }
rm -rf "$WORK" && mkdir -p "$WORK"
tag=sh$$
A=${tag}a
B=${tag}b
F=${tag}f
NET=10.77.$(( $$ % 200 + 20 ))
cleanup() {
  for ns in $A $B; do for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done; done
  for ns in $A $B $F; do ip netns del "$ns" 2>/dev/null || true; done
}
trap cleanup EXIT
fail() { echo "FAIL: $*"; tail -30 "$WORK/run.log" 2>/dev/null || true; exit 1; }
if ! ip netns add "$F" 2> "$WORK/netns.err"; then
  echo "SKIP: cannot create network namespaces here: $(cat "$WORK/netns.err")"
  exit 77
fi
ip -n "$F" link set lo up
ip -n "$F" link add br0 type bridge
ip -n "$F" link set br0 up
i=0
for ns in $A $B; do
  i=$((i + 1))
  ip netns add "$ns"
  ip -n "$ns" link set lo up
  ip -n "$ns" link add eth0 type veth peer name p$i netns "$F"
  ip -n "$F" link set p$i master br0
  ip -n "$F" link set p$i up
  ip -n "$ns" addr add $NET.$i/24 dev eth0
  ip -n "$ns" link set eth0 up
done
printf "%s slots=2\n%s slots=2\n" "$A" "$B" > "$WORK/hosts"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
MPI=(mpirun -np 4 --hostfile "$WORK/hosts" --oversubscribe --bind-to none --mca plm_rsh_agent "$HERE/nsrsh"
     --mca btl self,vader,tcp --mca btl_tcp_if_include $NET.0/24 --mca oob_tcp_if_include $NET.0/24 -x OMP_NUM_THREADS)
tx() { echo $(( $(ip netns exec "$A" cat /sys/class/net/eth0/statistics/tx_bytes) + \
                $(ip netns exec "$B" cat /sys/class/net/eth0/statistics/tx_bytes) )); }
# One training run; prints its final loss. $1: STRIDE_ALLREDUCE, $2: steps.
train() {
  ip netns exec "$A" "${MPI[@]}" -x STRIDE_ALLREDUCE="$1" "$STRIDE" bench step --model resnet20 --batch-size 16 \
    --threads 1 --warmup 1 --steps "$2" >> "$WORK/run.log" 2>&1 || fail "training with STRIDE_ALLREDUCE=$1 failed"
  grep '^{' "$WORK/run.log" | tail -1 | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["last_loss"])'
}
per_step() {  # bytes per step for STRIDE_ALLREDUCE=$1; the 6-step run's loss goes to $WORK/loss.$1
  local b0 b1 b2
  b0=$(tx); train "$1" 2 > /dev/null; b1=$(tx); train "$1" 6 > "$WORK/loss.$1"; b2=$(tx)
  echo $(( (b2 - b1 - (b1 - b0)) / 4 ))
}
flat=$(per_step mpi); flat_loss=$(cat "$WORK/loss.mpi")
hier=$(per_step auto); hier_loss=$(cat "$WORK/loss.auto")
echo "bytes across the link per step: flat MPI_Allreduce $flat, hierarchical $hier (ratio $(
  /usr/bin/python3 -c "print(round($hier / $flat, 3))")); loss after 7 steps: flat $flat_loss, hierarchical $hier_loss"
[ "$flat" -gt 1000000 ] || fail "the flat allreduce moved only $flat bytes per step across the link"
/usr/bin/python3 -c "import sys; sys.exit(0 if $hier <= 0.55 * $flat else 1)" ||
  fail "hierarchical moved $hier bytes per step across the link, more than 0.55 x flat ($flat)"
/usr/bin/python3 -c "import sys; sys.exit(0 if abs($hier_loss - $flat_loss) <= 1e-3 * max(1, abs($flat_loss)) else 1)" ||
  fail "hierarchical training diverged from flat: loss $hier_loss vs $flat_loss"
echo "ok: 2 hosts x 2 ranks, the hierarchical allreduce moved $hier bytes per step across the link vs $flat flat"
