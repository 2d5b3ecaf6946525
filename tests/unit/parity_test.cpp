// Numerical parity with torchvision (Debian's python3-torchvision 0.14): the same weights give the same logits,
// in both directions. The reference script runs as part of the test; nothing binary is checked in.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <sstream>

#include "common/error.h"
#include "models/registry.h"
#include "models/state_dict.h"
#include "test_util.h"
#include "trainer/checkpoint.h"
#include "trainer/safetensors.h"

namespace stride {
namespace {

using testing::run_command;
using testing::ScratchDir;

const std::string kScript = std::string(STRIDE_SOURCE_DIR) + "/tests/python/torchvision_reference.py";

TEST(TorchvisionParity, SameWeightsSameLogits) {
  ScratchDir dir("parity");
  const auto made = run_command(std::string(STRIDE_REFERENCE_PYTHON) + " " + kScript + " make --out " +
                                dir.path().string() + " --models resnet18 resnet50 resnext50_32x4d");
  ASSERT_EQ(made.exit_code, 0) << made.output;
  for (const std::string name : {"resnet18", "resnet50", "resnext50_32x4d"}) {
    SCOPED_TRACE(name);
    auto model = models::make_model(name);
    auto weights = trainer::read_safetensors(dir.file(name + ".safetensors"));
    // Strict: every torchvision key exists in Stride under the same name, and nothing else does.
    auto report = models::load_state_dict(*model, weights.tensors, {true, {}, name + ".safetensors"});
    EXPECT_EQ(report.loaded.size(), weights.tensors.size());
    auto io = trainer::read_safetensors(dir.file(name + ".io.safetensors"));
    model->eval();
    torch::NoGradGuard no_grad;
    auto logits = model->forward(io.tensors.at("input"));
    const double diff = (logits - io.tensors.at("logits")).abs().max().item<double>();
    EXPECT_LT(diff, 1e-4) << "max abs logit difference";
    std::ostringstream shown;
    shown << std::scientific << diff;
    RecordProperty(name + "_max_abs_diff", shown.str());
  }
}

TEST(TorchvisionParity, ExportedCheckpointLoadsIntoTorchvision) {
  ScratchDir dir("export");
  torch::manual_seed(5);
  auto model = models::make_model("resnet18");
  {
    // Non-trivial BN statistics so eval mode matters.
    torch::NoGradGuard no_grad;
    for (auto& b : model->named_buffers()) {
      if (b.key().find("running_var") != std::string::npos) b.value().uniform_(0.5, 1.5);
      if (b.key().find("running_mean") != std::string::npos) b.value().normal_(0.0, 0.1);
    }
  }
  model->eval();
  auto x = torch::randn({2, 3, 224, 224});
  torch::Tensor logits;
  {
    torch::NoGradGuard no_grad;
    logits = model->forward(x);
  }
  // Through a real checkpoint and `stride ckpt export`, as a user moving weights to Python would.
  trainer::CheckpointData ckpt;
  ckpt.model = models::state_dict(*model);
  ckpt.manifest.set_step(3);
  ckpt.manifest.set_model("resnet18");
  trainer::CheckpointStore(dir.file("run")).commit(std::move(ckpt));
  const auto exported =
      run_command(std::string(STRIDE_BINARY) + " ckpt export " + dir.file("run") + " -o " + dir.file("w.safetensors"));
  ASSERT_EQ(exported.exit_code, 0) << exported.output;
  trainer::write_safetensors(dir.file("io.safetensors"), {{"input", x}, {"logits", logits}});
  const auto r =
      run_command(std::string(STRIDE_REFERENCE_PYTHON) + " " + kScript + " check --model resnet18 --weights " +
                  dir.file("w.safetensors") + " --io " + dir.file("io.safetensors"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto pos = r.output.find("max_abs_diff ");
  ASSERT_NE(pos, std::string::npos) << r.output;
  EXPECT_LT(std::stod(r.output.substr(pos + 13)), 1e-4) << r.output;
}

TEST(StateDict, ShapeMismatchNamesTheKey) {
  auto model = models::make_model("resnet20");
  auto sd = models::state_dict(*model);
  sd["layer2.0.conv1.weight"] = torch::zeros({1, 2, 3, 3});
  try {
    models::load_state_dict(*model, sd, {true, {}, "weights.safetensors"});
    FAIL() << "expected an error";
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("weights.safetensors"), std::string::npos) << what;
    EXPECT_NE(what.find("layer2.0.conv1.weight"), std::string::npos) << what;
  }
}

TEST(StateDict, StrictReportsMissingAndUnexpectedNonStrictSkips) {
  auto model = models::make_model("resnet20");
  auto sd = models::state_dict(*model);
  sd.erase("fc.bias");
  sd["extra.weight"] = torch::zeros({1});
  EXPECT_THROW(models::load_state_dict(*model, sd), Error);
  auto report = models::load_state_dict(*model, sd, {false, {}, "x"});
  EXPECT_EQ(report.missing, std::vector<std::string>{"fc.bias"});
  EXPECT_EQ(report.unexpected, std::vector<std::string>{"extra.weight"});
  // A new head: skip the classifier of a 10-class source when loading into a 7-class model.
  models::ModelOptions seven;
  seven.num_classes = 7;
  auto target = models::make_model("resnet20", seven);
  auto full = models::state_dict(*model);
  auto kept = models::load_state_dict(*target, full, {true, {"fc."}, "x"});
  EXPECT_EQ(kept.skipped.size(), 2u);
  EXPECT_TRUE(torch::equal(target->named_parameters()["conv1.weight"], model->named_parameters()["conv1.weight"]));
}

}  // namespace
}  // namespace stride
