// The SGD update of one float32 CPU parameter in a single pass over memory (Note [Fused CPU SGD]): what Sgd::step
// runs for CPU parameters whose gradient and momentum buffer share the parameter's memory layout. Thread-safe for
// distinct tensors; splits the work over LibTorch's intra-op threads.
#pragma once

#include <torch/torch.h>

namespace stride::trainer {

struct SgdCoefficients {
  float lr = 0.0f, weight_decay = 0.0f, momentum = 0.0f;
  bool nesterov = false;
};

// Whether sgd_step_fused can update `p` from `g` with momentum buffer `buf` (undefined: the first step): float32
// CPU tensors, dense, with identical strides (element i of each at the same offset).
bool sgd_fusable(const torch::Tensor& p, const torch::Tensor& g, const torch::Tensor& buf);

// torch.optim.SGD's update (dampening 0), element by element:
//   d = g + wd * p;  buf = first ? d : momentum * buf + d;  d = nesterov ? d + momentum * buf : buf;  p -= lr * d
// `first`: buf's old contents are ignored (it is written). momentum 0: buf is not touched (may be undefined).
void sgd_step_fused(torch::Tensor& p, const torch::Tensor& g, torch::Tensor& buf, bool first, const SgdCoefficients& k);

}  // namespace stride::trainer
