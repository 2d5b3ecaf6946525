// python/stride_models.py against Stride: every registered model has a Python definition with Stride's state-dict
// keys and shapes, and the same weights give the same eval-mode logits; the Python loader reads checkpoints and
// exported files, and python/export.py's TorchScript and ONNX files compute those logits too. The Python side is
// tests/python/stride_models_check.py, run with Debian's python3-torch (and python3-onnx for the ONNX graph).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "models/registry.h"
#include "models/state_dict.h"
#include "test_util.h"
#include "trainer/checkpoint.h"
#include "trainer/safetensors.h"

namespace stride {
namespace {

using testing::run_command;
using testing::ScratchDir;

const std::string kCheck =
    std::string(STRIDE_REFERENCE_PYTHON) + " " + STRIDE_SOURCE_DIR + "/tests/python/stride_models_check.py";
constexpr double kTolerance = 1e-5;  // max |python - stride| relative to max |stride|

// Models checked by keys and shapes only. A logits check costs a weights file and a forward pass in both
// languages; these are the deeper or wider versions of block kinds the logits set covers (resnet18/50,
// resnext50_32x4d, se_resnet18/50, preact_resnet18/50, plain18 use the same block code with other counts and
// widths), and the state-dict comparison still catches a wrong block count, width or group setting.
const std::set<std::string> kShapesOnly = {
    "resnet34",         "resnet101",   "resnet152",    "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2",
    "wide_resnet101_2", "se_resnet34", "se_resnet101", "preact_resnet34",  "plain34"};

struct Case {
  std::string name;  // unique: the model plus its options
  std::string model;
  models::ModelOptions options;
};

nlohmann::json options_json(const models::ModelOptions& o) {
  nlohmann::json j = nlohmann::json::object();
  if (o.num_classes > 0) j["num_classes"] = o.num_classes;
  if (o.in_channels != 3) j["in_channels"] = o.in_channels;
  if (!o.cifar_shortcut.empty()) j["cifar_shortcut"] = o.cifar_shortcut;
  return j;
}

// Non-trivial BatchNorm parameters and statistics, so eval mode and the running stats really matter.
void randomize_batch_norms(torch::nn::Module& model) {
  torch::NoGradGuard no_grad;
  for (auto& p : model.named_parameters()) {
    if (p.key().find("bn") == std::string::npos && p.key().find("downsample.1") == std::string::npos) continue;
    if (p.key().size() > 7 && p.key().compare(p.key().size() - 7, 7, ".weight") == 0) p.value().uniform_(0.5, 1.5);
    if (p.key().size() > 5 && p.key().compare(p.key().size() - 5, 5, ".bias") == 0) p.value().normal_(0.0, 0.1);
  }
  for (auto& b : model.named_buffers()) {
    if (b.key().find("running_var") != std::string::npos) b.value().uniform_(0.5, 1.5);
    if (b.key().find("running_mean") != std::string::npos) b.value().normal_(0.0, 0.1);
    if (b.key().find("num_batches_tracked") != std::string::npos) b.value().fill_(7);
  }
}

torch::Tensor input_for(const models::ResNet& model, int64_t batch, uint64_t seed) {
  const int64_t side = model->spec().stem == models::Stem::kImageNet ? 64 : 32;
  torch::manual_seed(seed);
  return torch::randn({batch, model->options().in_channels, side, side});
}

// Runs the Python check on the cases written to `dir` so far; returns each logits case's relative difference.
std::map<std::string, double> run_python(const ScratchDir& dir, const nlohmann::json& cases, size_t* shapes_ok) {
  {
    std::ofstream f(dir.file("cases.json"));
    f << cases.dump();
  }
  const auto r = run_command(kCheck + " parity " + dir.path().string());
  EXPECT_EQ(r.exit_code, 0) << r.output;
  std::map<std::string, double> diffs;
  std::istringstream lines(r.output);
  std::string tag, name, value;
  for (std::string line; std::getline(lines, line);) {
    std::istringstream words(line);
    if (!(words >> tag >> name >> value)) continue;
    if (tag == "RESULT") diffs[name] = std::stod(value);
    if (tag == "SHAPES" && value == "ok") ++*shapes_ok;
  }
  return diffs;
}

TEST(PythonModels, EveryRegisteredModelMatchesStride) {
  ScratchDir dir("pymodels");
  std::vector<Case> cases;
  for (const auto& name : models::model_names()) cases.push_back({name, name, {}});
  // The options a run can set that change the architecture: a grayscale stem with another class count, and the
  // CIFAR projection shortcut.
  models::ModelOptions gray;
  gray.in_channels = 1;
  gray.num_classes = 7;
  cases.push_back({"resnet18_gray7", "resnet18", gray});
  cases.push_back({"se_resnet18_gray7", "se_resnet18", gray});
  models::ModelOptions option_b;
  option_b.cifar_shortcut = "B";
  cases.push_back({"resnet20_optionB", "resnet20", option_b});
  cases.push_back({"resnet56_optionB", "resnet56", option_b});

  std::map<std::string, double> diffs;
  size_t shapes_ok = 0, logits_cases = 0, shapes_cases = 0;
  nlohmann::json batch = nlohmann::json::array();
  int64_t batch_parameters = 0;
  auto flush = [&] {
    if (batch.empty()) return;
    for (const auto& [name, d] : run_python(dir, batch, &shapes_ok)) diffs[name] = d;
    for (const auto& entry : std::filesystem::directory_iterator(dir.path())) std::filesystem::remove(entry.path());
    batch = nlohmann::json::array();
    batch_parameters = 0;
  };
  uint64_t seed = 0;
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    torch::manual_seed(++seed);
    auto model = models::make_model(c.model, c.options);
    nlohmann::json entry = {{"name", c.name}, {"model", c.model}, {"options", options_json(c.options)}};
    nlohmann::json shapes = nlohmann::json::object();
    const auto sd = models::state_dict(*model);
    for (const auto& [key, t] : sd) shapes[key] = t.sizes().vec();
    entry["shapes"] = shapes;
    if (kShapesOnly.count(c.name)) {
      ++shapes_cases;
    } else {
      ++logits_cases;
      randomize_batch_norms(*model);
      model->eval();
      const auto x = input_for(model, 2, seed);
      torch::Tensor logits;
      {
        torch::NoGradGuard no_grad;
        logits = model->forward(x);
      }
      trainer::write_safetensors(dir.file(c.name + ".safetensors"), models::state_dict(*model), {{"model", c.model}});
      trainer::write_safetensors(dir.file(c.name + ".io.safetensors"), {{"input", x}, {"logits", logits}});
      entry["weights"] = c.name + ".safetensors";
      entry["io"] = c.name + ".io.safetensors";
      batch_parameters += models::count_parameters(*model);
    }
    batch.push_back(entry);
    // Bounded scratch space: hand over to Python every ~60M parameters (240 MB of weights).
    if (batch_parameters > 60'000'000) flush();
  }
  flush();

  EXPECT_EQ(shapes_ok, cases.size()) << "every case's state-dict keys and shapes match";
  EXPECT_EQ(shapes_cases, kShapesOnly.size()) << "kShapesOnly names only registered models";
  ASSERT_EQ(diffs.size(), logits_cases);
  for (const auto& [name, d] : diffs) {
    EXPECT_LT(d, kTolerance) << name << ": Python logits differ from Stride's";
    std::ostringstream shown;
    shown << std::scientific << d;
    RecordProperty(name + "_max_rel_diff", shown.str());
  }
}

// Through real checkpoint files, as a user moving a trained model to Python, TorchScript or ONNX would: a
// checkpoint directory with model and EMA weights, and the file `stride ckpt export` writes from it.
TEST(PythonModels, CheckpointLoaderAndExport) {
  struct Exported {
    std::string model;
    models::ModelOptions options;
  };
  models::ModelOptions gray;
  gray.in_channels = 1;
  gray.num_classes = 5;
  // Between them these export every operator the models use: zero-pad shortcuts (Slice, Pad), standalone
  // pre-activation BatchNorm, squeeze-excitation (ReduceMean, Sigmoid, Mul), the ImageNet stem's max pool.
  for (const auto& e : {Exported{"resnet20", {}}, Exported{"preact_resnet110", {}}, Exported{"se_resnet18", gray}}) {
    SCOPED_TRACE(e.model);
    ScratchDir dir("pyexport-" + e.model);
    torch::manual_seed(11);
    auto model = models::make_model(e.model, e.options);
    auto ema = models::make_model(e.model, e.options);
    randomize_batch_norms(*model);
    randomize_batch_norms(*ema);
    model->eval();
    ema->eval();
    const auto x = input_for(model, 2, 12);
    torch::Tensor logits, ema_logits;
    {
      torch::NoGradGuard no_grad;
      logits = model->forward(x);
      ema_logits = ema->forward(x);
    }
    trainer::CheckpointData ckpt;
    ckpt.model = models::state_dict(*model);
    ckpt.ema = models::state_dict(*ema);
    ckpt.manifest.set_step(7);
    ckpt.manifest.set_model(e.model);
    const std::string step_dir = trainer::CheckpointStore(dir.file("run")).commit(std::move(ckpt));
    const auto exported = run_command(std::string(STRIDE_BINARY) + " ckpt export " + dir.file("run") + " -o " +
                                      dir.file("exported.safetensors"));
    ASSERT_EQ(exported.exit_code, 0) << exported.output;
    trainer::write_safetensors(dir.file("io.safetensors"),
                               {{"input", x}, {"logits", logits}, {"ema_logits", ema_logits}});
    const auto r =
        run_command(kCheck + " checkpoint --dir " + step_dir + " --exported " + dir.file("exported.safetensors") +
                    " --io " + dir.file("io.safetensors") + " --model " + e.model + " --step 7 --work " +
                    dir.path().string() + " --tolerance " + std::to_string(kTolerance));
    EXPECT_EQ(r.exit_code, 0) << r.output;
    for (const std::string what : {"checkpoint_dir", "checkpoint_dir_ema", "exported_file", "torchscript", "onnx"}) {
      EXPECT_NE(r.output.find("RESULT " + what + " "), std::string::npos) << what << " was not checked:\n" << r.output;
    }
    EXPECT_TRUE(std::filesystem::exists(dir.file("model.onnx")));
    EXPECT_TRUE(std::filesystem::exists(dir.file("model.pt")));
  }
}

}  // namespace
}  // namespace stride
