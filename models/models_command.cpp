#include "models/models_command.h"

#include <CLI/CLI.hpp>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "models/grad_norms.h"
#include "models/registry.h"

namespace stride::models {
namespace {

struct ModelsArgs {
  bool json = false;
  std::string grad_norms;
  ModelOptions model;
  GradProbeOptions probe;
};

void list_models(const ModelsArgs& args) {
  nlohmann::json all = nlohmann::json::array();
  size_t width = 0;
  for (const auto& name : model_names()) width = std::max(width, name.size());
  for (const auto& name : model_names()) {
    const auto spec = model_spec(name);
    const int64_t params = parameter_count(name, args.model);
    if (args.json) {
      all.push_back({{"name", name},
                     {"parameters", params},
                     {"family", spec.family},
                     {"num_classes", args.model.num_classes > 0 ? args.model.num_classes : spec.default_classes},
                     {"image_size", spec.default_image_size}});
    } else {
      std::printf("%-*s  %lld\n", static_cast<int>(width), name.c_str(), static_cast<long long>(params));
    }
  }
  if (args.json) std::cout << all.dump(2) << "\n";
}

void print_grad_norms(const ModelsArgs& args) {
  const auto norms = stage_gradient_norms(args.grad_norms, args.model, args.probe);
  if (args.json) {
    nlohmann::json out = nlohmann::json::array();
    for (const auto& s : norms) out.push_back({{"stage", s.stage}, {"parameters", s.parameters}, {"norm", s.norm}});
    std::cout << out.dump(2) << "\n";
    return;
  }
  std::printf("# %s: per-stage gradient L2 norm at initialisation (batch %lld, seed %llu)\n", args.grad_norms.c_str(),
              static_cast<long long>(args.probe.batch), static_cast<unsigned long long>(args.probe.seed));
  for (const auto& s : norms) {
    std::printf("%-8s %12lld  %.9e\n", s.stage.c_str(), static_cast<long long>(s.parameters), s.norm);
  }
}

}  // namespace

void add_models_command(CLI::App& app) {
  auto args = std::make_shared<ModelsArgs>();
  auto* cmd = app.add_subcommand("models", "List every model with its parameter count, or probe gradient flow");
  cmd->add_flag("--json", args->json, "Print JSON instead of text");
  cmd->add_option("--grad-norms", args->grad_norms,
                  "Print per-stage gradient norms of MODEL at initialisation on one random batch");
  cmd->add_option("--num-classes", args->model.num_classes, "Classifier outputs (default: the model's own)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--in-channels", args->model.in_channels, "Input channels")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--batch", args->probe.batch, "--grad-norms: batch size")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--image-size", args->probe.image_size, "--grad-norms: input side (default: the model's own)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--seed", args->probe.seed, "--grad-norms: seed for weights and batch")->capture_default_str();
  cmd->callback([args] {
    if (args->grad_norms.empty()) {
      list_models(*args);
    } else {
      print_grad_norms(*args);
    }
  });
}

}  // namespace stride::models
