#include "models/resnet.h"

#include "common/error.h"

namespace stride::models {
namespace nn = torch::nn;

ResNetSpec resolve_spec(ResNetSpec spec, const ModelOptions& options) {
  STRIDE_CHECK(!spec.blocks.empty() && spec.blocks.size() == spec.planes.size(), "model '", spec.name,
               "': blocks and planes per stage must have the same, non-zero length");
  if (options.num_classes < 0) throw UsageError(concat("num-classes must be positive, got ", options.num_classes));
  if (options.in_channels <= 0) throw UsageError(concat("in-channels must be positive, got ", options.in_channels));
  if (options.dropout < 0.0 || options.dropout >= 1.0)
    throw UsageError(concat("dropout must be in [0, 1), got ", options.dropout));
  if (options.drop_path < 0.0 || options.drop_path >= 1.0)
    throw UsageError(concat("drop-path must be in [0, 1), got ", options.drop_path));
  if (options.block_dropout >= 1.0)
    throw UsageError(concat("block-dropout must be in [0, 1), got ", options.block_dropout));
  if (options.zero_init_residual && spec.shortcut == Shortcut::kNone)
    throw UsageError(
        concat("model '", spec.name, "' is a plain network: zero-init-residual would zero its ", "only signal path"));
  if (!options.cifar_shortcut.empty()) {
    if (spec.stem != Stem::kCifar) throw UsageError("cifar-shortcut applies only to CIFAR-style models");
    if (options.cifar_shortcut != "A" && options.cifar_shortcut != "B")
      throw UsageError(concat("cifar-shortcut must be A or B, got '", options.cifar_shortcut, "'"));
    if (spec.shortcut != Shortcut::kNone)
      spec.shortcut = options.cifar_shortcut == "A" ? Shortcut::kZeroPad : Shortcut::kProjection;
  }
  if (options.num_classes > 0) spec.default_classes = options.num_classes;
  if (options.block_dropout >= 0.0) spec.block_dropout = options.block_dropout;
  return spec;
}

std::vector<std::vector<BlockSpec>> stage_block_specs(const ResNetSpec& spec, const ModelOptions& options) {
  // Stochastic depth grows linearly with the block's global index (Huang et al. 2016).
  int64_t total_blocks = 0;
  for (int64_t b : spec.blocks) total_blocks += b;
  int64_t block_index = 0;
  int64_t channels = spec.stem_channels;
  std::vector<std::vector<BlockSpec>> stages(spec.blocks.size());
  for (size_t s = 0; s < spec.blocks.size(); ++s) {
    for (int64_t i = 0; i < spec.blocks[s]; ++i) {
      BlockSpec b;
      b.in_channels = channels;
      b.planes = spec.planes[s];
      b.stride = (s > 0 && i == 0) ? 2 : 1;
      b.bottleneck = spec.bottleneck;
      b.preact = spec.preact;
      b.groups = spec.groups;
      b.base_width = spec.base_width;
      b.shortcut = spec.shortcut;
      b.se_reduction = spec.se_reduction;
      b.dropout = spec.block_dropout;
      b.drop_path = options.drop_path * static_cast<double>(++block_index) / static_cast<double>(total_blocks);
      stages[s].push_back(b);
      channels = b.out_channels();
    }
  }
  return stages;
}

int64_t resnet_parameter_count(const ResNetSpec& unresolved, const ModelOptions& options) {
  const ResNetSpec spec = resolve_spec(unresolved, options);
  const int64_t stem_kernel = spec.stem == Stem::kImageNet ? 7 : 3;
  int64_t n = options.in_channels * spec.stem_channels * stem_kernel * stem_kernel;
  if (!spec.preact) n += 2 * spec.stem_channels;
  int64_t channels = spec.stem_channels;
  for (const auto& stage : stage_block_specs(spec, options)) {
    for (const auto& b : stage) {
      n += block_parameter_count(b);
      channels = b.out_channels();
    }
  }
  if (spec.preact) n += 2 * channels;
  return n + channels * spec.default_classes + spec.default_classes;
}

ResNetImpl::ResNetImpl(ResNetSpec spec, ModelOptions options)
    : spec_(resolve_spec(std::move(spec), options)), options_(std::move(options)) {
  num_classes_ = spec_.default_classes;
  const bool imagenet = spec_.stem == Stem::kImageNet;
  conv1_ =
      register_module("conv1", nn::Conv2d(nn::Conv2dOptions(options_.in_channels, spec_.stem_channels, imagenet ? 7 : 3)
                                              .stride(imagenet ? 2 : 1)
                                              .padding(imagenet ? 3 : 1)
                                              .bias(false)));
  if (!spec_.preact) bn1_ = register_module("bn1", Norm2d(spec_.stem_channels));
  int64_t channels = spec_.stem_channels;
  int s = 0;
  for (const auto& block_specs : stage_block_specs(spec_, options_)) {
    nn::Sequential stage;
    for (const auto& b : block_specs) {
      stage->push_back(ResidualBlock(b));
      channels = b.out_channels();
    }
    stages_.push_back(register_module("layer" + std::to_string(++s), stage));
  }
  feature_dim_ = channels;
  if (spec_.preact) final_bn_ = register_module("final_bn", Norm2d(channels));
  fc_ = register_module("fc", nn::Linear(feature_dim_, num_classes_));
  initialize();
}

// Note [Initialisation]
// As torchvision: convolutions get He-normal with fan_out (or fan_in when asked) for ReLU, BN gamma 1 and
// beta 0, the classifier keeps Linear's default (uniform, +-1/sqrt(fan_in)). Zero-init residual sets the gamma
// of each branch's last BN to 0 so each block starts as the identity (Goyal et al. 2017); pre-activation
// branches end in a convolution, so that convolution is zeroed instead.
void ResNetImpl::initialize() {
  torch::NoGradGuard no_grad;
  const auto mode = options_.he_mode == HeMode::kFanOut ? torch::nn::init::FanModeType(torch::kFanOut)
                                                        : torch::nn::init::FanModeType(torch::kFanIn);
  for (auto& m : modules(/*include_self=*/false)) {
    if (auto* c = m->as<nn::Conv2d>()) {
      nn::init::kaiming_normal_(c->weight, 0.0, mode, torch::kReLU);
      if (c->options.bias()) nn::init::zeros_(c->bias);
    } else if (auto* bn = m->as<Norm2d>()) {
      nn::init::ones_(bn->weight);
      nn::init::zeros_(bn->bias);
    }
  }
  if (options_.zero_init_residual) {
    for (auto& block : blocks()) {
      if (auto bn = block->last_bn()) {
        nn::init::zeros_(bn->weight);
      } else {
        nn::init::zeros_(block->last_conv()->weight);
      }
    }
  }
}

std::vector<ResidualBlock> ResNetImpl::blocks() const {
  std::vector<ResidualBlock> out;
  for (const auto& stage : stages_) {
    for (const auto& m : *stage) out.push_back(ResidualBlock(m.ptr<ResidualBlockImpl>()));
  }
  return out;
}

torch::Tensor ResNetImpl::features(torch::Tensor x) {
  STRIDE_CHECK(x.dim() == 4 && x.size(1) == options_.in_channels, "model '", spec_.name, "' expects input [N, ",
               options_.in_channels, ", H, W], got ", x.sizes());
  x = conv1_(x);
  if (bn1_) x = bn1_(x).relu_();
  if (spec_.stem == Stem::kImageNet) x = torch::max_pool2d(x, 3, 2, 1);
  for (auto& stage : stages_) x = stage->forward(x);
  if (final_bn_) x = final_bn_(x).relu_();
  return torch::adaptive_avg_pool2d(x, {1, 1}).flatten(1);
}

torch::Tensor ResNetImpl::forward(torch::Tensor x) {
  x = features(std::move(x));
  if (options_.dropout > 0.0) x = torch::dropout(x, options_.dropout, is_training());
  return fc_(x);
}

void ResNetImpl::reset_head(int64_t num_classes) {
  if (num_classes <= 0) throw UsageError(concat("num-classes must be positive, got ", num_classes));
  num_classes_ = num_classes;
  fc_ = replace_module("fc", nn::Linear(feature_dim_, num_classes_));
  fc_->to(conv1_->weight.device(), conv1_->weight.scalar_type());
}

std::string stage_of(const std::string& name) {
  if (name.rfind("layer", 0) == 0) return name.substr(0, name.find('.'));
  if (name.rfind("fc.", 0) == 0 || name.rfind("final_bn.", 0) == 0) return "head";
  return "stem";
}

std::vector<StageParameters> ResNetImpl::stage_parameters() const {
  std::vector<StageParameters> groups;
  for (const auto& p : named_parameters(/*recurse=*/true)) {
    const std::string stage = stage_of(p.key());
    if (groups.empty() || groups.back().stage != stage) groups.push_back({stage, {}});
    groups.back().parameters.emplace_back(p.key(), p.value());
  }
  return groups;
}

int64_t count_parameters(const torch::nn::Module& module) {
  int64_t n = 0;
  for (const auto& p : module.parameters(/*recurse=*/true)) n += p.numel();
  return n;
}

}  // namespace stride::models
