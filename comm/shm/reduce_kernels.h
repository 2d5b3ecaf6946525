// The reduction kernels of comm/shm: dst[i] = op(src_0[i], ..., src_{P-1}[i]) (x scale), in blocks, for every
// dtype the shared-memory group reduces, written to one or several destinations in the same pass (each block is
// reduced once, in a small accumulator, then stored to each). A destination may be one of the sources. Internal
// to comm/shm.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/torch.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "comm/communicator.h"

namespace stride::comm::shm_kernels {

// Where a reduction stores its result: `count` buffers (not owned; no allocation for the common single one).
struct Outputs {
  char* const* buffers;
  size_t count;
};

// One block; M > 0 makes the length a compile-time constant, which is what lets GCC vectorize these loops at -O2
// (its cheap cost model does not vectorize loops that need a remainder loop).
template <int64_t M, typename T, typename A, typename F>
inline void reduce_block(Outputs dst, const std::vector<const char*>& src, int64_t b, int64_t m, F f, A scale,
                         bool scaled, A* acc) {
  const int64_t len = M > 0 ? M : m;
  const T* s0 = reinterpret_cast<const T*>(src[0]) + b;
  for (int64_t i = 0; i < len; ++i) acc[i] = static_cast<A>(s0[i]);
  for (size_t p = 1; p < src.size(); ++p) {
    const T* s = reinterpret_cast<const T*>(src[p]) + b;
    for (int64_t i = 0; i < len; ++i) acc[i] = f(acc[i], static_cast<A>(s[i]));
  }
  if (scaled) {
    for (int64_t i = 0; i < len; ++i) acc[i] *= scale;
  }
  for (size_t k = 0; k < dst.count; ++k) {
    T* d = reinterpret_cast<T*>(dst.buffers[k]) + b;
    for (int64_t i = 0; i < len; ++i) d[i] = static_cast<T>(acc[i]);
  }
}

template <typename T, typename A, typename F>
void reduce_typed(Outputs dst, const std::vector<const char*>& src, int64_t n, F f, A scale, bool scaled) {
  constexpr int64_t kBlock = 1024;
  alignas(64) A acc[kBlock];
  int64_t b = 0;
  for (; b + kBlock <= n; b += kBlock) reduce_block<kBlock, T>(dst, src, b, kBlock, f, scale, scaled, acc);
  if (b < n) reduce_block<0, T>(dst, src, b, n - b, f, scale, scaled, acc);
}

template <typename T, typename A>
void reduce_op(Outputs dst, const std::vector<const char*>& src, int64_t n, ReduceOp op, int size) {
  switch (op) {
    case ReduceOp::kSum:
    case ReduceOp::kAvg:
      reduce_typed<T, A>(
          dst, src, n, [](A a, A b) -> A { return static_cast<A>(a + b); }, static_cast<A>(1) / static_cast<A>(size),
          op == ReduceOp::kAvg);
      return;
    case ReduceOp::kMax:
      reduce_typed<T, A>(
          dst, src, n, [](A a, A b) -> A { return a < b ? b : a; }, A{}, false);
      return;
    case ReduceOp::kMin:
      reduce_typed<T, A>(
          dst, src, n, [](A a, A b) -> A { return b < a ? b : a; }, A{}, false);
      return;
  }
}

inline void reduce(torch::ScalarType dtype, Outputs dst, const std::vector<const char*>& src, int64_t n, ReduceOp op,
                   int size) {
  switch (dtype) {
    case torch::kFloat:
      return reduce_op<float, float>(dst, src, n, op, size);
    case torch::kDouble:
      return reduce_op<double, double>(dst, src, n, op, size);
    case torch::kHalf:
      return reduce_op<c10::Half, float>(dst, src, n, op, size);
    case torch::kBFloat16:
      return reduce_op<c10::BFloat16, float>(dst, src, n, op, size);
    case torch::kLong:
      return reduce_op<int64_t, int64_t>(dst, src, n, op, size);
    case torch::kInt:
      return reduce_op<int32_t, int32_t>(dst, src, n, op, size);
    case torch::kShort:
      return reduce_op<int16_t, int16_t>(dst, src, n, op, size);
    case torch::kChar:
      return reduce_op<int8_t, int8_t>(dst, src, n, op, size);
    case torch::kByte:
      return reduce_op<uint8_t, uint8_t>(dst, src, n, op, size);
    default:
      throw Error(concat("shared-memory reduction of ", dtype, " is not supported"));
  }
}

inline void reduce(torch::ScalarType dtype, char* dst, const std::vector<const char*>& src, int64_t n, ReduceOp op,
                   int size) {
  reduce(dtype, Outputs{&dst, 1}, src, n, op, size);
}

inline void reduce(torch::ScalarType dtype, const std::vector<char*>& dst, const std::vector<const char*>& src,
                   int64_t n, ReduceOp op, int size) {
  reduce(dtype, Outputs{dst.data(), dst.size()}, src, n, op, size);
}

}  // namespace stride::comm::shm_kernels
