// Trainer pieces: configuration, schedule, losses, optimizer, checkpoints (round trip, atomicity at every
// write, corrupt fallback, garbage collection) and the TensorBoard writer.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <CLI/CLI.hpp>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <tuple>

#include "common/error.h"
#include "models/registry.h"
#include "models/state_dict.h"
#include "test_util.h"
#include "trainer/checkpoint.h"
#include "trainer/config.h"
#include "trainer/config_diff.h"
#include "trainer/loss.h"
#include "trainer/schedule.h"
#include "trainer/sgd.h"
#include "trainer/tensorboard.h"

namespace stride::trainer {
namespace {

using testing::ScratchDir;

// ---------------------------------------------------------------------------------------------------------
// Config
// ---------------------------------------------------------------------------------------------------------
struct Parsed {
  TrainConfig config;
  std::string error;
};

Parsed parse(std::vector<std::string> args, const std::string& toml = "", const ScratchDir* dir = nullptr) {
  Parsed p;
  CLI::App app;
  add_train_options(app, p.config);
  if (!toml.empty()) {
    std::ofstream(dir->file("run.toml")) << toml;
    args.push_back("--config");
    args.push_back(dir->file("run.toml"));
  }
  std::vector<const char*> argv{"train"};
  std::reverse(args.begin(), args.end());
  for (auto& a : args) argv.insert(argv.begin() + 1, a.c_str());
  try {
    app.parse(static_cast<int>(argv.size()), const_cast<char**>(argv.data()));
    if (!p.config.config_file.empty()) apply_config_file(p.config.config_file, app, p.config);
    normalize_aliases(p.config);
    validate(p.config);
  } catch (const UsageError& e) {
    p.error = e.what();
  } catch (const CLI::ParseError& e) {
    p.error = e.what();
  }
  return p;
}

TEST(TrainConfig, FileValuesYieldToTheCommandLine) {
  ScratchDir dir("cfg");
  auto p = parse({"--lr", "0.2", "--no-hflip"}, "lr = 0.5\nbatch-size = 64\nlr_milestones = [3, 6]\nnesterov = true\n",
                 &dir);
  ASSERT_EQ(p.error, "");
  EXPECT_DOUBLE_EQ(p.config.lr, 0.2);
  EXPECT_EQ(p.config.batch_size, 64);
  EXPECT_EQ(p.config.lr_milestones, (std::vector<int64_t>{3, 6}));
  EXPECT_TRUE(p.config.nesterov);
  EXPECT_FALSE(p.config.hflip);
}

// torchvision's train.py spellings (docs/training.md, "torchvision's spellings").
TEST(TrainConfig, TorchvisionNamesAndValuesAreAccepted) {
  auto p =
      parse({"-b", "7", "-j", "0", "--wd", "0.3", "--opt", "sgd_nesterov", "--lr-scheduler", "cosineannealinglr",
             "--train-crop-size", "24", "--model-ema", "--model-ema-steps", "32", "--use-deterministic-algorithms"});
  ASSERT_EQ(p.error, "");
  EXPECT_EQ(p.config.batch_size, 7);
  EXPECT_EQ(p.config.workers, 1);
  EXPECT_DOUBLE_EQ(p.config.weight_decay, 0.3);
  EXPECT_TRUE(p.config.nesterov);
  EXPECT_EQ(p.config.opt, "sgd");
  EXPECT_EQ(p.config.lr_scheduler, "cosine");
  EXPECT_EQ(p.config.image_size, 24);
  EXPECT_EQ(p.config.model_ema_steps, 32);
  EXPECT_TRUE(p.config.use_deterministic_algorithms);
  for (const auto& [tv, ours] : std::vector<std::pair<std::string, std::string>>{
           {"steplr", "step"}, {"multisteplr", "multistep"}, {"constantlr", "constant"}}) {
    auto q = parse({"--lr-scheduler", tv, "--lr-milestones", "2,4"});
    ASSERT_EQ(q.error, "") << tv;
    EXPECT_EQ(q.config.lr_scheduler, ours);
  }
  EXPECT_NE(parse({"--opt", "adamw"}).error.find("--opt must be one of sgd, sgd_nesterov, lars, lamb; got 'adamw'"),
            std::string::npos);
  EXPECT_NE(parse({"--model-ema-steps", "-1"}).error.find("--model-ema-steps must be 0 or more"), std::string::npos);
  EXPECT_NE(parse({"--adapt-stem", "max"}).error.find("--adapt-stem must be one of"), std::string::npos);
}

TEST(TrainConfig, ErrorsNameTheKey) {
  ScratchDir dir("cfgbad");
  EXPECT_NE(parse({}, "learning-rate = 0.1\n", &dir).error.find("unknown key 'learning-rate'"), std::string::npos);
  EXPECT_NE(parse({}, "batch-size = \"big\"\n", &dir).error.find("key 'batch-size': expected an integer"),
            std::string::npos);
  EXPECT_NE(parse({}, "epochs = [\n", &dir).error.find("run.toml:"), std::string::npos);
  EXPECT_NE(parse({"--batch-size", "0"}).error.find("--batch-size must be positive"), std::string::npos);
  EXPECT_NE(parse({"--lr-scheduler", "exponential"}).error.find("--lr-scheduler must be one of"), std::string::npos);
  EXPECT_NE(parse({"--label-smoothing", "1.5"}).error.find("--label-smoothing"), std::string::npos);
  EXPECT_NE(parse({"--lr-scheduler", "multistep"}).error.find("--lr-milestones"), std::string::npos);
  EXPECT_NE(parse({"--mean", "0.5,0.5"}).error.find("--std"), std::string::npos);
  EXPECT_NE(parse({}, "x = 1\n", &dir).error.find("unknown key 'x'"), std::string::npos);
  EXPECT_FALSE(parse({"--batch-size", "abc"}).error.empty());
  EXPECT_NE(parse({"--comm-backend", "gloo"}).error.find("--comm-backend must be one of"), std::string::npos);
  EXPECT_NE(parse({"--grad-compression", "int8"}).error.find("--grad-compression must be one of"), std::string::npos);
  EXPECT_NE(parse({"--comm-timeout", "0"}).error.find("--comm-timeout must be positive"), std::string::npos);
  EXPECT_NE(parse({"--bucket-cap-mb", "0"}).error.find("--bucket-cap-mb must be positive"), std::string::npos);
  EXPECT_NE(parse({"--device", "tpu"}).error.find("--device must be one of"), std::string::npos);
  EXPECT_NE(parse({"--amp-dtype", "fp8"}).error.find("--amp-dtype must be one of"), std::string::npos);
  EXPECT_NE(parse({"--status-port", "70000"}).error.find("--status-port must be"), std::string::npos);
  EXPECT_NE(parse({"--heartbeat-timeout", "0.5"}).error.find("--heartbeat-timeout must exceed"), std::string::npos);
  EXPECT_NE(parse({"--control-every", "0"}).error.find("--control-every must be positive"), std::string::npos);
}

TEST(TrainConfig, PowerSgdFlagsParseCheckAndReachTheToml) {
  ScratchDir dir("cfgpowersgd");
  auto p = parse({"--grad-compression", "powersgd", "--powersgd-rank", "4", "--powersgd-warmup-steps", "0"});
  ASSERT_EQ(p.error, "");
  EXPECT_EQ(p.config.grad_compression, "powersgd");
  EXPECT_EQ(p.config.powersgd_rank, 4);
  EXPECT_EQ(p.config.powersgd_warmup_steps, 0);
  // PyTorch 1.13's defaults (matrix_approximation_rank=1, start_powerSGD_iter=1000).
  auto d = parse({"--grad-compression", "powersgd"});
  ASSERT_EQ(d.error, "");
  EXPECT_EQ(d.config.powersgd_rank, 1);
  EXPECT_EQ(d.config.powersgd_warmup_steps, 1000);
  auto f = parse({}, "grad-compression = \"powersgd\"\npowersgd-rank = 2\n", &dir);
  ASSERT_EQ(f.error, "");
  EXPECT_EQ(f.config.powersgd_rank, 2);
  EXPECT_NE(to_toml(f.config).find("powersgd-rank = 2"), std::string::npos);
  EXPECT_NE(parse({"--powersgd-rank", "0"}).error.find("--powersgd-rank must be positive"), std::string::npos);
  EXPECT_NE(parse({"--powersgd-rank", "-3"}).error.find("--powersgd-rank must be positive"), std::string::npos);
  EXPECT_NE(parse({"--powersgd-warmup-steps", "-1"}).error.find("--powersgd-warmup-steps must be >= 0"),
            std::string::npos);
  EXPECT_NE(parse({"--grad-compression", "powersdg"}).error.find("--grad-compression must be one of"),
            std::string::npos);
  // Another rank on resume changes the result: refused unless --allow-config-change, naming the key.
  TrainConfig before = p.config, after = p.config;
  after.powersgd_rank = 2;
  const auto changes = config_changes(to_toml(before), 2, after, 2);
  ASSERT_EQ(changes.size(), 1u);
  EXPECT_EQ(changes[0].key, "powersgd-rank");
  EXPECT_TRUE(changes[0].changes_result);
}

// --bucket-cap-mb: a size in MiB or auto, on the command line and in TOML (number or string); anything else names
// the flag. The resolved config.toml keeps a number a number, so an older run's config compares equal.
TEST(TrainConfig, BucketCapIsASizeOrAuto) {
  ScratchDir dir("cfgbucket");
  auto d = parse({});
  ASSERT_EQ(d.error, "");
  EXPECT_FALSE(bucket_cap_auto(d.config));
  EXPECT_EQ(bucket_cap_bytes(d.config), int64_t{25} << 20);
  EXPECT_EQ(d.config.bucket_tune_steps, 5);
  auto a = parse({"--bucket-cap-mb", "auto", "--bucket-tune-steps", "2"});
  ASSERT_EQ(a.error, "");
  EXPECT_TRUE(bucket_cap_auto(a.config));
  EXPECT_EQ(bucket_cap_bytes(a.config), 0);
  EXPECT_EQ(a.config.bucket_tune_steps, 2);
  EXPECT_EQ(bucket_cap_bytes(parse({"--bucket-cap-mb", "0.5"}).config), int64_t{1} << 19);
  for (const char* bad : {"0", "-4", "autox", "25MB", "", "nan", "inf"}) {
    SCOPED_TRACE(bad);
    EXPECT_NE(parse({"--bucket-cap-mb", bad}).error.find("--bucket-cap-mb must be positive (a size in MiB) or auto"),
              std::string::npos)
        << parse({"--bucket-cap-mb", bad}).error;
  }
  EXPECT_NE(parse({"--bucket-cap-mb", "autox"}).error.find("auto"), std::string::npos);
  EXPECT_NE(parse({"--bucket-tune-steps", "0"}).error.find("--bucket-tune-steps must be positive"), std::string::npos);
  EXPECT_NE(parse({"--bucket-cap-mb", "auto", "--grad-compression", "powersgd"})
                .error.find("--bucket-cap-mb auto does not combine with --grad-compression powersgd"),
            std::string::npos);
  // TOML: a string or a number.
  auto t = parse({}, "bucket-cap-mb = \"auto\"\n", &dir);
  ASSERT_EQ(t.error, "");
  EXPECT_TRUE(bucket_cap_auto(t.config));
  EXPECT_EQ(bucket_cap_bytes(parse({}, "bucket-cap-mb = 4\n", &dir).config), int64_t{4} << 20);
  EXPECT_EQ(bucket_cap_bytes(parse({}, "bucket-cap-mb = 12.5\n", &dir).config), int64_t{25} << 19);
  EXPECT_NE(parse({}, "bucket-cap-mb = \"big\"\n", &dir).error.find("--bucket-cap-mb must be positive"),
            std::string::npos);
  EXPECT_NE(parse({}, "bucket-cap-mb = -1\n", &dir).error.find("--bucket-cap-mb must be positive"), std::string::npos);
  // The resolved TOML: auto as a string, a size as a number (as config.toml held it before auto existed).
  EXPECT_NE(to_toml(a.config).find("bucket-cap-mb = 'auto'\n"), std::string::npos);
  EXPECT_NE(to_toml(d.config).find("bucket-cap-mb = 25.0\n"), std::string::npos);
  TrainConfig back;
  parse_toml(to_toml(a.config), "config.toml", back);
  EXPECT_TRUE(bucket_cap_auto(back));
  EXPECT_EQ(back.bucket_tune_steps, 2);
  TrainConfig old_run;
  parse_toml("bucket-cap-mb = 25.0\n", "config.toml", old_run);
  EXPECT_TRUE(config_changes("bucket-cap-mb = 25.0\n", 1, old_run, 1).empty());
  // Operational: a resume may switch between a size and auto.
  const auto changes = config_changes(to_toml(d.config), 2, a.config, 2);
  ASSERT_FALSE(changes.empty());
  for (const auto& ch : changes) EXPECT_FALSE(ch.changes_result) << ch.key;
}

TEST(TrainConfig, ResolvedTomlRoundTrips) {
  TrainConfig c;
  c.lr = 0.37;
  c.freeze = {"stem", "layer1"};
  c.mean = {0.1, 0.2, 0.3};
  c.std = {1, 2, 3};
  TrainConfig back;
  parse_toml(to_toml(c), "config.toml", back);
  EXPECT_EQ(to_toml(back), to_toml(c));
  EXPECT_DOUBLE_EQ(back.lr, 0.37);
  EXPECT_EQ(back.freeze, c.freeze);
}

// ---------------------------------------------------------------------------------------------------------
// Schedule
// ---------------------------------------------------------------------------------------------------------
TEST(TrainConfig, ChangesOnResumeAreFoundAndClassified) {
  TrainConfig before;
  before.batch_size = 64;
  before.nesterov = true;
  const std::string text = to_toml(before);
  auto find = [](const std::vector<ConfigChange>& changes, const std::string& key) -> const ConfigChange* {
    for (const auto& c : changes) {
      if (c.key == key) return &c;
    }
    return nullptr;
  };
  // Half the per-rank batch on twice the ranks: the same global batch, nothing changed.
  TrainConfig same = before;
  same.batch_size = 32;
  EXPECT_TRUE(config_changes(text, 1, same, 2).empty());
  // Every restart passes --resume auto: not a change of the run worth a note.
  TrainConfig restarted = before;
  restarted.resume = "auto";
  EXPECT_TRUE(config_changes(text, 1, restarted, 1).empty());
  TrainConfig after = before;
  after.nesterov = false;
  after.lr = 0.2;
  after.print_freq = 7;
  after.batch_size = 128;
  const auto changes = config_changes(text, 1, after, 1);
  ASSERT_NE(find(changes, "nesterov"), nullptr);
  EXPECT_TRUE(find(changes, "nesterov")->changes_result);
  EXPECT_EQ(find(changes, "nesterov")->before, "true");
  EXPECT_EQ(find(changes, "nesterov")->after, "false");
  ASSERT_NE(find(changes, "lr"), nullptr);
  EXPECT_TRUE(find(changes, "lr")->changes_result);
  ASSERT_NE(find(changes, "print-freq"), nullptr);
  EXPECT_FALSE(find(changes, "print-freq")->changes_result);
  ASSERT_NE(find(changes, "global batch"), nullptr);
  EXPECT_EQ(find(changes, "global batch")->before, "64");
  EXPECT_EQ(find(changes, "global batch")->after, "128");
  EXPECT_EQ(find(changes, "batch-size"), nullptr);
  EXPECT_EQ(changes.size(), 4u) << describe(changes);
  // A key the checkpoint's run did not have counts as its default.
  std::string without_ema = text;
  const auto at = without_ema.find("model-ema = false\n");
  ASSERT_NE(at, std::string::npos);
  without_ema.erase(at, std::string("model-ema = false\n").size());
  TrainConfig ema = before;
  EXPECT_TRUE(config_changes(without_ema, 1, ema, 1).empty());
  ema.model_ema = true;
  ASSERT_NE(find(config_changes(without_ema, 1, ema, 1), "model-ema"), nullptr);
  try {
    config_changes("lr = [", 1, after, 1);
    FAIL() << "expected stride::Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cannot parse"), std::string::npos) << e.what();
  }
}

TEST(LrSchedule, WarmupThenCosine) {
  ScheduleOptions o;
  o.base_lr = 1.0;
  o.steps_per_epoch = 10;
  o.total_steps = 100;
  o.warmup_steps = 10;
  o.warmup_decay = 0.1;
  o.lr_min = 0.0;
  LrSchedule s(o);
  EXPECT_DOUBLE_EQ(s.at(0), 0.1);
  EXPECT_NEAR(s.at(5), 0.1 + 0.9 * 0.5, 1e-12);
  EXPECT_DOUBLE_EQ(s.at(10), 1.0);
  EXPECT_NEAR(s.at(55), 0.5, 1e-12);  // halfway through the 90 cosine steps
  EXPECT_NEAR(s.at(100), 0.0, 1e-12);
  for (int i = 11; i < 100; ++i) EXPECT_LE(s.at(i), s.at(i - 1));
  o.warmup_method = WarmupMethod::kConstant;
  EXPECT_DOUBLE_EQ(LrSchedule(o).at(9), 0.1);
}

TEST(LrSchedule, StepAndMultiStep) {
  ScheduleOptions o;
  o.base_lr = 1.0;
  o.steps_per_epoch = 4;
  o.total_steps = 400;
  o.kind = LrScheduler::kStep;
  o.step_size_epochs = 30;
  o.gamma = 0.1;
  EXPECT_DOUBLE_EQ(LrSchedule(o).at(30 * 4 - 1), 1.0);
  EXPECT_NEAR(LrSchedule(o).at(30 * 4), 0.1, 1e-12);
  EXPECT_NEAR(LrSchedule(o).at(60 * 4 + 3), 0.01, 1e-12);
  o.kind = LrScheduler::kMultiStep;
  o.milestones_epochs = {5, 8};
  EXPECT_DOUBLE_EQ(LrSchedule(o).at(19), 1.0);
  EXPECT_NEAR(LrSchedule(o).at(20), 0.1, 1e-12);
  EXPECT_NEAR(LrSchedule(o).at(32), 0.01, 1e-12);
  EXPECT_EQ(parse_lr_scheduler("multistep"), LrScheduler::kMultiStep);
  EXPECT_EQ(parse_warmup_method("constant"), WarmupMethod::kConstant);
  try {  // a misspelt schedule is an error, not a constant learning rate
    parse_lr_scheduler("cosin");
    ADD_FAILURE() << "no error for --lr-scheduler cosin";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("--lr-scheduler: unknown 'cosin'"), std::string::npos) << e.what();
  }
  EXPECT_THROW(parse_warmup_method("exp"), UsageError);
}

// ---------------------------------------------------------------------------------------------------------
// Losses and metrics
// ---------------------------------------------------------------------------------------------------------
TEST(Loss, LabelSmoothingMatchesTorch) {
  torch::manual_seed(0);
  auto logits = torch::randn({8, 5});
  auto labels = torch::randint(5, {8}, torch::kLong);
  for (double eps : {0.0, 0.1, 0.3}) {
    auto expected = torch::nn::functional::cross_entropy(
        logits, labels, torch::nn::functional::CrossEntropyFuncOptions().label_smoothing(eps));
    EXPECT_NEAR(cross_entropy(logits, labels, eps).item<double>(), expected.item<double>(), 1e-6) << eps;
  }
}

TEST(Loss, SoftTargetsAreTheMixtureOfTheTwoLosses) {
  torch::manual_seed(1);
  auto logits = torch::randn({6, 4});
  auto a = torch::tensor({0, 1, 2, 3, 0, 1}, torch::kLong), b = torch::tensor({1, 1, 0, 2, 3, 3}, torch::kLong);
  const double lam = 0.3;
  auto soft = torch::one_hot(a, 4).to(torch::kFloat) * lam + torch::one_hot(b, 4).to(torch::kFloat) * (1 - lam);
  const double mixed = cross_entropy(logits, soft, 0.0).item<double>();
  const double expect =
      lam * cross_entropy(logits, a, 0.0).item<double>() + (1 - lam) * cross_entropy(logits, b, 0.0).item<double>();
  EXPECT_NEAR(mixed, expect, 1e-6);
  // Zero-weight samples do not count.
  auto w = torch::tensor({1, 1, 1, 0, 0, 0}, torch::kBool);
  EXPECT_NEAR(cross_entropy(logits, a, 0.0, w).item<double>(),
              cross_entropy(logits.slice(0, 0, 3), a.slice(0, 0, 3), 0.0).item<double>(), 1e-6);
}

TEST(Loss, TopKCountsOnlyValidSamples) {
  auto logits =
      torch::tensor({{9.f, 1.f, 2.f, 3.f, 4.f, 5.f}, {1.f, 9.f, 2.f, 3.f, 4.f, 5.f}, {1.f, 2.f, 3.f, 4.f, 5.f, 9.f}});
  auto labels = torch::tensor({0, 0, 0}, torch::kLong);
  auto r = count_correct(logits, labels, torch::tensor({true, true, false}));
  EXPECT_EQ(r.count, 2);
  EXPECT_EQ(r.top1, 1);
  EXPECT_EQ(r.top5, 1);  // sample 1: label 0 has the lowest logit, outside its top 5
}

// ---------------------------------------------------------------------------------------------------------
// Optimizer
// ---------------------------------------------------------------------------------------------------------
TEST(Sgd, WeightDecayGroupsSeparateNormAndBias) {
  auto model = models::make_model("resnet20");
  auto groups = weight_decay_groups(model->named_parameters().pairs(), 5e-4, 0.0);
  ASSERT_EQ(groups.size(), 2u);
  EXPECT_DOUBLE_EQ(groups[0].weight_decay, 5e-4);
  EXPECT_DOUBLE_EQ(groups[1].weight_decay, 0.0);
  for (const auto& [name, p] : groups[0].params) EXPECT_GE(p.dim(), 2) << name;
  bool has_bn = false, has_fc_bias = false;
  for (const auto& [name, p] : groups[1].params) {
    has_bn |= name == "bn1.weight";
    has_fc_bias |= name == "fc.bias";
  }
  EXPECT_TRUE(has_bn && has_fc_bias);
  EXPECT_DOUBLE_EQ(weight_decay_groups(model->named_parameters().pairs(), 5e-4, -1)[1].weight_decay, 5e-4);
}

TEST(Sgd, MatchesTorchOptimSgd) {
  for (bool nesterov : {false, true}) {
    torch::manual_seed(2);
    auto w = torch::randn({4, 3}, torch::requires_grad());
    auto w2 = w.detach().clone().requires_grad_(true);
    Sgd mine({{"g", 0.01, {{"w", w}}}}, 0.9, nesterov);
    torch::optim::SGD ref({w2}, torch::optim::SGDOptions(0.1).momentum(0.9).weight_decay(0.01).nesterov(nesterov));
    auto x = torch::randn({5, 4});
    for (int i = 0; i < 4; ++i) {
      mine.zero_grad();
      ref.zero_grad();
      x.matmul(w).pow(2).sum().backward();
      x.matmul(w2).pow(2).sum().backward();
      mine.step(0.1);
      ref.step();
    }
    EXPECT_TRUE(torch::allclose(w, w2, 1e-6, 1e-7)) << "nesterov " << nesterov;
  }
}

// The fused CPU update (trainer/sgd_cpu.h) on channels-last weights, and a resume whose momentum buffers come
// back contiguous (as a checkpoint stores them): the resumed optimizer continues bitwise like the original.
TEST(Sgd, ChannelsLastWeightsResumeBitwiseFromContiguousBuffers) {
  torch::manual_seed(4);
  auto w = torch::randn({6, 3, 3, 3}).contiguous(torch::MemoryFormat::ChannelsLast).requires_grad_(true);
  auto b = torch::randn({6}, torch::requires_grad());
  auto w2 = w.detach().clone().requires_grad_(true);  // clone keeps channels-last
  auto b2 = b.detach().clone().requires_grad_(true);
  Sgd a({{"decay", 1e-3, {{"w", w}}}, {"no_decay", 0.0, {{"b", b}}}}, 0.9, true);
  const auto x = torch::randn({2, 3, 5, 5}).contiguous(torch::MemoryFormat::ChannelsLast);
  auto loss = [&](const torch::Tensor& wt, const torch::Tensor& bt) { return torch::conv2d(x, wt, bt).pow(2).sum(); };
  for (int i = 0; i < 2; ++i) {
    a.zero_grad();
    loss(w, b).backward();
    ASSERT_TRUE(w.grad().is_contiguous(torch::MemoryFormat::ChannelsLast));
    a.step(0.05);
  }
  // "Resume": the same weights and a new optimizer whose buffers are contiguous copies.
  {
    torch::NoGradGuard no_grad;
    w2.copy_(w);
    b2.copy_(b);
  }
  Sgd resumed({{"decay", 1e-3, {{"w", w2}}}, {"no_decay", 0.0, {{"b", b2}}}}, 0.9, true);
  for (const auto& [name, buf] : a.momentum_buffers()) resumed.momentum_buffers()[name] = buf.contiguous().clone();
  ASSERT_FALSE(resumed.momentum_buffers().at("w").is_contiguous(torch::MemoryFormat::ChannelsLast));
  for (int i = 0; i < 3; ++i) {
    a.zero_grad();
    resumed.zero_grad();
    loss(w, b).backward();
    loss(w2, b2).backward();
    a.step(0.05);
    resumed.step(0.05);
  }
  EXPECT_TRUE(torch::equal(w, w2));
  EXPECT_TRUE(torch::equal(b, b2));
  EXPECT_TRUE(torch::equal(a.momentum_buffers().at("w"), resumed.momentum_buffers().at("w")));
}

// ---------------------------------------------------------------------------------------------------------
// Checkpoints
// ---------------------------------------------------------------------------------------------------------
CheckpointData sample_checkpoint(uint64_t step) {
  CheckpointData d;
  d.model = {{"fc.weight", torch::full({2, 3}, static_cast<float>(step))}, {"fc.bias", torch::zeros({2})}};
  d.optimizer = {{"fc.weight", torch::ones({2, 3})}};
  d.state = {{"rng", torch::arange(10).to(torch::kUInt8)}};
  d.manifest.set_step(step);
  d.manifest.set_epoch(step / 10);
  d.manifest.mutable_cursor()->set_consumed(step * 7);
  d.manifest.set_model("resnet20");
  (*d.manifest.mutable_metrics())["acc1"] = 90.5;
  return d;
}

TEST(Checkpoint, RoundTripListAndKeepLastK) {
  ScratchDir dir("ckpt");
  CheckpointStore store(dir.path().string(), 2);
  for (uint64_t s : {10u, 20u, 30u}) store.commit(sample_checkpoint(s));
  auto all = store.list();
  ASSERT_EQ(all.size(), 2u);  // step 10 collected
  EXPECT_EQ(all[0].step, 30u);
  EXPECT_EQ(all[1].step, 20u);
  auto back = load_checkpoint(all[0].path);
  EXPECT_TRUE(torch::equal(back.model.at("fc.weight"), torch::full({2, 3}, 30.f)));
  EXPECT_TRUE(torch::equal(back.state.at("rng"), torch::arange(10).to(torch::kUInt8)));
  EXPECT_EQ(back.manifest.cursor().consumed(), 210u);
  EXPECT_DOUBLE_EQ(back.manifest.metrics().at("acc1"), 90.5);
  std::ifstream latest(dir.file("checkpoints/LATEST"));
  std::string name;
  latest >> name;
  EXPECT_EQ(name, "step-00000030");
}

// Fails the n-th file operation, as a crash at that instant would; everything before it stays on disk.
class CrashingOps : public FileOps {
 public:
  explicit CrashingOps(int fail_at) : fail_at_(fail_at) {}
  int ops = 0;
  void write_file(const std::string& p, const std::string& b) override {
    tick();
    FileOps::write_file(p, b);
  }
  void rename(const std::string& a, const std::string& b) override {
    tick();
    FileOps::rename(a, b);
  }
  void fsync_dir(const std::string& d) override {
    tick();
    FileOps::fsync_dir(d);
  }
  void make_dir(const std::string& d) override {
    tick();
    FileOps::make_dir(d);
  }
  void remove_all(const std::string& p) override {
    tick();
    FileOps::remove_all(p);
  }

 private:
  void tick() {
    if (++ops == fail_at_) throw Error("injected crash");
  }
  int fail_at_;
};

TEST(Checkpoint, InterruptedAtEveryOperationIsNeverPickedUp) {
  // Count the operations of one commit.
  ScratchDir probe("ckptprobe");
  auto counter = std::make_shared<CrashingOps>(-1);
  CheckpointStore(probe.path().string(), 2, counter).commit(sample_checkpoint(10));
  const int total = counter->ops;
  ASSERT_GT(total, 6);
  for (int fail = 1; fail <= total; ++fail) {
    SCOPED_TRACE(concat("crash at operation ", fail, " of ", total));
    ScratchDir dir("ckptcrash");
    CheckpointStore(dir.path().string(), 2).commit(sample_checkpoint(10));
    auto ops = std::make_shared<CrashingOps>(fail);
    bool crashed = false;
    try {
      CheckpointStore(dir.path().string(), 2, ops).commit(sample_checkpoint(20));
    } catch (const Error&) {
      crashed = true;
    }
    auto latest = CheckpointStore(dir.path().string(), 2).latest();
    ASSERT_TRUE(latest.has_value());
    // A crash before the MANIFEST is durable fails the save and leaves the old checkpoint newest; one after it
    // (LATEST, garbage collection) is a warning: the save succeeded and the new checkpoint is the newest.
    EXPECT_EQ(crashed, latest->step == 10u) << "crashed " << crashed << ", newest step " << latest->step;
    if (latest->step == 20u) {
      EXPECT_TRUE(torch::equal(load_checkpoint(latest->path).model.at("fc.weight"), torch::full({2, 3}, 20.f)));
    } else {
      EXPECT_EQ(latest->step, 10u);
      EXPECT_TRUE(torch::equal(load_checkpoint(latest->path).model.at("fc.weight"), torch::full({2, 3}, 10.f)));
    }
  }
}

TEST(Checkpoint, CorruptNewestFallsBackAndIsReported) {
  ScratchDir dir("ckptcorrupt");
  CheckpointStore store(dir.path().string(), 3);
  store.commit(sample_checkpoint(10));
  const auto newest = store.commit(sample_checkpoint(20));
  {
    std::fstream f(newest + "/model.safetensors", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(-2, std::ios::end);
    f.put('\x7f');
  }
  std::vector<CheckpointInfo> skipped;
  auto latest = store.latest(&skipped);
  ASSERT_TRUE(latest.has_value());
  EXPECT_EQ(latest->step, 10u);
  ASSERT_EQ(skipped.size(), 1u);
  EXPECT_NE(skipped[0].problem.find("model.safetensors: checksum mismatch"), std::string::npos) << skipped[0].problem;
  // A truncated file and a missing MANIFEST are reported the same way.
  std::filesystem::resize_file(newest + "/model.safetensors", 10);
  EXPECT_NE(CheckpointStore(dir.path().string()).list()[0].problem.find("bytes, MANIFEST says"), std::string::npos);
  std::filesystem::remove(newest + "/MANIFEST");
  EXPECT_NE(CheckpointStore(dir.path().string()).list()[0].problem.find("no MANIFEST"), std::string::npos);
  EXPECT_THROW(load_checkpoint(newest), Error);
}

TEST(Checkpoint, ModelWeightsRoundTripBitwise) {
  ScratchDir dir("ckptmodel");
  auto model = models::make_model("resnet20");
  CheckpointData d;
  d.model = models::state_dict(*model);
  d.manifest.set_step(1);
  CheckpointStore store(dir.path().string());
  const auto path = store.commit(std::move(d));
  auto other = models::make_model("resnet20");
  models::load_state_dict(*other, load_checkpoint(path).model);
  auto a = models::state_dict(*model), b = models::state_dict(*other);
  for (const auto& [k, v] : a) EXPECT_TRUE(torch::equal(v, b.at(k))) << k;
}

// ---------------------------------------------------------------------------------------------------------
// TensorBoard
// ---------------------------------------------------------------------------------------------------------
TEST(TensorBoard, EventsReadBackWithValidChecksums) {
  ScratchDir dir("tb");
  std::string path;
  {
    TensorBoardWriter w(dir.path().string());
    path = w.path();
    for (int i = 0; i < 5; ++i) w.scalar("train/loss", 1.0 / (i + 1), i * 10);
    w.scalar("eval/acc1", 91.25, 40);
  }
  auto events = read_tensorboard_scalars(path);
  ASSERT_EQ(events.size(), 6u);
  EXPECT_EQ(events[2].tag, "train/loss");
  EXPECT_EQ(events[2].step, 20);
  EXPECT_NEAR(events[2].value, 1.0 / 3, 1e-6);
  EXPECT_EQ(events[5].tag, "eval/acc1");
  EXPECT_NEAR(events[5].value, 91.25, 1e-4);
  // A flipped byte is detected.
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  f.seekp(60);
  f.put('\x01');
  f.close();
  EXPECT_THROW(read_tensorboard_scalars(path), Error);
}

// Golden checks against an independent implementation (tests/python/tfrecord_events.py: Python's protobuf package
// with TensorFlow's Event field numbers, and TFRecord framing and CRC32C written from the format's description).
const std::string kEventsScript = std::string(STRIDE_SOURCE_DIR) + "/tests/python/tfrecord_events.py";

TEST(TensorBoard, ReadsGoldenEventsFromAnIndependentWriter) {
  ScratchDir dir("tbgolden");
  const std::string path = dir.file("events.out.tfevents.golden");
  const auto made = testing::run_command(std::string(STRIDE_REFERENCE_PYTHON) + " " + kEventsScript + " write " + path);
  ASSERT_EQ(made.exit_code, 0) << made.output;
  const auto events = read_tensorboard_scalars(path);
  ASSERT_EQ(events.size(), 4u);  // the file_version record carries no scalar
  const std::vector<std::tuple<std::string, double, int64_t>> expected = {
      {"train/loss", 2.5, 0}, {"train/loss", 1.25, 10}, {"eval/acc1", 91.25, 10}, {"lr", 0.1, 20}};
  for (size_t i = 0; i < events.size(); ++i) {
    EXPECT_EQ(events[i].tag, std::get<0>(expected[i])) << i;
    EXPECT_FLOAT_EQ(static_cast<float>(events[i].value), static_cast<float>(std::get<1>(expected[i]))) << i;
    EXPECT_EQ(events[i].step, std::get<2>(expected[i])) << i;
  }
}

TEST(TensorBoard, OurEventsPassAnIndependentReader) {
  ScratchDir dir("tbindependent");
  std::string path;
  {
    TensorBoardWriter w(dir.path().string());
    path = w.path();
    for (int i = 0; i < 3; ++i) w.scalar("train/loss", 1.0 / (i + 1), i * 10);
    w.scalar("eval/acc1", 91.25, 20);
  }
  const auto read = testing::run_command(std::string(STRIDE_REFERENCE_PYTHON) + " " + kEventsScript + " read " + path);
  ASSERT_EQ(read.exit_code, 0) << read.output;
  std::istringstream lines(read.output);
  std::vector<nlohmann::json> events;
  for (std::string line; std::getline(lines, line);) events.push_back(nlohmann::json::parse(line));
  ASSERT_EQ(events.size(), 5u) << read.output;
  EXPECT_EQ(events[0].value("file_version", ""), "brain.Event:2");
  EXPECT_GT(events[0]["wall_time"].get<double>(), 1.7e9);
  for (int i = 0; i < 3; ++i) {
    const auto& e = events[static_cast<size_t>(i) + 1];
    EXPECT_EQ(e["step"].get<int64_t>(), i * 10);
    ASSERT_EQ(e["values"].size(), 1u);
    EXPECT_EQ(e["values"][0]["tag"], "train/loss");
    EXPECT_FLOAT_EQ(e["values"][0]["simple_value"].get<float>(), static_cast<float>(1.0 / (i + 1)));
  }
  EXPECT_EQ(events[4]["values"][0]["tag"], "eval/acc1");
  EXPECT_EQ(events[4]["step"].get<int64_t>(), 20);
  // The independent reader does check the CRCs: a flipped payload byte fails it.
  {
    std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(14);
    f.put('\x7f');
  }
  const auto bad = testing::run_command(std::string(STRIDE_REFERENCE_PYTHON) + " " + kEventsScript + " read " + path);
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_NE(bad.output.find("bad data CRC at 0"), std::string::npos) << bad.output;
}

}  // namespace
}  // namespace stride::trainer
