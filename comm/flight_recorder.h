// The collective flight recorder: a bounded ring of this rank's last N collectives (kind, bytes, dtype, origin,
// enqueue/start/end times, state), as PyTorch's NCCL flight recorder keeps. A hang is then diagnosed by comparing
// the ranks' progress (Note [Hang verdict] in cluster/coordinator_core.h), not by waiting for a timeout.
//
// Note [Collective streams]
// A rank issues collectives on two streams whose relative order may differ between ranks: the asynchronous ones
// (allreduce/broadcast/allgather/barrier: gradient buckets, control points, evaluation sums) and the blocking
// ones (allreduce_now/allgather_now: SyncBatchNorm's statistics, which a back-end may run on a channel of their
// own while a bucket is in flight). Within each stream every rank issues the same collectives in the same order
// (the Communicator contract), so each stream numbers its collectives 1, 2, 3, ... and "#k" names the same
// collective on every rank. A single number across both streams would not.
//
// Origins: the code that issues a collective says why with an OriginScope on its thread (bucket 4, SyncBN layer
// "layer1.0.bn1", control point, evaluation); the step is set by the training loop (set_step). Both are read
// when the collective is recorded.
//
// Thread-safety: every method may be called from any thread. One short mutex section per collective begun and
// ended (a few hundred nanoseconds; collectives take tens of microseconds at least). Torch-free.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace stride::comm {

enum class CollectiveStream : uint8_t { kAsync = 0, kBlocking = 1 };
constexpr int kCollectiveStreams = 2;
enum class CollectiveKind : uint8_t { kAllreduce, kBroadcast, kAllgather, kBarrier, kSendRecv };
enum class CollectiveState : uint8_t { kOpen, kCompleted, kFailed };
enum class OriginKind : uint8_t { kNone, kBucket, kSyncBn, kControl, kEval, kOther };

const char* collective_kind_name(CollectiveKind kind);
const char* collective_state_name(CollectiveState state);
const char* collective_stream_name(CollectiveStream stream);

// Why a collective was issued. `name` must stay valid while the scope that set it is open; the recorder copies it.
struct Origin {
  OriginKind kind = OriginKind::kNone;
  int64_t index = -1;  // bucket index; SyncBN: 0 forward, 1 backward
  const char* name = nullptr;
};

// Sets this thread's origin for the collectives it issues until the scope ends (scopes nest).
class OriginScope {
 public:
  explicit OriginScope(OriginKind kind, int64_t index = -1, const char* name = nullptr);
  ~OriginScope();
  OriginScope(const OriginScope&) = delete;
  OriginScope& operator=(const OriginScope&) = delete;
  static Origin current();

 private:
  Origin saved_;
};

struct CollectiveRecord {
  uint64_t id = 0;   // position in the ring's history (all streams), from 1
  uint64_t seq = 0;  // number within its stream, from 1 (Note [Collective streams])
  CollectiveStream stream = CollectiveStream::kAsync;
  CollectiveKind kind = CollectiveKind::kAllreduce;
  CollectiveState state = CollectiveState::kOpen;
  OriginKind origin_kind = OriginKind::kNone;
  int64_t origin_index = -1;
  int64_t step = 0;  // the training loop's step when it was issued (1-based: the step being computed)
  int64_t bytes = 0;
  char dtype[12] = {0};
  char origin_name[48] = {0};
  double enqueue_s = 0, start_s = 0, end_s = 0;  // steady clock seconds; 0: not known (yet)
};

// "bucket 4 of step 91", "SyncBN layer1.0.bn1 backward of step 91", "control point at step 91".
std::string describe_origin(const CollectiveRecord& r);
// "allreduce #183" (blocking stream: "allreduce #12 (blocking)").
std::string describe_collective(const CollectiveRecord& r);

// One stream's progress, as heartbeats carry it.
struct StreamProgress {
  uint64_t started = 0;    // newest sequence number entered (issued) by this rank
  uint64_t completed = 0;  // newest sequence number completed
  bool has_last = false;
  CollectiveRecord last;  // the newest entered
  bool has_open = false;
  CollectiveRecord open;  // the oldest entered and not completed
  double open_seconds = 0;
};

class FlightRecorder {
 public:
  // `capacity` entries (at least 1).
  explicit FlightRecorder(size_t capacity);

  size_t capacity() const { return ring_.size(); }
  // The step being computed, recorded with every collective from now on.
  void set_step(int64_t step) { step_.store(step, std::memory_order_relaxed); }
  int64_t step() const { return step_.load(std::memory_order_relaxed); }

  // A collective is being issued (entered) with this thread's current origin. Returns its id for end().
  uint64_t begin(CollectiveStream stream, CollectiveKind kind, int64_t bytes, const char* dtype);
  // The collective `id` finished; `start_s` (0: unknown) and `end_s` in steady seconds (0: now).
  void end(uint64_t id, bool ok, double start_s = 0, double end_s = 0);

  // Called before progress() and snapshot() read the ring: lets the communicator notice collectives that finished
  // while nobody waited on them yet. Set once, before collectives are issued.
  void set_poller(std::function<void()> poll) { poller_ = std::move(poll); }

  StreamProgress progress(CollectiveStream stream);
  // The ring's records, oldest first.
  std::vector<CollectiveRecord> snapshot();
  // This rank's ring as JSON (the format `stride trace` reads, docs/operations.md): rank, host, the clock offset
  // that turns steady seconds into unix time, and every record.
  std::string to_json(int rank, const std::string& host, const std::string& reason);

  static double now_s();

 private:
  std::atomic<int64_t> step_{0};
  std::function<void()> poller_;
  std::mutex mu_;  // guards everything below
  std::vector<CollectiveRecord> ring_;
  uint64_t next_id_ = 1;
  uint64_t started_[kCollectiveStreams] = {0, 0};
  uint64_t completed_[kCollectiveStreams] = {0, 0};
  // Open collectives by sequence number, copied: a long-open one stays known after the ring wrapped over it.
  std::map<uint64_t, CollectiveRecord> open_[kCollectiveStreams];
  CollectiveRecord last_[kCollectiveStreams];
};

}  // namespace stride::comm
