// SGD with momentum (optionally Nesterov) and decoupled parameter groups, with its state held by parameter
// name so checkpoints store it next to the weights. The update is PyTorch's torch.optim.SGD (dampening 0):
//   d = g + wd * p;  buf = d (first step) or momentum * buf + d;  d = nesterov ? d + momentum * buf : buf;
//   p -= lr * d
// Parameters on a GPU are updated with multi-tensor (foreach) kernels, the same arithmetic in fewer launches;
// float32 CPU parameters in one fused pass each (trainer/sgd_cpu.h).
// Not thread-safe; one per replica.
#pragma once

#include <torch/torch.h>

#include <map>
#include <string>
#include <vector>

#include "trainer/optimizer.h"

namespace stride::trainer {

class Sgd : public Optimizer {
 public:
  Sgd(std::vector<ParamGroup> groups, double momentum, bool nesterov);
  void step(double lr) override;
  // Momentum buffers by parameter name (only those created so far).
  std::map<std::string, torch::Tensor>& momentum_buffers() { return buffers_; }
  std::map<std::string, torch::Tensor> state() const override { return buffers_; }
  void load_state(const std::map<std::string, torch::Tensor>& state) override;

 private:
  void step_group_foreach(ParamGroup& group, double lr);
  // The fused CPU update of one parameter; false (nothing done) when its tensors do not allow it.
  bool step_fused(const std::string& name, torch::Tensor& p, const torch::Tensor& g, double weight_decay, double lr);

  double momentum_;
  bool nesterov_;
  std::map<std::string, torch::Tensor> buffers_;
};

}  // namespace stride::trainer
