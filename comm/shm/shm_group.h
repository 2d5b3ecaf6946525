// Collectives among the ranks of one host through shared memory, with futex waits.
//
// Why: on a CPU host, Open MPI's shared-memory allreduce copies every byte into and out of its own buffers and
// the waiting rank polls (spinning or sched_yield) while its peer is still in backward; on a host whose cores
// are all busy computing, that polling and copying is taken straight from backward. Here:
//   * buffers made by alloc() (the GradientReducer's buckets) live in shared memory, so a peer reads a rank's
//     gradients where autograd wrote them: no copy in;
//   * allreduce of such buffers: rank r reduces slice r of every rank's buffer (averaging in the same pass) and
//     stores the result into every rank's buffer, so per rank one read and one write of the buffer and no
//     separate gather pass (a reduce-scatter then an allgather would read half the buffer once more;
//     docs/benchmarks.md, "Reduce once, store everywhere"). Other tensors:
//     reduce-scatter through the staging areas, then each rank copies the other slices from their owners;
//   * a rank that arrives first sleeps on a futex and costs nothing until the last one arrives;
//   * a peer that died is noticed within a poll interval (its pid is gone) and named in the CommError.
// Tensors outside shared memory go through a per-rank staging area in chunks.
//
// Segments are memfd files (not /dev/shm, whose size containers often limit to 64 MiB); peers open them as
// /proc/PID/fd/FD and check a random nonce in the header, so a different pid namespace or a recycled pid is
// detected, not trusted. Nothing outlives the processes: there is no name to clean up.
//
// Not thread-safe: one thread (the MPI owner thread) makes every call, in the same order on every rank.
#pragma once

#include <torch/torch.h>

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "comm/communicator.h"

namespace stride::comm {

// How the ranks exchange the segments' addresses when a group or buffer is made: an allgather of a small
// string (MPI in production; threads in unit tests).
struct ShmBootstrap {
  int rank = 0;
  int size = 1;
  std::function<std::vector<std::string>(const std::string&)> allgather;
};

struct ShmOptions {
  // Each rank's staging area for tensors outside shared memory, which move through it a chunk at a time; half
  // of it is the largest collective that every rank reduces whole. Small enough that what one rank writes is
  // still in the cache when the others read it (docs/benchmarks.md, "Data parallel on CPU"). Shared buffers are
  // reduced in one pass, not in chunks.
  int64_t staging_bytes = int64_t{256} << 10;
  // How long a rank that waits for its peers spins before it sleeps on the futex: briefly on the owner thread
  // (its rank's compute thread may need the core), longer when the caller waits for the result anyway (waking a
  // sleeping thread costs tens to hundreds of microseconds on a VM). The spin yields the core to any other
  // runnable thread.
  std::chrono::microseconds spin{50};
  std::chrono::microseconds caller_spin{2000};
  // When every local rank's threads and communication thread have a core of their own (host_cpus.h), a waiting
  // rank spins this long instead, on either thread: the core is idle anyway, and a futex wake-up on an idle
  // (halted) vCPU can cost hundreds of microseconds (docs/benchmarks.md, "On a 16-core host, and how waiting
  // ranks wait").
  std::chrono::microseconds idle_host_spin{100000};
  bool waiters_spin = false;            // wait by spinning for idle_host_spin (the host has a core for every waiter)
  std::chrono::milliseconds poll{100};  // how often a sleeping rank checks that its peers are alive
};

class ShmGroup {
 public:
  // Collective. Throws Error on every rank when any rank cannot set it up (the caller falls back to MPI).
  ShmGroup(ShmBootstrap bootstrap, ShmOptions options = {});
  ~ShmGroup();
  ShmGroup(const ShmGroup&) = delete;
  ShmGroup& operator=(const ShmGroup&) = delete;

  // Collective: a zero-filled tensor in this rank's shared memory. Collectives on it (or on a contiguous part
  // of it) read it in place. Throws Error on every rank when any rank cannot allocate.
  torch::Tensor alloc(int64_t numel, torch::ScalarType dtype);

  // Whether this group can run `op` on `dtype` (bool reductions cannot).
  static bool supports(torch::ScalarType dtype, ReduceOp op);
  static bool supports(torch::ScalarType dtype);

  // Blocking collectives on contiguous CPU tensors. Throw CommError when a peer died, did not arrive within
  // `timeout`, or called a different collective (mismatched operation, dtype or size).
  // `caller_waits`: the calling thread has nothing else to do (spin with caller_spin).
  void allreduce(const torch::Tensor& t, ReduceOp op, std::chrono::milliseconds timeout, bool caller_waits = false);
  void broadcast(const torch::Tensor& t, int root, std::chrono::milliseconds timeout);
  void allgather(const torch::Tensor& in, const torch::Tensor& out, std::chrono::milliseconds timeout,
                 bool caller_waits = false);
  void barrier(std::chrono::milliseconds timeout);

  // Whether waiters spin for idle_host_spin (the host has spare cores) or briefly before sleeping. Set at
  // construction from ShmOptions::waiters_spin; flipping it is a measurement switch (any thread, any time).
  void set_waiters_spin(bool spin);
  bool waiters_spin() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace stride::comm
