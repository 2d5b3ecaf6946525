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
start=$(date +%s)
out=$(timeout 120 "${args[@]}" --enable-recovery -np 2 -x STRIDE_MPI_KILL_TEST=1 "$binary" --gtest_color=no \
        --gtest_filter='MpiFailure.*' 2>&1) || true
elapsed=$(( $(date +%s) - start ))
echo "$out" | grep -E "survivor|FAILED|noticed" || true
if ! grep -q "survivor rank 0 got CommError after" <<<"$out"; then
  echo "FAIL: the surviving rank did not report a CommError"; echo "$out" | tail -30; exit 1
fi
grep -q "did not complete within 5 s" <<<"$out" || { echo "FAIL: the error does not name the timeout"; exit 1; }
[[ $elapsed -lt 60 ]] || { echo "FAIL: took ${elapsed}s"; exit 1; }
echo "ok: survivor failed cleanly in ${elapsed}s"
