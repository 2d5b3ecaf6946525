#include "trainer/sgd.h"

namespace stride::trainer {

std::vector<ParamGroup> weight_decay_groups(const std::vector<std::pair<std::string, torch::Tensor>>& named,
                                            double weight_decay, double norm_weight_decay) {
  ParamGroup decay{"decay", weight_decay, {}};
  ParamGroup no_decay{"no_decay", norm_weight_decay < 0.0 ? weight_decay : norm_weight_decay, {}};
  for (const auto& [name, p] : named) {
    if (!p.requires_grad()) continue;
    (p.dim() <= 1 ? no_decay : decay).params.emplace_back(name, p);
  }
  std::vector<ParamGroup> groups;
  if (!decay.params.empty()) groups.push_back(std::move(decay));
  if (!no_decay.params.empty()) groups.push_back(std::move(no_decay));
  return groups;
}

Sgd::Sgd(std::vector<ParamGroup> groups, double momentum, bool nesterov)
    : groups_(std::move(groups)), momentum_(momentum), nesterov_(nesterov) {}

void Sgd::step(double lr) {
  torch::NoGradGuard no_grad;
  for (auto& group : groups_) {
    for (auto& [name, p] : group.params) {
      auto g = p.grad();
      if (!g.defined()) continue;
      torch::Tensor d = group.weight_decay != 0.0 ? g.add(p, group.weight_decay) : g;
      if (momentum_ != 0.0) {
        auto it = buffers_.find(name);
        if (it == buffers_.end()) {
          it = buffers_.emplace(name, d.clone()).first;
        } else {
          it->second.mul_(momentum_).add_(d);
        }
        d = nesterov_ ? d.add(it->second, momentum_) : it->second;
      }
      p.add_(d, -lr);
    }
  }
}

void Sgd::zero_grad() {
  for (auto& group : groups_) {
    for (auto& [name, p] : group.params) {
      if (p.grad().defined()) p.mutable_grad().zero_();
    }
  }
}

}  // namespace stride::trainer
