// Open MPI on CPU tensors.
//
// Every MPI call happens on one owner thread (MPI_THREAD_FUNNELED): MPI is initialised there, collectives run
// there in the order they were issued, and it finalises MPI at shutdown. The owner thread makes the *blocking*
// MPI call (MPI_Allreduce, MPI_Bcast, ...): that is the fastest path Open MPI has (its tuned collectives; the
// non-blocking MPI_I* collectives go through libnbc, which progresses only inside MPI calls), and overlap with
// backward comes from the owner thread running beside the autograd thread, not from non-blocking MPI. A blocking
// call cannot be cancelled, so the timeout is enforced by the waiter: Work::wait() throws CommError and the
// process exits (the owner thread is abandoned); see docs/distributed.md.
//
// Ranks on one host: when every rank of the job shares this host, collectives go through comm/shm (shared
// memory, futex waits, no copy for buffers from alloc_buffer) instead of MPI; STRIDE_SHM=0 turns that off.
// Setup is agreed by all ranks: if any rank cannot map the others' memory, all of them use MPI.
//
// Errors: the communicator uses MPI_ERRORS_RETURN and checks every call; a failure names the MPI call, the rank
// and the host. Half and bfloat16 sums use user-defined MPI operations that accumulate in float.
#pragma once

#include <functional>
#include <memory>

#include "comm/communicator.h"

namespace stride::comm {

class MpiCommunicator : public Communicator {
 public:
  // Initialises MPI (once per process) on a new owner thread. Throws CommError when MPI_Init fails.
  // `busy_threads`: CommOptions::busy_threads (used by the first call only).
  static std::shared_ptr<MpiCommunicator> create(int busy_threads = 0);
  ~MpiCommunicator() override;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  int local_rank() const override { return local_rank_; }
  std::string backend() const override { return "mpi"; }
  std::string host() const override { return host_; }

  WorkPtr allreduce(torch::Tensor tensor, ReduceOp op) override;
  WorkPtr broadcast(torch::Tensor tensor, int root) override;
  WorkPtr allgather(torch::Tensor input, torch::Tensor output) override;
  WorkPtr barrier() override;
  WorkPtr sendrecv(torch::Tensor send, int dst, torch::Tensor recv, int src) override;
  void allreduce_now(torch::Tensor tensor, ReduceOp op) override;
  void allgather_now(torch::Tensor input, torch::Tensor output) override;
  torch::Tensor alloc_buffer(int64_t numel, const torch::TensorOptions& options) override;
  Layout layout() const override;
  // Measurement switch: route collectives through MPI (false) or shared memory (true, the default where
  // available). Every rank must flip it at the same point of its collective sequence. Returns whether shared
  // memory is in use afterwards.
  bool set_shm_enabled(bool enabled);
  // layout().shm_wait: kSpin where this host has a core for every local rank's compute threads plus its
  // communication thread (or STRIDE_SHM_WAIT=spin), kSleep (a short spin, then a futex) otherwise, kNone without
  // shared memory.
  // Measurement switch, like set_shm_enabled: waiting ranks spin (true) or sleep.
  void set_shm_wait(bool spin);

  // Which way an allreduce of `t` with `op` travels: "shm" (every rank on this host), "mpi" (MPI_Allreduce),
  // "ring" (comm/mpi/ring_allreduce.h over all ranks) or "hier" (shared memory within each host, the ring
  // between hosts). Chosen from STRIDE_ALLREDUCE, the tensor's size and the host layout (docs/distributed.md).
  std::string allreduce_path(const torch::Tensor& t, ReduceOp op) const;
  // The number of ranks on this host (as STRIDE_TEST_HOSTS pretends, in tests).
  int local_size() const;

  // Runs `fn` on the owner thread (the only thread allowed to call MPI) and waits. For benchmarks that compare
  // with raw MPI calls on the same buffers.
  void run_on_owner(std::function<void()> fn);

 private:
  explicit MpiCommunicator(int busy_threads);
  WorkPtr submit(std::string what, std::function<void()> fn);
  struct Impl;
  std::shared_ptr<Impl> impl_;
  int rank_ = 0, size_ = 1, local_rank_ = 0;
  std::string host_;
};

}  // namespace stride::comm
