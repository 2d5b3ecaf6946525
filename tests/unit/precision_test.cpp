// CPU bfloat16 (Note [CPU bfloat16] in trainer/precision.cpp): how --amp/--amp-dtype/--amp-force resolve on
// CPUs with and without bf16 instructions (simulated with the detection result and STRIDE_CPU_BF16), and what
// bf16 autocast does to a ResNet on the CPU: convolutions in bf16, loss/parameters/gradients/optimizer state in
// float32, and results close to float32. These run on any x86 CPU: without bf16 instructions oneDNN emulates.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "common/error.h"
#include "data/codec.h"
#include "data/shard_writer.h"
#include "models/flops.h"
#include "models/registry.h"
#include "test_util.h"
#include "trainer/amp.h"
#include "trainer/loss.h"
#include "trainer/precision.h"
#include "trainer/sgd.h"

namespace stride::trainer {
namespace {

using testing::run_command;
using testing::ScratchDir;

const CpuBf16 kNativeCpu{true, "avx512_bf16"};
const CpuBf16 kPlainCpu{false, "none"};

// Sets an environment variable for the scope and restores the previous value.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    const char* old = std::getenv(name);
    had_ = old != nullptr;
    if (had_) old_ = old;
    ::setenv(name, value, 1);
  }
  ~ScopedEnv() {
    if (had_) {
      ::setenv(name_, old_.c_str(), 1);
    } else {
      ::unsetenv(name_);
    }
  }

 private:
  const char* name_;
  bool had_ = false;
  std::string old_;
};

TEST(CpuBf16, CpuinfoFlagsAreMatchedAsWholeWords) {
  const std::string zen4 = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx512f avx512_bf16 avx512_vnni\n";
  EXPECT_EQ(cpuinfo_bf16_features(zen4), "avx512_bf16");
  EXPECT_EQ(cpuinfo_bf16_features("flags : amx_tile amx_bf16 amx_int8\n"), "amx_bf16");
  EXPECT_EQ(cpuinfo_bf16_features("flags : avx512_bf16 amx_bf16\nflags : avx512_bf16 amx_bf16\n"),
            "avx512_bf16+amx_bf16");
  EXPECT_EQ(cpuinfo_bf16_features("flags : avx2 avx512f avx512_vnni\n"), "");
  EXPECT_EQ(cpuinfo_bf16_features("flags : avx512_bf16x xavx512_bf16 avx512bf16\n"), "");
  // Only the flags line counts.
  EXPECT_EQ(cpuinfo_bf16_features("model name : avx512_bf16 special\nflags : sse2\n"), "");
  EXPECT_EQ(cpuinfo_bf16_features(""), "");
}

TEST(CpuBf16, EnvironmentOverridesDetection) {
  {
    ScopedEnv env("STRIDE_CPU_BF16", "0");
    const auto d = detect_cpu_bf16();
    EXPECT_FALSE(d.native);
    EXPECT_EQ(d.source, "STRIDE_CPU_BF16=0");
  }
  {
    ScopedEnv env("STRIDE_CPU_BF16", "1");
    const auto d = detect_cpu_bf16();
    EXPECT_TRUE(d.native);
    EXPECT_EQ(d.source, "STRIDE_CPU_BF16=1");
  }
  {
    ScopedEnv env("STRIDE_CPU_BF16", "auto");
    const auto d = detect_cpu_bf16();  // this machine's answer, whatever it is, named after what was found
    EXPECT_EQ(d.native, d.source != "none") << d.source;
  }
  ScopedEnv env("STRIDE_CPU_BF16", "yes");
  try {
    detect_cpu_bf16();
    FAIL() << "STRIDE_CPU_BF16=yes accepted";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("STRIDE_CPU_BF16 must be 0, 1 or auto"), std::string::npos) << e.what();
  }
}

TEST(AmpPlan, CpuWithBf16InstructionsAutocastsInBf16WithoutLossScaling) {
  for (const char* dtype : {"auto", "bfloat16"}) {
    const auto p = plan_amp(torch::kCPU, /*amp=*/true, dtype, /*force=*/false, kNativeCpu);
    EXPECT_TRUE(p.autocast) << dtype;
    EXPECT_EQ(p.dtype, torch::kBFloat16);
    EXPECT_FALSE(p.scale_loss);
    EXPECT_FALSE(p.emulated);
    EXPECT_TRUE(p.warning.empty()) << p.warning;
    EXPECT_EQ(compute_dtype_name(p), "bfloat16");
    EXPECT_NE(p.summary.find("avx512_bf16"), std::string::npos) << p.summary;
  }
}

TEST(AmpPlan, CpuWithoutBf16FallsBackToFloat32WithOneWarningUnlessForced) {
  auto p = plan_amp(torch::kCPU, true, "auto", false, kPlainCpu);
  EXPECT_FALSE(p.autocast);
  EXPECT_EQ(compute_dtype_name(p), "float32");
  EXPECT_NE(p.warning.find("no bfloat16 instructions"), std::string::npos) << p.warning;
  EXPECT_NE(p.warning.find("--amp-force"), std::string::npos) << p.warning;

  p = plan_amp(torch::kCPU, true, "bfloat16", /*force=*/true, kPlainCpu);
  EXPECT_TRUE(p.autocast);
  EXPECT_TRUE(p.emulated);
  EXPECT_TRUE(p.warning.empty());
  EXPECT_EQ(compute_dtype_name(p), "bfloat16");
  EXPECT_NE(p.summary.find("emulated"), std::string::npos) << p.summary;

  // Without --amp nothing autocasts and nothing is said, on either CPU.
  for (const auto& cpu : {kNativeCpu, kPlainCpu}) {
    p = plan_amp(torch::kCPU, false, "auto", false, cpu);
    EXPECT_FALSE(p.autocast);
    EXPECT_TRUE(p.warning.empty());
  }
}

TEST(AmpPlan, Float16OnTheCpuIsAUsageErrorNamingTheFlagAndWhatWorks) {
  try {
    plan_amp(torch::kCPU, true, "float16", false, kNativeCpu);
    FAIL() << "float16 accepted on the CPU";
  } catch (const UsageError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("--amp-dtype float16"), std::string::npos) << m;
    EXPECT_NE(m.find("--amp-dtype bfloat16"), std::string::npos) << m;
  }
  // Without --amp the dtype is not used: no error (a config file may carry it for GPU runs).
  EXPECT_FALSE(plan_amp(torch::kCPU, false, "float16", false, kNativeCpu).autocast);
  EXPECT_THROW(plan_amp(torch::kCPU, true, "fp8", false, kNativeCpu), UsageError);
}

TEST(AmpPlan, CudaKeepsFloat16WithLossScalingAsTheDefault) {
  const torch::Device cuda(torch::kCUDA, 0);  // planning needs no GPU
  auto p = plan_amp(cuda, true, "auto", false, {});
  EXPECT_TRUE(p.autocast);
  EXPECT_EQ(p.dtype, torch::kHalf);
  EXPECT_TRUE(p.scale_loss);
  p = plan_amp(cuda, true, "bfloat16", false, {});
  EXPECT_EQ(p.dtype, torch::kBFloat16);
  EXPECT_FALSE(p.scale_loss);
}

// ---------------------------------------------------------------------------------------------------------
// bf16 autocast on a CPU ResNet
// ---------------------------------------------------------------------------------------------------------

// The dtypes of every convolution's output in the autograd graph that produced `root` (each ConvolutionBackward
// node records the dtype of the tensor the forward convolution returned).
std::vector<caffe2::TypeMeta> convolution_output_dtypes(const torch::Tensor& root) {
  std::vector<caffe2::TypeMeta> dtypes;
  std::set<torch::autograd::Node*> seen;
  std::vector<torch::autograd::Node*> todo{root.grad_fn().get()};
  while (!todo.empty()) {
    auto* node = todo.back();
    todo.pop_back();
    if (!node || !seen.insert(node).second) continue;
    if (node->name().find("Convolution") != std::string::npos) dtypes.push_back(node->input_metadata(0).dtype());
    for (const auto& edge : node->next_edges()) todo.push_back(edge.function.get());
  }
  return dtypes;
}

struct Resnet20Case {
  models::ResNet model{nullptr};
  torch::Tensor x, y;
};

Resnet20Case resnet20_case(uint64_t seed) {
  torch::manual_seed(seed);
  models::ModelOptions mo;
  mo.num_classes = 10;
  Resnet20Case c;
  c.model = models::make_model("resnet20", mo);
  c.model->train();
  c.x = torch::randn({32, 3, 32, 32});
  c.y = torch::randint(10, {32}, torch::kLong);
  return c;
}

TEST(CpuBf16, ConvolutionsRunInBf16WhileLossParametersGradientsAndMomentumStayFloat32) {
  auto c = resnet20_case(0);
  Sgd sgd(weight_decay_groups(c.model->named_parameters().pairs(), 5e-4, 0.0), 0.9, true);
  torch::Tensor logits, loss;
  {
    AutocastGuard guard(torch::kCPU, torch::kBFloat16);
    logits = c.model->forward(c.x);
    loss = cross_entropy(logits, c.y, 0.1);
  }
  const auto convs = convolution_output_dtypes(logits);
  ASSERT_EQ(convs.size(), 19u);  // resnet20: the stem and 2 per block x 9 blocks (option-A shortcuts)
  for (const auto& d : convs) EXPECT_EQ(d, caffe2::TypeMeta::Make<at::BFloat16>());
  EXPECT_EQ(logits.scalar_type(), torch::kBFloat16);  // the classifier too
  EXPECT_EQ(loss.scalar_type(), torch::kFloat32);
  loss.backward();
  sgd.step(0.1);
  for (const auto& [name, p] : c.model->named_parameters().pairs()) {
    EXPECT_EQ(p.scalar_type(), torch::kFloat32) << name;
    ASSERT_TRUE(p.grad().defined()) << name;
    EXPECT_EQ(p.grad().scalar_type(), torch::kFloat32) << name;
  }
  for (const auto& [name, b] : c.model->named_buffers().pairs()) {
    if (b.is_floating_point()) {
      EXPECT_EQ(b.scalar_type(), torch::kFloat32) << name;  // BN running statistics
    }
  }
  ASSERT_FALSE(sgd.momentum_buffers().empty());
  for (const auto& [name, m] : sgd.momentum_buffers()) EXPECT_EQ(m.scalar_type(), torch::kFloat32) << name;
}

// The FLOP counter (models/flops.h, compute efficiency in `stride bench step`) counts what a pass runs, once per
// product, in float32 and under bf16 autocast alike. ResNet-20 on 28 x 28 x 1, by hand: stem 28*28*16*9 MACs;
// layer1 6 x 28*28*16*16*9; layer2 14*14*32*16*9 + 5 x 14*14*32*32*9; layer3 7*7*64*32*9 + 5 x 7*7*64*64*9;
// fc 64*10: 30,821,248 multiply-accumulates per image.
TEST(CpuBf16, FlopCounterCountsEveryProductOnceInBothPrecisions) {
  models::ModelOptions mo;
  mo.num_classes = 10;
  mo.in_channels = 1;
  auto model = models::make_model("resnet20", mo);
  model->eval();
  const auto x = torch::randn({3, 1, 28, 28});
  torch::NoGradGuard no_grad;
  for (bool bf16 : {false, true}) {
    AutocastGuard guard(torch::kCPU, torch::kBFloat16, bf16);
    EXPECT_EQ(models::count_flops([&] { (void)model->forward(x); }), 3 * 2 * 30821248LL) << "bf16 " << bf16;
  }
}

// Note [bf16 tolerance]
// bfloat16 keeps 8 significant bits: rounding an input or a weight costs up to 2^-9 = 0.2% relative, and oneDNN
// accumulates the products in float32. Forward, BatchNorm renormalises every layer, so ResNet-20's 20 layers add
// their errors roughly in quadrature: measured here (Debian LibTorch 1.13, the same kernels as PyTorch's CPU
// autocast; 3 seeds in PyTorch, 2 here) the logits are 0.4-0.6% off in relative L2 and the loss 0.00-0.03%.
// Backward is noisier: BatchNorm's input gradient, dy - mean(dy) - xhat * mean(dy * xhat), subtracts nearly equal
// terms computed from bf16-rounded dy and x, so at initialisation (random labels, small residuals) the whole
// gradient is 12-20% off in relative L2 (single tensors up to 38%) while its direction holds: cosine similarity
// 0.99+ for the whole gradient. PyTorch's own bf16 autocast measures the same, and it trains to float32's accuracy
// (docs/benchmarks.md). The bounds (logits 2%, loss 0.2%, gradient 30% and cosine 0.97) are 3-7x the measured
// forward errors and 1.5x the gradient's: loose enough for another CPU's kernel choice, tight enough to catch a
// gradient that lost its scale or direction, or autocast silently off (exactly float32's logits).
TEST(CpuBf16, MatchesFloat32WithinTheBf16Tolerance) {
  for (uint64_t seed : {0, 1}) {
    SCOPED_TRACE(seed);
    auto c = resnet20_case(seed);
    std::vector<torch::Tensor> logits, grads;
    std::vector<double> losses;
    for (bool bf16 : {false, true}) {
      c.model->zero_grad();
      torch::Tensor out, loss;
      {
        AutocastGuard guard(torch::kCPU, torch::kBFloat16, bf16);
        out = c.model->forward(c.x);
        loss = cross_entropy(out, c.y, 0.0);
      }
      loss.backward();
      logits.push_back(out.detach().to(torch::kFloat64));
      losses.push_back(loss.item<double>());
      std::vector<torch::Tensor> flat;
      for (const auto& p : c.model->parameters()) flat.push_back(p.grad().reshape({-1}).to(torch::kFloat64));
      grads.push_back(torch::cat(flat));
    }
    auto rel = [](const torch::Tensor& a, const torch::Tensor& ref) {
      return ((a - ref).norm() / ref.norm()).item<double>();
    };
    const double logit_err = rel(logits[1], logits[0]), grad_err = rel(grads[1], grads[0]);
    const double loss_err = std::abs(losses[1] - losses[0]) / losses[0];
    EXPECT_GT(logit_err, 0.0) << "bf16 gave exactly the float32 logits: autocast did nothing";
    EXPECT_LT(logit_err, 0.02);
    EXPECT_LT(loss_err, 0.002) << losses[0] << " vs " << losses[1];
    EXPECT_LT(grad_err, 0.3);
    // Direction matters more than size for SGD: the bf16 gradient points the same way.
    const double cosine = (grads[1].dot(grads[0]) / (grads[1].norm() * grads[0].norm())).item<double>();
    EXPECT_GT(cosine, 0.97);
  }
}

// ---------------------------------------------------------------------------------------------------------
// `stride train --amp` on the CPU, end to end (the real binary on a tiny dataset)
// ---------------------------------------------------------------------------------------------------------

// train/ and test/ splits of 28x28 grey images, 3 classes: 16 training images (4 steps of 4), 8 test images.
void write_tiny_dataset(const ScratchDir& dir) {
  for (const auto& [split, n] : {std::pair<std::string, int>{"train", 16}, {"test", 8}}) {
    data::ShardWriter w(dir.file("data/" + split), "tiny", 8);
    for (int i = 0; i < n; ++i) {
      data::Image img(28, 28, 1);
      for (size_t k = 0; k < img.pixels.size(); ++k) img.pixels[k] = static_cast<uint8_t>((k * 7 + i * 31) % 251);
      w.add(concat("s", i), {{"npy", data::encode_npy(img)}, {"cls", std::to_string(i % 3)}}, i % 3);
    }
    w.finish(3, {});
  }
}

struct TinyRun {
  testing::CommandResult result;
  nlohmann::json precision_record;    // metrics.jsonl's "precision" line
  nlohmann::json manifest_precision;  // the final checkpoint's MANIFEST, through `stride ckpt list --json`
};

TinyRun train_tiny(const ScratchDir& dir, const std::string& env, const std::string& flags, const std::string& run) {
  const std::string out = dir.file(run);
  TinyRun r;
  r.result = run_command(env + " " + STRIDE_BINARY + " train --data-path " + dir.file("data") +
                         " --model resnet20 --epochs 1 --batch-size 4 --workers 1 --threads 1 --status-port -1"
                         " --comm-backend single --output-dir " +
                         out + " " + flags);
  if (r.result.exit_code != 0) return r;
  std::ifstream metrics(out + "/metrics.jsonl");
  for (std::string line; std::getline(metrics, line);) {
    auto j = nlohmann::json::parse(line);
    if (j.at("type") == "precision") r.precision_record = j;
  }
  const auto list = run_command(std::string(STRIDE_BINARY) + " ckpt list --json " + out);
  if (list.exit_code == 0)
    r.manifest_precision = nlohmann::json::parse(list.output)[0].value("precision", nlohmann::json());
  return r;
}

size_t count_of(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (auto pos = text.find(what); pos != std::string::npos; pos = text.find(what, pos + 1)) ++n;
  return n;
}

TEST(CpuBf16Train, WithoutBf16InstructionsAmpWarnsOnceAndTrainsInFloat32UnlessForced) {
  ScratchDir dir("amp-nobf16");
  write_tiny_dataset(dir);
  auto r = train_tiny(dir, "STRIDE_CPU_BF16=0", "--amp", "fallback");
  ASSERT_EQ(r.result.exit_code, 0) << r.result.output;
  EXPECT_EQ(count_of(r.result.output, "no bfloat16 instructions"), 1u) << r.result.output;
  EXPECT_NE(r.result.output.find("precision: float32 (CPU bf16: STRIDE_CPU_BF16=0; --amp not applied)"),
            std::string::npos)
      << r.result.output;
  for (const auto& p : {r.precision_record, r.manifest_precision}) {
    ASSERT_TRUE(p.is_object()) << r.result.output;
    EXPECT_EQ(p.at("compute_dtype"), "float32");
    EXPECT_EQ(p.at("amp_requested"), true);
    EXPECT_EQ(p.at("cpu_bf16"), "STRIDE_CPU_BF16=0");
  }

  r = train_tiny(dir, "STRIDE_CPU_BF16=0", "--amp --amp-force", "forced");
  ASSERT_EQ(r.result.exit_code, 0) << r.result.output;
  EXPECT_EQ(count_of(r.result.output, "no bfloat16 instructions"), 0u) << r.result.output;
  for (const auto& p : {r.precision_record, r.manifest_precision}) {
    ASSERT_TRUE(p.is_object()) << r.result.output;
    EXPECT_EQ(p.at("compute_dtype"), "bfloat16");
    EXPECT_EQ(p.at("emulated"), true);
  }
}

TEST(CpuBf16Train, WithBf16InstructionsAmpTrainsInBf16AndRecordsIt) {
  ScratchDir dir("amp-bf16");
  write_tiny_dataset(dir);
  auto r = train_tiny(dir, "STRIDE_CPU_BF16=1", "--amp --channels-last", "bf16");
  ASSERT_EQ(r.result.exit_code, 0) << r.result.output;
  EXPECT_NE(r.result.output.find("precision: bfloat16 autocast on the CPU (CPU bf16: STRIDE_CPU_BF16=1)"),
            std::string::npos)
      << r.result.output;
  EXPECT_NE(r.result.output.find("; channels-last"), std::string::npos) << r.result.output;
  for (const auto& p : {r.precision_record, r.manifest_precision}) {
    ASSERT_TRUE(p.is_object()) << r.result.output;
    EXPECT_EQ(p.at("compute_dtype"), "bfloat16");
    EXPECT_EQ(p.at("emulated"), false);
    EXPECT_EQ(p.at("channels_last"), true);
  }
  // Without --amp the run says float32, whatever the CPU.
  r = train_tiny(dir, "STRIDE_CPU_BF16=1", "", "fp32");
  ASSERT_EQ(r.result.exit_code, 0) << r.result.output;
  EXPECT_EQ(r.precision_record.at("compute_dtype"), "float32");
  EXPECT_EQ(r.precision_record.at("amp_requested"), false);
}

TEST(CpuBf16Train, Float16OnTheCpuIsAUsageErrorForTrainAndBench) {
  for (const std::string cmd : {"train --device cpu --comm-backend single --data-path /nonexistent",
                                "bench step --device cpu --comm-backend single --model resnet20 --steps 1"}) {
    const auto r = run_command(std::string(STRIDE_BINARY) + " " + cmd + " --amp --amp-dtype float16");
    EXPECT_EQ(r.exit_code, 2) << cmd << "\n" << r.output;
    EXPECT_NE(r.output.find("--amp-dtype float16: CPU autocast runs bfloat16 only; use --amp-dtype bfloat16"),
              std::string::npos)
        << cmd << "\n"
        << r.output;
  }
}

}  // namespace
}  // namespace stride::trainer
