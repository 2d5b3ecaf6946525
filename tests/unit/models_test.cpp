// The ResNet family: sizes, shapes, names, initialisation and train/eval behaviour.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <map>

#include "common/error.h"
#include "models/registry.h"
#include "models/state_dict.h"

namespace stride::models {
namespace {

// torchvision's counts (the table), He et al.'s CIFAR ResNets with option A shortcuts (0.27M / 0.85M /
// 1.7M; exact values as printed by the widely used reference implementation), timm's se_resnet50 and the
// Wide ResNet paper's WRN-28-10 (36.5M).
const std::map<std::string, int64_t> kPublishedCounts = {
    {"resnet18", 11689512},         {"resnet34", 21797672},
    {"resnet50", 25557032},         {"resnet101", 44549160},
    {"resnet152", 60192808},        {"resnext50_32x4d", 25028904},
    {"resnext101_32x8d", 88791336}, {"resnext101_64x4d", 83455272},
    {"wide_resnet50_2", 68883240},  {"wide_resnet101_2", 126886696},
    {"se_resnet50", 28088024},      {"resnet20", 269722},
    {"resnet32", 464154},           {"resnet44", 658586},
    {"resnet56", 853018},           {"resnet110", 1727962},
    {"wrn28_10", 36479194},
};

TEST(ModelRegistry, PublishedParameterCounts) {
  for (const auto& [name, count] : kPublishedCounts) EXPECT_EQ(parameter_count(name), count) << name;
}

TEST(ModelRegistry, PlainTwinsHaveTheSameParametersAsOptionAResNets) {
  for (int depth : {20, 32, 44, 56, 110}) {
    EXPECT_EQ(parameter_count("plain" + std::to_string(depth)), parameter_count("resnet" + std::to_string(depth)));
  }
}

TEST(ModelRegistry, UnknownModelIsAUsageErrorWithSuggestions) {
  try {
    make_model("resnet5");
    FAIL() << "expected UsageError";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("resnet50"), std::string::npos) << e.what();
  }
}

// ImageNet weights on grayscale data: the summed stem sees a gray image exactly as the RGB stem sees it repeated
// over three channels; "mean" is a third of that; 3 -> 5 channels repeats the RGB weights (R G B R G), scaled by
// 3/5.
TEST(ResNet, AdaptInputConvFollowsTimm) {
  torch::manual_seed(3);
  const auto rgb = torch::randn({8, 3, 7, 7});
  const auto gray = torch::randn({2, 1, 16, 16});
  const auto reference = torch::conv2d(gray.repeat({1, 3, 1, 1}), rgb);
  const auto summed = adapt_input_conv(rgb, 1, "sum", "conv1.weight");
  ASSERT_EQ(summed.sizes(), (std::vector<int64_t>{8, 1, 7, 7}));
  EXPECT_TRUE(torch::allclose(torch::conv2d(gray, summed), reference, 1e-4, 1e-4));
  EXPECT_TRUE(torch::allclose(adapt_input_conv(rgb, 1, "mean", "conv1.weight") * 3, summed, 1e-5, 1e-6));
  const auto five = adapt_input_conv(rgb, 5, "sum", "conv1.weight");
  ASSERT_EQ(five.size(1), 5);
  EXPECT_TRUE(torch::allclose(five.narrow(1, 0, 3), rgb * 0.6));
  EXPECT_TRUE(torch::allclose(five.narrow(1, 3, 2), rgb.narrow(1, 0, 2) * 0.6));
  EXPECT_TRUE(adapt_input_conv(rgb, 3, "none", "x").is_same(rgb));
  EXPECT_THROW(adapt_input_conv(rgb, 1, "none", "conv1.weight"), UsageError);
  EXPECT_THROW(adapt_input_conv(torch::randn({8, 2, 3, 3}), 1, "sum", "conv1.weight"), UsageError);
}

TEST(ModelRegistry, OptionValidation) {
  ModelOptions o;
  o.dropout = 1.5;
  EXPECT_THROW(make_model("resnet20", o), UsageError);
  o = {};
  o.cifar_shortcut = "A";
  EXPECT_THROW(make_model("resnet18", o), UsageError);
  o.cifar_shortcut = "C";
  EXPECT_THROW(make_model("resnet20", o), UsageError);
  o = {};
  o.zero_init_residual = true;
  EXPECT_THROW(make_model("plain20", o), UsageError);
  o = {};
  o.in_channels = 0;
  EXPECT_THROW(make_model("resnet20", o), UsageError);
}

TEST(ModelRegistry, ProjectionShortcutOptionBForCifar) {
  ModelOptions b;
  b.cifar_shortcut = "B";
  // Two projections: 16->32 and 32->64, each a 1x1 conv + BN.
  EXPECT_EQ(parameter_count("resnet20", b), 269722 + (16 * 32 + 64) + (32 * 64 + 128));
  EXPECT_EQ(count_parameters(*make_model("resnet20", b)), parameter_count("resnet20", b));
}

// ---------------------------------------------------------------------------------------------------------
// Every model: the analytic count equals the built module, and the output has the right shape.
// ---------------------------------------------------------------------------------------------------------
class EveryModel : public ::testing::TestWithParam<std::string> {};

TEST_P(EveryModel, BuildsCountsAndRuns) {
  torch::NoGradGuard no_grad;
  const auto name = GetParam();
  auto model = make_model(name);
  EXPECT_EQ(count_parameters(*model), parameter_count(name));
  model->eval();
  const int64_t side = model->spec().default_image_size;
  auto y = model->forward(torch::randn({2, 3, side, side}));
  EXPECT_EQ(y.sizes(), (std::vector<int64_t>{2, model->num_classes()}));
  EXPECT_TRUE(torch::isfinite(y).all().item<bool>());
  if (model->spec().stem == Stem::kCifar || name == "resnet18") {
    // Fashion-MNIST shape: one channel, 28x28, ten classes.
    ModelOptions mnist;
    mnist.in_channels = 1;
    mnist.num_classes = 10;
    auto m = make_model(name, mnist);
    m->eval();
    EXPECT_EQ(m->forward(torch::randn({3, 1, 28, 28})).sizes(), (std::vector<int64_t>{3, 10}));
    EXPECT_EQ(count_parameters(*m), parameter_count(name, mnist));
  }
}

INSTANTIATE_TEST_SUITE_P(Zoo, EveryModel, ::testing::ValuesIn(model_names()),
                         [](const auto& info) { return info.param; });

// ---------------------------------------------------------------------------------------------------------
// Names, stages, heads
// ---------------------------------------------------------------------------------------------------------
TEST(ResNet, TorchvisionKeyNames) {
  auto sd = state_dict(*make_model("resnet18"));
  for (const char* key : {"conv1.weight", "bn1.running_mean", "bn1.num_batches_tracked", "layer1.0.bn2.running_var",
                          "layer2.0.downsample.0.weight", "layer2.0.downsample.1.bias", "layer4.1.conv2.weight",
                          "fc.weight", "fc.bias"}) {
    EXPECT_TRUE(sd.count(key)) << key;
  }
  EXPECT_FALSE(sd.count("layer1.0.downsample.0.weight"));  // identity shortcut: no projection
  auto se = state_dict(*make_model("se_resnet50"));
  EXPECT_EQ(se.at("layer1.0.se.fc1.weight").sizes(), (std::vector<int64_t>{16, 256, 1, 1}));
  auto pre = state_dict(*make_model("preact_resnet18"));
  EXPECT_TRUE(pre.count("final_bn.weight"));
  EXPECT_FALSE(pre.count("bn1.weight"));
  EXPECT_EQ(pre.at("layer1.0.bn1.weight").size(0), 64);
}

TEST(ResNet, StageParametersCoverTheModelInOrder) {
  auto model = make_model("resnet18");
  auto groups = model->stage_parameters();
  std::vector<std::string> names;
  int64_t total = 0;
  for (const auto& g : groups) {
    names.push_back(g.stage);
    for (const auto& p : g.parameters) total += p.second.numel();
  }
  EXPECT_EQ(names, (std::vector<std::string>{"stem", "layer1", "layer2", "layer3", "layer4", "head"}));
  EXPECT_EQ(total, count_parameters(*model));
}

TEST(ResNet, ResetHeadKeepsTheBody) {
  auto model = make_model("resnet20");
  auto before = model->named_parameters()["layer3.2.conv2.weight"].clone();
  model->reset_head(7);
  EXPECT_EQ(model->num_classes(), 7);
  model->eval();
  EXPECT_EQ(model->forward(torch::randn({2, 3, 32, 32})).sizes(), (std::vector<int64_t>{2, 7}));
  EXPECT_TRUE(torch::equal(before, model->named_parameters()["layer3.2.conv2.weight"]));
  EXPECT_EQ(model->named_parameters()["fc.weight"].sizes(), (std::vector<int64_t>{7, 64}));
}

// ---------------------------------------------------------------------------------------------------------
// Initialisation
// ---------------------------------------------------------------------------------------------------------
TEST(ResNet, HeInitialisationScale) {
  torch::manual_seed(0);
  for (auto mode : {HeMode::kFanOut, HeMode::kFanIn}) {
    ModelOptions o;
    o.he_mode = mode;
    auto model = make_model("resnet50", o);
    // layer4.0.conv2: 512 -> 512, 3x3: fan_in = fan_out = 4608; layer4.0.conv3: 512 -> 2048, 1x1.
    auto w = model->named_parameters()["layer4.0.conv3.weight"];
    const double fan = mode == HeMode::kFanOut ? 2048.0 : 512.0;
    EXPECT_NEAR(w.std().item<double>(), std::sqrt(2.0 / fan), 0.02 * std::sqrt(2.0 / fan));
    EXPECT_TRUE(torch::all(model->named_parameters()["bn1.weight"] == 1).item<bool>());
    EXPECT_TRUE(torch::all(model->named_parameters()["bn1.bias"] == 0).item<bool>());
  }
}

TEST(ResNet, ZeroInitResidualMakesEachPostActivationBlockStartAsIdentity) {
  ModelOptions o;
  o.zero_init_residual = true;
  auto model = make_model("resnet50", o);
  for (auto& block : model->blocks()) EXPECT_EQ(block->last_bn()->weight.abs().sum().item<double>(), 0.0);
  // An identity-shape block now computes relu(x + 0): for non-negative inputs it is the identity.
  auto block = model->blocks()[1];
  block->eval();
  auto x = torch::rand({2, 256, 8, 8});
  torch::NoGradGuard no_grad;
  EXPECT_TRUE(torch::allclose(block->forward(x), x));
  // Pre-activation branches end in a convolution, which is zeroed instead.
  auto pre = make_model("preact_resnet18", o);
  for (auto& b : pre->blocks()) EXPECT_EQ(b->last_conv()->weight.abs().sum().item<double>(), 0.0);
}

// ---------------------------------------------------------------------------------------------------------
// Train / eval behaviour: stochastic depth and BatchNorm
// ---------------------------------------------------------------------------------------------------------
TEST(StochasticDepth, RatesGrowLinearlyWithDepth) {
  ModelOptions o;
  o.drop_path = 0.2;
  auto blocks = make_model("resnet20", o)->blocks();
  ASSERT_EQ(blocks.size(), 9u);
  for (size_t i = 0; i < blocks.size(); ++i) EXPECT_DOUBLE_EQ(blocks[i]->spec().drop_path, 0.2 * (i + 1) / 9.0);
}

TEST(StochasticDepth, DropPathDropsWholeSamplesAndRescales) {
  torch::manual_seed(1);
  auto x = torch::ones({4000, 2, 3, 3});
  auto y = drop_path(x, 0.25, /*training=*/true);
  auto per_sample = y.flatten(1);
  // Each sample is either all zero or all 1/(1-p).
  auto kept = (per_sample.select(1, 0) > 0);
  EXPECT_TRUE(torch::allclose(per_sample.index({kept}), torch::full({1}, 1.0 / 0.75)));
  EXPECT_TRUE(torch::all(per_sample.index({~kept}) == 0).item<bool>());
  EXPECT_NEAR(kept.to(torch::kDouble).mean().item<double>(), 0.75, 0.03);
  EXPECT_TRUE(torch::equal(drop_path(x, 0.25, /*training=*/false), x));
}

TEST(StochasticDepth, ActiveOnlyInTraining) {
  ModelOptions o;
  o.drop_path = 0.5;
  torch::manual_seed(2);
  auto model = make_model("resnet20", o);
  torch::manual_seed(2);
  auto reference = make_model("resnet20");  // same weights, no stochastic depth
  auto x = torch::randn({8, 3, 32, 32});
  torch::NoGradGuard no_grad;
  model->eval();
  reference->eval();
  EXPECT_TRUE(torch::equal(model->forward(x), reference->forward(x)));
  model->train();
  reference->train();
  auto a = model->forward(x), b = model->forward(x);
  EXPECT_FALSE(torch::allclose(a, b)) << "training-mode outputs should vary with the dropped paths";
  EXPECT_FALSE(torch::allclose(a, reference->forward(x)));
}

TEST(BatchNorm, TrainingUsesBatchStatisticsEvalUsesRunningOnes) {
  torch::manual_seed(3);
  auto model = make_model("resnet20");
  auto x = torch::randn({6, 3, 32, 32}) * 3 + 1;
  torch::NoGradGuard no_grad;
  auto bn1 = model->named_buffers()["bn1.running_mean"];
  model->train();
  auto before = bn1.clone();
  auto full = model->forward(x);
  EXPECT_FALSE(torch::equal(before, bn1)) << "training forward must update running statistics";
  // Training mode: a sample's output depends on the rest of the batch.
  EXPECT_FALSE(torch::allclose(full.slice(0, 0, 3), model->forward(x.slice(0, 0, 3)), 1e-4, 1e-5));
  model->eval();
  auto frozen = bn1.clone();
  auto e_full = model->forward(x);
  EXPECT_TRUE(torch::equal(frozen, bn1)) << "eval forward must not touch running statistics";
  EXPECT_TRUE(torch::allclose(e_full.slice(0, 0, 3), model->forward(x.slice(0, 0, 3)), 1e-4, 1e-5));
}

TEST(Dropout, BeforeTheClassifierOnlyInTraining) {
  ModelOptions o;
  o.dropout = 0.5;
  auto model = make_model("resnet20", o);
  auto reference = make_model("resnet20", {});  // the same weights, no dropout
  torch::NoGradGuard no_grad;
  {
    auto params = model->named_parameters();
    for (auto& p : reference->named_parameters()) p.value().copy_(params[p.key()]);
    auto buffers = model->named_buffers();
    for (auto& b : reference->named_buffers()) b.value().copy_(buffers[b.key()]);
  }
  auto x = torch::randn({4, 3, 32, 32});

  // Eval: no dropout at all, so the output is the reference's, every time.
  model->eval();
  reference->eval();
  const auto expected = reference->forward(x);
  EXPECT_TRUE(torch::equal(model->forward(x), expected));
  EXPECT_TRUE(torch::equal(model->forward(x), expected));

  // Training: half the features are dropped, at random, so the output differs from call to call and from the
  // reference (whose training-mode output is deterministic: batch statistics, no randomness).
  model->train();
  reference->train();
  const auto a = model->forward(x), b = model->forward(x);
  const auto r1 = reference->forward(x), r2 = reference->forward(x);
  ASSERT_TRUE(torch::equal(r1, r2));
  EXPECT_FALSE(torch::allclose(a, b)) << "dropout draws a new mask every call";
  EXPECT_FALSE(torch::allclose(a, r1)) << "training-mode output must not be the dropout-free one";
}

}  // namespace
}  // namespace stride::models

namespace stride::models {
namespace {

// models::Norm2d is LibTorch's BatchNorm2d (names, defaults, numerics), with a sync hook on top.
TEST(BatchNorm, Norm2dMatchesTorchBatchNorm2d) {
  Norm2d ours(5);
  torch::nn::BatchNorm2d theirs(5);
  EXPECT_EQ(ours->named_parameters().keys(), theirs->named_parameters().keys());
  EXPECT_EQ(ours->named_buffers().keys(), theirs->named_buffers().keys());
  for (int step = 0; step < 3; ++step) {
    auto x = torch::randn({4, 5, 3, 3}) * 2 + 1;
    auto xa = x.clone().requires_grad_(true), xb = x.clone().requires_grad_(true);
    auto ya = ours->forward(xa), yb = theirs->forward(xb);
    EXPECT_TRUE(torch::allclose(ya, yb, 1e-5, 1e-6));
    (ya * ya).sum().backward();
    (yb * yb).sum().backward();
    EXPECT_TRUE(torch::allclose(xa.grad(), xb.grad(), 1e-4, 1e-5));
    EXPECT_TRUE(torch::allclose(ours->weight.grad(), theirs->weight.grad(), 1e-4, 1e-5));
  }
  EXPECT_TRUE(torch::allclose(ours->running_var, theirs->running_var));
  EXPECT_EQ(ours->num_batches_tracked.item<int64_t>(), 3);
  ours->eval();
  theirs->eval();
  auto probe = torch::randn({2, 5, 3, 3});
  EXPECT_TRUE(torch::allclose(ours->forward(probe), theirs->forward(probe), 1e-5, 1e-6));
}

}  // namespace
}  // namespace stride::models
