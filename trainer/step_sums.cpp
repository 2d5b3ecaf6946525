#include "trainer/step_sums.h"

namespace stride::trainer {

StepSums& StepSums::operator+=(const StepSums& o) {
  loss += o.loss;
  batches += o.batches;
  correct += o.correct;
  seen += o.seen;
  return *this;
}

StepSums StepSums::over_ranks(const std::function<std::vector<double>(std::vector<double>)>& sum_over_ranks) const {
  const auto v = sum_over_ranks({loss, batches, correct, seen});
  return {v[0], v[1], v[2], v[3]};
}

DeviceSums::DeviceSums(torch::Device device)
    : sums_(torch::zeros({4}, torch::TensorOptions().dtype(torch::kDouble).device(device))) {}

void DeviceSums::add(const torch::Tensor& loss, const torch::Tensor& logits, const torch::Tensor& labels,
                     const torch::Tensor& valid, bool soft_targets) {
  torch::NoGradGuard no_grad;
  sums_[0] += loss.detach().to(torch::kDouble);
  sums_[1] += 1.0;
  if (!soft_targets) {  // training error is undefined under MixUp/CutMix
    sums_[2] += logits.argmax(1).eq(labels).logical_and(valid).sum().to(torch::kDouble);
    sums_[3] += valid.sum().to(torch::kDouble);
  }
}

StepSums DeviceSums::take() {
  auto host = sums_.to(torch::kCPU, /*non_blocking=*/false, /*copy=*/true);  // .cpu() would alias on CPU
  sums_.zero_();
  auto a = host.accessor<double, 1>();
  return {a[0], a[1], a[2], a[3]};
}

}  // namespace stride::trainer
