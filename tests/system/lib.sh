# Helpers for the system tests: `source "$(dirname "$0")/lib.sh"`.

fail() {
  echo "FAIL: $*"
  exit 1
}

# The processes started by PID, and theirs, depth first.
descendants() {
  local child
  for child in $(pgrep -P "$1"); do
    echo "$child"
    descendants "$child"
  done
}

# What every thread of PID is doing: gdb's backtraces where gdb is installed, otherwise each thread's name and
# kernel wait channel.
thread_report() {
  local pid=$1 task
  echo "--- pid $pid: $(tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null)"
  if command -v gdb > /dev/null; then
    timeout 60 gdb -p "$pid" -batch -ex "thread apply all bt 25" 2>/dev/null | grep -E '^(Thread|#)' | head -400
  else
    for task in /proc/"$pid"/task/*; do
      echo "thread $(cat "$task/comm" 2>/dev/null) in $(cat "$task/wchan" 2>/dev/null)"
    done
  fi
}

# bounded SECONDS LOG COMMAND...: runs COMMAND with its output in LOG and returns its status. A command still
# running after SECONDS is a hang: this prints the stacks of it and of every process it started, the end of LOG,
# kills them all and returns 124, so that a hang fails the test at once with the evidence instead of at ctest's
# timeout with none.
bounded() {
  local limit=$1 log=$2
  shift 2
  "$@" > "$log" 2>&1 &
  local pid=$! ticks=0 p
  while kill -0 "$pid" 2> /dev/null; do
    if ((ticks >= limit * 5)); then
      local procs="$pid $(descendants "$pid")"
      echo "HANG: still running after ${limit} s: $*"
      for p in $procs; do thread_report "$p"; done
      echo "--- the last lines of $log:"
      tail -n 40 "$log"
      kill -9 $procs 2> /dev/null
      wait "$pid" 2> /dev/null
      return 124
    fi
    sleep 0.2
    ticks=$((ticks + 1))
  done
  wait "$pid"
}

# Emulated hosts: network namespaces HOST... whose eth0 is NET.1, NET.2, ... (/24) on veth pairs, the peers on a
# bridge in the namespace FABRIC; nothing is added to the root namespace. Exits 77 (a skip) where namespaces cannot
# be made. The caller removes them (ip netns del) on exit.
#   make_hosts FABRIC NET HOST...
make_hosts() {
  local fabric=$1 net=$2 i=0 ns err
  shift 2
  if ! err=$(ip netns add "$fabric" 2>&1); then
    echo "SKIP: cannot create network namespaces here: $err"
    exit 77
  fi
  ip -n "$fabric" link set lo up
  ip -n "$fabric" link add br0 type bridge
  ip -n "$fabric" link set br0 up
  for ns in "$@"; do
    i=$((i + 1))
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    ip -n "$ns" link add eth0 type veth peer name p$i netns "$fabric"
    ip -n "$fabric" link set p$i master br0
    ip -n "$fabric" link set p$i up
    ip -n "$ns" addr add "$net.$i/24" dev eth0
    ip -n "$ns" link set eth0 up
  done
}
