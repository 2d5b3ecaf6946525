#include "trainer/lars.h"

namespace stride::trainer {

Lars::Lars(std::vector<ParamGroup> groups, LarsOptions options) : Optimizer(std::move(groups)), o_(options) {}

void Lars::step(double lr) {
  torch::NoGradGuard no_grad;
  for (auto& group : groups_) {
    for (auto& [name, p] : group.params) {
      const auto& g = p.grad();
      if (!g.defined()) continue;
      torch::Tensor d = group.weight_decay != 0.0 ? g.add(p, group.weight_decay) : g;
      torch::Tensor scaled;  // lr x trust x d
      if (group.adapt) {
        const auto w_norm = p.norm(), g_norm = g.norm();
        const auto ratio = o_.eta * w_norm / (g_norm + group.weight_decay * w_norm);
        const auto one = torch::ones_like(ratio);
        const auto trust = torch::where(w_norm > 0, torch::where(g_norm > 0, ratio, one), one);
        scaled = d * (trust * lr);
      } else {
        scaled = d * lr;
      }
      auto it = buffers_.find(name);
      if (it == buffers_.end()) {
        it = buffers_.emplace(name, scaled.clone()).first;
      } else {
        it->second.mul_(o_.momentum).add_(scaled);
      }
      if (o_.nesterov) {
        p.sub_(scaled).sub_(it->second, o_.momentum);
      } else {
        p.sub_(it->second);
      }
    }
  }
}

void Lars::load_state(const std::map<std::string, torch::Tensor>& state) {
  for (const auto& [name, buf] : state) {
    if (const auto* p = find_param(name)) buffers_[name] = like_param(*p, buf);
  }
}

}  // namespace stride::trainer
