#include "comm/mpi/mpi_communicator.h"

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <mpi.h>

#include <atomic>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <future>
#include <optional>

#include "comm/mpi/ring_allreduce.h"
#include "comm/owner_thread.h"
#include "comm/shm/host_cpus.h"
#include "comm/shm/shm_group.h"
#include "common/env.h"

namespace stride::comm {
namespace {

template <typename T>
void sum_16(void* in, void* inout, int* len, MPI_Datatype*) {
  const T* a = static_cast<const T*>(in);
  T* b = static_cast<T*>(inout);
  for (int i = 0; i < *len; ++i) b[i] = static_cast<T>(static_cast<float>(a[i]) + static_cast<float>(b[i]));
}

std::string mpi_error_string(int rc) {
  char buf[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(rc, buf, &len) != MPI_SUCCESS) return concat("MPI error ", rc);
  return std::string(buf, static_cast<size_t>(len));
}

// The process-wide MPI state; MPI can be initialised once per process.
std::mutex g_mu;
std::weak_ptr<MpiCommunicator> g_instance;
bool g_finalized = false;

// The STRIDE_SHM* environment (docs/distributed.md).
struct ShmEnv {
  bool enabled = true;        // STRIDE_SHM (0 or 1)
  std::optional<bool> spare;  // STRIDE_SHM_WAIT: spin (true), sleep (false), auto (nullopt)
  ShmOptions options;         // STRIDE_SHM_SPIN_US, STRIDE_SHM_CALLER_SPIN_US, STRIDE_SHM_STAGING_KB
};

// Open MPI 4.1's default btl_tcp_flags less `put` and `hetero-rdma` (see MpiCommunicator's set-up).
constexpr const char* kTcpBtlFlags = "send,inplace,need-ack,need-csum";
constexpr int kSendRecvTag = 0x5352;  // "SR"; sendrecv's messages, apart from the ring's

// How allreduce travels when the ranks span hosts (STRIDE_ALLREDUCE, docs/distributed.md).
enum class AllreduceMode { kAuto, kMpi, kRing, kHier };

struct AllreduceEnv {
  AllreduceMode mode = AllreduceMode::kAuto;
  int64_t ring_min_bytes = int64_t{1} << 20;  // STRIDE_RING_MIN_BYTES: smaller tensors use MPI_Allreduce
  RingOptions ring;                           // STRIDE_RING_SEGMENT_KB, STRIDE_RING_WINDOW
  int test_hosts = 0;                         // STRIDE_TEST_HOSTS (tests only): pretend this many hosts
};

}  // namespace

struct MpiCommunicator::Impl {
  OwnerThread owner;
  MPI_Comm comm = MPI_COMM_NULL;
  MPI_Op half_sum = MPI_OP_NULL, bf16_sum = MPI_OP_NULL;
  int rank = 0, size = 1;
  std::string host;
  bool initialized_here = false;
  std::unique_ptr<ShmGroup> shm;         // set when every rank shares this host (and STRIDE_SHM is not 0)
  std::unique_ptr<ShmGroup> caller_shm;  // the blocking forms' own channel, used on the calling thread
  std::mutex caller_mu;
  std::atomic<bool> use_shm{true};  // measurement switch (set_shm_enabled)
  bool shm_active() const { return shm && use_shm.load(); }
  bool shm_for(torch::ScalarType dtype) const { return shm_active() && ShmGroup::supports(dtype); }

  // Across hosts (docs/distributed.md, "Across hosts").
  AllreduceEnv ar;
  int local_size = 1;
  int hosts = 1;
  bool spans_hosts = false;             // some rank is on another host
  MPI_Comm ring_comm = MPI_COMM_NULL;   // the ring's messages, apart from everything else
  MPI_Comm local_comm = MPI_COMM_NULL;  // the ranks of this host
  MPI_Comm cross_comm = MPI_COMM_NULL;  // the ranks with this rank's local rank, one per host
  std::unique_ptr<ShmGroup> local_shm;  // the ranks of this host, when the hierarchical path is possible
  bool hier_ok() const { return local_shm != nullptr; }

  // Which way an allreduce of `t` goes: "shm", "mpi", "ring" or "hier". Every rank decides alike (same env,
  // same tensor sizes).
  Transport path(const torch::Tensor& t, ReduceOp op) const {
    return path(t.numel() * static_cast<int64_t>(t.element_size()), t.scalar_type(), op);
  }
  // kOwn: MPI_Allreduce.
  Transport path(int64_t bytes, torch::ScalarType dtype, ReduceOp op) const {
    const bool forced = ar.mode != AllreduceMode::kAuto;
    if (!forced && shm_active() && ShmGroup::supports(dtype, op)) return Transport::kShm;
    if (ar.mode == AllreduceMode::kMpi || size < 2 || !ring_supports(dtype, op)) return Transport::kOwn;
    if (ar.mode == AllreduceMode::kRing) return Transport::kRing;
    if (ar.mode == AllreduceMode::kHier) return hier_ok() ? Transport::kHier : Transport::kRing;
    if (!spans_hosts || bytes < ar.ring_min_bytes) return Transport::kOwn;
    return hier_ok() ? Transport::kHier : Transport::kRing;
  }

  // Hierarchical: reduce among the ranks of this host over shared memory, then local rank l carries slice l of
  // the sum around the ring of local rank l's on every host (each host's link carries 1/local_size of the
  // tensor per rank, all local ranks in parallel), then each host gathers the slices over shared memory.
  void hier_allreduce(const torch::Tensor& t, ReduceOp op, std::chrono::milliseconds timeout, const std::string& what) {
    if (t.numel() == 0) return;
    const ReduceOp partial = op == ReduceOp::kAvg ? ReduceOp::kSum : op;
    local_shm->allreduce(t, partial, timeout);
    const int64_t n = t.numel(), q = n / local_size, extra = n % local_size;
    auto begin = [&](int64_t l) { return l * q + std::min<int64_t>(l, extra); };
    auto flat = t.view({-1});
    int lr = 0;
    check(MPI_Comm_rank(local_comm, &lr), "MPI_Comm_rank");
    auto mine = flat.slice(0, begin(lr), begin(lr + 1));
    ring_allreduce(mine, partial, cross_comm, ar.ring, what);
    for (int l = 0; l < local_size; ++l) {
      if (begin(l + 1) > begin(l)) local_shm->broadcast(flat.slice(0, begin(l), begin(l + 1)), l, timeout);
    }
    if (op == ReduceOp::kAvg) t.div_(size);
  }

  // Every rank's string, in rank order (the shared-memory group's bootstrap).
  std::vector<std::string> allgather_strings(const std::string& mine) const { return allgather_strings(mine, comm); }
  std::vector<std::string> allgather_strings(const std::string& mine, MPI_Comm over) const {
    int size = 1;
    check(MPI_Comm_size(over, &size), "MPI_Comm_size");
    const int len = static_cast<int>(mine.size());
    std::vector<int> lens(static_cast<size_t>(size)), displs(static_cast<size_t>(size));
    check(MPI_Allgather(&len, 1, MPI_INT, lens.data(), 1, MPI_INT, over), "MPI_Allgather");
    int total = 0;
    for (int p = 0; p < size; ++p) {
      displs[static_cast<size_t>(p)] = total;
      total += lens[static_cast<size_t>(p)];
    }
    std::vector<char> buf(static_cast<size_t>(std::max(total, 1)));
    check(MPI_Allgatherv(mine.data(), len, MPI_CHAR, buf.data(), lens.data(), displs.data(), MPI_CHAR, over),
          "MPI_Allgatherv");
    std::vector<std::string> out;
    for (int p = 0; p < size; ++p) {
      out.emplace_back(buf.data() + displs[static_cast<size_t>(p)], static_cast<size_t>(lens[static_cast<size_t>(p)]));
    }
    return out;
  }

  // Collective, on the owner thread: all ranks agree to use shared memory, or none does. `env`: the
  // STRIDE_SHM* settings (read on the calling thread); without STRIDE_SHM_WAIT, how the ranks wait is decided
  // from `threads` compute threads per rank and this host's CPUs.
  void setup_shm(int local_size, const ShmEnv& env, int threads) {
    if (size < 2) return;
    int want = local_size == size && env.enabled ? 1 : 0, all = 0;
    check(MPI_Allreduce(&want, &all, 1, MPI_INT, MPI_MIN, comm), "MPI_Allreduce");
    if (!all) return;  // the ranks span several hosts, or STRIDE_SHM=0 on some rank
    ShmOptions options = env.options;
    options.waiters_spin = env.spare.value_or(spare_cores(local_size, threads, usable_cpus()));
    try {
      const ShmBootstrap bootstrap{rank, size, [this](const std::string& s) { return allgather_strings(s); }};
      shm = std::make_unique<ShmGroup>(bootstrap, options);
      caller_shm = std::make_unique<ShmGroup>(bootstrap, options);
    } catch (const Error&) {  // agreed: every rank failed the same step and uses MPI
      shm.reset();
    }
  }

  // Collective, on the owner thread, after setup_shm: the ring's communicator, and where ranks span hosts with
  // the same number of ranks on each, the per-host shared-memory group and the cross-host communicator of the
  // hierarchical allreduce. All ranks agree on whether the hierarchical path exists.
  void setup_hier(int local_rank, const ShmEnv& env, int threads) {
    if (size < 2) return;
    check(MPI_Comm_dup(comm, &ring_comm), "MPI_Comm_dup");
    MPI_Comm_set_errhandler(ring_comm, MPI_ERRORS_RETURN);
    if (!spans_hosts || ar.mode == AllreduceMode::kMpi) return;
    // Hosts with different numbers of ranks: local rank l would have no partner on some host; the flat ring
    // serves them (docs/distributed.md). Decided by all ranks alike (STRIDE_SHM=0 on any rank: no hierarchy).
    int mine[3] = {local_size, -local_size, local_size >= 2 && env.enabled ? 1 : 0}, agreed[3] = {0, 0, 0};
    check(MPI_Allreduce(mine, agreed, 3, MPI_INT, MPI_MIN, comm), "MPI_Allreduce");
    if (agreed[0] != -agreed[1] || agreed[2] == 0) return;
    check(MPI_Comm_split(comm, local_rank, rank, &cross_comm), "MPI_Comm_split");
    MPI_Comm_set_errhandler(cross_comm, MPI_ERRORS_RETURN);
    MPI_Comm_set_errhandler(local_comm, MPI_ERRORS_RETURN);
    ShmOptions options = env.options;
    options.waiters_spin = env.spare.value_or(spare_cores(local_size, threads, usable_cpus()));
    int ok = 1;
    try {
      const ShmBootstrap bootstrap{local_rank, local_size,
                                   [this](const std::string& s) { return allgather_strings(s, local_comm); }};
      local_shm = std::make_unique<ShmGroup>(bootstrap, options);
    } catch (const Error&) {  // agreed within the host; agreed across hosts below
      ok = 0;
    }
    int all = 0;
    check(MPI_Allreduce(&ok, &all, 1, MPI_INT, MPI_MIN, comm), "MPI_Allreduce");
    if (!all) local_shm.reset();
  }

  void check(int rc, const char* call) const {
    if (rc != MPI_SUCCESS) {
      throw CommError(concat(call, " failed on MPI rank ", rank, " (", host, "): ", mpi_error_string(rc)));
    }
  }

  MPI_Datatype datatype(const torch::Tensor& t) const {
    switch (t.scalar_type()) {
      case torch::kFloat:
        return MPI_FLOAT;
      case torch::kDouble:
        return MPI_DOUBLE;
      case torch::kLong:
        return MPI_INT64_T;
      case torch::kInt:
        return MPI_INT32_T;
      case torch::kShort:
        return MPI_INT16_T;
      case torch::kChar:
        return MPI_INT8_T;
      case torch::kByte:
      case torch::kBool:
        return MPI_UINT8_T;
      case torch::kHalf:
      case torch::kBFloat16:
        return MPI_UINT16_T;
      default:
        throw Error(concat("MPI communicator: unsupported dtype ", t.scalar_type()));
    }
  }

  MPI_Op op_for(const torch::Tensor& t, ReduceOp op) const {
    const auto dt = t.scalar_type();
    if (dt == torch::kHalf || dt == torch::kBFloat16) {
      if (op != ReduceOp::kSum && op != ReduceOp::kAvg) {
        throw Error(concat("MPI communicator: ", reduce_op_name(op), " of ", dt, " is not supported"));
      }
      return dt == torch::kHalf ? half_sum : bf16_sum;
    }
    if (dt == torch::kBool) throw Error("MPI communicator: reductions of bool tensors are not supported");
    switch (op) {
      case ReduceOp::kSum:
      case ReduceOp::kAvg:
        return MPI_SUM;
      case ReduceOp::kMax:
        return MPI_MAX;
      case ReduceOp::kMin:
        return MPI_MIN;
    }
    return MPI_SUM;
  }

  // MPI counts are int: large tensors go in chunks.
  template <typename F>
  static void chunked(const torch::Tensor& t, F fn) {
    constexpr int64_t kChunk = int64_t{1} << 30;
    const int64_t n = t.numel();
    const int64_t elem = static_cast<int64_t>(t.element_size());
    char* base = static_cast<char*>(t.data_ptr());
    for (int64_t off = 0; off < n; off += kChunk) {
      fn(base + off * elem, static_cast<int>(std::min(kChunk, n - off)));
    }
  }
};

std::shared_ptr<MpiCommunicator> MpiCommunicator::create(int busy_threads) {
  std::lock_guard<std::mutex> lock(g_mu);
  if (auto existing = g_instance.lock()) return existing;
  if (g_finalized) throw CommError("MPI was already finalized in this process; it cannot be initialised again");
  auto comm = std::shared_ptr<MpiCommunicator>(new MpiCommunicator(busy_threads));
  g_instance = comm;
  return comm;
}

namespace {

// STRIDE_SHM_WAIT: "spin" / "sleep" force how a waiting rank waits; "auto" (or unset) decides from the host.
std::optional<bool> shm_wait_from_env() {
  const char* env = std::getenv("STRIDE_SHM_WAIT");
  const std::string v = env ? env : "auto";
  if (v == "auto" || v.empty()) return std::nullopt;
  if (v == "spin") return true;
  if (v == "sleep") return false;
  throw UsageError(concat("STRIDE_SHM_WAIT must be auto, spin or sleep, not '", v, "'"));
}

// Every STRIDE_SHM* variable, checked before MPI starts: a malformed value stops the job naming the variable
// (atoi("abc") used to mean 0, which turned shared memory off without a word).
ShmEnv shm_env() {
  ShmEnv env;
  env.enabled = env_integer("STRIDE_SHM", 0, 1).value_or(1) == 1;
  env.spare = shm_wait_from_env();
  constexpr int64_t kMaxSpinUs = 10'000'000;  // 10 s
  if (auto us = env_integer("STRIDE_SHM_SPIN_US", 0, kMaxSpinUs)) env.options.spin = std::chrono::microseconds(*us);
  if (auto us = env_integer("STRIDE_SHM_CALLER_SPIN_US", 0, kMaxSpinUs)) {
    env.options.caller_spin = std::chrono::microseconds(*us);
  }
  if (auto kb = env_integer("STRIDE_SHM_STAGING_KB", 1, int64_t{1} << 20)) env.options.staging_bytes = 1024 * *kb;
  return env;
}

// STRIDE_ALLREDUCE and its companions, strictly parsed (docs/distributed.md).
AllreduceEnv allreduce_env() {
  AllreduceEnv env;
  const char* mode = std::getenv("STRIDE_ALLREDUCE");
  const std::string v = mode ? mode : "";
  if (v.empty() || v == "auto") {
    env.mode = AllreduceMode::kAuto;
  } else if (v == "mpi") {
    env.mode = AllreduceMode::kMpi;
  } else if (v == "ring") {
    env.mode = AllreduceMode::kRing;
  } else if (v == "hier") {
    env.mode = AllreduceMode::kHier;
  } else {
    throw UsageError(concat("STRIDE_ALLREDUCE must be auto, mpi, ring or hier, not '", v, "'"));
  }
  if (auto b = env_integer("STRIDE_RING_MIN_BYTES", 0, int64_t{1} << 40)) env.ring_min_bytes = *b;
  if (auto kb = env_integer("STRIDE_RING_SEGMENT_KB", 1, 64 << 10)) env.ring.segment_bytes = 1024 * *kb;
  if (auto w = env_integer("STRIDE_RING_WINDOW", 1, 256)) env.ring.window = static_cast<int>(*w);
  if (auto h = env_integer("STRIDE_TEST_HOSTS", 1, 1 << 20)) env.test_hosts = static_cast<int>(*h);
  return env;
}

}  // namespace

MpiCommunicator::MpiCommunicator(int busy_threads) : impl_(std::make_shared<Impl>()) {
  // Read here, on the calling thread: the environment check fails before MPI starts, and the intra-op thread
  // count is the caller's (set it before creating the communicator).
  const ShmEnv env = shm_env();
  const int threads = busy_threads > 0 ? busy_threads : at::get_num_threads();
  struct Setup {
    int rank = 0, size = 1, local_rank = 0;
    std::string host;
  };
  std::promise<Setup> promise;
  auto future = promise.get_future();
  const AllreduceEnv ar = allreduce_env();
  impl_->owner.post([impl = impl_, &promise, env, threads, ar] {
    try {
      int initialized = 0;
      MPI_Initialized(&initialized);
      if (!initialized) {
        // The owner thread waits inside blocking collectives while compute threads run beside it: let Open MPI
        // yield the core while it polls instead of spinning, unless the user chose otherwise. Measured on a 2-core
        // machine, 2 ranks x 1 thread, resnet50: overlapped communication efficiency 0.76 -> 0.93.
        ::setenv("OMPI_MCA_mpi_yield_when_idle", "1", /*overwrite=*/0);
        // Between hosts, Open MPI's TCP btl sends messages over ~192 KiB with its emulated-RDMA "put" pipeline,
        // whose control messages (the receiver's PUT requests and acks) queue behind the data flowing the other
        // way. Under sustained two-way traffic (every ring and allreduce step) that held a 1 Gbit/s link to
        // 0.5 of its rate; with plain send/receive fragments the ring reaches 0.92-0.95 and MPI_Allreduce
        // 0.78-0.93 (docs/benchmarks.md, "Across hosts"). Ranks on one host use shared memory, not this btl.
        // The user's own btl_tcp_flags (mpirun --mca, or the environment) wins.
        ::setenv("OMPI_MCA_btl_tcp_flags", kTcpBtlFlags, /*overwrite=*/0);
        int provided = 0;
        const int rc = MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided);
        if (rc != MPI_SUCCESS) throw CommError(concat("MPI_Init_thread failed: ", mpi_error_string(rc)));
        impl->initialized_here = true;
      }
      MPI_Comm_dup(MPI_COMM_WORLD, &impl->comm);
      MPI_Comm_set_errhandler(impl->comm, MPI_ERRORS_RETURN);
      Setup s;
      MPI_Comm_rank(impl->comm, &s.rank);
      MPI_Comm_size(impl->comm, &s.size);
      char name[MPI_MAX_PROCESSOR_NAME];
      int len = 0;
      MPI_Get_processor_name(name, &len);
      s.host.assign(name, static_cast<size_t>(len));
      impl->rank = s.rank;
      impl->host = s.host;
      impl->size = s.size;
      MPI_Comm& local = impl->local_comm;
      if (ar.test_hosts > 0) {
        // Tests only: ranks [h*size/K, (h+1)*size/K) play host h (uneven when K does not divide size).
        const int k = std::min(ar.test_hosts, s.size);
        int h = 0;
        while (h + 1 < k && s.rank >= (h + 1) * s.size / k) ++h;
        impl->check(MPI_Comm_split(impl->comm, h, s.rank, &local), "MPI_Comm_split");
      } else {
        impl->check(MPI_Comm_split_type(impl->comm, MPI_COMM_TYPE_SHARED, s.rank, MPI_INFO_NULL, &local),
                    "MPI_Comm_split_type");
      }
      MPI_Comm_rank(local, &s.local_rank);
      int local_size = 1;
      MPI_Comm_size(local, &local_size);
      MPI_Op_create(&sum_16<c10::Half>, 1, &impl->half_sum);
      MPI_Op_create(&sum_16<c10::BFloat16>, 1, &impl->bf16_sum);
      impl->ar = ar;
      impl->local_size = local_size;
      int first = s.local_rank == 0 ? 1 : 0;
      impl->check(MPI_Allreduce(&first, &impl->hosts, 1, MPI_INT, MPI_SUM, impl->comm), "MPI_Allreduce");
      impl->spans_hosts = local_size < s.size;
      impl->setup_shm(local_size, env, threads);
      impl->setup_hier(s.local_rank, env, threads);
      promise.set_value(s);
    } catch (...) {
      promise.set_exception(std::current_exception());
    }
  });
  Setup s = future.get();
  rank_ = s.rank;
  size_ = s.size;
  local_rank_ = s.local_rank;
  host_ = s.host;
}

MpiCommunicator::~MpiCommunicator() {
  // Finalise on the owner thread after the queued collectives; if one is stuck (a dead peer), abandon it: the
  // process is on its way out and MPI_Finalize would block too.
  impl_->owner.stop(std::chrono::seconds(30), [impl = impl_] {
    impl->shm.reset();
    impl->caller_shm.reset();
    impl->local_shm.reset();
    for (MPI_Comm* c : {&impl->ring_comm, &impl->cross_comm, &impl->local_comm}) {
      if (*c != MPI_COMM_NULL) MPI_Comm_free(c);
    }
    MPI_Op_free(&impl->half_sum);
    MPI_Op_free(&impl->bf16_sum);
    MPI_Comm_free(&impl->comm);
    if (impl->initialized_here) MPI_Finalize();
  });
  std::lock_guard<std::mutex> lock(g_mu);
  g_finalized = true;
}

WorkPtr MpiCommunicator::submit(std::string what, std::function<void()> fn) {
  auto work = std::make_shared<HostWork>(concat(what, " on ", describe()), timeout());
  impl_->owner.post([fn = std::move(fn), work] {
    try {
      work->start();
      torch::NoGradGuard no_grad;
      fn();
      work->finish();
    } catch (...) {
      work->finish(std::current_exception());
    }
  });
  return work;
}

WorkPtr MpiCommunicator::allreduce(torch::Tensor t, ReduceOp op) {
  check_tensor("allreduce", t);
  STRIDE_CHECK(t.device().is_cpu(), "the MPI communicator takes CPU tensors (use --comm-backend nccl on GPUs)");
  if (op == ReduceOp::kAvg && !t.is_floating_point()) {
    throw Error(concat("allreduce avg on ", describe(), ": needs a floating-point tensor, got ", t.scalar_type()));
  }
  const Transport path = impl_->path(t, op);
  if (path == Transport::kShm) {
    return submit(concat("shared-memory allreduce ", reduce_op_name(op), " of ", t.numel(), " x ", t.scalar_type()),
                  [impl = impl_, t, op, limit = timeout()] { impl->shm->allreduce(t, op, limit); });
  }
  if (path == Transport::kRing || path == Transport::kHier) {
    const char* name = path == Transport::kHier ? "hier" : "ring";
    STRIDE_CHECK(t.is_contiguous(), "allreduce on ", describe(), ": the ", name, " path takes contiguous tensors");
    return submit(concat(name, " allreduce ", reduce_op_name(op), " of ", t.numel(), " x ", t.scalar_type()),
                  [impl = impl_, t, op, path, limit = timeout(), what = describe()] {
                    if (path == Transport::kHier) {
                      impl->hier_allreduce(t, op, limit, what);
                    } else {
                      ring_allreduce(t, op, impl->ring_comm, impl->ar.ring, what);
                    }
                  });
  }
  const MPI_Datatype dt = impl_->datatype(t);
  const MPI_Op mop = impl_->op_for(t, op);
  return submit(concat("MPI_Allreduce ", reduce_op_name(op), " of ", t.numel(), " x ", t.scalar_type()),
                [impl = impl_, t, dt, mop, op, size = size_] {
                  Impl::chunked(t, [&](void* p, int n) {
                    impl->check(MPI_Allreduce(MPI_IN_PLACE, p, n, dt, mop, impl->comm), "MPI_Allreduce");
                  });
                  if (op == ReduceOp::kAvg) t.div_(size);
                });
}

WorkPtr MpiCommunicator::broadcast(torch::Tensor t, int root) {
  check_tensor("broadcast", t);
  STRIDE_CHECK(t.device().is_cpu(), "the MPI communicator takes CPU tensors");
  STRIDE_CHECK(root >= 0 && root < size_, "broadcast root ", root, " of ", size_, " ranks");
  if (impl_->shm_for(t.scalar_type())) {
    return submit(concat("shared-memory broadcast of ", t.numel(), " x ", t.scalar_type(), " from rank ", root),
                  [impl = impl_, t, root, limit = timeout()] { impl->shm->broadcast(t, root, limit); });
  }
  const MPI_Datatype dt = impl_->datatype(t);
  return submit(
      concat("MPI_Bcast of ", t.numel(), " x ", t.scalar_type(), " from rank ", root), [impl = impl_, t, dt, root] {
        Impl::chunked(t, [&](void* p, int n) { impl->check(MPI_Bcast(p, n, dt, root, impl->comm), "MPI_Bcast"); });
      });
}

WorkPtr MpiCommunicator::allgather(torch::Tensor in, torch::Tensor out) {
  check_tensor("allgather", in);
  check_tensor("allgather", out);
  STRIDE_CHECK(in.device().is_cpu() && out.device().is_cpu(), "the MPI communicator takes CPU tensors");
  STRIDE_CHECK_EQ(out.numel(), in.numel() * size_, "allgather output size on ", describe());
  STRIDE_CHECK(in.scalar_type() == out.scalar_type(), "allgather dtypes differ: ", in.scalar_type(), " vs ",
               out.scalar_type());
  if (impl_->shm_for(in.scalar_type())) {
    return submit(concat("shared-memory allgather of ", in.numel(), " x ", in.scalar_type()),
                  [impl = impl_, in, out, limit = timeout()] { impl->shm->allgather(in, out, limit); });
  }
  STRIDE_CHECK_LE(in.numel(), INT_MAX, "allgather input too large for one MPI call");
  const MPI_Datatype dt = impl_->datatype(in);
  return submit(concat("MPI_Allgather of ", in.numel(), " x ", in.scalar_type()), [impl = impl_, in, out, dt] {
    const int n = static_cast<int>(in.numel());
    impl->check(MPI_Allgather(in.data_ptr(), n, dt, out.data_ptr(), n, dt, impl->comm), "MPI_Allgather");
  });
}

WorkPtr MpiCommunicator::sendrecv(torch::Tensor send, int dst, torch::Tensor recv, int src) {
  check_sendrecv(send, dst, recv, src);
  STRIDE_CHECK(send.device().is_cpu() && recv.device().is_cpu(), "the MPI communicator takes CPU tensors");
  const MPI_Datatype dt = impl_->datatype(send);
  return submit(concat("MPI sendrecv of ", send.numel(), " x ", send.scalar_type(), " to rank ", dst, " and ",
                       recv.numel(), " from rank ", src),
                [impl = impl_, send, recv, dst, src, dt] {
                  // Every chunk of both messages in flight at once: the two sides may cut their messages into
                  // different numbers of chunks, and MPI keeps the chunks of one pair of ranks in order.
                  std::vector<MPI_Request> requests;
                  Impl::chunked(recv, [&](void* p, int n) {
                    requests.emplace_back();
                    impl->check(MPI_Irecv(p, n, dt, src, kSendRecvTag, impl->comm, &requests.back()), "MPI_Irecv");
                  });
                  Impl::chunked(send, [&](void* p, int n) {
                    requests.emplace_back();
                    impl->check(MPI_Isend(p, n, dt, dst, kSendRecvTag, impl->comm, &requests.back()), "MPI_Isend");
                  });
                  impl->check(MPI_Waitall(static_cast<int>(requests.size()), requests.data(), MPI_STATUSES_IGNORE),
                              "MPI_Waitall");
                });
}

WorkPtr MpiCommunicator::barrier() {
  if (impl_->shm_active()) {
    return submit("shared-memory barrier", [impl = impl_, limit = timeout()] { impl->shm->barrier(limit); });
  }
  return submit("MPI_Barrier", [impl = impl_] { impl->check(MPI_Barrier(impl->comm), "MPI_Barrier"); });
}

// Over shared memory, the blocking forms run on the calling thread, on a group of their own: no hand-off to the
// owner thread and back, no wait behind a gradient bucket, and the caller (blocked anyway) spins longer before
// sleeping.
void MpiCommunicator::allreduce_now(torch::Tensor t, ReduceOp op) {
  check_tensor("allreduce", t);
  if (!t.device().is_cpu() || !impl_->shm_active() || !ShmGroup::supports(t.scalar_type(), op)) {
    allreduce(t, op)->wait();
    return;
  }
  torch::NoGradGuard no_grad;
  std::lock_guard<std::mutex> lock(impl_->caller_mu);
  impl_->caller_shm->allreduce(t, op, timeout(), /*caller_waits=*/true);
}

void MpiCommunicator::allgather_now(torch::Tensor in, torch::Tensor out) {
  check_tensor("allgather", in);
  check_tensor("allgather", out);
  if (!in.device().is_cpu() || !out.device().is_cpu() || !impl_->shm_for(in.scalar_type())) {
    allgather(in, out)->wait();
    return;
  }
  std::lock_guard<std::mutex> lock(impl_->caller_mu);
  impl_->caller_shm->allgather(in, out, timeout(), /*caller_waits=*/true);
}

torch::Tensor MpiCommunicator::alloc_buffer(int64_t numel, const torch::TensorOptions& options) {
  const auto dtype = c10::typeMetaToScalarType(options.dtype());
  if (!impl_->shm || !options.device().is_cpu() || !ShmGroup::supports(dtype)) {
    return Communicator::alloc_buffer(numel, options);
  }
  torch::Tensor out;
  std::string error;
  run_on_owner([&] {
    try {
      out = impl_->shm->alloc(numel, dtype);
    } catch (const Error& e) {  // agreed by every rank
      error = e.what();
    }
  });
  if (!out.defined()) {
    if (rank_ == 0) std::fprintf(stderr, "stride: warning: %s; that buffer is copied through staging\n", error.c_str());
    return Communicator::alloc_buffer(numel, options);
  }
  return out;
}

Layout MpiCommunicator::layout() const {
  Layout l;
  l.backend = "mpi";
  l.hosts = impl_->hosts;
  l.local_size = impl_->local_size;
  // The way of a gradient bucket: float32 sums of 25 MiB (the default cap).
  l.transport = impl_->path(int64_t{25} << 20, torch::kFloat, ReduceOp::kSum);
  const ShmGroup* group = l.transport == Transport::kShm    ? impl_->shm.get()
                          : l.transport == Transport::kHier ? impl_->local_shm.get()
                                                            : nullptr;
  if (group) l.shm_wait = group->waiters_spin() ? ShmWait::kSpin : ShmWait::kSleep;
  return l;
}

std::string MpiCommunicator::allreduce_path(const torch::Tensor& t, ReduceOp op) const {
  Layout l;
  l.backend = "mpi";
  l.transport = impl_->path(t, op);
  return l.transport_name();
}

int MpiCommunicator::local_size() const { return impl_->local_size; }

bool MpiCommunicator::set_shm_enabled(bool enabled) {
  impl_->use_shm = enabled;
  return impl_->shm_active();
}

void MpiCommunicator::set_shm_wait(bool spin) {
  if (!impl_->shm) return;
  impl_->shm->set_waiters_spin(spin);
  impl_->caller_shm->set_waiters_spin(spin);
}

void MpiCommunicator::run_on_owner(std::function<void()> fn) {
  std::promise<void> done;
  auto future = done.get_future();
  impl_->owner.post([&] {
    try {
      fn();
      done.set_value();
    } catch (...) {
      done.set_exception(std::current_exception());
    }
  });
  future.get();
}

}  // namespace stride::comm
