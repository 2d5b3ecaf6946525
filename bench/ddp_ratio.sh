#!/usr/bin/env bash
# The Stride / PyTorch DDP headline ratio, as DDP's users run it: 2 ranks x 1 thread on this host, float32, DDP over
# gloo with glibc malloc, with tcmalloc and with jemalloc preloaded (the allocators PyTorch users preload; Debian's
# libgoogle-perftools4 and libjemalloc2). One interleaved run: every round runs Stride and the three DDP variants
# once each, ratios are taken within a round and reported as the median over rounds (min-max).
#   bash bench/ddp_ratio.sh [ROUNDS] [CASES]      ROUNDS default 7; CASES resnet20,resnet50 (default both)
# SMOKE=1 checks the script in a minute (its numbers mean nothing). The work is bench/bf16_compare.sh's.
set -euo pipefail
cd "$(dirname "$0")/.."
VARIANTS="dp-stride-fp32 ddp-fp32-plain ddp-fp32 ddp-fp32-je" exec bash bench/bf16_compare.sh "${1:-7}" "${2:-resnet20,resnet50}"
