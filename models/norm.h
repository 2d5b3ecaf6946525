// The BatchNorm every model uses: torch::nn::BatchNorm2d's parameters, buffers, names, defaults and numerics
// (same forward as LibTorch's BatchNormImplBase), plus a hook for synchronised statistics. With no sync set, or
// in eval mode, forward() is plain BatchNorm. With one set (comm/sync_batch_norm.h, `--sync-bn`), training-mode
// forward computes the statistics over all ranks' batches.
//
// Why not derive from torch::nn::BatchNorm2dImpl: LibTorch does not export BatchNormImplBase<2>'s out-of-line
// members (pretty_print), which a derived class's construction vtables need, so a subclass does not link.
#pragma once

#include <torch/torch.h>

#include <memory>
#include <ostream>

namespace stride::models {

class Norm2dImpl;

// Computes a training-mode batch norm with statistics from elsewhere (other ranks); updates running stats.
class BatchNormSync {
 public:
  virtual ~BatchNormSync() = default;
  virtual torch::Tensor forward(const torch::Tensor& x, Norm2dImpl& bn) = 0;
};

class Norm2dImpl : public torch::nn::Cloneable<Norm2dImpl> {
 public:
  explicit Norm2dImpl(int64_t num_features) : Norm2dImpl(torch::nn::BatchNormOptions(num_features)) {}
  explicit Norm2dImpl(const torch::nn::BatchNormOptions& options);
  void reset() override;
  torch::Tensor forward(const torch::Tensor& x);
  void pretty_print(std::ostream& stream) const override;

  void set_sync(std::shared_ptr<BatchNormSync> sync) { sync_ = std::move(sync); }
  const std::shared_ptr<BatchNormSync>& sync() const { return sync_; }
  // The running-average factor for this training step (counts the step in num_batches_tracked).
  double next_average_factor();

  torch::nn::BatchNormOptions options;
  torch::Tensor weight, bias, running_mean, running_var, num_batches_tracked;

 private:
  std::shared_ptr<BatchNormSync> sync_;
};
TORCH_MODULE(Norm2d);

}  // namespace stride::models
