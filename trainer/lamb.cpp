#include "trainer/lamb.h"

#include <cmath>

#include "common/error.h"

namespace stride::trainer {
namespace {
const std::string kM = "exp_avg.", kV = "exp_avg_sq.", kStep = "step";
}

Lamb::Lamb(std::vector<ParamGroup> groups, LambOptions options) : Optimizer(std::move(groups)), o_(options) {}

void Lamb::step(double lr) {
  torch::NoGradGuard no_grad;
  ++t_;
  const double bc1 = 1.0 - std::pow(o_.beta1, static_cast<double>(t_));
  const double bc2 = 1.0 - std::pow(o_.beta2, static_cast<double>(t_));
  for (auto& group : groups_) {
    for (auto& [name, p] : group.params) {
      const auto& g = p.grad();
      if (!g.defined()) continue;
      auto m = m_.find(name);
      if (m == m_.end()) m = m_.emplace(name, torch::zeros_like(p)).first;
      auto v = v_.find(name);
      if (v == v_.end()) v = v_.emplace(name, torch::zeros_like(p)).first;
      m->second.mul_(o_.beta1).add_(g, 1.0 - o_.beta1);
      v->second.mul_(o_.beta2).addcmul_(g, g, 1.0 - o_.beta2);
      auto u = (m->second / bc1).div_((v->second / bc2).sqrt_().add_(o_.eps));
      if (group.weight_decay != 0.0) u.add_(p, group.weight_decay);
      if (group.adapt) {
        const auto w_norm = p.norm(), u_norm = u.norm();
        const auto one = torch::ones_like(w_norm);
        const auto trust = torch::where(w_norm > 0, torch::where(u_norm > 0, w_norm / u_norm, one), one);
        p.sub_(u.mul_(trust * lr));
      } else {
        p.sub_(u, lr);
      }
    }
  }
}

std::map<std::string, torch::Tensor> Lamb::state() const {
  std::map<std::string, torch::Tensor> s;
  for (const auto& [name, m] : m_) s[kM + name] = m;
  for (const auto& [name, v] : v_) s[kV + name] = v;
  if (t_ > 0) s[kStep] = torch::tensor({t_}, torch::kInt64);
  return s;
}

void Lamb::load_state(const std::map<std::string, torch::Tensor>& state) {
  for (const auto& [key, tensor] : state) {
    if (key == kStep) {
      t_ = tensor.item<int64_t>();
      continue;
    }
    const bool is_m = key.rfind(kM, 0) == 0, is_v = key.rfind(kV, 0) == 0;
    if (!is_m && !is_v) {
      throw Error(concat("LAMB state: unexpected tensor '", key, "' (a checkpoint of another --opt?)"));
    }
    const std::string name = key.substr((is_m ? kM : kV).size());
    if (const auto* p = find_param(name)) (is_m ? m_ : v_)[name] = like_param(*p, tensor);
  }
}

}  // namespace stride::trainer
