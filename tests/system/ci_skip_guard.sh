#!/usr/bin/env bash
# Runs a system test that may skip (ctest SKIP_RETURN_CODE 77: a tool it needs, such as Chromium, Slurm or
# unshare, is missing). Under CI=true (.ci/run sets it) a skip is a failure: CI installs everything these tests
# need (scripts/setup.sh), so a skip there means a test that silently stopped running. GPU tests are not wrapped:
# CI has no GPU.
#   ci_skip_guard.sh TEST_NAME COMMAND [ARGS...]
name=$1
shift
"$@"
rc=$?
if [[ $rc == 77 && ${CI:-} == true ]]; then
  echo "FAIL: $name skipped (exit code 77) under CI=true; CI must run every non-GPU system test (see the SKIP line above)"
  exit 1
fi
exit $rc
