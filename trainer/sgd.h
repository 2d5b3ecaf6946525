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

namespace stride::trainer {

struct ParamGroup {
  std::string name;  // "decay" / "no_decay"
  double weight_decay = 0.0;
  std::vector<std::pair<std::string, torch::Tensor>> params;
};

// Splits trainable parameters: BN weights/biases and all biases (1-D tensors) get `norm_weight_decay`
// (torchvision's --norm-weight-decay; negative means the same as weight_decay), the rest `weight_decay`.
std::vector<ParamGroup> weight_decay_groups(const std::vector<std::pair<std::string, torch::Tensor>>& named,
                                            double weight_decay, double norm_weight_decay);

class Sgd {
 public:
  Sgd(std::vector<ParamGroup> groups, double momentum, bool nesterov);
  // One update with learning rate `lr` from the parameters' .grad (parameters without a gradient are skipped).
  void step(double lr);
  void zero_grad();
  const std::vector<ParamGroup>& groups() const { return groups_; }
  // Momentum buffers by parameter name (only those created so far).
  std::map<std::string, torch::Tensor>& momentum_buffers() { return buffers_; }

 private:
  void step_group_foreach(ParamGroup& group, double lr);
  // The fused CPU update of one parameter; false (nothing done) when its tensors do not allow it.
  bool step_fused(const std::string& name, torch::Tensor& p, const torch::Tensor& g, double weight_decay, double lr);

  std::vector<ParamGroup> groups_;
  double momentum_;
  bool nesterov_;
  std::map<std::string, torch::Tensor> buffers_;
};

}  // namespace stride::trainer
