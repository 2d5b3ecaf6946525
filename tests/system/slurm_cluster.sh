#!/usr/bin/env bash
# A private Slurm cluster for tests: munged, slurmctld and slurmd from Debian's packages, all state under DIR, no
# cgroups (proctrack/linuxproc, task/none). Clients need SLURM_CONF=DIR/slurm.conf.
#   slurm_cluster.sh up DIR             one node, this host, daemons on 127.0.0.1; prints the SLURM_CONF path
#   slurm_cluster.sh up DIR NS1 NS2     two nodes: network namespaces NS1 and NS2 (made by the caller, each with an
#                                       IPv4 address on eth0) are the nodes, named after them; slurmctld and NS1's
#                                       slurmd run in NS1, NS2's slurmd in NS2, each in a UTS namespace whose
#                                       hostname is the node's name. munged stays here (its socket is a file).
#                                       Clients run in NS1: nsenter --net=/run/netns/NS1 sbatch ...
#   slurm_cluster.sh down DIR           cancel jobs, stop the daemons, check they are gone
set -euo pipefail
ACTION=$1
DIR=$2
NODES=("${@:3}")
# The munge socket path must stay short (unix socket limit): keep it under /tmp, keyed by DIR.
MUNGE=/tmp/stride-munge-$(echo "$DIR" | md5sum | cut -c1-8)
SOCK=$MUNGE/munge.socket
export SLURM_CONF=$DIR/slurm.conf
alive() { [ -r "/proc/$1/status" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status"; }
wait_gone() { for _ in $(seq 1 $(( ${2:-10} * 10 ))); do alive "$1" || return 0; sleep 0.1; done; return 1; }

# In a two-node cluster the clients and daemons live in the first node's network namespace.
IN=()
[ "$ACTION" == down ] && [ -f "$DIR/nodes" ] && read -r -a NODES < "$DIR/nodes"
[ ${#NODES[@]} -gt 0 ] && IN=(nsenter --net=/run/netns/"${NODES[0]}")
# start_in NODE COMMAND...: COMMAND in NODE's network namespace, in a UTS namespace named NODE. (Not `ip netns
# exec`: it remounts /sys, and slurmd 22.05 then fails to initialise: "No filesystem mounted on /sys/fs/cgroup".)
start_in() {
  local node=$1
  shift
  nsenter --net=/run/netns/"$node" unshare --uts /bin/sh -c "hostname $node; exec $*"
}
address_of() { ip -n "$1" -4 -o addr show dev eth0 | awk '{print $4}' | cut -d/ -f1; }

case $ACTION in
up)
  rm -rf "$DIR" "$MUNGE"
  mkdir -p "$DIR"/{state,spool,log,out,tmp} "$MUNGE"
  chmod 755 "$MUNGE"
  mungekey --create --keyfile="$MUNGE/munge.key" > /dev/null 2>&1
  chmod 600 "$MUNGE/munge.key"
  munged --force --socket="$SOCK" --key-file="$MUNGE/munge.key" --pid-file="$MUNGE/munged.pid" \
    --log-file="$MUNGE/munged.log" --seed-file="$MUNGE/munged.seed"
  for _ in $(seq 1 100); do munge -n -S "$SOCK" < /dev/null | unmunge -S "$SOCK" > /dev/null 2>&1 && break; sleep 0.05; done
  host=$(hostname -s)
  addr=127.0.0.1
  per_node=""  # the slurmds' own files carry the node name (%n) when two of them share this file system
  if [ ${#NODES[@]} -gt 0 ]; then
    [ ${#NODES[@]} == 2 ] || { echo "slurm_cluster.sh up DIR NS1 NS2: give two network namespaces"; exit 2; }
    echo "${NODES[*]}" > "$DIR/nodes"
    host=${NODES[0]}
    addr=$(address_of "$host")
    per_node=-%n
  fi
  # cred_expire=5 + a 2 s scheduler interval: a requeued job starts again after ~6 s instead of 121 s.
  cat > "$SLURM_CONF" <<CONF
ClusterName=stride
SlurmctldHost=${host}(${addr})
SlurmctldPort=16817
SlurmdPort=16818
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$SOCK,cred_expire=5
SchedulerParameters=sched_interval=2,bf_interval=1
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool$per_node
TmpFS=$DIR/tmp$per_node
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd$per_node.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd$per_node.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MailProg=/bin/true
MpiDefault=pmix
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
JobRequeue=1
MinJobAge=300
KillWait=5
SlurmdTimeout=10
InactiveLimit=0
CONF
  if [ ${#NODES[@]} == 0 ]; then
    echo "NodeName=${host} NodeAddr=127.0.0.1 CPUs=$(nproc --all) State=UNKNOWN" >> "$SLURM_CONF"
    echo "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP" >> "$SLURM_CONF"
    slurmctld -c -f "$SLURM_CONF"
    slurmd -f "$SLURM_CONF"
  else
    # Both nodes claim every CPU of this machine: the tests oversubscribe on purpose.
    for node in "${NODES[@]}"; do
      mkdir -p "$DIR/spool-$node" "$DIR/tmp-$node"
      echo "NodeName=$node NodeAddr=$(address_of "$node") CPUs=$(nproc --all) State=UNKNOWN" >> "$SLURM_CONF"
    done
    echo "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP" >> "$SLURM_CONF"
    start_in "${NODES[0]}" slurmctld -c -f "$SLURM_CONF"
    for node in "${NODES[@]}"; do start_in "$node" slurmd -f "$SLURM_CONF" -N "$node"; done
  fi
  want=$(printf 'idle%.0s' $(seq 1 $(( ${#NODES[@]} > 0 ? ${#NODES[@]} : 1 ))))
  states() { "${IN[@]}" sinfo -h -N -o %T 2>/dev/null | tr -d '\n'; }
  for _ in $(seq 1 300); do [ "$(states)" == "$want" ] && break; sleep 0.1; done
  [ "$(states)" == "$want" ] || { echo "slurm did not come up: $(states)"; tail "$DIR"/log/*.log; exit 1; }
  echo "$SLURM_CONF"
  ;;
down)
  [ -f "$SLURM_CONF" ] || exit 0
  pids=$(cat "$DIR"/slurmctld.pid "$DIR"/slurmd*.pid 2>/dev/null || true)
  jobs=$("${IN[@]}" squeue -h -o %i 2>/dev/null || true)
  [ -n "$jobs" ] && "${IN[@]}" scancel --full $jobs 2>/dev/null || true
  for _ in $(seq 1 100); do [ -z "$("${IN[@]}" squeue -h 2>/dev/null || true)" ] && break; sleep 0.1; done
  "${IN[@]}" scontrol shutdown > /dev/null 2>&1 || true
  for p in $pids; do wait_gone "$p" 15 || { kill "$p" 2>/dev/null; wait_gone "$p" 5 || kill -9 "$p" 2>/dev/null; }; done
  mp=$(cat "$MUNGE/munged.pid" 2>/dev/null || true)
  if [ -n "$mp" ]; then
    munged --stop -S "$SOCK" > /dev/null 2>&1 || kill "$mp" 2>/dev/null || true
    wait_gone "$mp" 10 || kill -9 "$mp" 2>/dev/null || true
  fi
  rm -rf "$MUNGE"
  ;;
*)
  echo "usage: slurm_cluster.sh up DIR [NS1 NS2] | down DIR"
  exit 2
  ;;
esac
