#include "trainer/sgd.h"

#include "trainer/sgd_cpu.h"

namespace stride::trainer {

Sgd::Sgd(std::vector<ParamGroup> groups, double momentum, bool nesterov)
    : Optimizer(std::move(groups)), momentum_(momentum), nesterov_(nesterov) {}

void Sgd::load_state(const std::map<std::string, torch::Tensor>& state) {
  // Kept as stored (contiguous): step_fused() gives a buffer the parameter's layout on first use.
  for (const auto& [name, buf] : state) {
    if (const auto* p = find_param(name)) buffers_[name] = buf.to(p->device());
  }
}

void Sgd::step(double lr) {
  torch::NoGradGuard no_grad;
  for (auto& group : groups_) {
    if (!group.params.empty() && group.params.front().second.is_cuda()) {
      step_group_foreach(group, lr);
      continue;
    }
    for (auto& [name, p] : group.params) {
      auto g = p.grad();
      if (!g.defined()) continue;
      if (step_fused(name, p, g, group.weight_decay, lr)) continue;
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

bool Sgd::step_fused(const std::string& name, torch::Tensor& p, const torch::Tensor& g, double weight_decay,
                     double lr) {
  auto it = buffers_.find(name);
  const bool first = it == buffers_.end();
  torch::Tensor none;
  if (!sgd_fusable(p, g, none)) return false;
  if (momentum_ != 0.0 && !first && !sgd_fusable(p, g, it->second)) {
    // A buffer restored from a checkpoint is stored contiguous: give it the parameter's layout (same values), so
    // a resumed run takes the same path, and rounds the same way, as the run it continues.
    if (it->second.scalar_type() != torch::kFloat || it->second.sizes() != p.sizes()) return false;
    it->second = torch::empty_like(p).copy_(it->second);
  }
  if (momentum_ != 0.0 && first) it = buffers_.emplace(name, torch::empty_like(p)).first;
  torch::Tensor& buf = momentum_ != 0.0 ? it->second : none;
  sgd_step_fused(p, g, buf, first,
                 {static_cast<float>(lr), static_cast<float>(weight_decay), static_cast<float>(momentum_), nesterov_});
  return true;
}

// The same arithmetic as the per-tensor loop in step(), as multi-tensor kernels: on a GPU the optimizer is then a
// handful of launches instead of four per parameter (torch.optim.SGD's default "foreach" path on CUDA).
void Sgd::step_group_foreach(ParamGroup& group, double lr) {
  std::vector<std::string> names;
  std::vector<torch::Tensor> params, grads;
  for (auto& [name, p] : group.params) {
    if (!p.grad().defined()) continue;
    names.push_back(name);
    params.push_back(p);
    grads.push_back(p.grad());
  }
  if (params.empty()) return;
  std::vector<torch::Tensor> d =
      group.weight_decay != 0.0 ? at::_foreach_add(grads, params, group.weight_decay) : grads;
  if (momentum_ != 0.0) {
    std::vector<torch::Tensor> old_bufs, old_d, bufs;
    for (size_t i = 0; i < names.size(); ++i) {
      auto it = buffers_.find(names[i]);
      if (it == buffers_.end()) {
        it = buffers_.emplace(names[i], d[i].clone()).first;
      } else {
        old_bufs.push_back(it->second);
        old_d.push_back(d[i]);
      }
      bufs.push_back(it->second);
    }
    if (!old_bufs.empty()) {
      at::_foreach_mul_(old_bufs, momentum_);
      at::_foreach_add_(old_bufs, old_d);
    }
    d = nesterov_ ? at::_foreach_add(d, bufs, momentum_) : bufs;
  }
  at::_foreach_add_(params, d, -lr);
}

}  // namespace stride::trainer
