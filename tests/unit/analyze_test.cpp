// `stride analyze`: block lesion (Veit et al. 2016) and the loss landscape (Li et al. 2018).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "comm/communicator.h"
#include "common/error.h"
#include "models/registry.h"
#include "test_util.h"
#include "trainer/analyze_command.h"

namespace stride::trainer {
namespace {

models::ResNet small_model(const std::string& name, uint64_t seed = 1) {
  torch::manual_seed(seed);
  models::ModelOptions mo;
  mo.num_classes = 10;
  mo.in_channels = 1;
  auto m = models::make_model(name, mo);
  m->eval();
  return m;
}

SampleSet random_samples(int64_t n, uint64_t seed = 7) {
  auto gen = at::detail::createCPUGenerator(seed);
  return {at::normal(0.0, 1.0, {n, 1, 28, 28}, gen), at::randint(10, {n}, gen, torch::kLong)};
}

// Gives every BN non-trivial running statistics, so eval-mode outputs are not those of fresh BNs.
void calibrate(models::ResNetImpl& m, const SampleSet& s) {
  torch::NoGradGuard g;
  m.train();
  for (int i = 0; i < 3; ++i) m.forward(s.images);
  m.eval();
}

TEST(AnalyzeLesion, DeletingABlockWithAZeroBranchLeavesTheLogitsUnchanged) {
  for (const std::string name : {"resnet20", "resnet18"}) {
    auto m = small_model(name);
    const auto s = random_samples(16);
    calibrate(*m, s);
    const auto blocks = m->blocks();
    const auto names = trainer::block_names(*m);
    ASSERT_EQ(names.size(), blocks.size());
    ASSERT_EQ(names[1], "layer1.1");
    auto block = blocks[1];
    ASSERT_TRUE(block->deletable());
    torch::NoGradGuard g;
    // A live branch: deleting the block changes the logits (the check below would pass vacuously otherwise).
    const auto live = m->forward(s.images);
    block->set_deleted(true);
    EXPECT_FALSE(torch::allclose(live, m->forward(s.images), 1e-4, 1e-5)) << name;
    block->set_deleted(false);
    // Branch weights zero: conv kernels and BN scales and shifts. The block then computes relu(0 + x) = x.
    for (auto& p : block->named_parameters()) {
      if (p.key().rfind("downsample", 0) != 0) p.value().zero_();
    }
    const auto kept = m->forward(s.images);
    block->set_deleted(true);
    EXPECT_TRUE(block->deleted());
    const auto lesioned = m->forward(s.images);
    block->set_deleted(false);
    EXPECT_TRUE(torch::allclose(kept, lesioned, 1e-5, 1e-6))
        << name << ": max diff " << (kept - lesioned).abs().max().item<double>();
  }
}

TEST(AnalyzeLesion, ShapeChangingBlocksAreSkippedAndTheStudyRestoresTheModel) {
  auto m = small_model("resnet20");
  const auto s = random_samples(32);
  calibrate(*m, s);
  auto blocks = m->blocks();
  // resnet20: 3 stages of 3 blocks; the first block of stages 2 and 3 downsamples.
  ASSERT_EQ(blocks.size(), 9u);
  EXPECT_FALSE(blocks[3]->deletable());
  EXPECT_FALSE(blocks[6]->deletable());
  EXPECT_THROW(blocks[3]->set_deleted(true), Error);
  torch::NoGradGuard g;
  const auto before = m->forward(s.images);
  LesionOptions o;
  o.k = {1, 7};
  o.repeats = 2;
  const auto r = lesion_study(*m, s, o);
  ASSERT_EQ(r.blocks.size(), 9u);
  int deleted = 0;
  for (const auto& b : r.blocks) deleted += b.deleted ? 1 : 0;
  EXPECT_EQ(deleted, 7);
  EXPECT_FALSE(r.blocks[3].deleted);
  EXPECT_EQ(r.blocks[3].name, "layer2.0");
  ASSERT_EQ(r.random.size(), 2u);
  EXPECT_EQ(r.random[1].k, 7);
  ASSERT_EQ(r.random[1].deleted.size(), 2u);
  EXPECT_EQ(r.random[1].deleted[0].size(), 7u);
  // Deleting every deletable block in one draw or the other is the same model: same accuracy.
  EXPECT_DOUBLE_EQ(r.random[1].acc1[0], r.random[1].acc1[1]);
  for (const auto& b : blocks) EXPECT_FALSE(b->deleted());
  EXPECT_TRUE(torch::equal(before, m->forward(s.images)));
  o.k = {8};
  EXPECT_THROW(lesion_study(*m, s, o), UsageError);
}

TEST(AnalyzeLandscape, FilterNormalisationMatchesThePaperComputedElementByElement) {
  auto m = small_model("resnet20", 3);
  const auto dirs = random_direction(*m, 11);
  const auto params = m->named_parameters();
  ASSERT_EQ(dirs.size(), params.size());
  int checked = 0;
  for (size_t i = 0; i < params.size(); ++i) {
    const auto w = params[i].value().detach().to(torch::kDouble).contiguous();
    const auto d = dirs[i].to(torch::kDouble).contiguous();
    if (w.dim() <= 1) {  // BN scales and shifts, biases: zero, the paper's default
      EXPECT_EQ(d.abs().max().item<double>(), 0.0) << params[i].key();
      continue;
    }
    // Each filter (output unit) of the direction has the norm of the weight's filter.
    const int64_t filters = w.size(0), per = w.numel() / filters;
    const double* wp = w.data_ptr<double>();
    const double* dp = d.data_ptr<double>();
    for (int64_t f = 0; f < filters; ++f) {
      double wn = 0, dn = 0;
      for (int64_t k = 0; k < per; ++k) {
        wn += wp[f * per + k] * wp[f * per + k];
        dn += dp[f * per + k] * dp[f * per + k];
      }
      EXPECT_NEAR(std::sqrt(dn), std::sqrt(wn), 1e-5 * std::sqrt(wn) + 1e-9) << params[i].key() << " filter " << f;
    }
    ++checked;
  }
  EXPECT_GT(checked, 19);  // 19 convolutions and the classifier
  // filter_normalize itself, on a direction we choose: d[i] * ||w[i]|| / (||d[i]|| + 1e-10).
  const auto w = torch::tensor({3.0, 4.0, 0.0, 0.0, 1.0, 0.0}).view({2, 3});
  const auto d = torch::tensor({1.0, 0.0, 0.0, 0.0, 0.0, 2.0}).view({2, 3});
  const auto n = filter_normalize(d, w);
  EXPECT_NEAR(n[0][0].item<double>(), 5.0, 1e-6);
  EXPECT_NEAR(n[1][2].item<double>(), 1.0, 1e-6);
  EXPECT_NEAR(n[0][1].item<double>(), 0.0, 1e-12);
  // Same seed, same direction (every rank draws its own copy).
  const auto again = random_direction(*m, 11);
  for (size_t i = 0; i < dirs.size(); ++i) EXPECT_TRUE(torch::equal(dirs[i], again[i]));
}

TEST(AnalyzeLandscape, AZeroDirectionGivesAFlatLandscapeAtTheCentreLoss) {
  auto m = small_model("resnet20", 5);
  const auto s = random_samples(24);
  calibrate(*m, s);
  comm::CommOptions co;
  co.backend = comm::Backend::kSingle;
  auto comm = comm::create_communicator(co);
  std::vector<torch::Tensor> zero;
  for (const auto& p : m->parameters()) zero.push_back(torch::zeros_like(p));
  LandscapeOptions o;
  o.grid = 5;
  o.dims = 2;
  o.batch_size = 10;
  const auto centre = evaluate_samples(*m, s, o.batch_size);
  const auto r = loss_landscape(*m, s, {zero, zero}, o, *comm);
  ASSERT_EQ(r.loss.size(), 25u);
  EXPECT_DOUBLE_EQ(r.centre.loss, centre.loss);
  for (double l : r.loss) EXPECT_DOUBLE_EQ(l, centre.loss);
  ASSERT_EQ(r.coords.size(), 5u);
  EXPECT_DOUBLE_EQ(r.coords.front(), -1.0);
  EXPECT_DOUBLE_EQ(r.coords[2], 0.0);

  // A real direction: the loss varies, is the centre's at alpha = 0, and the weights come back unchanged.
  std::vector<torch::Tensor> before;
  for (const auto& p : m->parameters()) before.push_back(p.detach().clone());
  o.dims = 1;
  const auto line = loss_landscape(*m, s, {random_direction(*m, 1)}, o, *comm);
  ASSERT_EQ(line.loss.size(), 5u);
  EXPECT_NEAR(line.loss[2], centre.loss, 1e-6);
  EXPECT_GT(std::abs(line.loss[0] - centre.loss), 1e-3);
  const auto after = m->parameters();
  for (size_t i = 0; i < before.size(); ++i) EXPECT_TRUE(torch::equal(before[i], after[i]));

  o.grid = 0;
  EXPECT_THROW(loss_landscape(*m, s, {zero}, o, *comm), UsageError);
}

TEST(AnalyzeCli, BadArgumentsNameTheThing) {
  using stride::testing::run_command;
  const std::string stride = STRIDE_BINARY;
  auto r = run_command(stride + " analyze lesion /nonexistent/run-dir");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("stride: error: /nonexistent/run-dir is neither a checkpoint nor a run directory"),
            std::string::npos)
      << r.output;
  r = run_command(stride + " analyze landscape /nonexistent/run-dir --grid 0");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("stride: error: --grid must be at least 1, got 0"), std::string::npos) << r.output;
  r = run_command(stride + " analyze landscape /nonexistent/run-dir --range 1:-1");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("stride: error: --range 1:-1"), std::string::npos) << r.output;
  r = run_command(stride + " analyze landscape /nonexistent/run-dir --dims 3");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("stride: error: --dims must be 1 or 2, got 3"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace stride::trainer
