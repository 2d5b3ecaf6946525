// `stride bench gemm`: the machine's arithmetic peak as LibTorch reaches it, in float32 and bfloat16: square
// matrix products (at::mm: MKL/OpenBLAS for float32, oneDNN for bfloat16) and the convolution shapes a ResNet
// runs (oneDNN, channels-last), on `--threads` threads. The best figure per dtype is the peak that
// `bench/bf16_compare.sh` divides training FLOP/s by (compute efficiency, docs/benchmarks.md).
#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <sstream>

#include "common/error.h"
#include "trainer/precision.h"

namespace stride::bench {
namespace {

struct GemmArgs {
  int64_t threads = 1;
  std::string sizes = "256,512,1024,2048";
  std::string dtypes = "float32,bfloat16";
  double seconds = 1.0;  // per measurement, after one untimed call
  bool conv = true;
};

// Calls `op` (which performs `flops` FLOPs) until `seconds` have passed; GFLOP/s.
template <typename Op>
double gflops(Op op, double flops, double seconds) {
  op();  // first call: oneDNN builds its kernel, memory is touched
  int64_t calls = 0;
  const auto t0 = std::chrono::steady_clock::now();
  double elapsed = 0.0;
  do {
    op();
    ++calls;
    elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  } while (elapsed < seconds);
  return flops * static_cast<double>(calls) / elapsed / 1e9;
}

std::vector<std::string> split(const std::string& text) {
  std::vector<std::string> out;
  std::stringstream list(text);
  for (std::string v; std::getline(list, v, ',');) out.push_back(v);
  return out;
}

void run_gemm_bench(const GemmArgs& a) {
  if (a.threads < 1) throw UsageError(concat("--threads must be positive, got ", a.threads));
  if (!(a.seconds > 0.0)) throw UsageError(concat("--seconds must be positive, got ", a.seconds));
  torch::set_num_threads(static_cast<int>(a.threads));
  torch::NoGradGuard no_grad;
  const auto cpu = trainer::detect_cpu_bf16();
  nlohmann::json peak = nlohmann::json::object();
  for (const auto& name : split(a.dtypes)) {
    if (name != "float32" && name != "bfloat16") {
      throw UsageError(concat("--dtypes: '", name, "' is not float32 or bfloat16"));
    }
    const auto dtype = name == "float32" ? torch::kFloat : torch::kBFloat16;
    double best = 0.0;
    auto report = [&](const std::string& op, const std::string& shape, double g) {
      best = std::max(best, g);
      std::printf("%s\n", nlohmann::json({{"impl", "stride"},
                                          {"bench", "gemm"},
                                          {"op", op},
                                          {"shape", shape},
                                          {"dtype", name},
                                          {"threads", torch::get_num_threads()},
                                          {"gflops", g}})
                              .dump()
                              .c_str());
      std::fflush(stdout);
    };
    for (const auto& s : split(a.sizes)) {
      const int64_t n = std::stoll(s);
      if (n <= 0) throw UsageError(concat("--sizes: '", s, "' is not a positive size"));
      auto x = torch::randn({n, n}).to(dtype), y = torch::randn({n, n}).to(dtype), out = torch::empty({n, n}, dtype);
      report("mm", concat(n, "x", n, "x", n), gflops([&] { at::mm_out(out, x, y); }, 2.0 * n * n * n, a.seconds));
    }
    if (a.conv) {
      // ResNet convolutions, NHWC: resnet50's 3x3 at 28x28 and 1x1 expansions at 56x56; resnet20's 3x3 at 32x32.
      struct Conv {
        int64_t batch, c, k, side, kernel;
      };
      for (const Conv& cv : {Conv{16, 128, 128, 28, 3}, Conv{16, 64, 256, 56, 1}, Conv{64, 16, 16, 32, 3}}) {
        auto x =
            torch::randn({cv.batch, cv.c, cv.side, cv.side}).to(dtype).contiguous(torch::MemoryFormat::ChannelsLast);
        auto w =
            torch::randn({cv.k, cv.c, cv.kernel, cv.kernel}).to(dtype).contiguous(torch::MemoryFormat::ChannelsLast);
        const double flops = 2.0 * cv.batch * cv.side * cv.side * cv.k * cv.c * cv.kernel * cv.kernel;
        report("conv2d", concat(cv.batch, "x", cv.c, "x", cv.side, "x", cv.side, " k", cv.kernel, " -> ", cv.k),
               gflops([&] { (void)torch::conv2d(x, w, {}, 1, cv.kernel / 2); }, flops, a.seconds));
      }
    }
    peak[name] = best;
  }
  std::printf("%s\n", nlohmann::json({{"impl", "stride"},
                                      {"bench", "gemm-peak"},
                                      {"threads", torch::get_num_threads()},
                                      {"cpu_bf16", cpu.source},
                                      {"peak_gflops", peak}})
                          .dump()
                          .c_str());
}

}  // namespace

void add_gemm_bench(CLI::App& bench) {
  auto a = std::make_shared<GemmArgs>();
  auto* cmd = bench.add_subcommand("gemm", "float32 and bfloat16 GEMM/convolution GFLOP/s of this machine (the peak)");
  cmd->add_option("--threads", a->threads, "Intra-op threads")->capture_default_str();
  cmd->add_option("--sizes", a->sizes, "Square matrix sides, comma-separated")->capture_default_str();
  cmd->add_option("--dtypes", a->dtypes, "float32,bfloat16 or one of them")->capture_default_str();
  cmd->add_option("--seconds", a->seconds, "Seconds per measurement")->capture_default_str();
  cmd->add_flag("--conv,!--no-conv", a->conv, "Also ResNet-shaped convolutions (oneDNN, channels-last)");
  cmd->callback([a] { run_gemm_bench(*a); });
}

}  // namespace stride::bench
