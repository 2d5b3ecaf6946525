#include "trainer/optimizer.h"

#include "trainer/config.h"
#include "trainer/lamb.h"
#include "trainer/lars.h"
#include "trainer/sgd.h"

namespace stride::trainer {

std::vector<ParamGroup> weight_decay_groups(const std::vector<std::pair<std::string, torch::Tensor>>& named,
                                            double weight_decay, double norm_weight_decay) {
  ParamGroup decay{"decay", weight_decay, {}, true};
  ParamGroup no_decay{"no_decay", norm_weight_decay < 0.0 ? weight_decay : norm_weight_decay, {}, false};
  for (const auto& [name, p] : named) {
    if (!p.requires_grad()) continue;
    (p.dim() <= 1 ? no_decay : decay).params.emplace_back(name, p);
  }
  std::vector<ParamGroup> groups;
  if (!decay.params.empty()) groups.push_back(std::move(decay));
  if (!no_decay.params.empty()) groups.push_back(std::move(no_decay));
  return groups;
}

void Optimizer::zero_grad() {
  std::vector<torch::Tensor> cuda_grads;
  for (auto& group : groups_) {
    for (auto& [name, p] : group.params) {
      if (!p.grad().defined()) continue;
      if (p.is_cuda()) {
        cuda_grads.push_back(p.grad());
      } else {
        p.mutable_grad().zero_();
      }
    }
  }
  if (!cuda_grads.empty()) at::_foreach_zero_(cuda_grads);
}

const torch::Tensor* Optimizer::find_param(const std::string& name) const {
  for (const auto& group : groups_) {
    for (const auto& [n, p] : group.params) {
      if (n == name) return &p;
    }
  }
  return nullptr;
}

torch::Tensor Optimizer::like_param(const torch::Tensor& p, const torch::Tensor& saved) {
  return torch::empty_like(p).copy_(saved);
}

std::unique_ptr<Optimizer> make_optimizer(const TrainConfig& c,
                                          const std::vector<std::pair<std::string, torch::Tensor>>& named) {
  if (c.opt == "sgd") {
    return std::make_unique<Sgd>(weight_decay_groups(named, c.weight_decay, c.norm_weight_decay), c.momentum,
                                 c.nesterov);
  }
  // The layer-wise optimizers' references leave BN and bias parameters undecayed: that is their default here
  // (an explicit --norm-weight-decay still applies).
  const double norm_wd = c.norm_weight_decay < 0.0 ? 0.0 : c.norm_weight_decay;
  auto groups = weight_decay_groups(named, c.weight_decay, norm_wd);
  if (c.opt == "lars")
    return std::make_unique<Lars>(std::move(groups), LarsOptions{c.momentum, c.lars_eta, c.nesterov});
  return std::make_unique<Lamb>(std::move(groups), LambOptions{c.lamb_beta1, c.lamb_beta2, c.lamb_eps});
}

}  // namespace stride::trainer
