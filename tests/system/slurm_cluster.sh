#!/usr/bin/env bash
# A private single-node Slurm cluster for tests: munged, slurmctld and slurmd from Debian's packages, all state
# under DIR, no cgroups (proctrack/linuxproc, task/none), daemons on 127.0.0.1. Clients need
# SLURM_CONF=DIR/slurm.conf.
#   slurm_cluster.sh up DIR     start (a fresh cluster each time); prints the SLURM_CONF path
#   slurm_cluster.sh down DIR   cancel jobs, stop the daemons, check they are gone
set -euo pipefail
ACTION=$1
DIR=$2
# The munge socket path must stay short (unix socket limit): keep it under /tmp, keyed by DIR.
MUNGE=/tmp/stride-munge-$(echo "$DIR" | md5sum | cut -c1-8)
SOCK=$MUNGE/munge.socket
export SLURM_CONF=$DIR/slurm.conf
alive() { [ -r "/proc/$1/status" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status"; }
wait_gone() { for _ in $(seq 1 $(( ${2:-10} * 10 ))); do alive "$1" || return 0; sleep 0.1; done; return 1; }

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
  # cred_expire=5 + a 2 s scheduler interval: a requeued job starts again after ~6 s instead of 121 s.
  cat > "$SLURM_CONF" <<CONF
ClusterName=stride
SlurmctldHost=${host}(127.0.0.1)
SlurmctldPort=16817
SlurmdPort=16818
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$SOCK,cred_expire=5
SchedulerParameters=sched_interval=2,bf_interval=1
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
TmpFS=$DIR/tmp
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
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
NodeName=${host} NodeAddr=127.0.0.1 CPUs=$(nproc --all) State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
  slurmctld -c -f "$SLURM_CONF"
  slurmd -f "$SLURM_CONF"
  for _ in $(seq 1 300); do [ "$(sinfo -h -o %T 2>/dev/null)" == idle ] && break; sleep 0.1; done
  [ "$(sinfo -h -o %T 2>/dev/null)" == idle ] || { echo "slurm did not come up"; tail "$DIR"/log/*.log; exit 1; }
  echo "$SLURM_CONF"
  ;;
down)
  [ -f "$SLURM_CONF" ] || exit 0
  pids=$(cat "$DIR/slurmctld.pid" "$DIR/slurmd.pid" 2>/dev/null || true)
  jobs=$(squeue -h -o %i 2>/dev/null || true)
  [ -n "$jobs" ] && scancel --full $jobs 2>/dev/null || true
  for _ in $(seq 1 100); do [ -z "$(squeue -h 2>/dev/null || true)" ] && break; sleep 0.1; done
  scontrol shutdown > /dev/null 2>&1 || true
  for p in $pids; do wait_gone "$p" 15 || { kill "$p" 2>/dev/null; wait_gone "$p" 5 || kill -9 "$p" 2>/dev/null; }; done
  mp=$(cat "$MUNGE/munged.pid" 2>/dev/null || true)
  if [ -n "$mp" ]; then
    munged --stop -S "$SOCK" > /dev/null 2>&1 || kill "$mp" 2>/dev/null || true
    wait_gone "$mp" 10 || kill -9 "$mp" 2>/dev/null || true
  fi
  rm -rf "$MUNGE"
  ;;
*)
  echo "usage: slurm_cluster.sh up|down DIR"
  exit 2
  ;;
esac
