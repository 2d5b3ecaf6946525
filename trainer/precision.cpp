#include "trainer/precision.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

#include <cstdlib>
#include <fstream>
#include <sstream>

#include "common/error.h"

namespace stride::trainer {

// Note [CPU bfloat16]
// LibTorch's CPU autocast (1.13: at::autocast::set_cpu_enabled; 2.x: set_autocast_enabled(kCPU)) runs
// convolutions and matrix products in bfloat16 through oneDNN, which uses AVX512_BF16 (vdpbf16ps) or AMX-BF16
// where the CPU has them: about 2x the float32 speed for ResNets on such CPUs (docs/benchmarks.md). Without them
// oneDNN converts to float32 and back around float32 kernels, which is slower than float32 alone, so `--amp` on
// such a CPU runs float32 and says so once; `--amp-force` insists (useful to check numerics, never for speed).
// What stays float32 either way: the parameters, their gradients (autocast's casts are differentiable, so the
// gradient of a bf16 copy of a weight arrives in the weight's dtype), the optimizer state, the loss (computed from
// float32 logits) and BatchNorm's statistics. No loss scaling: bfloat16 has float32's exponent range.
// float16 on the CPU is refused: LibTorch 1.13's CPU autocast supports bfloat16 only, and 2.x's float16 CPU path
// has no fast kernels on CPUs without AMX-FP16.
// The decision is logged at start-up and recorded in metrics.jsonl ("precision" record) and in every checkpoint's
// MANIFEST (Manifest.precision).

namespace {

// The set of whitespace-separated words on the "flags" lines of /proc/cpuinfo.
bool has_flag(const std::string& cpuinfo, const std::string& flag) {
  std::istringstream lines(cpuinfo);
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind("flags", 0) != 0) continue;
    const auto colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::istringstream words(line.substr(colon + 1));
    for (std::string w; words >> w;) {
      if (w == flag) return true;
    }
  }
  return false;
}

// cpuid, for systems without /proc/cpuinfo: AVX512_BF16 is CPUID.(7,1):EAX[5], AMX-BF16 CPUID.(7,0):EDX[22];
// each also needs the OS to save its register state (XCR0: ZMM state bits 5-7, AMX tile bits 17-18).
std::string cpuid_bf16_features() {
#if defined(__x86_64__) || defined(__i386__)
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27))) return "";  // no OSXSAVE: no xgetbv
  unsigned lo = 0, hi = 0;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  const unsigned long long xcr0 = (static_cast<unsigned long long>(hi) << 32) | lo;
  std::string found;
  if (__get_cpuid_count(7, 1, &a, &b, &c, &d) && (a & (1u << 5)) && (xcr0 & 0xE6) == 0xE6) found = "avx512_bf16";
  if (__get_cpuid_count(7, 0, &a, &b, &c, &d) && (d & (1u << 22)) && (xcr0 & 0x60000) == 0x60000) {
    found += found.empty() ? "amx_bf16" : "+amx_bf16";
  }
  return found;
#else
  return "";
#endif
}

}  // namespace

std::string cpuinfo_bf16_features(const std::string& cpuinfo) {
  std::string found;
  for (const char* flag : {"avx512_bf16", "amx_bf16"}) {
    if (has_flag(cpuinfo, flag)) found += (found.empty() ? "" : "+") + std::string(flag);
  }
  return found;
}

CpuBf16 detect_cpu_bf16() {
  const char* env = std::getenv("STRIDE_CPU_BF16");
  const std::string override_value = env ? env : "";
  if (override_value == "0" || override_value == "1") {
    return {override_value == "1", "STRIDE_CPU_BF16=" + override_value};
  }
  if (!override_value.empty() && override_value != "auto") {
    throw UsageError(concat("STRIDE_CPU_BF16 must be 0, 1 or auto, not '", override_value, "'"));
  }
  std::ifstream in("/proc/cpuinfo");
  std::string found;
  if (in) {
    std::stringstream text;
    text << in.rdbuf();
    found = cpuinfo_bf16_features(text.str());
  } else {
    found = cpuid_bf16_features();
  }
  return {!found.empty(), found.empty() ? "none" : found};
}

AmpPlan plan_amp(const torch::Device& device, bool amp, const std::string& amp_dtype, bool force, const CpuBf16& cpu) {
  if (amp_dtype != "auto" && amp_dtype != "float16" && amp_dtype != "bfloat16") {
    throw UsageError(concat("--amp-dtype must be one of auto, float16, bfloat16; got '", amp_dtype, "'"));
  }
  AmpPlan p;
  p.cpu = cpu;
  if (device.is_cuda()) {
    p.autocast = amp;
    p.dtype = amp_dtype == "bfloat16" ? torch::kBFloat16 : torch::kHalf;
    p.scale_loss = amp && p.dtype == torch::kHalf;
    p.summary = amp ? concat(compute_dtype_name(p), " autocast on CUDA",
                             p.scale_loss ? " with dynamic loss scaling" : "", "; parameters float32")
                    : "float32";
    return p;
  }
  if (amp && amp_dtype == "float16") {
    throw UsageError(
        "--amp-dtype float16: CPU autocast runs bfloat16 only; use --amp-dtype bfloat16 (or auto) on the CPU, "
        "float16 needs a CUDA device");
  }
  p.dtype = torch::kBFloat16;
  const std::string cpu_note = concat("CPU bf16: ", cpu.source);
  if (!amp) {
    p.summary = concat("float32 (", cpu_note, ")");
    return p;
  }
  if (cpu.native || force) {
    p.autocast = true;
    p.emulated = !cpu.native;
    p.summary =
        concat("bfloat16 autocast on the CPU (", cpu_note, p.emulated ? ", emulated by oneDNN: --amp-force" : "",
               "); parameters, gradients and optimizer state float32, no loss scaling");
    return p;
  }
  p.summary = concat("float32 (", cpu_note, "; --amp not applied)");
  p.warning = concat("--amp: this CPU has no bfloat16 instructions (", cpu_note,
                     "; needs avx512_bf16 or amx_bf16), so oneDNN would emulate bf16 more slowly than float32: "
                     "training in float32 (add --amp-force to use bf16 anyway)");
  return p;
}

std::string compute_dtype_name(const AmpPlan& plan) {
  if (!plan.autocast) return "float32";
  return plan.dtype == torch::kHalf ? "float16" : "bfloat16";
}

}  // namespace stride::trainer
