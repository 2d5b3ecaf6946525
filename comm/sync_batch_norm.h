// SyncBatchNorm: training-mode BatchNorm statistics over the global batch (all ranks), for CPU (MPI) and GPU
// (NCCL) alike. PyTorch's own SyncBatchNorm refuses CPU tensors and LibTorch has none at all.
//
// Forward: each rank computes its per-channel count, mean and M2 (sum of squared deviations); one allgather of
// those 2C+1 numbers per layer; the ranks combine them with Chan's parallel formula (exact, and stable where
// E[x^2] - E[x]^2 is not); normalisation uses the global mean and variance. Running statistics are updated with
// the global mean and the unbiased global variance (count N - 1), so they are identical on every rank.
// Backward: one allreduce (sum) of the per-channel sums of dy and dy * (x - mean) per layer; the input gradient
// uses the global sums, the weight and bias gradients the local ones (the gradient reducer averages those like any
// other parameter, which makes the whole thing equal to BatchNorm over the concatenated batch). Unequal per-rank
// batches work, including a rank with zero samples (it still joins both collectives). Eval mode communicates
// nothing. bfloat16/float16 inputs on the CPU (CPU autocast) are normalised in float32: statistics are never
// accumulated in 16 bits, and the output has the input's dtype.
#pragma once

#include <memory>
#include <string>
#include <unordered_map>

#include "comm/communicator.h"
#include "models/norm.h"

namespace stride::comm {

class SyncBatchNorm : public models::BatchNormSync {
 public:
  explicit SyncBatchNorm(std::shared_ptr<Communicator> comm) : comm_(std::move(comm)) {}
  torch::Tensor forward(const torch::Tensor& x, models::Norm2dImpl& bn) override;
  // The layer's name in the model ("layer1.0.bn1"): the origin of its collectives in the flight recorder.
  void set_layer_name(const models::Norm2dImpl& bn, std::string name) { names_[&bn] = std::move(name); }

 private:
  std::shared_ptr<Communicator> comm_;
  std::unordered_map<const models::Norm2dImpl*, std::string> names_;
};

// Makes every models::Norm2d in `module` synchronised over `comm` (nullptr: back to plain BatchNorm).
// Returns how many layers were converted.
int convert_sync_batchnorm(torch::nn::Module& module, std::shared_ptr<Communicator> comm);

}  // namespace stride::comm
