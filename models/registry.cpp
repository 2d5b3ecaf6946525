#include "models/registry.h"

#include <algorithm>
#include <functional>
#include <map>

#include "common/error.h"
#include "common/suggest.h"

namespace stride::models {
namespace {

ResNetSpec imagenet(std::string name, std::string family, std::vector<int64_t> blocks, bool bottleneck) {
  ResNetSpec s;
  s.name = std::move(name);
  s.family = std::move(family);
  s.stem = Stem::kImageNet;
  s.stem_channels = 64;
  s.blocks = std::move(blocks);
  s.planes = {64, 128, 256, 512};
  s.bottleneck = bottleneck;
  s.default_classes = 1000;
  s.default_image_size = 224;
  return s;
}

// He et al. 2015, section 4.2: 6n+2 layers, three stages of 16/32/64 filters.
ResNetSpec cifar(std::string name, std::string family, int64_t n, Shortcut shortcut) {
  ResNetSpec s;
  s.name = std::move(name);
  s.family = std::move(family);
  s.stem = Stem::kCifar;
  s.stem_channels = 16;
  s.blocks = {n, n, n};
  s.planes = {16, 32, 64};
  s.shortcut = shortcut;
  s.default_classes = 10;
  s.default_image_size = 32;
  return s;
}

std::vector<ResNetSpec> build_table() {
  std::vector<ResNetSpec> t;
  const std::vector<int64_t> r18{2, 2, 2, 2}, r34{3, 4, 6, 3}, r101{3, 4, 23, 3}, r152{3, 8, 36, 3};
  t.push_back(imagenet("resnet18", "resnet", r18, false));
  t.push_back(imagenet("resnet34", "resnet", r34, false));
  t.push_back(imagenet("resnet50", "resnet", r34, true));
  t.push_back(imagenet("resnet101", "resnet", r101, true));
  t.push_back(imagenet("resnet152", "resnet", r152, true));

  auto grouped = [&](std::string name, std::string family, std::vector<int64_t> blocks, int64_t groups, int64_t width) {
    auto s = imagenet(std::move(name), std::move(family), std::move(blocks), true);
    s.groups = groups;
    s.base_width = width;
    return s;
  };
  t.push_back(grouped("resnext50_32x4d", "resnext", r34, 32, 4));
  t.push_back(grouped("resnext101_32x8d", "resnext", r101, 32, 8));
  t.push_back(grouped("resnext101_64x4d", "resnext", r101, 64, 4));
  t.push_back(grouped("wide_resnet50_2", "wide_resnet", r34, 1, 128));
  t.push_back(grouped("wide_resnet101_2", "wide_resnet", r101, 1, 128));

  for (auto [name, blocks, bottleneck] : {std::tuple{"se_resnet18", r18, false},
                                          {"se_resnet34", r34, false},
                                          {"se_resnet50", r34, true},
                                          {"se_resnet101", r101, true}}) {
    auto s = imagenet(name, "se_resnet", blocks, bottleneck);
    s.se_reduction = 16;
    t.push_back(s);
  }
  for (auto [name, blocks, bottleneck] :
       {std::tuple{"preact_resnet18", r18, false}, {"preact_resnet34", r34, false}, {"preact_resnet50", r34, true}}) {
    auto s = imagenet(name, "preact_resnet", blocks, bottleneck);
    s.preact = true;
    t.push_back(s);
  }
  for (auto [name, blocks] : {std::pair{"plain18", r18}, {"plain34", r34}}) {
    auto s = imagenet(name, "plain", blocks, false);
    s.shortcut = Shortcut::kNone;
    t.push_back(s);
  }

  // CIFAR-style: option A shortcuts, as in the paper's CIFAR-10 experiments (0.27M params for ResNet-20).
  for (int64_t depth : {20, 32, 44, 56, 110}) {
    t.push_back(cifar("resnet" + std::to_string(depth), "resnet", (depth - 2) / 6, Shortcut::kZeroPad));
  }
  for (int64_t depth : {20, 32, 44, 56, 110}) {
    t.push_back(cifar("plain" + std::to_string(depth), "plain", (depth - 2) / 6, Shortcut::kNone));
  }
  // Pre-activation CIFAR networks (He et al. 2016): 110 layers with basic blocks, 164 with bottlenecks;
  // projection shortcuts.
  {
    auto s = cifar("preact_resnet110", "preact_resnet", 18, Shortcut::kProjection);
    s.preact = true;
    t.push_back(s);
    s = cifar("preact_resnet164", "preact_resnet", 18, Shortcut::kProjection);
    s.preact = true;
    s.bottleneck = true;
    t.push_back(s);
  }
  // Wide ResNet 28-10 (Zagoruyko & Komodakis 2016): pre-activation basic blocks, widths 16k/32k/64k.
  {
    auto s = cifar("wrn28_10", "wrn", (28 - 4) / 6, Shortcut::kProjection);
    s.preact = true;
    s.planes = {160, 320, 640};
    s.block_dropout = 0.0;  // the paper's 0.3 is available as --block-dropout
    t.push_back(s);
  }
  return t;
}

const std::vector<ResNetSpec>& table() {
  static const std::vector<ResNetSpec> t = build_table();
  return t;
}

}  // namespace

const std::vector<std::string>& model_names() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> n;
    for (const auto& s : table()) n.push_back(s.name);
    return n;
  }();
  return names;
}

ResNetSpec model_spec(const std::string& name) {
  for (const auto& s : table()) {
    if (s.name == name) return s;
  }
  throw UsageError(
      concat("unknown model '", name, "'", did_you_mean(name, model_names()), "; `stride models` lists them all"));
}

ResNet make_model(const std::string& name, const ModelOptions& options) { return ResNet(model_spec(name), options); }

int64_t parameter_count(const std::string& name, const ModelOptions& options) {
  return resnet_parameter_count(model_spec(name), options);
}

}  // namespace stride::models
