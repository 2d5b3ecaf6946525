#include "data/buffer_pool.h"

#include <cstdlib>

#include "common/error.h"

namespace stride::data {

BufferPool::~BufferPool() {
  for (auto& [p, n] : free_) std::free(p);
}

torch::Tensor BufferPool::empty(at::IntArrayRef sizes, torch::ScalarType dtype) {
  size_t bytes = c10::elementSize(dtype);
  for (auto s : sizes) bytes *= static_cast<size_t>(s);
  void* p = nullptr;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    for (size_t i = 0; i < free_.size(); ++i) {
      if (free_[i].second == bytes) {
        p = free_[i].first;
        free_.erase(free_.begin() + static_cast<std::ptrdiff_t>(i));
        break;
      }
    }
  }
  if (!p && bytes > 0) {
    p = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
    if (!p) throw Error(concat("out of memory allocating a ", bytes, "-byte batch buffer"));
    std::lock_guard<std::mutex> lock(mutex_);
    ++allocations_;
  }
  auto self = shared_from_this();
  return torch::from_blob(
      p, sizes, [self, bytes](void* ptr) { self->release(ptr, bytes); }, torch::TensorOptions().dtype(dtype));
}

uint64_t BufferPool::allocations() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return allocations_;
}

void BufferPool::release(void* p, size_t bytes) {
  if (!p) return;
  std::lock_guard<std::mutex> lock(mutex_);
  if (free_.size() < max_free_) {
    free_.emplace_back(p, bytes);
  } else {
    std::free(p);
  }
}

}  // namespace stride::data
