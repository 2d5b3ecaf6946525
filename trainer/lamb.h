// LAMB (You et al. 2019, "Large Batch Optimization for Deep Learning: Training BERT in 76 minutes",
// Algorithm 2, with Adam's bias correction). For each parameter w with gradient g, at step t = 1, 2, ...:
//   m = beta1 * m + (1 - beta1) * g;   v = beta2 * v + (1 - beta2) * g^2
//   r = (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps)
//   u = r + wd * w
//   adapted (>= 2-D):  trust = ||w|| / ||u||   (phi is the identity; 1 when ||w|| or ||u|| is 0)
//   BN and bias (1-D): trust = 1, and wd is --norm-weight-decay (0 unless given)
//   w -= lr * trust * u
// Leaving 1-D parameters out of decay and adaptation is what the common implementations (NVIDIA's, timm's
// exclusion lists) and the MLPerf LARS reference do; the paper's layer-wise rule is meant for weight matrices.
// State: m and v per parameter ("exp_avg.NAME", "exp_avg_sq.NAME") and t ("step").
// Not thread-safe; one per replica.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "trainer/optimizer.h"

namespace stride::trainer {

struct LambOptions {
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-6;  // the paper's
};

class Lamb : public Optimizer {
 public:
  Lamb(std::vector<ParamGroup> groups, LambOptions options);
  void step(double lr) override;
  std::map<std::string, torch::Tensor> state() const override;
  void load_state(const std::map<std::string, torch::Tensor>& state) override;
  int64_t steps() const { return t_; }

 private:
  LambOptions o_;
  int64_t t_ = 0;
  std::map<std::string, torch::Tensor> m_, v_;
};

}  // namespace stride::trainer
