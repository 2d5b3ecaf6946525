#include "comm/recording_communicator.h"

#include <c10/core/ScalarType.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>

namespace stride::comm {

// The Works in flight, shared with the recorder's poller (which may outlive this communicator).
struct RecordingCommunicator::Open {
  std::mutex mu;
  std::map<uint64_t, WorkPtr> works;  // recorder id -> the inner Work, until its completion is recorded

  // Records the end of `id` once (whoever notices first). `failed`: a wait threw (a timeout leaves no error()).
  void finished(FlightRecorder& rec, uint64_t id, const Work& w, bool failed = false) {
    {
      std::lock_guard<std::mutex> lock(mu);
      if (works.erase(id) == 0) return;
    }
    const double end = FlightRecorder::now_s();
    const double run = w.run_seconds();
    rec.end(id, !failed && w.error() == nullptr, run > 0 ? end - run : 0, end);
  }

  void poll(FlightRecorder& rec) {
    std::vector<std::pair<uint64_t, WorkPtr>> done;
    {
      std::lock_guard<std::mutex> lock(mu);
      for (auto& [id, w] : works) {
        if (w->completed()) done.emplace_back(id, w);
      }
    }
    for (auto& [id, w] : done) finished(rec, id, *w);
  }
};

namespace {

class RecordedWork : public Work {
 public:
  RecordedWork(WorkPtr inner, std::shared_ptr<FlightRecorder> rec, std::shared_ptr<RecordingCommunicator::Open> open,
               uint64_t id)
      : inner_(std::move(inner)), rec_(std::move(rec)), open_(std::move(open)), id_(id) {}
  void wait() override {
    try {
      inner_->wait();
    } catch (...) {
      open_->finished(*rec_, id_, *inner_, /*failed=*/true);
      throw;
    }
    open_->finished(*rec_, id_, *inner_);
  }
  bool completed() const override {
    if (!inner_->completed()) return false;
    open_->finished(*rec_, id_, *inner_);
    return true;
  }
  std::exception_ptr error() const override { return inner_->error(); }
  double run_seconds() const override { return inner_->run_seconds(); }
  bool run_interval(std::chrono::steady_clock::time_point* start,
                    std::chrono::steady_clock::time_point* end) const override {
    return inner_->run_interval(start, end);
  }

 private:
  WorkPtr inner_;
  std::shared_ptr<FlightRecorder> rec_;
  std::shared_ptr<RecordingCommunicator::Open> open_;
  uint64_t id_;
};

int64_t tensor_bytes(const torch::Tensor& t) {
  return t.defined() ? t.numel() * static_cast<int64_t>(t.element_size()) : 0;
}
const char* tensor_dtype(const torch::Tensor& t) { return t.defined() ? c10::toString(t.scalar_type()) : ""; }

}  // namespace

RecordingCommunicator::RecordingCommunicator(std::shared_ptr<Communicator> inner,
                                             std::shared_ptr<FlightRecorder> recorder)
    : inner_(std::move(inner)), recorder_(std::move(recorder)), open_(std::make_shared<Open>()) {
  set_timeout(inner_->timeout());
  recorder_->set_poller([open = open_, rec = recorder_.get()] { open->poll(*rec); });
  if (const char* hook = std::getenv("STRIDE_TEST_SKIP_ALLREDUCE"); hook && *hook) {
    long long r = -1, s = -1, b = -1;
    if (std::sscanf(hook, "%lld:%lld:%lld", &r, &s, &b) != 3 || r < 0 || s < 1 || b < 0) {
      throw UsageError(concat("STRIDE_TEST_SKIP_ALLREDUCE='", hook, "' is not RANK:STEP:BUCKET (step from 1)"));
    }
    if (r == inner_->rank()) {
      skip_step_ = s;
      skip_bucket_ = b;
    }
  }
}

void RecordingCommunicator::skip_hook(int64_t bucket) {
  if (skip_step_ < 0 || bucket != skip_bucket_ || recorder_->step() != skip_step_) return;
  std::fprintf(stderr,
               "stride: test hook STRIDE_TEST_SKIP_ALLREDUCE: rank %d never issues the all-reduce of bucket %lld of "
               "step %lld; this thread stops here\n",
               rank(), static_cast<long long>(bucket), static_cast<long long>(skip_step_));
  std::fflush(stderr);
  for (;;) std::this_thread::sleep_for(std::chrono::seconds(1));
}

WorkPtr RecordingCommunicator::record(CollectiveKind kind, const torch::Tensor& t,
                                      const std::function<WorkPtr()>& issue) {
  if (!recording_.load(std::memory_order_relaxed)) return issue();
  const uint64_t id = recorder_->begin(CollectiveStream::kAsync, kind, tensor_bytes(t), tensor_dtype(t));
  WorkPtr w;
  try {
    w = issue();
  } catch (...) {
    recorder_->end(id, false);
    throw;
  }
  {
    std::lock_guard<std::mutex> lock(open_->mu);
    open_->works.emplace(id, w);
  }
  return std::make_shared<RecordedWork>(std::move(w), recorder_, open_, id);
}

WorkPtr RecordingCommunicator::allreduce(torch::Tensor tensor, ReduceOp op) {
  const Origin o = OriginScope::current();
  if (o.kind == OriginKind::kBucket) skip_hook(o.index);
  return record(CollectiveKind::kAllreduce, tensor, [&] { return inner_->allreduce(tensor, op); });
}

WorkPtr RecordingCommunicator::broadcast(torch::Tensor tensor, int root) {
  return record(CollectiveKind::kBroadcast, tensor, [&] { return inner_->broadcast(tensor, root); });
}

WorkPtr RecordingCommunicator::allgather(torch::Tensor input, torch::Tensor output) {
  return record(CollectiveKind::kAllgather, input, [&] { return inner_->allgather(input, output); });
}

WorkPtr RecordingCommunicator::barrier() {
  return record(CollectiveKind::kBarrier, torch::Tensor(), [&] { return inner_->barrier(); });
}

WorkPtr RecordingCommunicator::sendrecv(torch::Tensor send, int dst, torch::Tensor recv, int src) {
  return record(CollectiveKind::kSendRecv, send, [&] { return inner_->sendrecv(send, dst, recv, src); });
}

void RecordingCommunicator::allreduce_now(torch::Tensor tensor, ReduceOp op) {
  if (!recording_.load(std::memory_order_relaxed)) return inner_->allreduce_now(tensor, op);
  const uint64_t id = recorder_->begin(CollectiveStream::kBlocking, CollectiveKind::kAllreduce, tensor_bytes(tensor),
                                       tensor_dtype(tensor));
  const double start = FlightRecorder::now_s();
  try {
    inner_->allreduce_now(tensor, op);
  } catch (...) {
    recorder_->end(id, false, start);
    throw;
  }
  recorder_->end(id, true, start);
}

void RecordingCommunicator::allgather_now(torch::Tensor input, torch::Tensor output) {
  if (!recording_.load(std::memory_order_relaxed)) return inner_->allgather_now(input, output);
  const uint64_t id = recorder_->begin(CollectiveStream::kBlocking, CollectiveKind::kAllgather, tensor_bytes(input),
                                       tensor_dtype(input));
  const double start = FlightRecorder::now_s();
  try {
    inner_->allgather_now(input, output);
  } catch (...) {
    recorder_->end(id, false, start);
    throw;
  }
  recorder_->end(id, true, start);
}

}  // namespace stride::comm
