#!/usr/bin/env bash
# `stride submit` on a real single-node Slurm cluster (munged, slurmctld, slurmd started here; ctest label
# `system`): a 2-task job trains with `stride launch --launcher srun` (srun --mpi=pmix); mid-run
# `scancel --signal=USR2 --batch` (what Slurm sends before the time limit) makes the ranks commit a checkpoint
# and the job requeue itself; the requeued job resumes from that checkpoint and completes. No step is lost or
# repeated: the train records' steps strictly increase across both starts, and the final weights are bitwise
# identical to an uninterrupted run.
#   slurm_test.sh STRIDE_BINARY WORK_DIR
set -euo pipefail
STRIDE=$1
WORK=$2
PY=/usr/bin/python3
HERE=$(cd "$(dirname "$0")" && pwd)
for tool in slurmctld slurmd sbatch munged; do
  command -v $tool > /dev/null || { echo "SKIP: $tool is not installed (scripts/setup.sh installs Slurm)"; exit 77; }
done
rm -rf "$WORK" && mkdir -p "$WORK"
CLUSTER=$WORK/cluster
cleanup() {
  bash "$HERE/slurm_cluster.sh" down "$CLUSTER" || true
  pkill -9 -f "$WORK/" 2>/dev/null || true
}
trap cleanup EXIT
fail() {
  echo "FAIL: $*"
  for f in "$WORK"/run/slurm/*.out "$WORK"/*.log; do [ -f "$f" ] && { echo "--- $f"; grep -v "step [0-9]*/[0-9]* loss" "$f" | tail -40; }; done
  tail -20 "$CLUSTER"/log/slurmctld.log 2>/dev/null || true
  exit 1
}
export SLURM_CONF
SLURM_CONF=$(bash "$HERE/slurm_cluster.sh" up "$CLUSTER") || fail "the Slurm cluster did not start"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
job_state() { scontrol show job "$1" -o 2>/dev/null | grep -o 'JobState=[A-Z_]*' | cut -d= -f2; }

# Ranks started by srun in a way Open MPI cannot join get a clear error, not an internal abort.
for plugin in pmi2 none; do
  rc=0
  srun --mpi=$plugin -n 2 "$STRIDE" train --model resnet20 --epochs 1 --output-dir "$WORK/bad-$plugin" \
    > "$WORK/srun-$plugin.log" 2>&1 || rc=$?
  [ "$rc" != 0 ] || fail "srun --mpi=$plugin succeeded"
  grep -q "srun --mpi=pmix" "$WORK/srun-$plugin.log" || fail "srun --mpi=$plugin: no clear error"
  grep -m1 "stride: error" "$WORK/srun-$plugin.log"
done

"$STRIDE" shard --quiet --format fashion-mnist --input /usr/share/datasets/fashion-mnist --output "$WORK/data" \
  --samples-per-shard 5000 > /dev/null
STEPS=150
flags=(--model resnet20 --data-path "$WORK/data" --epochs 1 --batch-size 32 --lr 0.1 --lr-warmup-epochs 0.01
       --seed 7 --threads 1 --workers 1 --print-freq 10 --checkpoint-every 50 --max-steps $STEPS
       --heartbeat-interval 0.25)
mpirun -np 2 --bind-to none "$STRIDE" train "${flags[@]}" --status-port -1 --output-dir "$WORK/ref" \
  > "$WORK/ref.log" 2>&1 || fail "reference run"

run=$WORK/run
"$STRIDE" submit --nodes 1 --ntasks-per-node 2 --time 10 --signal-seconds 60 --status-port 0 --restart-backoff 0.5 \
  -- "${flags[@]}" --output-dir "$run" > "$WORK/submit.log" 2>&1 || fail "stride submit"
cat "$WORK/submit.log"
job=$(grep -o 'submitted job [0-9]*' "$WORK/submit.log" | grep -o '[0-9]*$')
grep -q -- "--signal=B:USR2@60" "$run/slurm/job.sbatch" || fail "no pre-timeout signal in the script"
grep -q -- "--requeue" "$run/slurm/job.sbatch" || fail "the script does not allow requeue"

# Wait for training to be under way (rank 0 past step 30), then send what Slurm sends before the time limit.
for _ in $(seq 1 1200); do
  s=$("$STRIDE" status --run-dir "$run" --json 2>/dev/null | $PY -c 'import json,sys; print(json.load(sys.stdin)["step"])' 2>/dev/null || echo 0)
  [ "$s" -ge 30 ] && break
  [ "$(job_state "$job")" == FAILED ] && fail "job failed"
  sleep 0.1
done
[ "$s" -ge 30 ] || fail "training did not start"
scancel --signal=USR2 --batch "$job"
echo "sent USR2 to job $job at step $s"
# The job requeues itself (PENDING, then RUNNING again after the hold) and completes.
for _ in $(seq 1 1800); do
  st=$(job_state "$job")
  [ "$st" == COMPLETED ] && break
  case $st in FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY) fail "job $job ended $st" ;; esac
  sleep 0.1
done
[ "$st" == COMPLETED ] || fail "job $job is $st, not COMPLETED"
out=$(ls "$run"/slurm/*.out)
grep -q "start 0 on" "$out" || fail "no first start in $out"
grep -q "start 1 on" "$out" || fail "the job was not requeued (no start 1)"
stopped=$(grep -o "stopped at step [0-9]*" "$out" | head -1 | grep -o '[0-9]*$')
[ -n "$stopped" ] || fail "the ranks did not checkpoint on USR2"
grep -q "resume: .*step-$(printf %08d "$stopped") (step $stopped" "$out" || fail "the requeued job did not resume from step $stopped"
echo "USR2 -> checkpoint at step $stopped, requeued, resumed from it"
$PY - "$run/metrics.jsonl" "$STEPS" <<'PYEOF' || fail "steps lost or repeated"
import json, sys
steps = [json.loads(l)["step"] for l in open(sys.argv[1]) if '"type":"train"' in l]
assert steps == sorted(set(steps)), f"repeated or out of order: {steps}"
assert steps == list(range(10, int(sys.argv[2]) + 1, 10)), f"lost: {steps}"
print(f"train records at steps {steps[0]}..{steps[-1]}, none lost or repeated")
PYEOF
last=$(printf "step-%08d" $STEPS)
for f in model.safetensors optimizer.safetensors; do
  cmp "$WORK/ref/checkpoints/$last/$f" "$run/checkpoints/$last/$f" || fail "$f differs from the uninterrupted run"
done
echo "ok: preempted with USR2, requeued, resumed, bitwise identical to the uninterrupted run"
