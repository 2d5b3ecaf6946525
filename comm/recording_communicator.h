// RecordingCommunicator: a Communicator that passes every collective to another one and records it in a
// FlightRecorder (comm/flight_recorder.h): entered when issued, completed when a wait returns, when completed()
// says so, or when the recorder polls (the heartbeat thread does, so a collective nobody waits on yet still
// completes in the ring). The training code sees one Communicator either way; with --flight-recorder 0 the
// trainer does not wrap at all.
//
// Test hook (tests/system/flight_recorder_test.sh): STRIDE_TEST_SKIP_ALLREDUCE=RANK:STEP:BUCKET makes that rank
// never issue bucket BUCKET's all-reduce of step STEP: its issuing thread stops there for good, as a rank stuck
// before a collective would, while its peers wait inside it. Read once, at construction.
//
// Thread-safety: as Communicator.
#pragma once

#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "comm/communicator.h"
#include "comm/flight_recorder.h"

namespace stride::comm {

class RecordingCommunicator : public Communicator {
 public:
  RecordingCommunicator(std::shared_ptr<Communicator> inner, std::shared_ptr<FlightRecorder> recorder);

  int rank() const override { return inner_->rank(); }
  int size() const override { return inner_->size(); }
  int local_rank() const override { return inner_->local_rank(); }
  std::string backend() const override { return inner_->backend(); }
  std::string host() const override { return inner_->host(); }
  Layout layout() const override { return inner_->layout(); }
  torch::Tensor alloc_buffer(int64_t numel, const torch::TensorOptions& options) override {
    return inner_->alloc_buffer(numel, options);
  }

  WorkPtr allreduce(torch::Tensor tensor, ReduceOp op) override;
  WorkPtr broadcast(torch::Tensor tensor, int root) override;
  WorkPtr allgather(torch::Tensor input, torch::Tensor output) override;
  WorkPtr barrier() override;
  WorkPtr sendrecv(torch::Tensor send, int dst, torch::Tensor recv, int src) override;
  void allreduce_now(torch::Tensor tensor, ReduceOp op) override;
  void allgather_now(torch::Tensor input, torch::Tensor output) override;

  const std::shared_ptr<FlightRecorder>& recorder() const { return recorder_; }
  // Measurement only (`stride bench step --interleave diagnosis`): false forwards collectives unrecorded. Switch it
  // between steps, with no collective open.
  void set_recording(bool on) { recording_.store(on, std::memory_order_relaxed); }
  const std::shared_ptr<Communicator>& inner() const { return inner_; }

  struct Open;  // the shared state of the recorded Works

 private:
  WorkPtr record(CollectiveKind kind, const torch::Tensor& t, const std::function<WorkPtr()>& issue);
  void skip_hook(int64_t bucket);

  std::shared_ptr<Communicator> inner_;
  std::shared_ptr<FlightRecorder> recorder_;
  std::shared_ptr<Open> open_;
  int64_t skip_step_ = -1, skip_bucket_ = -1;  // the test hook, when it names this rank
  std::atomic<bool> recording_{true};
};

}  // namespace stride::comm
