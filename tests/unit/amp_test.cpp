// Mixed precision: the loss scaler's logic on CPU tensors (the portable path), the autocast guard, channels-last
// conversion; and, when a CUDA device is present, the same on the GPU (fused ATen kernels, fp16 autocast, foreach
// SGD) plus a short ResNet-20 AMP + channels-last training run. GPU tests skip without a device.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <limits>

#include "common/error.h"
#include "models/registry.h"
#include "trainer/amp.h"
#include "trainer/loss.h"
#include "trainer/sgd.h"

namespace stride::trainer {
namespace {

#define SKIP_WITHOUT_CUDA() \
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device"

// One weight w (shape [3]) whose gradient the test sets directly, in an SGD without momentum or decay so a
// step is w -= lr * g.
struct OneParam {
  explicit OneParam(torch::Device device = torch::kCPU)
      : w(torch::ones({3}, torch::TensorOptions().device(device)).requires_grad_(true)),
        sgd({{"g", 0.0, {{"w", w}}}}, 0.0, false) {}
  void set_grad(std::vector<float> g) { w.mutable_grad() = torch::tensor(g).to(w.device()); }
  torch::Tensor w;
  Sgd sgd;
};

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNan = std::numeric_limits<float>::quiet_NaN();

// The scaler scenario both devices run: unscale correctness, skip + backoff on inf and NaN, growth after
// growth_interval finite steps, and the growth tracker reset by a bad step.
void scaler_scenario(torch::Device device) {
  GradScalerOptions o;
  o.growth_interval = 3;
  GradScaler scaler(o);
  OneParam p(device);
  auto loss = torch::tensor(2.0f).to(device);
  auto scaled = scaler.scale(loss);
  EXPECT_EQ(scaled.device(), device);
  EXPECT_FLOAT_EQ(scaled.item<float>(), 2.0f * 65536.0f);

  // Finite gradients: divided by the scale, then one SGD step with lr 1.
  p.set_grad({65536.0f, -131072.0f, 32768.0f});
  scaler.unscale({p.w});
  EXPECT_TRUE(torch::equal(p.w.grad().cpu(), torch::tensor({1.0f, -2.0f, 0.5f})));
  EXPECT_TRUE(scaler.step(p.sgd, 1.0));
  EXPECT_TRUE(torch::equal(p.w.detach().cpu(), torch::tensor({0.0f, 3.0f, 0.5f})));
  EXPECT_EQ(scaler.growth_tracker(), 1);

  // inf, then NaN: no step, the scale halves each time, the tracker restarts.
  for (float bad : {kInf, kNan}) {
    const double before = scaler.current_scale();
    auto w_before = p.w.detach().clone();
    scaler.scale(loss);
    p.set_grad({1.0f, bad, 1.0f});
    EXPECT_FALSE(scaler.step(p.sgd, 1.0)) << bad;
    EXPECT_TRUE(torch::equal(p.w.detach(), w_before)) << bad;
    EXPECT_DOUBLE_EQ(scaler.current_scale(), before * 0.5) << bad;
    EXPECT_EQ(scaler.growth_tracker(), 0) << bad;
  }
  EXPECT_DOUBLE_EQ(scaler.current_scale(), 16384.0);

  // Three finite steps in a row double the scale and restart the count.
  for (int i = 1; i <= 3; ++i) {
    scaler.scale(loss);
    p.set_grad({1.0f, 1.0f, 1.0f});
    EXPECT_TRUE(scaler.step(p.sgd, 0.0));
    EXPECT_EQ(scaler.growth_tracker(), i % 3);
    EXPECT_DOUBLE_EQ(scaler.current_scale(), i < 3 ? 16384.0 : 32768.0);
  }
}

// ---------------------------------------------------------------------------------------------------------
// CPU: the portable path
// ---------------------------------------------------------------------------------------------------------
TEST(Amp, ParsesDtypes) {
  EXPECT_EQ(parse_amp_dtype("float16"), torch::kHalf);
  EXPECT_EQ(parse_amp_dtype("fp16"), torch::kHalf);
  EXPECT_EQ(parse_amp_dtype("bfloat16"), torch::kBFloat16);
  EXPECT_EQ(parse_amp_dtype("bf16"), torch::kBFloat16);
  EXPECT_THROW(parse_amp_dtype("float32"), UsageError);
}

TEST(Amp, ScalerUnscalesSkipsBacksOffAndGrowsOnCpu) { scaler_scenario(torch::kCPU); }

TEST(Amp, ScalerStepUnscalesOnceAndRejectsASecondUnscale) {
  GradScaler scaler;
  OneParam p;
  scaler.scale(torch::tensor(1.0f));
  p.set_grad({65536.0f, 0.0f, 0.0f});
  scaler.unscale({p.w});
  EXPECT_THROW(scaler.unscale({p.w}), Error);
  EXPECT_TRUE(scaler.step(p.sgd, 1.0));  // does not unscale again
  EXPECT_FLOAT_EQ(p.w[0].item<float>(), 0.0f);
  // Without an explicit unscale, step() does it.
  scaler.scale(torch::tensor(1.0f));
  p.set_grad({65536.0f, 0.0f, 0.0f});
  EXPECT_TRUE(scaler.step(p.sgd, 1.0));
  EXPECT_FLOAT_EQ(p.w[0].item<float>(), -1.0f);
}

TEST(Amp, ScalerDoesNotGrowPastFloatRange) {
  GradScalerOptions o;
  o.init_scale = 3e38;
  o.growth_interval = 1;
  GradScaler scaler(o);
  OneParam p;
  scaler.scale(torch::tensor(1.0f));
  p.set_grad({0.0f, 0.0f, 0.0f});
  EXPECT_TRUE(scaler.step(p.sgd, 1.0));
  EXPECT_FLOAT_EQ(static_cast<float>(scaler.current_scale()), 3e38f);
  EXPECT_EQ(scaler.growth_tracker(), 0);
}

TEST(Amp, ScalerStateRoundTrips) {
  GradScalerOptions o;
  o.growth_interval = 5;
  GradScaler a(o);
  OneParam p;
  for (float g : {kInf, 1.0f, 1.0f}) {
    a.scale(torch::tensor(1.0f));
    p.set_grad({g, 0.0f, 0.0f});
    a.step(p.sgd, 0.0);
  }
  auto state = a.state();
  ASSERT_EQ(state.size(), 2u);
  EXPECT_EQ(state.at("amp.scale").scalar_type(), torch::kFloat32);
  EXPECT_EQ(state.at("amp.growth_tracker").scalar_type(), torch::kInt32);
  EXPECT_FLOAT_EQ(state.at("amp.scale").item<float>(), 32768.0f);

  GradScaler b(o);
  b.load_state(state);
  EXPECT_DOUBLE_EQ(b.current_scale(), 32768.0);
  EXPECT_EQ(b.growth_tracker(), 2);
  // The restored scaler continues where the saved one was: three more finite steps reach the interval.
  for (int i = 0; i < 3; ++i) {
    b.scale(torch::tensor(1.0f));
    p.set_grad({0.0f, 0.0f, 0.0f});
    b.step(p.sgd, 0.0);
  }
  EXPECT_DOUBLE_EQ(b.current_scale(), 65536.0);

  // state() is a copy: stepping does not change what was saved.
  EXPECT_FLOAT_EQ(state.at("amp.scale").item<float>(), 32768.0f);
  EXPECT_THROW(b.load_state({{"amp.scale", torch::tensor(1.0f)}}), Error);
  EXPECT_THROW(b.load_state({{"amp.scale", torch::tensor(-1.0f)}, {"amp.growth_tracker", torch::tensor(0)}}), Error);
}

TEST(Amp, DisabledScalerPassesThrough) {
  GradScalerOptions o;
  o.enabled = false;
  GradScaler scaler(o);
  OneParam p;
  auto loss = torch::tensor(3.0f);
  EXPECT_TRUE(scaler.scale(loss).is_same(loss));
  p.set_grad({1.0f, 1.0f, 1.0f});
  EXPECT_TRUE(scaler.step(p.sgd, 1.0));
  EXPECT_TRUE(torch::equal(p.w.detach(), torch::zeros({3})));
}

TEST(Amp, RejectsBadOptions) {
  GradScalerOptions o;
  o.backoff_factor = 1.5;
  EXPECT_THROW((void)GradScaler(o), UsageError);
  o = {};
  o.growth_interval = 0;
  EXPECT_THROW((void)GradScaler(o), UsageError);
}

TEST(Amp, AutocastGuardOnCpuRunsConvInBfloat16AndRestores) {
  torch::manual_seed(0);
  torch::nn::Conv2d conv(torch::nn::Conv2dOptions(3, 4, 3));
  auto x = torch::randn({1, 3, 8, 8});
  EXPECT_FALSE(autocast_enabled(torch::kCPU));
  {
    AutocastGuard guard(torch::kCPU, torch::kBFloat16);
    EXPECT_TRUE(autocast_enabled(torch::kCPU));
    EXPECT_EQ(conv(x).scalar_type(), torch::kBFloat16);
    {
      AutocastGuard off(torch::kCPU, torch::kBFloat16, /*enabled=*/false);  // an fp32 island
      EXPECT_EQ(conv(x).scalar_type(), torch::kFloat32);
    }
    EXPECT_TRUE(autocast_enabled(torch::kCPU));
  }
  EXPECT_FALSE(autocast_enabled(torch::kCPU));
  EXPECT_EQ(conv(x).scalar_type(), torch::kFloat32);
  {
    // A disabled scope accepts any AMP dtype (what `--amp-dtype float16` without `--amp` does on the CPU).
    AutocastGuard off(torch::kCPU, torch::kHalf, /*enabled=*/false);
    EXPECT_EQ(conv(x).scalar_type(), torch::kFloat32);
  }
  EXPECT_THROW((void)AutocastGuard(torch::kCPU, torch::kFloat32), UsageError);
}

TEST(Amp, ChannelsLastConvertsConvWeightsOnly) {
  torch::manual_seed(0);
  models::ModelOptions mo;
  mo.num_classes = 10;
  auto model = models::make_model("resnet20", mo);
  to_channels_last(*model);
  for (const auto& [name, p] : model->named_parameters().pairs()) {
    if (p.dim() == 4) {
      EXPECT_TRUE(p.is_contiguous(torch::MemoryFormat::ChannelsLast)) << name;
    } else {
      EXPECT_TRUE(p.is_contiguous()) << name;
    }
  }
  auto x = torch::randn({2, 3, 32, 32}).contiguous(torch::MemoryFormat::ChannelsLast);
  cross_entropy(model->forward(x), torch::tensor({1, 2}, torch::kLong), 0.0).backward();
  const auto w = model->named_parameters()["conv1.weight"];
  EXPECT_TRUE(w.grad().is_contiguous(torch::MemoryFormat::ChannelsLast));
}

// ---------------------------------------------------------------------------------------------------------
// GPU
// ---------------------------------------------------------------------------------------------------------
TEST(Gpu, AutocastRunsConvInFloat16) {
  SKIP_WITHOUT_CUDA();
  torch::nn::Conv2d conv(torch::nn::Conv2dOptions(3, 8, 3));
  conv->to(torch::kCUDA);
  auto x = torch::randn({2, 3, 16, 16}, torch::kCUDA);
  {
    AutocastGuard guard(torch::kCUDA, torch::kHalf);
    EXPECT_TRUE(autocast_enabled(torch::kCUDA));
    EXPECT_EQ(conv(x).scalar_type(), torch::kHalf);
    // Precision-sensitive ops stay in float32.
    EXPECT_EQ(torch::log_softmax(conv(x).flatten(1), 1).scalar_type(), torch::kFloat32);
  }
  {
    AutocastGuard guard(torch::kCUDA, torch::kBFloat16);
    EXPECT_EQ(conv(x).scalar_type(), torch::kBFloat16);
  }
  EXPECT_FALSE(autocast_enabled(torch::kCUDA));
  EXPECT_EQ(conv(x).scalar_type(), torch::kFloat32);
}

TEST(Gpu, ScalerUnscalesSkipsBacksOffAndGrowsOnCuda) {
  SKIP_WITHOUT_CUDA();
  scaler_scenario(torch::Device(torch::kCUDA, 0));
}

TEST(Gpu, ScalerUnscalesHalfGradientsOnCuda) {
  SKIP_WITHOUT_CUDA();
  GradScaler scaler;
  auto a = torch::ones({4}, torch::kCUDA).requires_grad_(true);
  auto b = torch::ones({4}, torch::TensorOptions().device(torch::kCUDA).dtype(torch::kHalf)).requires_grad_(true);
  scaler.scale(torch::tensor(1.0f, torch::kCUDA));
  a.mutable_grad() = torch::full({4}, 65536.0f, torch::kCUDA);
  b.mutable_grad() = torch::full({4}, 2.0f, torch::TensorOptions().device(torch::kCUDA).dtype(torch::kHalf));
  scaler.unscale({a, b});
  EXPECT_TRUE(torch::allclose(a.grad().cpu(), torch::ones({4})));
  EXPECT_TRUE(torch::allclose(b.grad().cpu().to(torch::kFloat32), torch::full({4}, 2.0f / 65536.0f)));
}

TEST(Gpu, ForeachSgdMatchesTheCpuLoop) {
  SKIP_WITHOUT_CUDA();
  for (bool nesterov : {false, true}) {
    torch::manual_seed(3);
    auto w = torch::randn({4, 3}, torch::requires_grad());
    auto b = torch::randn({3}, torch::requires_grad());
    auto wc = w.detach().to(torch::kCUDA).requires_grad_(true);
    auto bc = b.detach().to(torch::kCUDA).requires_grad_(true);
    Sgd cpu({{"decay", 0.01, {{"w", w}}}, {"no_decay", 0.0, {{"b", b}}}}, 0.9, nesterov);
    Sgd gpu({{"decay", 0.01, {{"w", wc}}}, {"no_decay", 0.0, {{"b", bc}}}}, 0.9, nesterov);
    auto x = torch::randn({5, 4});
    auto xc = x.to(torch::kCUDA);
    for (int i = 0; i < 4; ++i) {
      cpu.zero_grad();
      gpu.zero_grad();
      (x.matmul(w) + b).pow(2).sum().backward();
      (xc.matmul(wc) + bc).pow(2).sum().backward();
      cpu.step(0.05);
      gpu.step(0.05);
    }
    EXPECT_TRUE(torch::allclose(w, wc.cpu(), 1e-5, 1e-6)) << "nesterov " << nesterov;
    EXPECT_TRUE(torch::allclose(b, bc.cpu(), 1e-5, 1e-6)) << "nesterov " << nesterov;
    EXPECT_EQ(gpu.momentum_buffers().size(), 2u);
  }
}

TEST(Gpu, Resnet20AmpChannelsLastTrainsOnAFixedBatch) {
  SKIP_WITHOUT_CUDA();
  const torch::Device device(torch::kCUDA, 0);
  torch::manual_seed(0);
  models::ModelOptions mo;
  mo.num_classes = 10;
  auto model = models::make_model("resnet20", mo);
  model->to(device);
  to_channels_last(*model);
  model->train();
  auto x = torch::randn({64, 3, 32, 32}).to(device).contiguous(torch::MemoryFormat::ChannelsLast);
  auto y = torch::randint(10, {64}, torch::kLong).to(device);
  Sgd sgd(weight_decay_groups(model->named_parameters().pairs(), 1e-4, 0.0), 0.9, false);
  GradScaler scaler;
  std::vector<double> losses;
  int skipped = 0;
  for (int i = 0; i < 20; ++i) {
    torch::Tensor loss;
    {
      AutocastGuard autocast(device, torch::kHalf);
      auto logits = model->forward(x);
      EXPECT_EQ(logits.scalar_type(), torch::kHalf);
      loss = cross_entropy(logits, y, 0.0);
    }
    ASSERT_EQ(loss.scalar_type(), torch::kFloat32);
    scaler.scale(loss).backward();
    if (!scaler.step(sgd, 0.05)) ++skipped;
    sgd.zero_grad();
    losses.push_back(loss.item<double>());
  }
  EXPECT_LE(skipped, 5);
  EXPECT_TRUE(std::isfinite(losses.back()));
  EXPECT_LT(losses.back(), 0.5 * losses.front()) << "first " << losses.front() << " last " << losses.back();
  EXPECT_TRUE(model->named_parameters()["conv1.weight"].is_contiguous(torch::MemoryFormat::ChannelsLast));
}

}  // namespace
}  // namespace stride::trainer
