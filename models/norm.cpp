#include "models/norm.h"

#include "common/error.h"

namespace stride::models {

Norm2dImpl::Norm2dImpl(const torch::nn::BatchNormOptions& o) : options(o) { reset(); }

void Norm2dImpl::reset() {
  const int64_t c = options.num_features();
  if (options.affine()) {
    weight = register_parameter("weight", torch::ones({c}));
    bias = register_parameter("bias", torch::zeros({c}));
  } else {
    weight = register_parameter("weight", torch::Tensor(), /*requires_grad=*/false);
    bias = register_parameter("bias", torch::Tensor(), /*requires_grad=*/false);
  }
  if (options.track_running_stats()) {
    running_mean = register_buffer("running_mean", torch::zeros({c}));
    running_var = register_buffer("running_var", torch::ones({c}));
    num_batches_tracked = register_buffer("num_batches_tracked", torch::tensor(0, torch::kLong));
  } else {
    running_mean = register_buffer("running_mean", torch::Tensor());
    running_var = register_buffer("running_var", torch::Tensor());
    num_batches_tracked = register_buffer("num_batches_tracked", torch::Tensor());
  }
}

double Norm2dImpl::next_average_factor() {
  double factor = options.momentum().value_or(0.0);
  if (is_training() && options.track_running_stats() && num_batches_tracked.defined()) {
    num_batches_tracked += 1;
    if (!options.momentum()) factor = 1.0 / num_batches_tracked.item<double>();
  }
  return factor;
}

torch::Tensor Norm2dImpl::forward(const torch::Tensor& x) {
  STRIDE_CHECK(x.dim() == 4, "BatchNorm2d expects 4-D input, got ", x.dim(), "-D");
  if (sync_ && is_training()) return sync_->forward(x, *this);
  const double factor = next_average_factor();
  return torch::batch_norm(x, weight, bias, running_mean, running_var, is_training() || !options.track_running_stats(),
                           factor, options.eps(), at::globalContext().userEnabledCuDNN());
}

void Norm2dImpl::pretty_print(std::ostream& stream) const {
  stream << "torch::nn::BatchNorm2d(" << options.num_features() << ", eps=" << options.eps()
         << ", momentum=" << options.momentum().value_or(0.0) << ", affine=" << options.affine()
         << ", track_running_stats=" << options.track_running_stats() << (sync_ ? ", sync=true" : "") << ")";
}

}  // namespace stride::models
