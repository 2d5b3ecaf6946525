// Ranks as threads in one process: a LocalWorld of N ranks hands out N communicators that meet at a rendezvous
// per collective. Used for unit tests of everything above the communicator (reducer, SyncBatchNorm, trainer) at
// N = 1..4 without MPI, and as the single-rank communicator of a plain one-process run.
//
// Like the MPI back-end, each communicator runs its collectives in order on one worker thread, so Works complete
// asynchronously and a test can overlap them with autograd exactly as in a real run. kill(rank) simulates a dead
// peer: the rank's own collectives fail and every peer waiting for it fails with CommError at once.
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <vector>

#include "comm/communicator.h"

namespace stride::comm {

class LocalWorld : public std::enable_shared_from_this<LocalWorld> {
 public:
  static std::shared_ptr<LocalWorld> create(int size);
  int size() const { return size_; }
  // The communicator of `rank`. Call once per rank.
  std::shared_ptr<Communicator> communicator(int rank);
  // `rank` dies: its collectives and those of peers that wait for it fail with CommError.
  void kill(int rank);

  enum class Kind { kAllreduce, kBroadcast, kAllgather, kBarrier };
  struct Entry {
    Kind kind;
    ReduceOp op = ReduceOp::kSum;
    int root = 0;
    torch::Tensor input, output;  // allreduce/broadcast: input is output
  };
  // Deposits rank's part of collective number `seq` and blocks until all ranks have (or one died, or timeout).
  void run(int rank, uint64_t seq, const Entry& entry, std::chrono::milliseconds timeout);

 private:
  explicit LocalWorld(int size) : size_(size), dead_(static_cast<size_t>(size), false) {}
  struct Slot {
    std::vector<std::optional<Entry>> entries;
    int arrived = 0, left = 0;
    bool done = false;
    std::exception_ptr error;
  };
  void complete(uint64_t seq, Slot& slot);

  const int size_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<uint64_t, Slot> slots_;
  std::vector<bool> dead_;
};

}  // namespace stride::comm
