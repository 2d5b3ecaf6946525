// Recycles the large host buffers that batches live in. A fresh 40 MB allocation costs ~10k page faults every
// batch (glibc maps allocations this large straight from the kernel); a tensor from the pool hands its memory
// back when its last reference dies, so steady-state batches touch no new pages. Thread-safe; the pool outlives
// the loader while any tensor from it is alive.
#pragma once

#include <torch/torch.h>

#include <memory>
#include <mutex>
#include <vector>

namespace stride::data {

class BufferPool : public std::enable_shared_from_this<BufferPool> {
 public:
  // Keeps at most `max_free` idle buffers.
  static std::shared_ptr<BufferPool> create(size_t max_free) {
    return std::shared_ptr<BufferPool>(new BufferPool(max_free));
  }
  ~BufferPool();
  // An uninitialised contiguous CPU tensor whose storage returns to the pool.
  torch::Tensor empty(at::IntArrayRef sizes, torch::ScalarType dtype);
  // Buffers allocated so far (not taken from the free list).
  uint64_t allocations() const;

 private:
  explicit BufferPool(size_t max_free) : max_free_(max_free) {}
  void release(void* p, size_t bytes);

  const size_t max_free_;
  mutable std::mutex mutex_;
  std::vector<std::pair<void*, size_t>> free_;  // guarded by mutex_
  uint64_t allocations_ = 0;                    // guarded by mutex_
};

}  // namespace stride::data
