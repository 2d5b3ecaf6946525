#include "trainer/amp.h"

#include <ATen/autocast_mode.h>
#include <torch/version.h>

#include <cmath>

#include "common/error.h"

namespace stride::trainer {

// Note [Autocast API versions]
// LibTorch 1.13 (Debian) has one switch and one dtype per device kind: at::autocast::set_enabled /
// set_autocast_gpu_dtype for CUDA, set_cpu_enabled / set_autocast_cpu_dtype for the CPU. LibTorch 2.4 made them
// device-generic (set_autocast_enabled(at::kCUDA, on), set_autocast_dtype(at::kCUDA, dtype)) and deprecated the
// old ones, which print a warning on every call. The helpers below pick by torch/version.h so both compile
// cleanly; nesting and the cast cache (increment_nesting, decrement_nesting, clear_cache) are the same in both.
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
#define STRIDE_AUTOCAST_DEVICE_API 1
#else
#define STRIDE_AUTOCAST_DEVICE_API 0
#endif

namespace {

bool get_autocast_enabled(torch::DeviceType t) {
#if STRIDE_AUTOCAST_DEVICE_API
  return at::autocast::is_autocast_enabled(t);
#else
  return t == torch::kCUDA ? at::autocast::is_enabled() : at::autocast::is_cpu_enabled();
#endif
}

void set_autocast_enabled(torch::DeviceType t, bool enabled) {
#if STRIDE_AUTOCAST_DEVICE_API
  at::autocast::set_autocast_enabled(t, enabled);
#else
  if (t == torch::kCUDA) {
    at::autocast::set_enabled(enabled);
  } else {
    at::autocast::set_cpu_enabled(enabled);
  }
#endif
}

torch::ScalarType get_autocast_dtype(torch::DeviceType t) {
#if STRIDE_AUTOCAST_DEVICE_API
  return at::autocast::get_autocast_dtype(t);
#else
  return t == torch::kCUDA ? at::autocast::get_autocast_gpu_dtype() : at::autocast::get_autocast_cpu_dtype();
#endif
}

void set_autocast_dtype(torch::DeviceType t, torch::ScalarType dtype) {
#if STRIDE_AUTOCAST_DEVICE_API
  at::autocast::set_autocast_dtype(t, dtype);
#else
  if (t == torch::kCUDA) {
    at::autocast::set_autocast_gpu_dtype(dtype);
  } else {
    at::autocast::set_autocast_cpu_dtype(dtype);
  }
#endif
}

void check_option(bool ok, const std::string& what) {
  if (!ok) throw UsageError(concat("GradScaler: ", what));
}

torch::Tensor one_element(const std::map<std::string, torch::Tensor>& state, const std::string& key,
                          torch::ScalarType dtype) {
  auto it = state.find(key);
  if (it == state.end()) throw Error(concat("AMP state has no '", key, "'"));
  STRIDE_CHECK(it->second.defined() && it->second.numel() == 1, "AMP state '", key,
               "' must hold one element, got shape ", it->second.sizes());
  return it->second.detach().to(torch::kCPU, dtype).reshape({}).clone();
}

}  // namespace

torch::ScalarType parse_amp_dtype(const std::string& name) {
  if (name == "float16" || name == "fp16" || name == "half") return torch::kHalf;
  if (name == "bfloat16" || name == "bf16") return torch::kBFloat16;
  throw UsageError(concat("unknown AMP dtype '", name, "' (expected float16 or bfloat16)"));
}

// ---------------------------------------------------------------------------------------------------------
// AutocastGuard
// ---------------------------------------------------------------------------------------------------------
AutocastGuard::AutocastGuard(torch::Device device, torch::ScalarType dtype, bool enabled)
    : device_type_(device.type()) {
  if (device_type_ != torch::kCUDA && device_type_ != torch::kCPU) {
    throw UsageError(concat("autocast supports cpu and cuda devices, not ", device));
  }
  if (dtype != torch::kHalf && dtype != torch::kBFloat16) {
    throw UsageError(concat("autocast dtype must be float16 or bfloat16, not ", dtype));
  }
#if TORCH_VERSION_MAJOR < 2
  if (enabled && device_type_ == torch::kCPU && dtype != torch::kBFloat16) {
    throw UsageError("CPU autocast in LibTorch 1.x supports only bfloat16");
  }
#endif
  // The sequence of Python's torch.autocast.__enter__, except that a disabled scope leaves the dtype alone:
  // LibTorch 1.13 refuses a CPU dtype other than bfloat16 even when CPU autocast is off.
  prev_enabled_ = get_autocast_enabled(device_type_);
  prev_dtype_ = get_autocast_dtype(device_type_);
  set_autocast_enabled(device_type_, enabled);
  if (enabled) set_autocast_dtype(device_type_, dtype);
  at::autocast::increment_nesting();
}

AutocastGuard::~AutocastGuard() {
  // The outermost scope drops the cached low-precision copies of the weights (they go stale at the next step).
  if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
  set_autocast_enabled(device_type_, prev_enabled_);
  if (get_autocast_dtype(device_type_) != prev_dtype_) set_autocast_dtype(device_type_, prev_dtype_);
}

bool autocast_enabled(torch::DeviceType device_type) { return get_autocast_enabled(device_type); }

// ---------------------------------------------------------------------------------------------------------
// GradScaler
// ---------------------------------------------------------------------------------------------------------
GradScaler::GradScaler(GradScalerOptions options) : options_(options) {
  check_option(options.init_scale > 0.0 && std::isfinite(options.init_scale), "init_scale must be positive");
  check_option(options.growth_factor > 1.0, "growth_factor must be > 1");
  check_option(options.backoff_factor > 0.0 && options.backoff_factor < 1.0, "backoff_factor must be in (0, 1)");
  check_option(options.growth_interval > 0, "growth_interval must be positive");
  scale_ = torch::full({}, options.init_scale, torch::kFloat32);
  growth_tracker_ = torch::zeros({}, torch::kInt32);
}

void GradScaler::to_device(const torch::Device& device) {
  if (scale_.device() == device) return;
  scale_ = scale_.to(device);
  growth_tracker_ = growth_tracker_.to(device);
}

torch::Tensor GradScaler::scale(const torch::Tensor& loss) {
  if (!options_.enabled) return loss;
  to_device(loss.device());
  return loss * scale_;
}

void GradScaler::unscale(const std::vector<torch::Tensor>& params) {
  if (!options_.enabled) return;
  STRIDE_CHECK(!found_inf_.defined(), "GradScaler::unscale called twice before step()");
  torch::NoGradGuard no_grad;
  // As PyTorch: the reciprocal in double, then float32.
  const auto inv_scale = scale_.to(torch::kFloat64).reciprocal().to(torch::kFloat32);
  found_inf_ = torch::zeros({}, scale_.options());
  // The fused kernel takes one dtype per call (fp32 master weights today, but fp16 gradients are possible).
  std::map<torch::ScalarType, std::vector<torch::Tensor>> by_dtype;
  for (const auto& p : params) {
    const auto& g = p.grad();
    if (!g.defined()) continue;
    STRIDE_CHECK(g.device() == scale_.device(), "gradient on ", g.device(), " but the loss scale is on ",
                 scale_.device(), " (call scale(loss) on the training device first)");
    by_dtype[g.scalar_type()].push_back(g);
  }
  for (auto& [dtype, grads] : by_dtype) {
    if (scale_.is_cuda()) {
      at::_amp_foreach_non_finite_check_and_unscale_(grads, found_inf_, inv_scale);
      continue;
    }
    // The kernel's semantics: flag a gradient that is inf/NaN before scaling, and scale every gradient.
    for (auto& g : grads) {
      found_inf_ = torch::maximum(found_inf_, g.isfinite().logical_not().any().to(torch::kFloat32));
      g.mul_(inv_scale);
    }
  }
}

bool GradScaler::step(Optimizer& optimizer, double lr) {
  if (!options_.enabled) {
    optimizer.step(lr);
    return true;
  }
  if (!found_inf_.defined()) {
    std::vector<torch::Tensor> params;
    for (const auto& group : optimizer.groups()) {
      for (const auto& named : group.params) params.push_back(named.second);
    }
    unscale(params);
  }
  const bool finite = found_inf_.item<float>() == 0.0f;  // the one host synchronisation per step
  if (finite) optimizer.step(lr);
  update();
  found_inf_ = torch::Tensor();
  return finite;
}

void GradScaler::update() {
  torch::NoGradGuard no_grad;
  if (scale_.is_cuda()) {
    at::_amp_update_scale_(scale_, growth_tracker_, found_inf_, options_.growth_factor, options_.backoff_factor,
                           options_.growth_interval);
    return;
  }
  // _amp_update_scale_'s rule: back off and restart counting on inf/NaN; grow after growth_interval finite
  // steps in a row unless the grown scale would overflow float32.
  if (found_inf_.item<float>() != 0.0f) {
    scale_.fill_(scale_.item<float>() * static_cast<float>(options_.backoff_factor));
    growth_tracker_.zero_();
    return;
  }
  const int64_t successful = growth_tracker_.item<int32_t>() + 1;
  if (successful == options_.growth_interval) {
    const float grown = scale_.item<float>() * static_cast<float>(options_.growth_factor);
    if (std::isfinite(grown)) scale_.fill_(grown);
    growth_tracker_.zero_();
  } else {
    growth_tracker_.fill_(successful);
  }
}

double GradScaler::current_scale() const { return scale_.item<double>(); }

int64_t GradScaler::growth_tracker() const { return growth_tracker_.item<int64_t>(); }

std::map<std::string, torch::Tensor> GradScaler::state() const {
  return {{"amp.scale", scale_.detach().to(torch::kCPU).clone()},
          {"amp.growth_tracker", growth_tracker_.detach().to(torch::kCPU).clone()}};
}

void GradScaler::load_state(const std::map<std::string, torch::Tensor>& state) {
  auto scale = one_element(state, "amp.scale", torch::kFloat32);
  auto tracker = one_element(state, "amp.growth_tracker", torch::kInt32);
  const float s = scale.item<float>();
  STRIDE_CHECK(std::isfinite(s) && s > 0.0f, "AMP state 'amp.scale' must be finite and positive, got ", s);
  scale_ = scale;
  growth_tracker_ = tracker;
  found_inf_ = torch::Tensor();
}

// ---------------------------------------------------------------------------------------------------------
// Channels-last
// ---------------------------------------------------------------------------------------------------------
void to_channels_last(torch::nn::Module& module) {
  torch::NoGradGuard no_grad;
  // Python's Module._apply with memory_format converts parameters, their gradients and buffers of rank 4.
  for (auto& p : module.parameters(/*recurse=*/true)) {
    if (p.dim() != 4) continue;
    p.set_data(p.data().contiguous(torch::MemoryFormat::ChannelsLast));
    if (p.grad().defined()) p.mutable_grad() = p.grad().contiguous(torch::MemoryFormat::ChannelsLast);
  }
  for (auto& b : module.buffers(/*recurse=*/true)) {
    if (b.dim() == 4) b.set_data(b.data().contiguous(torch::MemoryFormat::ChannelsLast));
  }
}

}  // namespace stride::trainer
