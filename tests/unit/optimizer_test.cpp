// LARS and LAMB against references written from the papers in Python (tests/python/large_batch_reference.py,
// run by the test over torch tensors), their state's exact round trip through a checkpoint file, the poly
// schedule against its formula, and the --global-batch rule.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <string>
#include <vector>

#include "common/error.h"
#include "test_util.h"
#include "trainer/config.h"
#include "trainer/lamb.h"
#include "trainer/lars.h"
#include "trainer/optimizer.h"
#include "trainer/safetensors.h"
#include "trainer/schedule.h"

namespace stride::trainer {
namespace {

using testing::run_command;
using testing::ScratchDir;

using Named = std::vector<std::pair<std::string, torch::Tensor>>;

// Parameters shaped like a ResNet's: a convolution, a classifier matrix and bias, a BN weight.
Named make_params(uint64_t seed) {
  torch::manual_seed(seed);
  return {{"conv.weight", torch::randn({4, 3, 3, 3}).mul_(0.2).requires_grad_(true)},
          {"fc.weight", torch::randn({5, 6}).mul_(0.3).requires_grad_(true)},
          {"fc.bias", torch::randn({5}).mul_(0.1).requires_grad_(true)},
          {"bn.weight", torch::rand({4}).add_(0.5).requires_grad_(true)}};
}

Named clone_params(const Named& ps) {
  Named out;
  for (const auto& [n, p] : ps) out.emplace_back(n, p.detach().clone().requires_grad_(true));
  return out;
}

struct Case {
  std::string opt;
  bool nesterov = false;
  std::vector<double> lrs;
  std::string ref_flags;
};

TEST(LargeBatchOptimizers, MatchPythonReferencesFromThePapers) {
  TrainConfig c;
  c.weight_decay = 0.01;
  c.momentum = 0.9;
  c.lars_eta = 0.02;
  c.lamb_beta1 = 0.85;
  c.lamb_beta2 = 0.99;
  c.lamb_eps = 1e-6;
  const std::vector<Case> cases = {
      {"lars", false, {0.5, 1.0, 2.0, 2.0, 1.2, 0.3}, "--eta 0.02 --momentum 0.9 --wd 0.01"},
      {"lars", true, {0.5, 1.0, 2.0, 2.0, 1.2, 0.3}, "--eta 0.02 --momentum 0.9 --wd 0.01 --nesterov"},
      {"lamb", false, {0.002, 0.005, 0.01, 0.01, 0.006, 0.001}, "--beta1 0.85 --beta2 0.99 --eps 1e-6 --wd 0.01"},
  };
  for (const auto& cs : cases) {
    SCOPED_TRACE(cs.opt + (cs.nesterov ? " nesterov" : ""));
    ScratchDir dir("optref");
    c.opt = cs.opt;
    c.nesterov = cs.nesterov;
    auto params = make_params(11);
    NamedTensors in;
    for (const auto& [n, p] : params) in["w." + n] = p.detach().clone();
    torch::manual_seed(12);
    const int64_t steps = static_cast<int64_t>(cs.lrs.size());
    for (int64_t k = 0; k < steps; ++k) {
      for (const auto& [n, p] : params) {
        auto g = torch::randn(p.sizes()).mul_(0.2);
        // A zero gradient exercises the trust ratio's guard (LARS: 1 when ||g|| is 0).
        if (k == 1 && n == "fc.weight") g.zero_();
        in["g." + std::to_string(k) + "." + n] = g;
      }
    }
    in["lr"] = torch::tensor(cs.lrs, torch::kDouble);
    write_safetensors(dir.file("in.safetensors"), in);
    const auto r = run_command(std::string(STRIDE_REFERENCE_PYTHON) + " " + STRIDE_SOURCE_DIR +
                               "/tests/python/large_batch_reference.py " + cs.opt + " " + dir.file("in.safetensors") +
                               " " + dir.file("out.safetensors") + " " + cs.ref_flags);
    ASSERT_EQ(r.exit_code, 0) << r.output;
    const auto ref = read_safetensors(dir.file("out.safetensors")).tensors;

    auto opt = make_optimizer(c, params);
    for (int64_t k = 0; k < steps; ++k) {
      for (auto& [n, p] : params) p.mutable_grad() = in.at("g." + std::to_string(k) + "." + n).clone();
      opt->step(cs.lrs[static_cast<size_t>(k)]);
      for (const auto& [n, p] : params) {
        const auto& want = ref.at("w." + std::to_string(k) + "." + n);
        const double err = (p.detach() - want).abs().max().item<double>();
        const double scale = want.abs().max().item<double>();
        EXPECT_LT(err, 2e-6 * scale) << n << " after step " << k;
      }
    }
    // The run moved every parameter well beyond the tolerance: a no-op optimizer could not pass.
    for (const auto& [n, p] : params) {
      const double moved = (p.detach() - in.at("w." + n)).abs().max().item<double>();
      EXPECT_GT(moved, 1e-3) << n;
    }
  }
}

TEST(LargeBatchOptimizers, LayerwiseOptimizersLeaveBnAndBiasUndecayedByDefault) {
  TrainConfig c;
  c.weight_decay = 5e-4;
  for (const std::string opt : {"lars", "lamb"}) {
    c.opt = opt;
    c.norm_weight_decay = -1.0;
    auto params = make_params(3);
    auto o = make_optimizer(c, params);
    ASSERT_EQ(o->groups().size(), 2u);
    EXPECT_DOUBLE_EQ(o->groups()[0].weight_decay, 5e-4);
    EXPECT_TRUE(o->groups()[0].adapt);
    EXPECT_DOUBLE_EQ(o->groups()[1].weight_decay, 0.0) << opt;
    EXPECT_FALSE(o->groups()[1].adapt);
    c.norm_weight_decay = 1e-5;  // an explicit --norm-weight-decay still applies
    EXPECT_DOUBLE_EQ(make_optimizer(c, params)->groups()[1].weight_decay, 1e-5) << opt;
  }
  c.opt = "sgd";
  c.norm_weight_decay = -1.0;
  auto params = make_params(3);
  EXPECT_DOUBLE_EQ(make_optimizer(c, params)->groups()[1].weight_decay, 5e-4);  // SGD: as before
}

// A checkpoint stores the state contiguous, through a safetensors file; a resumed optimizer over channels-last
// weights continues bitwise like the one that never stopped.
TEST(LargeBatchOptimizers, StateRoundTripThroughAFileContinuesBitwise) {
  ScratchDir dir("optstate");
  for (const std::string opt : {"lars", "lamb"}) {
    SCOPED_TRACE(opt);
    TrainConfig c;
    c.opt = opt;
    c.lars_eta = 0.02;
    auto a = make_params(5);
    a[0].second = a[0].second.detach().contiguous(torch::MemoryFormat::ChannelsLast).requires_grad_(true);
    auto oa = make_optimizer(c, a);
    torch::manual_seed(6);
    auto grads = [&](Named& ps) {
      for (auto& [n, p] : ps) p.mutable_grad() = torch::randn(p.sizes()).contiguous(p.suggest_memory_format());
    };
    for (int i = 0; i < 3; ++i) {
      grads(a);
      oa->step(0.1 * (i + 1));
    }
    write_safetensors(dir.file(opt + ".safetensors"), oa->state());
    auto b = clone_params(a);
    ASSERT_TRUE(b[0].second.is_contiguous(torch::MemoryFormat::ChannelsLast));
    auto ob = make_optimizer(c, b);
    ob->load_state(read_safetensors(dir.file(opt + ".safetensors")).tensors);
    EXPECT_EQ(ob->state().size(), oa->state().size());
    for (int i = 0; i < 3; ++i) {
      torch::manual_seed(100 + i);
      grads(a);
      torch::manual_seed(100 + i);
      grads(b);
      oa->step(0.05);
      ob->step(0.05);
    }
    for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(torch::equal(a[i].second, b[i].second)) << a[i].first;
    for (const auto& [k, v] : oa->state()) EXPECT_TRUE(torch::equal(v, ob->state().at(k))) << k;
  }
}

TEST(LargeBatchOptimizers, LambRefusesStateOfAnotherOptimizer) {
  TrainConfig c;
  c.opt = "lamb";
  auto params = make_params(1);
  auto o = make_optimizer(c, params);
  try {
    o->load_state({{"conv.weight", torch::zeros({4, 3, 3, 3})}});  // an SGD/LARS momentum buffer
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("conv.weight"), std::string::npos) << e.what();
  }
}

TEST(PolySchedule, ValuesFollowTheFormulaAfterAWarmupInEpochs) {
  TrainConfig c;
  c.lr_scheduler = "poly";
  c.lr_power = 2.0;
  c.lr_min = 1e-4;
  c.lr_warmup_epochs = 2.5;
  c.lr_warmup_decay = 0.0;
  const int64_t per_epoch = 10, total = 100;
  const double base = 8.0;
  const auto so = schedule_options(c, base, per_epoch, total);
  EXPECT_EQ(so.warmup_steps, 25);  // 2.5 epochs of 10 steps
  LrSchedule s(so);
  EXPECT_DOUBLE_EQ(s.at(0), 0.0);
  EXPECT_DOUBLE_EQ(s.at(10), base * 10.0 / 25.0);
  for (int64_t step = 25; step <= total; ++step) {
    const double t = static_cast<double>(step - 25) / 75.0;
    EXPECT_NEAR(s.at(step), 1e-4 + (base - 1e-4) * (1 - t) * (1 - t), 1e-12) << step;
  }
  EXPECT_DOUBLE_EQ(s.at(25), base);
  EXPECT_DOUBLE_EQ(s.at(total), 1e-4);
  EXPECT_DOUBLE_EQ(s.at(total + 5), 1e-4);  // past the end: the end value
  c.lr_power = 1.0;
  c.lr_min = 0.0;
  c.lr_warmup_epochs = 0.0;
  LrSchedule linear(schedule_options(c, base, per_epoch, total));
  EXPECT_DOUBLE_EQ(linear.at(50), base / 2);
  // torchvision's class name is accepted for the same schedule.
  c.lr_scheduler = "polynomiallr";
  normalize_aliases(c);
  EXPECT_EQ(c.lr_scheduler, "poly");
  c.lr_power = 0.0;
  EXPECT_THROW(validate(c), UsageError);
}

TEST(GlobalBatch, PerRankBatchTimesRanksTimesAccumulationIsTheGlobalBatch) {
  struct Row {
    int64_t global, max_batch, world, batch, accum;
  };
  const std::vector<Row> rows = {
      {2048, 128, 1, 128, 16}, {2048, 128, 4, 128, 4}, {2048, 128, 16, 128, 1}, {2048, 128, 32, 64, 1},
      {8192, 256, 2, 256, 16}, {1000, 128, 5, 100, 2}, {1200, 128, 3, 100, 4},  {128, 128, 2, 64, 1},
  };
  for (const auto& r : rows) {
    TrainConfig c;
    c.global_batch = r.global;
    c.batch_size = r.max_batch;
    resolve_global_batch(c, r.world);
    EXPECT_EQ(c.batch_size, r.batch) << r.global << " on " << r.world;
    EXPECT_EQ(c.accum_steps, r.accum) << r.global << " on " << r.world;
    EXPECT_EQ(c.batch_size * r.world * c.accum_steps, r.global);
    EXPECT_LE(c.batch_size, r.max_batch);
  }
  TrainConfig off;  // 0: --batch-size and --accum-steps as given
  off.accum_steps = 3;
  resolve_global_batch(off, 4);
  EXPECT_EQ(off.batch_size, 128);
  EXPECT_EQ(off.accum_steps, 3);
}

TEST(GlobalBatch, ClearErrorsNameTheFlags) {
  auto message = [](TrainConfig c, int64_t world) {
    try {
      resolve_global_batch(c, world);
    } catch (const UsageError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  TrainConfig c;
  c.global_batch = 2048;
  const auto indivisible = message(c, 3);
  EXPECT_NE(indivisible.find("--global-batch 2048"), std::string::npos) << indivisible;
  EXPECT_NE(indivisible.find("3 ranks"), std::string::npos) << indivisible;
  c.accum_steps = 2;
  const auto both = message(c, 2);
  EXPECT_NE(both.find("--accum-steps"), std::string::npos) << both;
  TrainConfig negative;
  negative.global_batch = -1;
  EXPECT_THROW(validate(negative), UsageError);
}

TEST(LargeBatchOptimizers, OptFlagAcceptsLarsAndLambAndNamesTheChoices) {
  TrainConfig c;
  for (const std::string opt : {"sgd", "lars", "lamb"}) {
    c.opt = opt;
    EXPECT_NO_THROW(validate(c)) << opt;
  }
  c.opt = "adam";
  try {
    validate(c);
    FAIL() << "expected an error";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("--opt"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("lars"), std::string::npos) << e.what();
  }
  c.opt = "lamb";
  c.nesterov = true;
  EXPECT_THROW(validate(c), UsageError);
}

}  // namespace
}  // namespace stride::trainer
