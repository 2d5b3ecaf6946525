// Which precision a run computes in: the `--amp`, `--amp-dtype` and `--amp-force` flags resolved against the
// device, and on the CPU against what the processor can do (Note [CPU bfloat16]). `stride train` and
// `stride bench step` both call plan_amp() once at start-up. Thread-safe (no shared state; reads /proc and the
// environment).
#pragma once

#include <torch/torch.h>

#include <string>

namespace stride::trainer {

// Whether this CPU computes bfloat16 natively.
struct CpuBf16 {
  bool native = false;
  // How that was decided: "avx512_bf16" / "amx_bf16" (the feature found, both separated by '+' when both),
  // "none" (neither), or "STRIDE_CPU_BF16=0" / "STRIDE_CPU_BF16=1" (the test override).
  std::string source;
};

// Reads STRIDE_CPU_BF16 (0: as if the CPU had no bf16 instructions, 1: as if it had them; unset or "auto":
// detect), then /proc/cpuinfo's flags, then cpuid where /proc/cpuinfo cannot be read. UsageError for another
// value of STRIDE_CPU_BF16.
CpuBf16 detect_cpu_bf16();

// The bf16 features named in a /proc/cpuinfo text ("avx512_bf16", "amx_bf16", "avx512_bf16+amx_bf16"), or ""
// when its flags name neither. Only whole flag words count (avx512_bf16 must not match avx512_bf16x, say).
std::string cpuinfo_bf16_features(const std::string& cpuinfo);

struct AmpPlan {
  bool autocast = false;                       // an AutocastGuard covers forward and loss
  torch::ScalarType dtype = torch::kBFloat16;  // its dtype (meaningful when autocast)
  bool scale_loss = false;                     // dynamic loss scaling (float16 only)
  CpuBf16 cpu;                                 // on the CPU: what detect_cpu_bf16() found
  bool emulated = false;                       // bf16 autocast on a CPU without bf16 instructions (--amp-force)
  // One line for the start-up log: what runs and why ("bfloat16 autocast (CPU: avx512_bf16) ...").
  std::string summary;
  // Non-empty when --amp was asked for but the run falls back to float32: the warning to print once.
  std::string warning;
};

// Resolves the flags (Note [CPU bfloat16]):
//   CUDA: --amp-dtype auto|float16 -> float16 with loss scaling, bfloat16 -> bfloat16 without.
//   CPU:  --amp-dtype auto|bfloat16 -> bfloat16 autocast where the CPU has bf16 instructions; where it has not,
//         float32 with `warning` set, unless `force` (then emulated bf16). float16 -> UsageError naming the flag.
// Without --amp: no autocast (the dtype flag is still checked for spelling). `cpu` is detect_cpu_bf16()'s
// answer, passed in so that tests can simulate either kind of CPU.
AmpPlan plan_amp(const torch::Device& device, bool amp, const std::string& amp_dtype, bool force, const CpuBf16& cpu);

// "float32", "bfloat16" or "float16": what the plan computes convolutions in.
std::string compute_dtype_name(const AmpPlan& plan);

}  // namespace stride::trainer
