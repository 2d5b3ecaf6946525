// Gradient-flow probe: per-stage gradient norms of a freshly initialised model on one batch, so plain and
// residual twins can be compared (the degradation experiment's "where does the signal die" view).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "models/resnet.h"

namespace stride::models {

struct GradProbeOptions {
  int64_t batch = 16;
  int64_t image_size = 0;  // 0: the model's design size (224 ImageNet, 32 CIFAR)
  uint64_t seed = 0;
};

struct StageGradNorm {
  std::string stage;
  int64_t parameters = 0;
  double norm = 0.0;  // L2 norm of the concatenated gradients of the stage's parameters
};

// The batch the probe uses: x ~ N(0, 1) of shape [batch, in_channels, S, S], labels uniform in [0, classes).
// Drawn from a generator seeded with seed + 1, independent of the global RNG that initialises the model.
std::pair<torch::Tensor, torch::Tensor> probe_batch(const ResNetImpl& model, const GradProbeOptions& options);

// Seeds the global RNG with options.seed, builds `name` with `model_options`, runs one training-mode forward
// and backward of the mean cross-entropy on probe_batch(), and returns the norms per stage in network order.
std::vector<StageGradNorm> stage_gradient_norms(const std::string& name, const ModelOptions& model_options,
                                                const GradProbeOptions& options);

}  // namespace stride::models
