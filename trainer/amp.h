// Mixed precision and memory layout for the GPU path: an autocast scope, a dynamic loss scaler (PyTorch's
// torch.amp.GradScaler), and converting a module to channels-last.
//
// Threads: LibTorch keeps autocast state per thread, so an AutocastGuard changes only the thread that made it
// (make it on the thread that runs the forward pass). GradScaler is not thread-safe; one per replica, like the
// optimizer. Builds against LibTorch 1.13 (Debian, CPU) and 2.x (CUDA); see Note [Autocast API versions] in amp.cpp.
#pragma once

#include <torch/torch.h>

#include <map>
#include <string>
#include <vector>

#include "trainer/optimizer.h"

namespace stride::trainer {

// "float16" (also "fp16", "half") -> kHalf; "bfloat16" (also "bf16") -> kBFloat16; UsageError otherwise.
torch::ScalarType parse_amp_dtype(const std::string& name);

// Like Python's `with torch.autocast(device.type, dtype, enabled)`: inside the scope, ops on tensors of
// `device`'s type that autocast lists (convolutions, matmuls) run in `dtype`, and precision-sensitive ones
// (softmax, losses, reductions) in float32. enabled=false switches autocast off inside the scope (for fp32
// islands). Scopes nest; the outermost one clears the cast-weight cache on exit. Cover the forward pass and the
// loss only, not backward. Devices: CPU and CUDA; dtype: kHalf or kBFloat16 (UsageError otherwise; CPU
// autocast in LibTorch 1.x supports only kBFloat16).
class AutocastGuard {
 public:
  AutocastGuard(torch::Device device, torch::ScalarType dtype, bool enabled = true);
  ~AutocastGuard();
  AutocastGuard(const AutocastGuard&) = delete;
  AutocastGuard& operator=(const AutocastGuard&) = delete;

 private:
  torch::DeviceType device_type_;
  bool prev_enabled_;
  torch::ScalarType prev_dtype_;
};

// Whether autocast is on for `device_type` on this thread (for tests and assertions).
bool autocast_enabled(torch::DeviceType device_type);

struct GradScalerOptions {
  double init_scale = 65536.0;     // 2^16, PyTorch's default: large enough that fp16 gradients rarely underflow
  double growth_factor = 2.0;      // scale *= growth after growth_interval consecutive finite steps
  double backoff_factor = 0.5;     // scale *= backoff on a step with an inf/NaN gradient (that step is skipped)
  int64_t growth_interval = 2000;  // finite steps before growing; larger is steadier, smaller adapts faster
  bool enabled = true;             // false: scale() returns the loss, step() always steps (one code path)
};

// Dynamic loss scaling for fp16 training (not needed for bf16, whose range is float32's):
//   auto loss = ...;                       // forward under AutocastGuard
//   scaler.scale(loss).backward();
//   scaler.step(opt, lr);                  // unscale, skip if inf/NaN, update the scale
//   opt.zero_grad();
// The scale and growth tracker live on the training device (created there by the first scale()), so nothing
// waits for the host except step()'s one read of the inf flag, as in PyTorch. On CUDA the fused ATen kernels
// (_amp_foreach_non_finite_check_and_unscale_, _amp_update_scale_) do the work; elsewhere plain tensor ops
// with the same semantics.
class GradScaler {
 public:
  explicit GradScaler(GradScalerOptions options = {});

  bool enabled() const { return options_.enabled; }
  // loss * scale (the loss itself when disabled).
  torch::Tensor scale(const torch::Tensor& loss);
  // Divides the gradients of `params` by the scale in place and records whether any was inf/NaN. At most once
  // per step, after backward (call it yourself before clipping gradients; step() calls it otherwise).
  void unscale(const std::vector<torch::Tensor>& params);
  // Unscales the optimizer's parameters' gradients unless unscale() already ran, steps it with `lr` unless a gradient
  // was inf/NaN, then updates the scale. Returns whether the optimizer stepped.
  bool step(Optimizer& optimizer, double lr);

  // Current values (read from the device: a synchronisation). Before the first scale(): the initial values.
  double current_scale() const;
  int64_t growth_tracker() const;

  // {"amp.scale": float32 scalar, "amp.growth_tracker": int32 scalar}, on the CPU, for checkpoints.
  std::map<std::string, torch::Tensor> state() const;
  // Restores what state() returned; the tensors move to the device on the next scale(). Error if a key is
  // missing or not a one-element tensor.
  void load_state(const std::map<std::string, torch::Tensor>& state);

 private:
  void to_device(const torch::Device& device);
  void update();

  GradScalerOptions options_;
  torch::Tensor scale_;           // float32, one element
  torch::Tensor growth_tracker_;  // int32, one element: consecutive finite steps since the last change
  torch::Tensor found_inf_;       // float32, one element: 1 if unscale() saw inf/NaN; defined between unscale and step
};

// Like Python's module.to(memory_format=torch.channels_last): every 4-D parameter and buffer becomes NHWC in
// place (same tensors, new layout); 1-D BatchNorm weights and statistics are unaffected, as in PyTorch. Call
// after moving the module to its device and before the optimizer has state. Gradients then follow the
// parameters' layout.
void to_channels_last(torch::nn::Module& module);

}  // namespace stride::trainer
