#!/usr/bin/env bash
# CPU bf16 training throughput (issue #19): Stride float32, bf16 and bf16 + channels-last against PyTorch eager and
# DistributedDataParallel (gloo) at the same precision (torch.autocast("cpu", torch.bfloat16)), PyTorch with
# tcmalloc preloaded, one process x 1 thread and 2 ranks x 1 thread. Every variant is a separate process; all of a
# case's variants run once per round, in the same order, and ratios are taken within a round (A B A B ...: the
# machine's drift hits both sides of a ratio alike), reported as the median over rounds with the min-max
# (../shared/DESIGN.md section 8). Also `stride bench gemm` for the machine's float32/bf16 peak, and Stride's
# training GFLOP/s against it (compute efficiency).
#   bash bench/bf16_compare.sh [ROUNDS] [CASES]      ROUNDS default 5; CASES: resnet20,resnet50 (default both)
# SMOKE=1 shrinks every run to a few steps (checks the script, measures nothing).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-5}
CASES=${2:-resnet20,resnet50}
STRIDE=${STRIDE:-build/stride}
PY=/usr/bin/python3
TCMALLOC=${TCMALLOC:-/usr/lib/x86_64-linux-gnu/libtcmalloc.so.4}
JEMALLOC=${JEMALLOC:-/usr/lib/x86_64-linux-gnu/libjemalloc.so.2}
[ -f "$TCMALLOC" ] || { echo "bf16_compare: $TCMALLOC missing (apt-get install libgoogle-perftools4)" >&2; exit 2; }
[ -f "$JEMALLOC" ] || { echo "bf16_compare: $JEMALLOC missing (apt-get install libjemalloc2)" >&2; exit 2; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
MPI=(mpirun --oversubscribe --bind-to none -np 2 -x OMP_NUM_THREADS)
MPI_TC=(mpirun --oversubscribe --bind-to none -np 2 -x OMP_NUM_THREADS -x LD_PRELOAD="$TCMALLOC")
# jemalloc as PyTorch's CPU tuning guides set it: freed pages kept (no decay back to the OS), a background thread.
JE_CONF=${JE_CONF:-oversize_threshold:1,background_thread:true,metadata_thp:auto,dirty_decay_ms:9000000000,muzzy_decay_ms:9000000000}
MPI_JE=(mpirun --oversubscribe --bind-to none -np 2 -x OMP_NUM_THREADS -x LD_PRELOAD="$JEMALLOC" -x MALLOC_CONF="$JE_CONF")
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

cpu_bf16=$(grep -o -w -m1 -E 'avx512_bf16|amx_bf16' /proc/cpuinfo | head -1 || true)
echo "machine: $(getconf _NPROCESSORS_ONLN) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), bf16 instructions:" \
  "${cpu_bf16:-none}, load $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%FT%TZ)"
[ -n "$cpu_bf16" ] || echo "note: no bf16 instructions: Stride's --amp runs float32 here (bf16 rows are --amp-force)"
FORCE=()
[ -n "$cpu_bf16" ] || FORCE=(--amp-force)

# The machine's peak (1 thread, what each rank has).
gemm_secs=1.0
[ "${SMOKE:-0}" = 1 ] && gemm_secs=0.05
"$STRIDE" bench gemm --threads 1 --seconds "$gemm_secs" | tee "$OUT/gemm.jsonl" | grep gemm-peak

# One variant: prints its JSON line (rank 0) or fails the script.
run_variant() {
  local v=$1; shift
  local args=("$@") line
  case $v in
    stride-fp32) line=$("$STRIDE" bench step "${args[@]}" --threads 1 --comm-backend single) ;;
    stride-bf16) line=$("$STRIDE" bench step "${args[@]}" --threads 1 --comm-backend single --amp "${FORCE[@]}") ;;
    stride-bf16-cl) line=$("$STRIDE" bench step "${args[@]}" --threads 1 --comm-backend single --amp --channels-last "${FORCE[@]}") ;;
    torch-fp32) line=$(LD_PRELOAD=$TCMALLOC $PY bench/torch_train_step.py "${args[@]}" --threads 1) ;;
    torch-bf16) line=$(LD_PRELOAD=$TCMALLOC $PY bench/torch_train_step.py "${args[@]}" --threads 1 --amp --amp-dtype bfloat16) ;;
    torch-bf16-cl) line=$(LD_PRELOAD=$TCMALLOC $PY bench/torch_train_step.py "${args[@]}" --threads 1 --amp --amp-dtype bfloat16 --channels-last) ;;
    dp-stride-fp32) line=$("${MPI[@]}" "$STRIDE" bench step "${args[@]}" --threads 1) ;;
    dp-stride-bf16) line=$("${MPI[@]}" "$STRIDE" bench step "${args[@]}" --threads 1 --amp "${FORCE[@]}") ;;
    dp-stride-bf16-cl) line=$("${MPI[@]}" "$STRIDE" bench step "${args[@]}" --threads 1 --amp --channels-last "${FORCE[@]}") ;;
    # DDP: a fresh rendezvous port each time (a port in TIME_WAIT can stall gloo's store); without and with tcmalloc.
    ddp-fp32) line=$(timeout 900 "${MPI_TC[@]}" $PY bench/torch_ddp_step.py "${args[@]}" --threads 1 \
                       --port $((20000 + RANDOM % 20000)) 2>"$OUT/err" | grep '^{') ;;
    ddp-fp32-plain) line=$(timeout 900 "${MPI[@]}" $PY bench/torch_ddp_step.py "${args[@]}" --threads 1 \
                       --port $((20000 + RANDOM % 20000)) 2>"$OUT/err" | grep '^{') ;;
    ddp-fp32-je) line=$(timeout 900 "${MPI_JE[@]}" $PY bench/torch_ddp_step.py "${args[@]}" --threads 1 \
                       --port $((20000 + RANDOM % 20000)) 2>"$OUT/err" | grep '^{') ;;
    ddp-bf16-plain) line=$(timeout 900 "${MPI[@]}" $PY bench/torch_ddp_step.py "${args[@]}" --threads 1 --amp \
                       --port $((20000 + RANDOM % 20000)) 2>"$OUT/err" | grep '^{') ;;
    ddp-bf16) line=$(timeout 900 "${MPI_TC[@]}" $PY bench/torch_ddp_step.py "${args[@]}" --threads 1 --amp \
                       --port $((20000 + RANDOM % 20000)) 2>"$OUT/err" | grep '^{') ;;
    ddp-bf16-cl) line=$(timeout 900 "${MPI_TC[@]}" $PY bench/torch_ddp_step.py "${args[@]}" --threads 1 --amp \
                       --channels-last --port $((20000 + RANDOM % 20000)) 2>"$OUT/err" | grep '^{') ;;
    *) echo "unknown variant $v" >&2; exit 2 ;;
  esac
  [ -n "$line" ] || { echo "bf16_compare: $v produced no result" >&2; cat "$OUT/err" >&2 2>/dev/null; exit 1; }
  echo "$line"
}

# VARIANTS="a b ..." runs a subset (bench/ddp_ratio.sh does), in the order given.
if [ -n "${VARIANTS:-}" ]; then
  read -r -a VARIANTS <<< "$VARIANTS"
else
  VARIANTS=(stride-fp32 stride-bf16 stride-bf16-cl torch-fp32 torch-bf16 torch-bf16-cl
            dp-stride-fp32 dp-stride-bf16 dp-stride-bf16-cl ddp-fp32 ddp-bf16-plain ddp-bf16 ddp-bf16-cl)
fi
run_case() {
  local label=$1; shift
  for r in $(seq 1 "$ROUNDS"); do
    for v in "${VARIANTS[@]}"; do
      line=$(run_variant "$v" "$@")
      echo "$label|$r|$v|$line" >> "$OUT/runs"
      printf '%-9s round %d %-18s %8.1f img/s\n' "$label" "$r" "$v" \
        "$(echo "$line" | $PY -c 'import json,sys; print(json.load(sys.stdin)["images_per_s"])')"
    done
  done
}
if [ "${SMOKE:-0}" = 1 ]; then
  R20=(--steps 2 --warmup 1) R50=(--steps 1 --warmup 1)
else
  R20=(--steps 30 --warmup 3) R50=(--steps 6 --warmup 2)
fi
[[ ,$CASES, == *,resnet20,* ]] && run_case resnet20 --model resnet20 --batch-size 64 --image-size 28 --in-channels 1 \
  --num-classes 10 "${R20[@]}"
[[ ,$CASES, == *,resnet50,* ]] && run_case resnet50 --model resnet50 --batch-size 16 --image-size 64 --in-channels 3 --num-classes 100 \
  "${R50[@]}"

$PY - "$OUT/runs" "$OUT/gemm.jsonl" <<'PYEOF'
import json, statistics, sys
runs, peak = {}, {}
for line in open(sys.argv[2]):
    d = json.loads(line)
    if d.get("bench") == "gemm-peak":
        peak = d["peak_gflops"]
for line in open(sys.argv[1]):
    label, rnd, variant, js = line.rstrip("\n").split("|", 3)
    runs.setdefault(label, {}).setdefault(int(rnd), {})[variant] = json.loads(js)

def fmt(xs):
    xs = sorted(xs)
    return f"{statistics.median(xs):.2f}x ({xs[0]:.2f}-{xs[-1]:.2f})"

RATIOS = [
    ("1 process x 1 thread", None),
    ("Stride bf16 / Stride fp32", ("stride-bf16", "stride-fp32")),
    ("Stride bf16+CL / Stride fp32", ("stride-bf16-cl", "stride-fp32")),
    ("Stride fp32 / PyTorch fp32 (tcmalloc)", ("stride-fp32", "torch-fp32")),
    ("Stride bf16 / PyTorch bf16 (tcmalloc)", ("stride-bf16", "torch-bf16")),
    ("Stride bf16+CL / PyTorch bf16+CL (tcmalloc)", ("stride-bf16-cl", "torch-bf16-cl")),
    ("2 ranks x 1 thread", None),
    ("Stride bf16 / Stride fp32", ("dp-stride-bf16", "dp-stride-fp32")),
    ("Stride bf16+CL / Stride fp32", ("dp-stride-bf16-cl", "dp-stride-fp32")),
    ("Stride fp32 / DDP fp32 (tcmalloc)", ("dp-stride-fp32", "ddp-fp32")),
    ("Stride fp32 / DDP fp32 (jemalloc)", ("dp-stride-fp32", "ddp-fp32-je")),
    ("Stride fp32 / DDP fp32 (glibc malloc)", ("dp-stride-fp32", "ddp-fp32-plain")),
    ("Stride bf16 / DDP bf16 (no tcmalloc)", ("dp-stride-bf16", "ddp-bf16-plain")),
    ("Stride bf16 / DDP bf16 (tcmalloc)   [target >= 1.25]", ("dp-stride-bf16", "ddp-bf16")),
    ("Stride bf16+CL / DDP bf16 (tcmalloc)", ("dp-stride-bf16-cl", "ddp-bf16")),
    ("Stride bf16+CL / DDP bf16+CL (tcmalloc)", ("dp-stride-bf16-cl", "ddp-bf16-cl")),
    ("DDP bf16: tcmalloc / glibc", ("ddp-bf16", "ddp-bf16-plain")),
]
for label, rounds in runs.items():
    variants = list(next(iter(rounds.values())).keys())
    print(f"\n{label}: median images/s over {len(rounds)} rounds (min-max)")
    for v in variants:
        xs = sorted(r[v]["images_per_s"] for r in rounds.values())
        print(f"  {v:20s} {statistics.median(xs):9.1f} ({xs[0]:.1f}-{xs[-1]:.1f})")
    print("  ratios within a round: median (min-max)")
    for name, pair in RATIOS:
        if pair is None:
            print(f"   {name}")
            continue
        a, b = pair
        if all(a in r and b in r for r in rounds.values()):
            print(f"    {name:52s} {fmt([r[a]['images_per_s'] / r[b]['images_per_s'] for r in rounds.values()])}")
    print("  compute efficiency (Stride training GFLOP/s per rank / 1-thread peak of its dtype):")
    for v in ("stride-fp32", "stride-bf16", "stride-bf16-cl", "dp-stride-fp32", "dp-stride-bf16", "dp-stride-bf16-cl"):
        if v not in variants:
            continue
        d0 = next(iter(rounds.values()))[v]
        dtype = d0.get("amp_dtype", "float32")
        per_rank = statistics.median(r[v]["train_gflops_per_s"] / r[v]["ranks"] for r in rounds.values())
        p = peak.get(dtype)
        eff = f"{100 * per_rank / p:.0f}% of {p:.0f}" if p else "no peak measured"
        print(f"    {v:20s} {d0['forward_gflop_per_image'] * 3:.3f} GFLOP/image, {per_rank:6.1f} GFLOP/s per rank = {eff}")
PYEOF
