#include "models/grad_norms.h"

#include <cmath>

#include "common/error.h"
#include "models/registry.h"

namespace stride::models {

std::pair<torch::Tensor, torch::Tensor> probe_batch(const ResNetImpl& model, const GradProbeOptions& options) {
  if (options.batch <= 0) throw UsageError(concat("batch must be positive, got ", options.batch));
  const int64_t side = options.image_size > 0 ? options.image_size : model.spec().default_image_size;
  auto gen = at::detail::createCPUGenerator(options.seed + 1);
  auto x = at::normal(0.0, 1.0, {options.batch, model.options().in_channels, side, side}, gen);
  auto y = at::randint(model.num_classes(), {options.batch}, gen, torch::kLong);
  return {x, y};
}

std::vector<StageGradNorm> stage_gradient_norms(const std::string& name, const ModelOptions& model_options,
                                                const GradProbeOptions& options) {
  torch::manual_seed(options.seed);
  auto model = make_model(name, model_options);
  model->train();
  auto [x, y] = probe_batch(*model, options);
  auto loss = torch::cross_entropy_loss(model->forward(x), y);
  loss.backward();

  std::vector<StageGradNorm> out;
  for (const auto& group : model->stage_parameters()) {
    StageGradNorm s{group.stage, 0, 0.0};
    double sum_sq = 0.0;
    for (const auto& [pname, p] : group.parameters) {
      s.parameters += p.numel();
      if (p.grad().defined()) sum_sq += p.grad().to(torch::kDouble).pow(2).sum().item<double>();
    }
    s.norm = std::sqrt(sum_sq);
    out.push_back(s);
  }
  return out;
}

}  // namespace stride::models
