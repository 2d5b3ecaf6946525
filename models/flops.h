// Counting the floating-point operations of a forward pass, for compute-efficiency figures (training FLOP/s
// against the machine's GEMM peak, `stride bench step` and `stride bench gemm`). Counts what a pass actually
// runs: every aten::convolution, aten::addmm and aten::mm call made on the calling thread while `fn` runs, as
// 2 x multiply-accumulates (the convention of papers and of fvcore/ptflops' "FLOPs = 2 MACs"). BatchNorm, ReLU,
// pooling and additions are not counted (they are a few percent of a ResNet's and bound by memory, not by
// arithmetic). Thread-safe: the counter is per thread; `fn` runs on the caller's thread.
#pragma once

#include <cstdint>
#include <functional>

namespace stride::models {

// FLOPs of the convolutions and matrix products `fn` runs (one forward pass, say).
int64_t count_flops(const std::function<void()>& fn);

// A training step's FLOPs from its forward pass's: backward computes the gradient with respect to the input and to
// the weights of every layer, each as costly as the forward product, so a step is about 3x the forward pass.
inline int64_t training_step_flops(int64_t forward_flops) { return 3 * forward_flops; }

}  // namespace stride::models
