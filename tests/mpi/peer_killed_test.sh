#!/usr/bin/env bash
# A rank killed with SIGKILL mid-collective: the survivor must fail with CommError (not hang), within the timeout.
# mpirun runs with --enable-recovery so that it does not tear the survivor down first (which it does by default,
# and which is the other way such a job ends: non-zero exit of mpirun).
#   peer_killed_test.sh MPIRUN_AND_FLAGS... -- TEST_BINARY
set -euo pipefail
args=()
while [[ $1 != -- ]]; do args+=("$1"); shift; done
shift
binary=$1
# Three times: over shared memory (the default on one host) with sleeping and with spinning waiters, where the
# survivor notices the dead pid and names the rank, and over MPI (STRIDE_SHM=0), where the collective's timeout
# ends the wait.
for mode in shm shm-spin mpi; do
  start=$(date +%s)
  out=$(STRIDE_SHM=$([[ $mode == mpi ]] && echo 0 || echo 1) STRIDE_SHM_WAIT=$([[ $mode == shm-spin ]] && echo spin || echo sleep) \
          timeout 120 "${args[@]}" --enable-recovery -np 2 -x STRIDE_MPI_KILL_TEST=1 -x STRIDE_SHM -x STRIDE_SHM_WAIT \
          "$binary" --gtest_color=no --gtest_filter='MpiFailure.*' 2>&1) || true
  elapsed=$(( $(date +%s) - start ))
  echo "$out" | grep -E "survivor|FAILED|noticed" || true
  if ! grep -q "survivor rank 0 got CommError after" <<<"$out"; then
    echo "FAIL ($mode): the surviving rank did not report a CommError"; echo "$out" | tail -30; exit 1
  fi
  if [[ $mode != mpi ]]; then
    grep -qE "rank 1 \(pid [0-9]+\) has exited" <<<"$out" || { echo "FAIL ($mode): the error does not name rank 1"; exit 1; }
  else
    grep -q "did not complete within 5 s" <<<"$out" || { echo "FAIL (mpi): the error does not name the timeout"; exit 1; }
  fi
  [[ $elapsed -lt 60 ]] || { echo "FAIL ($mode): took ${elapsed}s"; exit 1; }
  echo "ok ($mode): survivor failed cleanly in ${elapsed}s"
done
