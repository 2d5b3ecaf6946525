// The optimizer interface the training loop, the gradient scaler and checkpoints see, and the factory that
// builds the one --opt names: SGD (trainer/sgd.h), LARS (trainer/lars.h) or LAMB (trainer/lamb.h).
// An optimizer's state is a flat map of named tensors, so a checkpoint stores it as one safetensors file and a
// resumed run continues bitwise. Not thread-safe; one per replica.
#pragma once

#include <torch/torch.h>

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace stride::trainer {

struct TrainConfig;

struct ParamGroup {
  std::string name;  // "decay" / "no_decay"
  double weight_decay = 0.0;
  std::vector<std::pair<std::string, torch::Tensor>> params;
  // LARS/LAMB: whether the per-layer trust ratio applies. BN and bias parameters (1-D) are left out, as in the
  // MLPerf reference and in You et al.
  bool adapt = true;
};

// Splits trainable parameters: BN weights/biases and all biases (1-D tensors) get `norm_weight_decay`
// (torchvision's --norm-weight-decay; negative means the same as weight_decay) and no trust ratio, the rest
// `weight_decay`.
std::vector<ParamGroup> weight_decay_groups(const std::vector<std::pair<std::string, torch::Tensor>>& named,
                                            double weight_decay, double norm_weight_decay);

class Optimizer {
 public:
  explicit Optimizer(std::vector<ParamGroup> groups) : groups_(std::move(groups)) {}
  virtual ~Optimizer() = default;
  // One update with learning rate `lr` from the parameters' .grad (parameters without a gradient are skipped).
  virtual void step(double lr) = 0;
  void zero_grad();
  const std::vector<ParamGroup>& groups() const { return groups_; }
  // The state a checkpoint holds, by name (only what exists so far).
  virtual std::map<std::string, torch::Tensor> state() const = 0;
  // Restores state() of an optimizer of the same kind; tensors go to their parameter's device. State of a
  // parameter this optimizer does not hold (a stage frozen since, resumed with --allow-config-change) is ignored.
  virtual void load_state(const std::map<std::string, torch::Tensor>& state) = 0;

 protected:
  // The parameter named `name`, or nullptr.
  const torch::Tensor* find_param(const std::string& name) const;
  // `saved` with `p`'s device, dtype and memory layout (the same values): a resumed run then takes the same
  // kernels, and rounds the same way, as the run it continues.
  static torch::Tensor like_param(const torch::Tensor& p, const torch::Tensor& saved);

  std::vector<ParamGroup> groups_;
};

// The optimizer --opt names (after normalize_aliases), over `named` parameters, with the config's weight decay
// groups: lars and lamb exclude BN and bias parameters from weight decay unless --norm-weight-decay is given.
std::unique_ptr<Optimizer> make_optimizer(const TrainConfig& c,
                                          const std::vector<std::pair<std::string, torch::Tensor>>& named);

}  // namespace stride::trainer
