// The building blocks every Stride ResNet is made of: one residual block class that covers the basic and
// bottleneck shapes in post-activation (He et al. 2015) and pre-activation (He et al. 2016) order, with
// optional grouped convolution (ResNeXt), squeeze-excitation (SE-ResNet), dropout between convolutions
// (Wide ResNet), stochastic depth (Huang et al. 2016) and three shortcut kinds.
//
// Submodule names follow torchvision (conv1, bn1, ..., downsample.0, downsample.1) so state dicts move between
// Stride and torchvision unchanged. Modules are not thread-safe; use one replica per thread.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <string>
#include "models/norm.h"

namespace stride::models {

// How a block's input reaches its output.
enum class Shortcut {
  kProjection,  // identity, or 1x1 conv (+ BN in post-activation blocks) when the shape changes ("option B")
  kZeroPad,     // identity, or strided subsampling + zero channel padding when the shape changes ("option A")
  kNone,        // no shortcut at all: the "plain" networks of He et al.'s degradation experiment
};

struct BlockSpec {
  int64_t in_channels = 0;
  int64_t planes = 0;  // output channels = planes * expansion()
  int64_t stride = 1;
  bool bottleneck = false;
  bool preact = false;
  int64_t groups = 1;       // grouped 3x3 (ResNeXt cardinality)
  int64_t base_width = 64;  // bottleneck width = planes * base_width / 64 * groups (torchvision)
  Shortcut shortcut = Shortcut::kProjection;
  int64_t se_reduction = 0;  // 0: no squeeze-excitation
  double drop_path = 0.0;    // probability of dropping the residual branch per sample (training only)
  double dropout = 0.0;      // dropout between the branch's convolutions (Wide ResNet)

  int64_t expansion() const { return bottleneck ? 4 : 1; }
  int64_t out_channels() const { return planes * expansion(); }
};

// One convolution of a residual branch and the BatchNorm paired with it (see Note [Block layout]).
struct BranchConv {
  int64_t in = 0, out = 0, kernel = 0, stride = 1, groups = 1;
  int64_t bn_channels = 0;
};

// The branch's convolutions in order; the single description of a block's shapes that both the module
// constructor and the parameter counter use.
std::vector<BranchConv> branch_layout(const BlockSpec& spec);
// Whether the shortcut needs a learned projection (1x1 conv, plus BN in post-activation blocks).
bool has_projection(const BlockSpec& spec);
// Parameters of one block, computed from the layout without building it.
int64_t block_parameter_count(const BlockSpec& spec);

// Squeeze-and-excitation (Hu et al. 2018): global pool, 1x1 conv down by `reduction`, ReLU, 1x1 conv up,
// sigmoid, channel-wise scale. Named fc1/fc2 as in timm's SE-ResNets.
class SqueezeExciteImpl : public torch::nn::Module {
 public:
  SqueezeExciteImpl(int64_t channels, int64_t reduction);
  torch::Tensor forward(const torch::Tensor& x);

 private:
  torch::nn::Conv2d fc1_{nullptr}, fc2_{nullptr};
};
TORCH_MODULE(SqueezeExcite);

// Zeroes whole samples of the residual branch with probability p during training and rescales survivors
// by 1/(1-p), so evaluation uses the full branch unchanged.
torch::Tensor drop_path(const torch::Tensor& x, double p, bool training);

class ResidualBlockImpl : public torch::nn::Module {
 public:
  explicit ResidualBlockImpl(const BlockSpec& spec);
  torch::Tensor forward(const torch::Tensor& x);

  const BlockSpec& spec() const { return spec_; }
  // The BatchNorm whose gamma "zero-init residual" sets to 0 (post-activation), or nullptr (pre-activation).
  Norm2d last_bn() const;
  // The branch's last convolution (zero-initialised instead of a BN in pre-activation blocks).
  torch::nn::Conv2d last_conv() const { return convs_.back(); }

  // Lesion studies (Veit et al. 2016): a deleted block passes its input through unchanged, as if its branch were
  // gone and only the identity shortcut remained. Only blocks whose input and output shapes agree can be deleted
  // (a downsampling block has no identity path: its shortcut is a projection or a zero-padded subsampling, and a
  // plain block none). set_deleted(true) on another block throws Error. Evaluation only; not saved in state dicts.
  bool deletable() const { return !shape_changes_; }
  void set_deleted(bool deleted);
  bool deleted() const { return deleted_; }

 private:
  torch::Tensor shortcut(const torch::Tensor& x, const torch::Tensor& preactivated);

  BlockSpec spec_;
  std::vector<torch::nn::Conv2d> convs_;
  std::vector<Norm2d> bns_;
  SqueezeExcite se_{nullptr};
  torch::nn::Sequential downsample_{nullptr};
  bool shape_changes_ = false;
  bool deleted_ = false;
};
TORCH_MODULE(ResidualBlock);

}  // namespace stride::models
