// Losses and metrics. Thread-safe (pure functions).
#pragma once

#include <torch/torch.h>

#include <cstdint>

namespace stride::trainer {

// Mean cross-entropy between logits [N, K] and either class labels [N] (int64) or soft targets [N, K], with
// label smoothing epsilon (targets become (1 - eps) * t + eps / K), as torch.nn.CrossEntropyLoss does.
// `weights` [N] (optional, e.g. the loader's valid mask) weights each sample; the mean is over their sum.
torch::Tensor cross_entropy(const torch::Tensor& logits, const torch::Tensor& targets, double label_smoothing,
                            const torch::Tensor& weights = {});

struct TopK {
  int64_t top1 = 0, top5 = 0, count = 0;
  double loss_sum = 0.0;
};
// Correct top-1/top-5 predictions and summed loss over the samples with mask true.
TopK count_correct(const torch::Tensor& logits, const torch::Tensor& labels, const torch::Tensor& mask);

}  // namespace stride::trainer
