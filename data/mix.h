// Batch-level MixUp (Zhang et al. 2018) and CutMix (Yun et al. 2019), as in torchvision's reference scripts:
// each batch is mixed with itself rolled by one sample; with both enabled, each batch picks one of the two
// with equal probability. Works on CPU or CUDA float batches; thread-safe (no shared state).
#pragma once

#include <torch/torch.h>

#include <cstdint>

namespace stride::data {

struct MixOptions {
  double mixup_alpha = 0.0;  // Beta(alpha, alpha) mixing weight; 0 = off
  double cutmix_alpha = 0.0;
  bool enabled() const { return mixup_alpha > 0.0 || cutmix_alpha > 0.0; }
};

struct MixResult {
  torch::Tensor images;   // mixed, same shape as the input
  torch::Tensor targets;  // [N, num_classes] float, each row sums to 1
  double lambda = 1.0;    // weight of the original sample (after CutMix's area correction)
  bool cutmix = false;
};

// images: [N, C, H, W] floating point; labels: [N] int64 in [0, num_classes). `seed` fixes every random choice.
MixResult mix_batch(const torch::Tensor& images, const torch::Tensor& labels, int64_t num_classes,
                    const MixOptions& options, uint64_t seed);

}  // namespace stride::data
