// LARS (You, Gitman and Ginsburg 2017, "Large Batch Training of Convolutional Networks") as the MLPerf ResNet
// reference implements it (mlcommons/training, lars_optimizer.py). For each parameter w with gradient g:
//   adapted (>= 2-D):  trust = eta * ||w|| / (||g|| + wd * ||w||)   (1 when ||w|| or ||g|| is 0)
//                      d = g + wd * w
//   BN and bias (1-D): trust = 1, d = g + wd_norm * w   (wd_norm is 0 unless --norm-weight-decay is given)
//   buf = momentum * buf + lr * trust * d      (zero at the start)
//   w -= buf                                   (Nesterov: w -= lr * trust * d + momentum * buf)
// The learning rate is inside the momentum buffer, as in the reference (TensorFlow's ApplyMomentum with the
// scaled gradient), not outside it as in torch.optim.SGD: a schedule's change of lr then acts on new gradients
// only. The trust ratio stays on the device (no host synchronisation per layer).
// Not thread-safe; one per replica.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "trainer/optimizer.h"

namespace stride::trainer {

struct LarsOptions {
  double momentum = 0.9;
  double eta = 0.001;  // the trust coefficient (the reference's "eeta")
  bool nesterov = false;
};

class Lars : public Optimizer {
 public:
  Lars(std::vector<ParamGroup> groups, LarsOptions options);
  void step(double lr) override;
  // Momentum buffers by parameter name, as SGD's (they include the learning rate, see above).
  std::map<std::string, torch::Tensor> state() const override { return buffers_; }
  void load_state(const std::map<std::string, torch::Tensor>& state) override;

 private:
  LarsOptions o_;
  std::map<std::string, torch::Tensor> buffers_;
};

}  // namespace stride::trainer
