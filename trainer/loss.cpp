#include "trainer/loss.h"

#include "common/error.h"

namespace stride::trainer {

torch::Tensor cross_entropy(const torch::Tensor& logits, const torch::Tensor& targets, double label_smoothing,
                            const torch::Tensor& weights) {
  STRIDE_CHECK(logits.dim() == 2, "logits must be [N, K], got ", logits.sizes());
  const int64_t k = logits.size(1);
  // Under autocast the logits may be bfloat16/float16 (CPU autocast leaves log_softmax in the input's dtype):
  // the loss is computed in float32 either way (Note [CPU bfloat16]).
  const bool reduced = logits.scalar_type() == torch::kBFloat16 || logits.scalar_type() == torch::kHalf;
  auto logp = torch::log_softmax(reduced ? logits.to(torch::kFloat) : logits, 1);
  torch::Tensor soft =
      targets.dim() == 1 ? torch::one_hot(targets, k).to(logp.scalar_type()) : targets.to(logp.scalar_type());
  if (label_smoothing > 0.0) soft = soft * (1.0 - label_smoothing) + label_smoothing / static_cast<double>(k);
  auto per_sample = -(soft * logp).sum(1);
  if (!weights.defined()) return per_sample.mean();
  auto w = weights.to(per_sample.scalar_type());
  return (per_sample * w).sum() / w.sum().clamp_min(1.0);
}

TopK count_correct(const torch::Tensor& logits, const torch::Tensor& labels, const torch::Tensor& mask) {
  TopK r;
  const int64_t k = std::min<int64_t>(5, logits.size(1));
  auto top = std::get<1>(logits.topk(k, 1));  // [N, k]
  auto hit = top.eq(labels.view({-1, 1}));
  auto m = mask.to(torch::kBool);
  r.top1 = hit.select(1, 0).logical_and(m).sum().item<int64_t>();
  r.top5 = hit.any(1).logical_and(m).sum().item<int64_t>();
  r.count = m.sum().item<int64_t>();
  auto loss = torch::nn::functional::cross_entropy(
      logits, labels, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kNone));
  r.loss_sum = (loss * m.to(loss.scalar_type())).sum().item<double>();
  return r;
}

}  // namespace stride::trainer
