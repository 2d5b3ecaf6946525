#include "comm/nccl/nccl_communicator.h"

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <atomic>
#include <cstring>
#include <deque>
#include <thread>

#ifdef STRIDE_TORCH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace stride::comm {
namespace {

void cuda_check(cudaError_t rc, const char* call) {
  if (rc != cudaSuccess) throw CommError(concat(call, " failed: ", cudaGetErrorString(rc)));
}

ncclDataType_t nccl_type(const torch::Tensor& t) {
  switch (t.scalar_type()) {
    case torch::kFloat:
      return ncclFloat32;
    case torch::kDouble:
      return ncclFloat64;
    case torch::kHalf:
      return ncclFloat16;
    case torch::kBFloat16:
      return ncclBfloat16;
    case torch::kLong:
      return ncclInt64;
    case torch::kInt:
      return ncclInt32;
    case torch::kChar:
      return ncclInt8;
    case torch::kByte:
    case torch::kBool:
      return ncclUint8;
    default:
      throw Error(concat("NCCL communicator: unsupported dtype ", t.scalar_type()));
  }
}

ncclRedOp_t nccl_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
      return ncclSum;
    case ReduceOp::kAvg:
      return ncclAvg;
    case ReduceOp::kMax:
      return ncclMax;
    case ReduceOp::kMin:
      return ncclMin;
  }
  return ncclSum;
}

// The stream LibTorch queues kernels on for `device` (the legacy default stream without CUDA LibTorch).
cudaStream_t compute_stream(int device) {
#ifdef STRIDE_TORCH_CUDA
  return c10::cuda::getCurrentCUDAStream(static_cast<c10::DeviceIndex>(device)).stream();
#else
  (void)device;
  return cudaStreamLegacy;
#endif
}

struct Shared {
  ncclComm_t comm = nullptr;
  int device = 0, rank = 0, size = 1;
  std::string host;
  std::chrono::milliseconds timeout{};
  std::mutex mu;
  std::exception_ptr failure;  // set by the watchdog; every later wait() rethrows it
  std::atomic<bool> aborted{false};

  void fail(const std::string& message) {
    std::lock_guard<std::mutex> lock(mu);
    if (!failure) failure = std::make_exception_ptr(CommError(message));
    if (!aborted.exchange(true)) ncclCommAbort(comm);
  }
  void rethrow() {
    std::lock_guard<std::mutex> lock(mu);
    if (failure) std::rethrow_exception(failure);
  }
};

class NcclWork : public Work {
 public:
  NcclWork(std::shared_ptr<Shared> s, std::string what, cudaEvent_t done)
      : s_(std::move(s)), what_(std::move(what)), done_(done), start_(std::chrono::steady_clock::now()) {}
  ~NcclWork() override { cudaEventDestroy(done_); }
  void wait() override {
    s_->rethrow();
    cuda_check(cudaStreamWaitEvent(compute_stream(s_->device), done_, 0), "cudaStreamWaitEvent");
  }
  bool completed() const override { return s_->aborted || cudaEventQuery(done_) == cudaSuccess; }
  std::exception_ptr error() const override {
    std::lock_guard<std::mutex> lock(s_->mu);
    return s_->failure;
  }
  const std::string& what() const { return what_; }
  std::chrono::steady_clock::time_point start() const { return start_; }

 private:
  std::shared_ptr<Shared> s_;
  std::string what_;
  cudaEvent_t done_;
  std::chrono::steady_clock::time_point start_;
};

class NcclCommunicator : public Communicator {
 public:
  NcclCommunicator(std::shared_ptr<Communicator> bootstrap, int device)
      : bootstrap_(std::move(bootstrap)), s_(std::make_shared<Shared>()) {
    s_->device = device;
    s_->rank = bootstrap_->rank();
    s_->size = bootstrap_->size();
    s_->host = bootstrap_->host();
    s_->timeout = bootstrap_->timeout();
    set_timeout(bootstrap_->timeout());
    cuda_check(cudaSetDevice(device), "cudaSetDevice");
    ncclUniqueId id;
    auto id_tensor = torch::zeros({static_cast<int64_t>(sizeof(id))}, torch::kByte);
    if (s_->rank == 0) {
      nccl_check(ncclGetUniqueId(&id), "ncclGetUniqueId");
      std::memcpy(id_tensor.data_ptr(), &id, sizeof(id));
    }
    bootstrap_->broadcast(id_tensor, 0)->wait();
    std::memcpy(&id, id_tensor.data_ptr(), sizeof(id));
    nccl_check(ncclCommInitRank(&s_->comm, s_->size, id, s_->rank), "ncclCommInitRank");
    cuda_check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
    watchdog_ = std::thread([this] { watch(); });
  }

  ~NcclCommunicator() override {
    {
      std::lock_guard<std::mutex> lock(pending_mu_);
      stop_ = true;
    }
    watchdog_.join();
    if (!s_->aborted) {
      cudaStreamSynchronize(stream_);
      ncclCommDestroy(s_->comm);
    }
    cudaStreamDestroy(stream_);
  }

  int rank() const override { return s_->rank; }
  int size() const override { return s_->size; }
  int local_rank() const override { return bootstrap_->local_rank(); }
  std::string backend() const override { return "nccl"; }
  std::string host() const override { return s_->host; }

  WorkPtr allreduce(torch::Tensor t, ReduceOp op) override {
    check(t, "allreduce");
    return launch(concat("ncclAllReduce ", reduce_op_name(op), " of ", t.numel(), " x ", t.scalar_type()), {t}, [&] {
      return ncclAllReduce(t.data_ptr(), t.data_ptr(), static_cast<size_t>(t.numel()), nccl_type(t), nccl_op(op),
                           s_->comm, stream_);
    });
  }
  WorkPtr broadcast(torch::Tensor t, int root) override {
    check(t, "broadcast");
    return launch(concat("ncclBroadcast of ", t.numel(), " x ", t.scalar_type(), " from rank ", root), {t}, [&] {
      return ncclBroadcast(t.data_ptr(), t.data_ptr(), static_cast<size_t>(t.numel()), nccl_type(t), root, s_->comm,
                           stream_);
    });
  }
  WorkPtr allgather(torch::Tensor in, torch::Tensor out) override {
    check(in, "allgather");
    check(out, "allgather");
    STRIDE_CHECK_EQ(out.numel(), in.numel() * size(), "allgather output size on ", describe());
    return launch(concat("ncclAllGather of ", in.numel(), " x ", in.scalar_type()), {in, out}, [&] {
      return ncclAllGather(in.data_ptr(), out.data_ptr(), static_cast<size_t>(in.numel()), nccl_type(in), s_->comm,
                           stream_);
    });
  }
  WorkPtr barrier() override {
    // A one-element allreduce orders every rank's stream; wait() then orders the caller's.
    auto t = torch::zeros({1}, torch::TensorOptions().dtype(torch::kFloat).device(torch::kCUDA, s_->device));
    return allreduce(t, ReduceOp::kSum);
  }

 private:
  static void nccl_check(ncclResult_t rc, const char* call) {
    if (rc != ncclSuccess && rc != ncclInProgress) {
      throw CommError(concat(call, " failed: ", ncclGetErrorString(rc), " (", ncclGetLastError(nullptr), ")"));
    }
  }

  void check(const torch::Tensor& t, const char* op) const {
    check_tensor(op, t);
    if (!t.is_cuda()) throw Error(concat(op, " on ", describe(), ": the NCCL communicator takes CUDA tensors"));
    if (t.device().index() != s_->device) {
      throw Error(concat(op, " on ", describe(), ": tensor on cuda:", t.device().index(),
                         ", communicator on cuda:", s_->device));
    }
  }

  template <typename F>
  WorkPtr launch(std::string what, std::initializer_list<torch::Tensor> tensors, F call) {
    s_->rethrow();
    what = concat(what, " on ", describe());
    // The comm stream starts after everything queued so far on the compute stream (the gradients' producers).
    cudaStream_t compute = compute_stream(s_->device);
    cudaEvent_t ready, done;
    cuda_check(cudaEventCreateWithFlags(&ready, cudaEventDisableTiming), "cudaEventCreate");
    cuda_check(cudaEventRecord(ready, compute), "cudaEventRecord");
    cuda_check(cudaStreamWaitEvent(stream_, ready, 0), "cudaStreamWaitEvent");
    cudaEventDestroy(ready);
#ifdef STRIDE_TORCH_CUDA
    // The caching allocator must not hand these blocks out again before the comm stream is done with them.
    for (const auto& t : tensors) {
      c10::cuda::CUDACachingAllocator::recordStream(t.storage().data_ptr(),
                                                    c10::cuda::getStreamFromExternal(stream_, s_->device));
    }
#else
    (void)tensors;
#endif
    const ncclResult_t rc = call();
    if (rc != ncclSuccess) {
      throw CommError(concat(what, " failed: ", ncclGetErrorString(rc), " (", ncclGetLastError(s_->comm), ")"));
    }
    cuda_check(cudaEventCreateWithFlags(&done, cudaEventDisableTiming), "cudaEventCreate");
    cuda_check(cudaEventRecord(done, stream_), "cudaEventRecord");
    auto work = std::make_shared<NcclWork>(s_, what, done);
    std::lock_guard<std::mutex> lock(pending_mu_);
    pending_.push_back(work);
    return work;
  }

  // Fails the communicator when a collective overstays the timeout or NCCL reports an asynchronous error.
  void watch() {
    cudaSetDevice(s_->device);
    for (;;) {
      {
        std::lock_guard<std::mutex> lock(pending_mu_);
        if (stop_) return;
        while (!pending_.empty() && pending_.front()->completed()) pending_.pop_front();
        if (!pending_.empty() && !s_->aborted) {
          const auto& w = pending_.front();
          if (std::chrono::steady_clock::now() - w->start() > s_->timeout) {
            s_->fail(concat(w->what(), " did not complete within ", s_->timeout.count() / 1000.0,
                            " s: a peer rank is probably dead or stuck; the NCCL communicator was aborted"));
          }
        }
      }
      if (!s_->aborted) {
        ncclResult_t async = ncclSuccess;
        if (ncclCommGetAsyncError(s_->comm, &async) == ncclSuccess && async != ncclSuccess && async != ncclInProgress) {
          s_->fail(concat("NCCL reported an asynchronous error on rank ", s_->rank, " (", s_->host,
                          "): ", ncclGetErrorString(async)));
        }
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }

  std::shared_ptr<Communicator> bootstrap_;
  std::shared_ptr<Shared> s_;
  cudaStream_t stream_ = nullptr;
  std::mutex pending_mu_;
  std::deque<std::shared_ptr<NcclWork>> pending_;
  bool stop_ = false;
  std::thread watchdog_;
};

}  // namespace

bool torch_has_cuda_support() {
#ifdef STRIDE_TORCH_CUDA
  return true;
#else
  return false;
#endif
}

std::shared_ptr<Communicator> make_nccl_communicator(std::shared_ptr<Communicator> bootstrap) {
  if (!torch_has_cuda_support()) {
    throw UsageError(
        "--comm-backend nccl: this stride was built against a LibTorch without CUDA (Debian's libtorch-dev is "
        "CPU-only); build against a CUDA LibTorch (docs/building.md) or use the MPI back-end");
  }
  if (!torch::cuda::is_available()) throw UsageError("--comm-backend nccl: no CUDA device is visible");
  const int devices = static_cast<int>(torch::cuda::device_count());
  const int device = bootstrap->local_rank() % devices;
  return std::make_shared<NcclCommunicator>(std::move(bootstrap), device);
}

}  // namespace stride::comm
