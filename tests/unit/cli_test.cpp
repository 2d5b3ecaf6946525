// The `stride` binary as users call it: `stride models`, its JSON, the gradient-norm probe, exit codes.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "common/suggest.h"
#include "models/grad_norms.h"
#include "models/registry.h"
#include "test_util.h"

namespace stride {
namespace {

using testing::run_command;
const std::string kStride = STRIDE_BINARY;

TEST(CliModels, ListsEveryModelWithItsCount) {
  const auto r = run_command(kStride + " models");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::istringstream lines(r.output);
  std::map<std::string, int64_t> listed;
  std::string name;
  int64_t count = 0;
  while (lines >> name >> count) listed[name] = count;
  ASSERT_EQ(listed.size(), models::model_names().size()) << r.output;
  for (const auto& n : models::model_names()) EXPECT_EQ(listed.at(n), models::parameter_count(n)) << n;
  EXPECT_EQ(listed.at("resnet50"), 25557032);
}

TEST(CliModels, JsonHonoursOptions) {
  const auto r = run_command(kStride + " models --json --num-classes 10 --in-channels 1");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto j = nlohmann::json::parse(r.output);
  ASSERT_EQ(j.size(), models::model_names().size());
  models::ModelOptions o;
  o.num_classes = 10;
  o.in_channels = 1;
  for (const auto& m : j) {
    EXPECT_EQ(m.at("parameters").get<int64_t>(), models::parameter_count(m.at("name").get<std::string>(), o));
    EXPECT_EQ(m.at("num_classes").get<int64_t>(), 10);
  }
}

// `stride ARGS` exits with 2 (a usage error) and says `text`.
void expect_usage_error(const std::string& args, const std::string& text) {
  const auto r = run_command(kStride + " " + args);
  EXPECT_EQ(r.exit_code, 2) << args << "\n" << r.output;
  EXPECT_NE(r.output.find(text), std::string::npos) << args << "\n" << r.output;
}

TEST(CliTrain, DeviceCudaWithoutAGpuExitsWithTwo) {
  if (torch::cuda::is_available()) GTEST_SKIP() << "a CUDA device is visible";
  expect_usage_error("train --device cuda --comm-backend single --data-path /nonexistent",
                     "--device cuda: no CUDA device is visible");
}

TEST(CliBench, InterleaveAndBucketCapMistakesFailAtOnceWithTwo) {
  expect_usage_error("bench step --comm-backend single --interleave default,no-comm",
                     "run it under mpirun with 2+ ranks");
  expect_usage_error("bench step --comm-backend single --interleave default,sync-onyl", "unknown variant 'sync-onyl'");
  expect_usage_error("bench step --comm-backend single --bucket-cap-mb 25MB",
                     "--bucket-cap-mb must be positive (a size in MiB) or auto, got '25MB'");
}

TEST(CliModels, ErrorsExitWithTwoAndSayWhat) {
  auto r = run_command(kStride + " models --grad-norms resnet5");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.output.find("unknown model 'resnet5'"), std::string::npos) << r.output;
  r = run_command(kStride + " models --no-such-flag");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  r = run_command(kStride + " models --batch 0 --grad-norms resnet20");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  r = run_command(kStride);
  EXPECT_EQ(r.exit_code, 2) << r.output;
  r = run_command(kStride + " models --help");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("--grad-norms"), std::string::npos);
}

TEST(CliErrors, ClosestNameIgnoresCaseAndSeparatorsAndRefusesFarOnes) {
  EXPECT_EQ(edit_distance("trian", "train"), 1u);
  EXPECT_EQ(edit_distance("", "abc"), 3u);
  EXPECT_EQ(closest_name("trian", {"shard", "train", "launch"}), "train");
  EXPECT_EQ(closest_name("ResNet-18", models::model_names()), "resnet18");
  EXPECT_EQ(closest_name("resnet_50", models::model_names()), "resnet50");
  EXPECT_EQ(closest_name("--bach-size", {"--batch-size", "--bucket-cap-mb"}), "--batch-size");
  EXPECT_EQ(closest_name("frobnicate", {"train", "launch"}), "");
  EXPECT_EQ(did_you_mean("cosnie", {"step", "cosine"}), " (did you mean 'cosine'?)");
}

// Usage errors are one line on stderr that starts with `stride: error:` and names what was probably meant.
TEST(CliErrors, UnknownNamesAreOneLineWithTheClosestSuggested) {
  const std::pair<std::string, std::string> cases[] = {
      {"trian", "unknown command 'trian' for `stride`; did you mean 'train'?"},
      {"train --bach-size 3", "unknown flag '--bach-size' for `stride train`; did you mean '--batch-size'?"},
      {"train --nproc-per-node 2", "torchrun's --nproc-per-node is `stride launch -n N`"},
      {"launch -n 2 --hostfle hosts -- --epochs 1",
       "unknown flag '--hostfle' for `stride launch`; did you mean '--hostfile'?"},
      {"launch -n 2 --epochs 3",
       "unknown flag '--epochs' for `stride launch`; it is a flag of `stride train`; "
       "training flags go after `--`"},
      {"bench step --modle resnet20", "unknown flag '--modle' for `stride bench step`; did you mean '--model'?"},
      {"models --grad-norms ResNet-18", "unknown model 'ResNet-18' (did you mean 'resnet18'?)"},
      {"train --lr-scheduler cosnie --data-path /nonexistent", "(did you mean 'cosine'?)"},
  };
  for (const auto& [args, text] : cases) {
    const auto r = run_command(kStride + " " + args);
    EXPECT_EQ(r.exit_code, 2) << args << "\n" << r.output;
    EXPECT_NE(r.output.find(text), std::string::npos) << args << "\n" << r.output;
    EXPECT_EQ(r.output.rfind("stride: error: ", 0), 0u) << args << "\n" << r.output;
    EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n'), 1) << args << "\n" << r.output;
  }
}

// `stride launch` with more ranks than Open MPI has slots: one clear error, exit 2, no restarts.
TEST(CliLaunch, MoreRanksThanSlotsSaysOversubscribeOnceAndDoesNotRestart) {
  testing::ScratchDir dir("oversubscribe");
  const auto r = run_command(
      "env -u OMPI_MCA_rmaps_base_oversubscribe OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 " + kStride +
      " launch -n 4096 --max-restarts 3 --restart-backoff 1s --status-port -1 -- --dataset fashion-mnist "
      "--output-dir " +
      dir.file("run") + " --data-path " + dir.file("data"));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  const std::string want = "mpirun has fewer slots than the 4096 ranks asked for";
  const auto first = r.output.find(want);
  ASSERT_NE(first, std::string::npos) << r.output;
  EXPECT_EQ(r.output.find(want, first + 1), std::string::npos) << "said more than once:\n" << r.output;
  EXPECT_NE(r.output.find("add --oversubscribe"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("restart 1"), std::string::npos) << r.output;
}

// A missing dataset stops `stride launch` before a run directory, a coordinator or a rank exists; a --data-path
// that points at a split names the folder to pass instead.
TEST(CliLaunch, DatasetErrorsComeFirstAndLeaveNothingBehind) {
  testing::ScratchDir dir("nodata");
  auto r =
      run_command(kStride + " launch -n 2 -- --output-dir " + dir.file("run") + " --data-path " + dir.file("none"));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_EQ(r.output.rfind("stride: error: no dataset at " + dir.file("none") + "/train", 0), 0u) << r.output;
  EXPECT_FALSE(std::filesystem::exists(dir.file("run"))) << "the failed start left a run directory";
  std::filesystem::create_directories(dir.file("fm/train"));
  std::ofstream(dir.file("fm/train/index.pb")) << "";
  r = run_command(kStride + " train --output-dir " + dir.file("run") + " --data-path " + dir.file("fm/train"));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("is one split of a dataset (it holds index.pb); pass the folder above it: --data-path " +
                          dir.file("fm")),
            std::string::npos)
      << r.output;
  // `stride bench loader` takes --data-path the same way: the dataset, with --split choosing the folder.
  r = run_command(kStride + " bench loader --data-path " + dir.file("fm/train"));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("pass the folder above it: --data-path " + dir.file("fm") + "\n"), std::string::npos)
      << r.output;
  std::filesystem::create_directories(dir.file("fm/val"));
  std::ofstream(dir.file("fm/val/index.pb")) << "";
  r = run_command(kStride + " bench loader --data-path " + dir.file("fm/val/"));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("pass the folder above it: --data-path " + dir.file("fm") + " --split val"),
            std::string::npos)
      << r.output;
}

TEST(CliTrain, SnapshotsWithoutRoomAreTurnedOffAndTheRunGoesOn) {
  testing::ScratchDir dir("snaproom");
  auto r = run_command(kStride + " shard --quiet --format fashion-mnist --input /usr/share/datasets/fashion-mnist " +
                       "--output " + dir.file("data") + " --samples-per-shard 5000");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::ofstream(dir.file("blocker")) << "a file where the snapshot directory's parent would be";
  r = run_command(kStride + " train --model resnet20 --data-path " + dir.file("data") +
                  " --batch-size 8 --max-steps 4 --threads 1 --workers 1 --status-port -1 --snapshot-every 1" +
                  " --snapshot-dir " + dir.file("blocker/snapshots") + " --output-dir " + dir.file("run"));
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("warning: --snapshot-every 1 turned off on rank 0: cannot create " +
                          dir.file("blocker/snapshots/rank-0")),
            std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("done: 4 steps"), std::string::npos) << r.output;
}

// --snapshot-buddy: a value outside auto|on|off, and `on` where no other host can keep a copy, are usage errors
// naming the flag, before anything is written.
TEST(CliTrain, BuddyCopiesAskedForWithoutAnotherHostAreAUsageError) {
  testing::ScratchDir dir("snapbuddy");
  auto r = run_command(kStride + " shard --quiet --format fashion-mnist --input /usr/share/datasets/fashion-mnist " +
                       "--output " + dir.file("data") + " --samples-per-shard 5000");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::string train = kStride + " train --model resnet20 --data-path " + dir.file("data") +
                            " --batch-size 8 --max-steps 2 --threads 1 --workers 1 --status-port -1" +
                            " --snapshot-every 1 --snapshot-dir " + dir.file("shm") + " --output-dir " +
                            dir.file("run");
  r = run_command(train + " --snapshot-buddy maybe");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("--snapshot-buddy"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("maybe"), std::string::npos) << r.output;
  r = run_command(train + " --snapshot-buddy on");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("--snapshot-buddy on: the job has one rank; no host to keep a copy on"), std::string::npos)
      << r.output;
  EXPECT_FALSE(std::filesystem::exists(dir.file("run/checkpoints"))) << "a refused start wrote checkpoints";
  r = run_command(train + " --snapshot-buddy auto");  // one rank: no copies, no error
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(r.output.find("kept by a rank on another host"), std::string::npos) << r.output;
}

// The probe's numbers must equal the gradient norms computed directly with torch::autograd::grad (a separate
// path from .backward() + .grad) on the same model and batch.
TEST(CliModels, GradNormsMatchDirectAutograd) {
  for (const std::string name : {"resnet20", "plain20"}) {
    SCOPED_TRACE(name);
    const auto r = run_command(kStride + " models --json --grad-norms " + name + " --seed 3 --batch 8");
    ASSERT_EQ(r.exit_code, 0) << r.output;
    auto reported = nlohmann::json::parse(r.output);

    models::GradProbeOptions probe;
    probe.seed = 3;
    probe.batch = 8;
    torch::manual_seed(probe.seed);
    auto model = models::make_model(name);
    model->train();
    auto [x, y] = models::probe_batch(*model, probe);
    auto loss = torch::cross_entropy_loss(model->forward(x), y);
    auto groups = model->stage_parameters();
    std::vector<torch::Tensor> params;
    for (const auto& g : groups) {
      for (const auto& p : g.parameters) params.push_back(p.second);
    }
    auto grads = torch::autograd::grad({loss}, params);
    ASSERT_EQ(reported.size(), groups.size());
    size_t k = 0;
    for (size_t i = 0; i < groups.size(); ++i) {
      double sum_sq = 0.0;
      for (size_t j = 0; j < groups[i].parameters.size(); ++j) {
        sum_sq += grads[k++].to(torch::kDouble).pow(2).sum().item<double>();
      }
      const double expect = std::sqrt(sum_sq);
      EXPECT_EQ(reported[i].at("stage").get<std::string>(), groups[i].stage);
      EXPECT_GT(expect, 0.0);
      EXPECT_NEAR(reported[i].at("norm").get<double>(), expect, 1e-5 * expect) << groups[i].stage;
    }
  }
}

}  // namespace
}  // namespace stride
