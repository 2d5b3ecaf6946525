#include "trainer/predict_command.h"

#include <torch/torch.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <thread>

#include "common/error.h"
#include "data/codec.h"
#include "data/rng.h"
#include "data/transforms.h"
#include "models/registry.h"
#include "models/state_dict.h"
#include "storage/file_io.h"
#include "trainer/checkpoint.h"
#include "trainer/config.h"
#include "trainer/data_setup.h"

namespace stride::trainer {
namespace fs = std::filesystem;

namespace {

std::string extension(const fs::path& p) {
  const std::string e = p.extension().string();
  return e.empty() ? e : e.substr(1);
}

bool is_image(const fs::path& p) { return data::codec_for(extension(p)) != data::Codec::kUnknown; }

// Checkpoints written before the MANIFEST recorded proto::Preprocess: rebuild it from the run's configuration and
// its dataset's index (which must still be readable).
proto::Preprocess recover_preprocess(const proto::Manifest& m, const std::string& dir) {
  TrainConfig c;
  parse_toml(m.config(), dir + "/MANIFEST", c);
  c.test_only = true;
  try {
    return preprocess_record(plan_data(c));
  } catch (const std::exception& e) {
    throw Error(concat(dir, " does not record how its images were prepared (written by an older Stride), and its ",
                       "dataset cannot be read to find out (", e.what(), "): use a newer checkpoint of the run"));
  }
}

std::vector<std::string> read_class_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw UsageError(concat("--classes ", path, ": cannot read it"));
  std::vector<std::string> names;
  for (std::string line; std::getline(in, line);) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    names.push_back(line);
  }
  return names;
}

// One image file as the model's input: [C, H, W] float, normalised as the run's evaluation did.
torch::Tensor prepare(const std::string& path, const proto::Preprocess& p) {
  data::AugmentOptions o;
  o.crop = data::parse_crop(p.crop());
  o.size = static_cast<int>(p.size());
  o.resize = static_cast<int>(p.resize());
  o.channels = static_cast<int>(p.channels());
  const std::string bytes = storage::read_file(path);
  data::Rng rng(0);  // evaluation crops draw nothing
  const data::Image img = data::augment(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(),
                                        data::codec_for(extension(path)), o, rng);
  const int c = img.channels;
  if (c != static_cast<int>(p.channels())) {
    throw Error(concat("decoded to ", c, " channels, the model takes ", p.channels()));
  }
  auto t = torch::from_blob(const_cast<uint8_t*>(img.pixels.data()), {img.height, img.width, c}, torch::kUInt8)
               .permute({2, 0, 1})
               .to(torch::kFloat32)
               .div_(255.0);
  if (p.mean_size() > 0) {
    std::vector<float> mean(p.mean().begin(), p.mean().end()), std(p.std().begin(), p.std().end());
    t.sub_(torch::tensor(mean).view({c, 1, 1})).div_(torch::tensor(std).view({c, 1, 1}));
  }
  return t.contiguous();
}

}  // namespace

std::string resolve_checkpoint(const std::string& path) {
  if (fs::exists(fs::path(path) / "MANIFEST")) return path;
  if (!fs::is_directory(path)) throw UsageError(concat(path, " is neither a checkpoint nor a run directory"));
  auto latest = CheckpointStore(path).latest();
  if (!latest) throw UsageError(concat("no valid checkpoint under ", path));
  return latest->path;
}

TrainedModel load_trained_model(const std::string& checkpoint_or_run, bool ema, const std::string& expected_model) {
  TrainedModel t;
  t.checkpoint = resolve_checkpoint(checkpoint_or_run);
  CheckpointData ckpt = load_checkpoint(t.checkpoint);
  t.manifest = ckpt.manifest;
  const proto::Manifest& m = t.manifest;
  if (!expected_model.empty() && m.model() != expected_model) {
    throw UsageError(concat(t.checkpoint, " holds a ", m.model(), " model, not the ", expected_model, " asked for"));
  }
  t.preprocess = m.has_preprocess() ? m.preprocess() : recover_preprocess(m, t.checkpoint);
  if (ema && ckpt.ema.empty()) throw UsageError(concat("--ema: ", t.checkpoint, " has no EMA weights"));
  const NamedTensors& weights = ema ? ckpt.ema : ckpt.model;
  const auto fc = weights.find("fc.weight");
  if (fc == weights.end()) throw Error(concat(t.checkpoint, ": the weights have no fc.weight (no classifier head)"));

  models::ModelOptions mo;
  mo.num_classes = fc->second.size(0);
  mo.in_channels = static_cast<int>(t.preprocess.channels());
  t.model = models::make_model(m.model(), mo);
  models::LoadOptions lo;
  lo.source = t.checkpoint;
  models::load_state_dict(*t.model, weights, lo);
  t.model->eval();
  return t;
}

std::vector<std::string> collect_images(const std::vector<std::string>& inputs) {
  std::vector<std::string> files;
  for (const auto& input : inputs) {
    if (fs::is_directory(input)) {
      std::vector<std::string> found;
      for (const auto& entry : fs::recursive_directory_iterator(input)) {
        if (entry.is_regular_file() && is_image(entry.path())) found.push_back(entry.path().string());
      }
      std::sort(found.begin(), found.end());
      if (found.empty()) throw UsageError(concat(input, ": no .jpg, .jpeg, .png or .npy files in it"));
      files.insert(files.end(), found.begin(), found.end());
    } else if (fs::exists(input)) {
      if (!is_image(input)) {
        throw UsageError(concat(input, ": not an image Stride decodes (.jpg, .jpeg, .png or .npy)"));
      }
      files.push_back(input);
    } else {
      throw UsageError(concat(input, ": no such file or folder"));
    }
  }
  return files;
}

PredictResult predict(const PredictOptions& o) {
  if (o.top_k < 1) throw UsageError("--top-k must be at least 1");
  if (o.batch_size < 1) throw UsageError("--batch-size must be at least 1");
  if (o.threads < 0) throw UsageError("--threads must be 0 (all cores) or more");
  const std::vector<std::string> files = collect_images(o.inputs);

  PredictResult r;
  TrainedModel trained = load_trained_model(o.checkpoint, o.ema);
  r.checkpoint = trained.checkpoint;
  r.step = trained.manifest.step();
  r.model = trained.manifest.model();
  r.preprocess = trained.preprocess;
  auto& model = trained.model;
  const int64_t classes = model->num_classes();
  r.class_names.assign(r.preprocess.class_names().begin(), r.preprocess.class_names().end());
  if (static_cast<int64_t>(r.class_names.size()) != classes) r.class_names.clear();  // a new head: not the data's

  const int threads =
      o.threads > 0 ? static_cast<int>(o.threads) : std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  torch::set_num_threads(threads);
  torch::NoGradGuard no_grad;
  const int64_t k = std::min<int64_t>(o.top_k, classes);
  r.predictions.resize(files.size());
  for (size_t begin = 0; begin < files.size(); begin += static_cast<size_t>(o.batch_size)) {
    const size_t end = std::min(files.size(), begin + static_cast<size_t>(o.batch_size));
    // Decode and transform the batch's files on `threads` workers (file order is kept by index).
    std::vector<torch::Tensor> inputs(end - begin);
    std::atomic<size_t> next{begin};
    auto work = [&] {
      for (size_t i; (i = next++) < end;) {
        r.predictions[i].path = files[i];
        try {
          inputs[i - begin] = prepare(files[i], r.preprocess);
        } catch (const std::exception& e) {
          r.predictions[i].error = e.what();
        }
      }
    };
    std::vector<std::thread> pool;
    for (int t = 1; t < std::min<int>(threads, static_cast<int>(end - begin)); ++t) pool.emplace_back(work);
    work();
    for (auto& t : pool) t.join();

    // Images of one shape go through the model together ("none" keeps each image's own size).
    std::vector<size_t> pending;
    for (size_t i = begin; i < end; ++i) {
      if (inputs[i - begin].defined()) pending.push_back(i);
    }
    while (!pending.empty()) {
      const auto shape = inputs[pending.front() - begin].sizes().vec();
      std::vector<size_t> group, rest;
      for (size_t i : pending) (inputs[i - begin].sizes().vec() == shape ? group : rest).push_back(i);
      std::vector<torch::Tensor> batch;
      for (size_t i : group) batch.push_back(inputs[i - begin]);
      const auto probs = torch::softmax(model->forward(torch::stack(batch)), 1).to(torch::kFloat64);
      const auto top = probs.topk(k, 1);
      const auto values = std::get<0>(top).contiguous(), indices = std::get<1>(top).contiguous();
      for (size_t g = 0; g < group.size(); ++g) {
        auto& p = r.predictions[group[g]];
        for (int64_t j = 0; j < k; ++j) {
          p.classes.push_back(indices[static_cast<int64_t>(g)][j].item<int64_t>());
          p.probabilities.push_back(values[static_cast<int64_t>(g)][j].item<double>());
        }
      }
      pending = std::move(rest);
    }
  }
  return r;
}

void add_predict_command(CLI::App& app) {
  auto o = std::make_shared<PredictOptions>();
  auto json = std::make_shared<bool>(false);
  auto classes_file = std::make_shared<std::string>();
  auto* cmd = app.add_subcommand("predict", "Top-k classes of image files under a trained checkpoint");
  cmd->add_option("checkpoint", o->checkpoint, "Checkpoint directory, or a run directory (its newest valid checkpoint)")
      ->required();
  cmd->add_option("inputs", o->inputs, "Image files (.jpg, .jpeg, .png, .npy) or folders of them")->required();
  cmd->add_option("--top-k,-k", o->top_k, "Classes to show per image")->capture_default_str();
  cmd->add_option("--batch-size,-b", o->batch_size, "Images per forward pass")->capture_default_str();
  cmd->add_option("--threads,-j", o->threads, "Decode workers and compute threads (0: every core)")
      ->capture_default_str();
  cmd->add_flag("--ema", o->ema, "Use the checkpoint's EMA weights");
  cmd->add_option("--classes", *classes_file,
                  "A file of class names, one per line, by class index (default: the "
                  "names the dataset recorded)");
  cmd->add_flag("--json", *json, "One JSON document instead of text");
  cmd->callback([o, json, classes_file] {
    PredictResult r = predict(*o);
    if (!classes_file->empty()) r.class_names = read_class_file(*classes_file);
    auto name = [&](int64_t c) {
      return c < static_cast<int64_t>(r.class_names.size()) ? r.class_names[static_cast<size_t>(c)] : std::to_string(c);
    };
    int failed = 0;
    for (const auto& p : r.predictions) failed += p.error.empty() ? 0 : 1;
    if (*json) {
      nlohmann::json out = {{"checkpoint", r.checkpoint},
                            {"step", r.step},
                            {"model", r.model},
                            {"preprocess", r.preprocess.description()},
                            {"predictions", nlohmann::json::array()}};
      for (const auto& p : r.predictions) {
        nlohmann::json j = {{"path", p.path}};
        if (!p.error.empty()) {
          j["error"] = p.error;
        } else {
          j["top"] = nlohmann::json::array();
          for (size_t i = 0; i < p.classes.size(); ++i) {
            j["top"].push_back({{"class", p.classes[i]}, {"name", name(p.classes[i])}, {"p", p.probabilities[i]}});
          }
        }
        out["predictions"].push_back(j);
      }
      std::cout << out.dump(2) << "\n";
    } else {
      std::fprintf(stderr, "%s (step %llu, %s; %s)\n", r.checkpoint.c_str(), static_cast<unsigned long long>(r.step),
                   r.model.c_str(), r.preprocess.description().c_str());
      for (const auto& p : r.predictions) {
        if (!p.error.empty()) {
          std::printf("%s: error: %s\n", p.path.c_str(), p.error.c_str());
          continue;
        }
        std::string line = p.path + ":";
        for (size_t i = 0; i < p.classes.size(); ++i) {
          char pct[32];
          std::snprintf(pct, sizeof(pct), " %.1f%%", 100.0 * p.probabilities[i]);
          line += concat(i ? "," : "", " ", name(p.classes[i]), pct);
        }
        std::printf("%s\n", line.c_str());
      }
    }
    if (failed > 0) throw Error(concat(failed, " of ", r.predictions.size(), " images could not be read"));
  });
}

}  // namespace stride::trainer
