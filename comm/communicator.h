// The communicator: the handful of collectives data-parallel training needs, behind one small interface.
//
// Back-ends: comm/mpi (Open MPI, CPU tensors), comm/nccl (NCCL, CUDA tensors), comm/local (ranks as threads in
// one process, for tests). All collectives are asynchronous and in place: the call enqueues the operation and
// returns a Work; the tensor holds the result once the Work completes. Every rank must issue the same collectives,
// on tensors of the same dtype and size, in the same order (as with MPI and NCCL).
//
// Thread-safety: any thread may issue collectives and wait on Works; collectives issued by several threads of one
// rank are ordered by the time they are enqueued, so callers that issue from several threads must order
// themselves (the GradientReducer issues from the autograd thread only).
//
// Failure: a collective that cannot complete (a peer died, the transport failed, or it did not finish within the
// communicator's timeout) fails its Work with CommError, a distinct type that the trainer maps to exit code 75
// (EX_TEMPFAIL: "restart me from the last checkpoint"). Nothing waits forever.
#pragma once

#include <torch/torch.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <exception>
#include <memory>
#include <mutex>
#include <string>

#include "common/error.h"

namespace stride::comm {

// A collective failed or timed out; the message names the operation, the rank, the host and the likely cause.
class CommError : public Error {
 public:
  using Error::Error;
};

// Exit code for CommError: EX_TEMPFAIL from sysexits.h, "temporary failure, retry".
constexpr int kCommFailureExitCode = 75;

enum class ReduceOp { kSum, kAvg, kMax, kMin };
const char* reduce_op_name(ReduceOp op);

// The handle of one asynchronous collective.
class Work {
 public:
  virtual ~Work() = default;
  // Waits until the collective has completed and its result may be read (for NCCL: the current CUDA stream is
  // ordered after it; the host does not block). Throws CommError if it failed or did not complete within the
  // communicator's timeout.
  virtual void wait() = 0;
  // True once the collective finished (successfully or not). Never blocks.
  virtual bool completed() const = 0;
  // The failure, or nullptr. Never blocks.
  virtual std::exception_ptr error() const = 0;
  // Seconds the collective itself ran, once completed (0 when the back-end cannot tell).
  virtual double run_seconds() const { return 0.0; }
  // When the collective began and ended on this host's clock, once completed; false when the back-end cannot tell
  // (NCCL runs on the device: the reducer's overlap timeline then uses launch and wait times instead).
  virtual bool run_interval(std::chrono::steady_clock::time_point* start,
                            std::chrono::steady_clock::time_point* end) const {
    (void)start;
    (void)end;
    return false;
  }
};
using WorkPtr = std::shared_ptr<Work>;

// A Work completed by a host thread (the MPI owner thread, a local rank's worker).
class HostWork : public Work {
 public:
  HostWork(std::string what, std::chrono::milliseconds timeout) : what_(std::move(what)), timeout_(timeout) {}
  void wait() override;
  // Waits at most `timeout`; returns false if still running (then it may still complete later).
  bool wait_for(std::chrono::milliseconds timeout);
  bool completed() const override;
  std::exception_ptr error() const override;
  double run_seconds() const override;
  bool run_interval(std::chrono::steady_clock::time_point* start,
                    std::chrono::steady_clock::time_point* end) const override;
  // Called by the thread that runs the collective, when it starts and once when it ends.
  void start();
  void finish(std::exception_ptr error = nullptr);
  const std::string& what() const { return what_; }

 private:
  const std::string what_;
  const std::chrono::milliseconds timeout_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  std::atomic<bool> done_flag_{false};  // done_, readable without the mutex
  std::exception_ptr error_;
  std::chrono::steady_clock::time_point started_{}, finished_{};
};

// How ranks waiting in a shared-memory collective wait: spinning (the host has a core for each) or sleeping on a
// futex after a short spin. kNone: no shared memory.
enum class ShmWait { kNone, kSpin, kSleep };
const char* shm_wait_name(ShmWait w);  // "", "spin", "sleep"

// How a large allreduce (a gradient bucket) travels: the back-end's own collective (MPI_Allreduce, NCCL, ...),
// shared memory (every rank on this host), a ring over every rank, or hierarchical (shared memory within each
// host, a ring between hosts).
enum class Transport { kOwn, kShm, kRing, kHier };

struct Layout {
  std::string backend;  // "mpi", "nccl", "local", "single"
  Transport transport = Transport::kOwn;
  ShmWait shm_wait = ShmWait::kNone;  // docs/distributed.md, STRIDE_SHM_WAIT
  int hosts = 0;                      // 0: not known
  int local_size = 0;                 // ranks on this host; 0: not known
  // "shm", "ring", "hier", or the back-end's name for its own collective (bench output, tests).
  std::string transport_name() const;
  // "2 hosts x 2 ranks: shared memory within each host, a ring between hosts" (for the start-up line).
  std::string summary() const;
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // This rank's index among the ranks on its host (picks the GPU).
  virtual int local_rank() const { return rank(); }
  virtual std::string backend() const = 0;
  virtual std::string host() const;

  // In place over all ranks. kAvg divides the sum by size() (floating-point tensors only).
  virtual WorkPtr allreduce(torch::Tensor tensor, ReduceOp op = ReduceOp::kSum) = 0;
  // Rank `root`'s tensor is copied into every rank's tensor.
  virtual WorkPtr broadcast(torch::Tensor tensor, int root = 0) = 0;
  // output (numel size() * input.numel(), same dtype) receives every rank's input in rank order.
  virtual WorkPtr allgather(torch::Tensor input, torch::Tensor output) = 0;
  virtual WorkPtr barrier() = 0;
  // One step of a permutation: this rank sends `send` to rank `dst` and receives rank `src`'s `send` into `recv`
  // (same dtype; the sizes may differ between ranks, but `recv` must have the sender's numel). Every rank issues
  // it in the same order with the other collectives (the in-memory snapshots' buddy copies, trainer/snapshot.h).
  // The default goes through two allgathers (world x the largest message); the MPI back-end sends point to point.
  virtual WorkPtr sendrecv(torch::Tensor send, int dst, torch::Tensor recv, int src);

  // Blocking forms, for callers that wait at once (SyncBatchNorm's statistics). A back-end may run them on the
  // calling thread, on a channel of their own: then they are not ordered with the asynchronous collectives in
  // flight (gradient buckets), which is what lets SyncBatchNorm's backward proceed while a bucket is reduced.
  // Every rank must issue the blocking forms in the same order among themselves.
  virtual void allreduce_now(torch::Tensor tensor, ReduceOp op = ReduceOp::kSum) { allreduce(tensor, op)->wait(); }
  virtual void allgather_now(torch::Tensor input, torch::Tensor output) { allgather(input, output)->wait(); }

  // A zero-filled 1-D buffer for a tensor this communicator will reduce again and again (the GradientReducer's
  // buckets). Collective: every rank calls it in the same order with the same size. The MPI back-end places it
  // in shared memory when all ranks share one host, so collectives read it in place; the others return
  // torch::zeros.
  virtual torch::Tensor alloc_buffer(int64_t numel, const torch::TensorOptions& options);
  // How this communicator's collectives travel (the back-end's own settings live here, not in this interface).
  virtual Layout layout() const;

  // How long a Work may take before wait() gives up with CommError.
  std::chrono::milliseconds timeout() const { return timeout_; }
  void set_timeout(std::chrono::milliseconds t) { timeout_ = t; }

  // "rank 1/4 (host-a)" for messages.
  std::string describe() const;

 protected:
  // Checks the argument contract shared by every back-end; throws Error naming the operation and the rank.
  void check_tensor(const char* op, const torch::Tensor& t) const;
  // The same for sendrecv: both tensors, the peers' ranks, one dtype.
  void check_sendrecv(const torch::Tensor& send, int dst, const torch::Tensor& recv, int src) const;

 private:
  std::chrono::milliseconds timeout_{std::chrono::minutes(5)};
};

// --comm-backend. kAuto: mpi when launched by mpirun/srun with more than one rank (and MPI is built), else single.
// kSingle: one rank, no transport. kMpi, kNccl: as named.
enum class Backend { kAuto, kSingle, kMpi, kNccl };
// "auto" | "single" | "mpi" | "nccl"; another name is a UsageError naming --comm-backend and the choices.
Backend parse_backend(const std::string& name);
const char* backend_name(Backend b);

struct CommOptions {
  Backend backend = Backend::kAuto;
  std::chrono::milliseconds timeout{std::chrono::minutes(5)};
  // Training on GPUs: auto picks nccl for several ranks when this build can (NCCL + a CUDA LibTorch).
  bool prefer_gpu = false;
  // Threads each rank keeps busy besides communication (compute plus data-loading workers); 0: LibTorch's
  // intra-op thread count when the communicator is made. Shared-memory collectives spin while waiting only when
  // every local rank's busy threads and communication thread have a core (comm/shm/host_cpus.h).
  int busy_threads = 0;
};

// The communicator for this process, chosen from the options and the environment (OMPI_COMM_WORLD_SIZE,
// PMIX_RANK, SLURM_NTASKS, ...). Throws UsageError when the requested back-end is not built.
std::shared_ptr<Communicator> create_communicator(const CommOptions& options);

// True when this process looks like one of several ranks started by mpirun or srun.
bool launched_as_multiple_ranks();

// Names of the back-ends this binary was built with ("single local mpi nccl").
std::string built_backends();

// Blocking helpers: issue and wait.
inline void allreduce(Communicator& c, const torch::Tensor& t, ReduceOp op = ReduceOp::kSum) { c.allreduce_now(t, op); }
inline void broadcast(Communicator& c, const torch::Tensor& t, int root = 0) { c.broadcast(t, root)->wait(); }

// Broadcasts every tensor from `root`, coalesced into one flat buffer per dtype (one collective per dtype
// instead of one per tensor).
void broadcast_coalesced(Communicator& c, const std::vector<torch::Tensor>& tensors, int root = 0);
// Averages floating-point tensors over all ranks, coalesced per dtype; integer tensors are left alone.
void average_coalesced(Communicator& c, const std::vector<torch::Tensor>& tensors);

}  // namespace stride::comm
