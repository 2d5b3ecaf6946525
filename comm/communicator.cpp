#include "comm/communicator.h"

#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <map>
#include <thread>

#include "comm/local/local_communicator.h"
#include "common/env.h"
#ifdef STRIDE_WITH_MPI
#include "comm/mpi/mpi_communicator.h"
#endif
#ifdef STRIDE_WITH_NCCL
#include "comm/nccl/nccl_communicator.h"
#endif

namespace stride::comm {

const char* reduce_op_name(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
      return "sum";
    case ReduceOp::kAvg:
      return "avg";
    case ReduceOp::kMax:
      return "max";
    case ReduceOp::kMin:
      return "min";
  }
  return "?";
}

// ---------------------------------------------------------------------------------------------------------
// HostWork
// ---------------------------------------------------------------------------------------------------------
bool HostWork::wait_for(std::chrono::milliseconds timeout) {
  // Small collectives finish within microseconds: poll briefly before sleeping on the condition variable.
  const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(50);
  while (!done_flag_.load(std::memory_order_acquire) && std::chrono::steady_clock::now() < until) {
    std::this_thread::yield();
  }
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait_for(lock, timeout, [&] { return done_; });
  if (error_) std::rethrow_exception(error_);
  return done_;
}

void HostWork::wait() {
  if (!wait_for(timeout_)) {
    throw CommError(concat(what_, " did not complete within ", timeout_.count() / 1000.0,
                           " s: a peer rank is probably dead, stuck or unreachable (raise --comm-timeout if a "
                           "rank is legitimately slower)"));
  }
}

bool HostWork::completed() const {
  std::lock_guard<std::mutex> lock(mu_);
  return done_;
}

std::exception_ptr HostWork::error() const {
  std::lock_guard<std::mutex> lock(mu_);
  return error_;
}

void HostWork::start() {
  std::lock_guard<std::mutex> lock(mu_);
  started_ = std::chrono::steady_clock::now();
}

double HostWork::run_seconds() const {
  std::lock_guard<std::mutex> lock(mu_);
  if (!done_ || started_ == std::chrono::steady_clock::time_point{}) return 0.0;
  return std::chrono::duration<double>(finished_ - started_).count();
}

bool HostWork::run_interval(std::chrono::steady_clock::time_point* start,
                            std::chrono::steady_clock::time_point* end) const {
  std::lock_guard<std::mutex> lock(mu_);
  if (!done_ || started_ == std::chrono::steady_clock::time_point{}) return false;
  *start = started_;
  *end = finished_;
  return true;
}

void HostWork::finish(std::exception_ptr error) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    done_ = true;
    done_flag_.store(true, std::memory_order_release);
    finished_ = std::chrono::steady_clock::now();
    error_ = std::move(error);
  }
  cv_.notify_all();
}

// ---------------------------------------------------------------------------------------------------------
// Communicator
// ---------------------------------------------------------------------------------------------------------
std::string Communicator::host() const {
  char name[256] = {0};
  if (gethostname(name, sizeof(name) - 1) != 0) return "unknown-host";
  return name;
}

Layout Communicator::layout() const {
  Layout l;
  l.backend = backend();
  return l;
}

std::string Layout::transport_name() const {
  switch (transport) {
    case Transport::kShm:
      return "shm";
    case Transport::kRing:
      return "ring";
    case Transport::kHier:
      return "hier";
    case Transport::kOwn:
      break;
  }
  return backend;
}

std::string Layout::summary() const {
  std::string where;
  if (hosts == 1) where = "1 host";
  if (hosts > 1)
    where = transport == Transport::kHier && local_size > 0 ? concat(hosts, " hosts x ", local_size, " ranks")
                                                            : concat(hosts, " hosts");
  std::string how = backend == "mpi" ? "MPI_Allreduce" : backend;
  if (transport == Transport::kShm)
    how = concat("shared memory",
                 shm_wait == ShmWait::kNone ? "" : concat(" (waiting ranks ", shm_wait_name(shm_wait), ")"));
  if (transport == Transport::kRing) how = "a ring over every rank for large buckets";
  if (transport == Transport::kHier) how = "shared memory within each host, a ring between hosts for large buckets";
  return where.empty() ? how : concat(where, ": ", how);
}

std::string Communicator::describe() const { return concat("rank ", rank(), "/", size(), " (", host(), ")"); }

void Communicator::check_tensor(const char* op, const torch::Tensor& t) const {
  if (!t.defined()) throw Error(concat(op, " on ", describe(), ": the tensor is undefined"));
  if (!t.is_contiguous()) throw Error(concat(op, " on ", describe(), ": the tensor is not contiguous"));
}

void Communicator::check_sendrecv(const torch::Tensor& send, int dst, const torch::Tensor& recv, int src) const {
  check_tensor("sendrecv", send);
  check_tensor("sendrecv", recv);
  if (dst < 0 || dst >= size() || src < 0 || src >= size()) {
    throw Error(concat("sendrecv on ", describe(), ": peers ", dst, " and ", src, " outside 0..", size() - 1));
  }
  if (send.scalar_type() != recv.scalar_type()) {
    throw Error(
        concat("sendrecv on ", describe(), ": dtypes differ: ", send.scalar_type(), " vs ", recv.scalar_type()));
  }
}

WorkPtr Communicator::sendrecv(torch::Tensor send, int dst, torch::Tensor recv, int src) {
  check_sendrecv(send, dst, recv, src);
  // Every rank's sizes and source, then every rank's message padded to the largest: simple, and world x the
  // traffic of a point-to-point exchange, which the back-ends that can send point to point replace. Every rank
  // checks every rank's receive buffer, so a wrong one fails all ranks alike instead of leaving the others in
  // the second allgather.
  auto plan = torch::empty({size(), 3}, torch::kInt64);
  allgather(torch::tensor({send.numel(), recv.numel(), int64_t{src}}, torch::kInt64), plan.view({-1}))->wait();
  auto p = plan.accessor<int64_t, 2>();
  for (int64_t k = 0; k < size(); ++k) {
    const int64_t from = p[k][2], sent = p[from][0];
    if (sent != p[k][1]) {
      throw Error(concat("sendrecv on ", describe(), ": rank ", from, " sends ", sent, " elements, rank ", k,
                         "'s receive buffer holds ", p[k][1]));
    }
  }
  const int64_t most = plan.select(1, 0).max().item<int64_t>();
  if (most > 0) {
    auto padded = torch::zeros({most}, send.options());
    padded.narrow(0, 0, send.numel()).copy_(send.reshape({-1}));
    auto all = torch::empty({most * size()}, send.options());
    allgather(padded, all)->wait();
    recv.view({-1}).copy_(all.narrow(0, most * src, recv.numel()));
  }
  auto work = std::make_shared<HostWork>(concat("sendrecv on ", describe()), timeout());
  work->start();
  work->finish();
  return work;
}

torch::Tensor Communicator::alloc_buffer(int64_t numel, const torch::TensorOptions& options) {
  return torch::zeros({numel}, options);
}

// ---------------------------------------------------------------------------------------------------------
// Factory
// ---------------------------------------------------------------------------------------------------------
namespace {

// Launchers' variables (OMPI_COMM_WORLD_SIZE, SLURM_NTASKS, ...), parsed strictly: a garbled value stops the job
// naming the variable instead of reading as 0 ranks.
int env_int(const char* name, int fallback) {
  return static_cast<int>(env_integer(name, 0, INT32_MAX).value_or(fallback));
}

}  // namespace

bool launched_as_multiple_ranks() {
  for (const char* var : {"OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "PMI_SIZE", "SLURM_NTASKS", "SLURM_NPROCS"}) {
    if (env_int(var, 1) > 1) return true;
  }
  return false;
}

// Started by srun in a way Open MPI cannot join: say so before MPI_Init aborts with an internal error.
void check_slurm_launch() {
  const char* step = std::getenv("SLURM_STEP_ID");
  if (!step || env_int("SLURM_NTASKS", 1) <= 1) return;
  if (std::getenv("PMIX_RANK") || std::getenv("OMPI_COMM_WORLD_SIZE")) return;  // srun --mpi=pmix, or mpirun
  const int rank = env_int("SLURM_PROCID", 0), size = env_int("SLURM_NTASKS", 1);
  if (std::getenv("PMI_FD") || std::getenv("PMI_RANK")) {
    throw UsageError(concat("rank ", rank, "/", size, ": started by srun with PMI-2 (--mpi=pmi2), which this Open MPI ",
                            "cannot use (Debian builds it with PMIx only): start the ranks with `srun --mpi=pmix` or ",
                            "`stride launch`"));
  }
  throw UsageError(concat("rank ", rank, "/", size, ": started by srun without an MPI plugin (--mpi=none), so the ",
                          size, " tasks cannot find each other: start them with `srun --mpi=pmix` or `stride launch`"));
}

std::string built_backends() {
  std::string s = "single local";
#ifdef STRIDE_WITH_MPI
  s += " mpi";
#endif
#ifdef STRIDE_WITH_NCCL
  s += " nccl";
#endif
  return s;
}

Backend parse_backend(const std::string& name) {
  if (name == "auto") return Backend::kAuto;
  if (name == "single") return Backend::kSingle;
  if (name == "mpi") return Backend::kMpi;
  if (name == "nccl") return Backend::kNccl;
  throw UsageError(concat("--comm-backend: unknown back-end '", name, "' (auto, single, mpi, nccl)"));
}

const char* backend_name(Backend b) {
  switch (b) {
    case Backend::kAuto:
      return "auto";
    case Backend::kSingle:
      return "single";
    case Backend::kMpi:
      return "mpi";
    case Backend::kNccl:
      return "nccl";
  }
  return "?";
}

const char* shm_wait_name(ShmWait w) {
  switch (w) {
    case ShmWait::kNone:
      return "";
    case ShmWait::kSpin:
      return "spin";
    case ShmWait::kSleep:
      return "sleep";
  }
  return "";
}

std::shared_ptr<Communicator> create_communicator(const CommOptions& options) {
  Backend backend = options.backend;
  if (backend == Backend::kAuto) {
    backend = launched_as_multiple_ranks() ? Backend::kMpi : Backend::kSingle;
#if defined(STRIDE_WITH_NCCL) && defined(STRIDE_TORCH_CUDA)
    if (backend == Backend::kMpi && options.prefer_gpu) backend = Backend::kNccl;
#endif
  }
  std::shared_ptr<Communicator> comm;
  if (backend == Backend::kSingle) {
    comm = LocalWorld::create(1)->communicator(0);
  } else {
#ifdef STRIDE_WITH_MPI
    check_slurm_launch();
    comm = MpiCommunicator::create(options.busy_threads);
#else
    if (backend == Backend::kMpi || launched_as_multiple_ranks()) {
      throw UsageError(concat("--comm-backend ", backend_name(options.backend),
                              ": this stride was built without Open MPI (built: ", built_backends(),
                              "); install libopenmpi-dev and rebuild, or run one rank"));
    }
    comm = LocalWorld::create(1)->communicator(0);
#endif
    if (backend == Backend::kNccl) {
#ifdef STRIDE_WITH_NCCL
      comm->set_timeout(options.timeout);
      comm = make_nccl_communicator(comm);
#else
      throw UsageError(concat("--comm-backend nccl: this stride was built without NCCL (built: ", built_backends(),
                              "); configure with -DSTRIDE_WITH_NCCL=ON"));
#endif
    }
  }
  comm->set_timeout(options.timeout);
  return comm;
}

// ---------------------------------------------------------------------------------------------------------
// Coalesced helpers
// ---------------------------------------------------------------------------------------------------------
namespace {

std::map<c10::ScalarType, std::vector<torch::Tensor>> by_dtype(const std::vector<torch::Tensor>& tensors) {
  std::map<c10::ScalarType, std::vector<torch::Tensor>> groups;
  for (const auto& t : tensors) groups[t.scalar_type()].push_back(t);
  return groups;
}

void scatter_back(const torch::Tensor& flat, const std::vector<torch::Tensor>& tensors) {
  torch::NoGradGuard no_grad;
  int64_t offset = 0;
  for (const auto& t : tensors) {
    const int64_t n = t.numel();
    t.copy_(flat.narrow(0, offset, n).view(t.sizes()));
    offset += n;
  }
}

torch::Tensor flatten(const std::vector<torch::Tensor>& tensors) {
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> flat;
  flat.reserve(tensors.size());
  for (const auto& t : tensors) flat.push_back(t.detach().reshape({-1}));
  return torch::cat(flat);
}

}  // namespace

void broadcast_coalesced(Communicator& c, const std::vector<torch::Tensor>& tensors, int root) {
  if (c.size() == 1) return;
  for (auto& [dtype, group] : by_dtype(tensors)) {
    auto flat = flatten(group);
    c.broadcast(flat, root)->wait();
    scatter_back(flat, group);
  }
}

void average_coalesced(Communicator& c, const std::vector<torch::Tensor>& tensors) {
  if (c.size() == 1) return;
  for (auto& [dtype, group] : by_dtype(tensors)) {
    if (!c10::isFloatingType(dtype)) continue;
    auto flat = flatten(group);
    c.allreduce(flat, ReduceOp::kAvg)->wait();
    scatter_back(flat, group);
  }
}

}  // namespace stride::comm
