// ResNet: one module class for the whole family. A ResNetSpec (what the registry builds from a model name)
// fixes the architecture; ModelOptions (what users set per run) adjust classes, input channels and
// regularisation. Parameter and buffer names follow torchvision's state_dict keys:
//   conv1.weight, bn1.*, layer{1..4}.{i}.{conv,bn}{1..3}.*, layer{s}.0.downsample.{0,1}.*, fc.{weight,bias}
// plus, for pre-activation networks, final_bn.* (the BN + ReLU applied before pooling), and
// layer{s}.{i}.se.fc{1,2}.* for squeeze-excitation blocks.
//
// Not thread-safe: one replica per thread/rank.
#pragma once

#include <torch/torch.h>

#include <string>
#include <vector>

#include "models/block.h"

namespace stride::models {

enum class Stem {
  kImageNet,  // 7x7/2 conv + BN + ReLU + 3x3/2 max pool (pre-activation: conv + max pool)
  kCifar,     // 3x3/1 conv + BN + ReLU (pre-activation: conv only)
};

enum class HeMode { kFanOut, kFanIn };

// Architecture: everything that a model name fixes.
struct ResNetSpec {
  std::string name;
  std::string family;  // "resnet", "resnext", "wide_resnet", "se_resnet", "preact_resnet", "plain", "wrn"
  Stem stem = Stem::kImageNet;
  int64_t stem_channels = 64;
  std::vector<int64_t> blocks;  // blocks per stage
  std::vector<int64_t> planes;  // planes per stage (output channels = planes * expansion)
  bool bottleneck = false;
  bool preact = false;
  int64_t groups = 1;
  int64_t base_width = 64;
  Shortcut shortcut = Shortcut::kProjection;
  int64_t se_reduction = 0;
  double block_dropout = 0.0;        // dropout between convolutions (Wide ResNet); overridable per run
  int64_t default_classes = 1000;    // after resolve_spec: the model's actual number of classes
  int64_t default_image_size = 224;  // the input side the model was designed for (information only)
};

// Per-run options. Defaults reproduce torchvision's constructors.
struct ModelOptions {
  int64_t num_classes = 0;           // 0: the spec's default (1000 for ImageNet models, 10 for CIFAR ones)
  int64_t in_channels = 3;           // 1 for Fashion-MNIST
  double drop_path = 0.0;            // stochastic depth: the last block's rate; block i of L gets rate*(i+1)/L
  bool zero_init_residual = false;   // gamma of each branch's last BN = 0 (pre-activation: last conv = 0)
  double dropout = 0.0;              // dropout before the classifier
  double block_dropout = -1.0;       // <0: the spec's default (Wide ResNet's dropout between convolutions)
  HeMode he_mode = HeMode::kFanOut;  // torchvision uses fan_out for convolutions
  std::string cifar_shortcut;        // "" (spec default), "A" (zero-pad) or "B" (projection); CIFAR models only
};

// One group of parameters as the ResNet paper talks about them: "stem", "layer1".."layerN", "head".
struct StageParameters {
  std::string stage;
  std::vector<std::pair<std::string, torch::Tensor>> parameters;
};

class ResNetImpl : public torch::nn::Module {
 public:
  ResNetImpl(ResNetSpec spec, ModelOptions options);

  // x: [N, in_channels, H, W] float. Returns logits [N, num_classes].
  torch::Tensor forward(torch::Tensor x);
  // Everything before the classifier: pooled features [N, feature_dim()].
  torch::Tensor features(torch::Tensor x);

  const ResNetSpec& spec() const { return spec_; }
  const ModelOptions& options() const { return options_; }
  int64_t num_classes() const { return num_classes_; }
  int64_t feature_dim() const { return feature_dim_; }
  const std::vector<torch::nn::Sequential>& stages() const { return stages_; }
  std::vector<ResidualBlock> blocks() const;

  // Replaces the classifier with a freshly initialised one (transfer learning).
  void reset_head(int64_t num_classes);
  // Parameters grouped by stage, in registration order.
  std::vector<StageParameters> stage_parameters() const;

 private:
  void initialize();

  ResNetSpec spec_;
  ModelOptions options_;
  int64_t num_classes_ = 0;
  int64_t feature_dim_ = 0;
  torch::nn::Conv2d conv1_{nullptr};
  Norm2d bn1_{nullptr};       // post-activation stem only
  Norm2d final_bn_{nullptr};  // pre-activation only
  std::vector<torch::nn::Sequential> stages_;
  torch::nn::Linear fc_{nullptr};
};
TORCH_MODULE(ResNet);

// The architecture after applying the per-run options that change it (classes, shortcut kind, block dropout).
// Throws UsageError naming the option when a value is out of range.
ResNetSpec resolve_spec(ResNetSpec spec, const ModelOptions& options);
// Every block's spec, per stage: the single description both the module and the counter are built from.
std::vector<std::vector<BlockSpec>> stage_block_specs(const ResNetSpec& resolved, const ModelOptions& options);
// Parameter count computed from the specs alone (no allocation); equal to count_parameters(ResNet(...)).
int64_t resnet_parameter_count(const ResNetSpec& spec, const ModelOptions& options);

// The stage a parameter belongs to, from its name: "layerK..." -> "layerK", "fc."/"final_bn." -> "head",
// anything else -> "stem".
std::string stage_of(const std::string& parameter_name);

int64_t count_parameters(const torch::nn::Module& module);

}  // namespace stride::models
