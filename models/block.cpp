#include "models/block.h"

#include "common/error.h"

namespace stride::models {
namespace nn = torch::nn;

namespace {
nn::Conv2d conv(int64_t in, int64_t out, int64_t kernel, int64_t stride, int64_t groups = 1, bool bias = false) {
  return nn::Conv2d(nn::Conv2dOptions(in, out, kernel).stride(stride).padding(kernel / 2).groups(groups).bias(bias));
}
}  // namespace

// ---------------------------------------------------------------------------------------------------------
// Squeeze-excitation
// ---------------------------------------------------------------------------------------------------------
SqueezeExciteImpl::SqueezeExciteImpl(int64_t channels, int64_t reduction) {
  STRIDE_CHECK(reduction > 0 && channels % reduction == 0, "SE reduction ", reduction, " must divide channels ",
               channels);
  fc1_ = register_module("fc1", conv(channels, channels / reduction, 1, 1, 1, /*bias=*/true));
  fc2_ = register_module("fc2", conv(channels / reduction, channels, 1, 1, 1, /*bias=*/true));
}

torch::Tensor SqueezeExciteImpl::forward(const torch::Tensor& x) {
  auto s = x.mean({2, 3}, /*keepdim=*/true);
  s = torch::sigmoid(fc2_(torch::relu(fc1_(s))));
  return x * s;
}

torch::Tensor drop_path(const torch::Tensor& x, double p, bool training) {
  if (!training || p <= 0.0) return x;
  const double keep = 1.0 - p;
  // One Bernoulli draw per sample, broadcast over C, H, W.
  auto mask = torch::empty({x.size(0), 1, 1, 1}, x.options()).bernoulli_(keep);
  return x * mask.div_(keep);
}

// ---------------------------------------------------------------------------------------------------------
// Residual block
// ---------------------------------------------------------------------------------------------------------
//
// Note [Block layout]
// A branch is a chain of convolutions over channel counts ch[0] -> ch[1] -> ... -> ch[k]:
//   basic:      3x3 (stride), 3x3                  ch = {in, planes, planes}
//   bottleneck: 1x1, 3x3 (stride, groups), 1x1     ch = {in, width, width, 4 * planes}   (torchvision "v1.5")
// Post-activation puts BN i after conv i (so bn_i has ch[i+1] channels) and a ReLU after the addition.
// Pre-activation puts BN i + ReLU before conv i (bn_i has ch[i] channels), applies a projection to the
// pre-activated input, and adds without a final ReLU, keeping the identity path clean.
std::vector<BranchConv> branch_layout(const BlockSpec& spec) {
  STRIDE_CHECK(spec.in_channels > 0 && spec.planes > 0, "block channels must be positive");
  std::vector<int64_t> ch, kernel;
  int64_t stride_at = 0;
  if (spec.bottleneck) {
    const int64_t width = spec.planes * spec.base_width / 64 * spec.groups;
    ch = {spec.in_channels, width, width, spec.out_channels()};
    kernel = {1, 3, 1};
    stride_at = 1;
  } else {
    STRIDE_CHECK(spec.groups == 1 && spec.base_width == 64, "basic blocks support only groups=1, base_width=64");
    ch = {spec.in_channels, spec.planes, spec.planes};
    kernel = {3, 3};
  }
  std::vector<BranchConv> layout;
  for (size_t i = 0; i < kernel.size(); ++i) {
    BranchConv c;
    c.in = ch[i];
    c.out = ch[i + 1];
    c.kernel = kernel[i];
    c.stride = static_cast<int64_t>(i) == stride_at ? spec.stride : 1;
    c.groups = kernel[i] == 3 ? spec.groups : 1;
    c.bn_channels = spec.preact ? ch[i] : ch[i + 1];
    layout.push_back(c);
  }
  return layout;
}

bool has_projection(const BlockSpec& spec) {
  return spec.shortcut == Shortcut::kProjection && (spec.stride != 1 || spec.in_channels != spec.out_channels());
}

int64_t block_parameter_count(const BlockSpec& spec) {
  int64_t n = 0;
  for (const auto& c : branch_layout(spec)) n += c.out * (c.in / c.groups) * c.kernel * c.kernel + 2 * c.bn_channels;
  if (spec.se_reduction > 0) {
    const int64_t c = spec.out_channels(), r = c / spec.se_reduction;
    n += c * r + r + r * c + c;
  }
  if (has_projection(spec)) n += spec.in_channels * spec.out_channels() + (spec.preact ? 0 : 2 * spec.out_channels());
  return n;
}

ResidualBlockImpl::ResidualBlockImpl(const BlockSpec& spec) : spec_(spec) {
  STRIDE_CHECK(spec.drop_path >= 0.0 && spec.drop_path < 1.0, "drop-path rate ", spec.drop_path, " must be in [0, 1)");
  int i = 0;
  for (const auto& c : branch_layout(spec)) {
    const std::string n = std::to_string(++i);
    // Register in torchvision's order (conv1, bn1, conv2, bn2, ...) so parameters() order matches too.
    convs_.push_back(register_module("conv" + n, conv(c.in, c.out, c.kernel, c.stride, c.groups)));
    bns_.push_back(register_module("bn" + n, Norm2d(c.bn_channels)));
  }
  if (spec.se_reduction > 0) se_ = register_module("se", SqueezeExcite(spec.out_channels(), spec.se_reduction));

  shape_changes_ = spec.stride != 1 || spec.in_channels != spec.out_channels();
  if (has_projection(spec)) {
    downsample_ = nn::Sequential();
    downsample_->push_back(conv(spec.in_channels, spec.out_channels(), 1, spec.stride));
    if (!spec.preact) downsample_->push_back(Norm2d(spec.out_channels()));
    register_module("downsample", downsample_);
  }
  if (shape_changes_ && spec.shortcut == Shortcut::kZeroPad) {
    STRIDE_CHECK(spec.out_channels() >= spec.in_channels, "zero-pad shortcut cannot reduce channels (",
                 spec.in_channels, " -> ", spec.out_channels(), ")");
  }
}

Norm2d ResidualBlockImpl::last_bn() const { return spec_.preact ? Norm2d(nullptr) : bns_.back(); }

torch::Tensor ResidualBlockImpl::shortcut(const torch::Tensor& x, const torch::Tensor& preactivated) {
  if (!shape_changes_) return x;
  if (spec_.shortcut == Shortcut::kProjection) return downsample_->forward(spec_.preact ? preactivated : x);
  // Option A: take every stride-th pixel and pad the new channels with zeros (split before/after as in the
  // reference CIFAR implementations).
  using torch::indexing::Slice;
  auto sub = x.index({Slice(), Slice(), Slice(torch::indexing::None, torch::indexing::None, spec_.stride),
                      Slice(torch::indexing::None, torch::indexing::None, spec_.stride)});
  const int64_t pad = spec_.out_channels() - spec_.in_channels;
  return torch::constant_pad_nd(sub, {0, 0, 0, 0, pad / 2, pad - pad / 2});
}

void ResidualBlockImpl::set_deleted(bool deleted) {
  STRIDE_CHECK(!deleted || deletable(), "a block whose shape changes (", spec_.in_channels, " -> ",
               spec_.out_channels(), " channels, stride ", spec_.stride, ") has no identity path to keep");
  deleted_ = deleted;
}

torch::Tensor ResidualBlockImpl::forward(const torch::Tensor& x) {
  // Deleted: the identity. Post-activation blocks would apply ReLU to x + 0, which is x, since their input is
  // itself the output of a ReLU.
  if (deleted_) return x;
  const size_t k = convs_.size();
  torch::Tensor out, pre;
  if (spec_.preact) {
    pre = bns_[0](x).relu_();
    out = convs_[0](pre);
    for (size_t i = 1; i < k; ++i) {
      out = bns_[i](out).relu_();
      if (i == 1 && spec_.dropout > 0.0) out = torch::dropout(out, spec_.dropout, is_training());
      out = convs_[i](out);
    }
  } else {
    out = x;
    for (size_t i = 0; i < k; ++i) {
      out = bns_[i](convs_[i](out));
      if (i + 1 < k) {
        out.relu_();
        if (i == 0 && spec_.dropout > 0.0) out = torch::dropout(out, spec_.dropout, is_training());
      }
    }
  }
  if (se_) out = se_(out);
  if (spec_.shortcut != Shortcut::kNone) {
    out = drop_path(out, spec_.drop_path, is_training());
    out.add_(shortcut(x, pre));  // in place, as torchvision's `out += identity`
  }
  return spec_.preact ? out : out.relu_();
}

}  // namespace stride::models
