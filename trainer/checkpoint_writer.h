// A rank's background checkpoint writer (phase one of Note [Coordinated checkpoints] in
// cluster/coordinator_core.h): the training thread hands over an in-memory snapshot and trains on; this thread
// encodes the tensors as safetensors, writes and fsyncs the files into the step directory and hands a
// CheckpointReport (names, sizes, CRC32C, or the error) to the sink, which sends it to the coordinator.
// Jobs run in submission order. Thread-safe.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "proto/cluster.pb.h"
#include "trainer/checkpoint.h"

namespace stride::trainer {

struct CheckpointJob {
  uint64_t step = 0;
  std::vector<std::pair<std::string, NamedTensors>> files;  // file name -> host tensors owned by the job
  std::optional<proto::Manifest> manifest;                  // the training state (rank 0)
};

// A copy of `tensors` in host memory that training can no longer change: a clone on the CPU, pinned host copies
// (asynchronous, one synchronisation for all) on a GPU. This is the training thread's whole share of a checkpoint.
NamedTensors snapshot_to_host(const NamedTensors& tensors);

class CheckpointWriter {
 public:
  using Sink = std::function<void(proto::CheckpointReport)>;
  CheckpointWriter(std::string checkpoint_root, Sink sink, std::shared_ptr<FileOps> ops = real_file_ops());
  // Finishes the queued jobs first.
  ~CheckpointWriter();
  void submit(CheckpointJob job);
  // Waits until every submitted job has been written and reported.
  void drain();
  size_t queued() const;
  // Bytes written and seconds spent by the last job.
  std::pair<uint64_t, double> last_write() const;

 private:
  void run();
  std::string root_;
  Sink sink_;
  std::shared_ptr<FileOps> ops_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<CheckpointJob> jobs_;
  bool busy_ = false, stop_ = false;
  uint64_t last_bytes_ = 0;
  double last_seconds_ = 0;
  double fault_delay_s_ = 0;  // STRIDE_FAULT_CHECKPOINT_DELAY_S: tests widen the write window to kill a rank in it
  std::thread thread_;
};

}  // namespace stride::trainer
