// The figures the training loop sums per print interval and per epoch: loss, batches, correct predictions and
// valid samples. They accumulate on the training device, so a GPU step needs no host synchronisation; take()
// reads and clears them at print time. Training thread only.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <vector>

namespace stride::trainer {

struct StepSums {
  double loss = 0, batches = 0, correct = 0, seen = 0;

  StepSums& operator+=(const StepSums& o);
  double mean_loss() const { return loss / std::max(batches, 1.0); }
  // Training error in percent, or a negative value when nothing was counted (MixUp/CutMix).
  double error_percent() const { return seen > 0 ? 100.0 * (1.0 - correct / seen) : -1.0; }
  // The same sums over every rank, through `sum_over_ranks` (element-wise sum of a vector).
  StepSums over_ranks(const std::function<std::vector<double>(std::vector<double>)>& sum_over_ranks) const;
};

class DeviceSums {
 public:
  explicit DeviceSums(torch::Device device);
  // One micro-batch: its loss, and unless `soft_targets` (MixUp/CutMix) its correct predictions among valid samples.
  void add(const torch::Tensor& loss, const torch::Tensor& logits, const torch::Tensor& labels,
           const torch::Tensor& valid, bool soft_targets);
  // The sums since the last call (synchronises with the device).
  StepSums take();

 private:
  torch::Tensor sums_;  // [4] double on the device: loss, batches, correct, seen
};

}  // namespace stride::trainer
