#include "comm/flight_recorder.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstring>

#include "common/error.h"

namespace stride::comm {
namespace {

thread_local Origin t_origin;

template <size_t N>
void copy_name(char (&dst)[N], const char* src) {
  if (!src) {
    dst[0] = 0;
    return;
  }
  std::strncpy(dst, src, N - 1);
  dst[N - 1] = 0;
}

}  // namespace

const char* collective_kind_name(CollectiveKind kind) {
  switch (kind) {
    case CollectiveKind::kAllreduce:
      return "allreduce";
    case CollectiveKind::kBroadcast:
      return "broadcast";
    case CollectiveKind::kAllgather:
      return "allgather";
    case CollectiveKind::kBarrier:
      return "barrier";
    case CollectiveKind::kSendRecv:
      return "sendrecv";
  }
  return "?";
}

const char* collective_state_name(CollectiveState state) {
  switch (state) {
    case CollectiveState::kOpen:
      return "open";
    case CollectiveState::kCompleted:
      return "completed";
    case CollectiveState::kFailed:
      return "failed";
  }
  return "?";
}

const char* collective_stream_name(CollectiveStream stream) {
  return stream == CollectiveStream::kAsync ? "async" : "blocking";
}

OriginScope::OriginScope(OriginKind kind, int64_t index, const char* name) : saved_(t_origin) {
  t_origin = Origin{kind, index, name};
}
OriginScope::~OriginScope() { t_origin = saved_; }
Origin OriginScope::current() { return t_origin; }

std::string describe_origin(const CollectiveRecord& r) {
  const std::string name = r.origin_name;
  switch (r.origin_kind) {
    case OriginKind::kBucket:
      return concat("bucket ", r.origin_index, " of step ", r.step);
    case OriginKind::kSyncBn:
      return concat("SyncBN ", name.empty() ? "layer" : name, r.origin_index == 1 ? " backward" : " forward",
                    " of step ", r.step);
    case OriginKind::kControl:
      return concat("control point at step ", r.step);
    case OriginKind::kEval:
      return concat("evaluation at step ", r.step);
    case OriginKind::kOther:
      return concat(name.empty() ? "other" : name, " at step ", r.step);
    case OriginKind::kNone:
      break;
  }
  return concat("unattributed, at step ", r.step);
}

std::string describe_collective(const CollectiveRecord& r) {
  return concat(collective_kind_name(r.kind), " #", r.seq,
                r.stream == CollectiveStream::kBlocking ? " (blocking)" : "");
}

double FlightRecorder::now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

FlightRecorder::FlightRecorder(size_t capacity) : ring_(std::max<size_t>(capacity, 1)) {}

uint64_t FlightRecorder::begin(CollectiveStream stream, CollectiveKind kind, int64_t bytes, const char* dtype) {
  const Origin o = t_origin;
  CollectiveRecord r;
  r.stream = stream;
  r.kind = kind;
  r.bytes = bytes;
  copy_name(r.dtype, dtype);
  r.origin_kind = o.kind;
  r.origin_index = o.index;
  copy_name(r.origin_name, o.name);
  r.step = step_.load(std::memory_order_relaxed);
  r.enqueue_s = now_s();
  const auto s = static_cast<size_t>(stream);
  std::lock_guard<std::mutex> lock(mu_);
  r.id = next_id_++;
  r.seq = ++started_[s];
  ring_[(r.id - 1) % ring_.size()] = r;
  open_[s].emplace(r.seq, r);
  last_[s] = r;
  return r.id;
}

void FlightRecorder::end(uint64_t id, bool ok, double start_s, double end_s) {
  if (end_s == 0) end_s = now_s();
  const CollectiveState state = ok ? CollectiveState::kCompleted : CollectiveState::kFailed;
  std::lock_guard<std::mutex> lock(mu_);
  for (int s = 0; s < kCollectiveStreams; ++s) {
    auto it = std::find_if(open_[s].begin(), open_[s].end(), [&](const auto& kv) { return kv.second.id == id; });
    if (it == open_[s].end()) continue;
    completed_[s] = std::max(completed_[s], it->first);
    open_[s].erase(it);
    break;
  }
  CollectiveRecord& slot = ring_[(id - 1) % ring_.size()];
  if (slot.id != id) return;  // overwritten: the ring has moved on
  slot.state = state;
  slot.start_s = start_s;
  slot.end_s = end_s;
}

StreamProgress FlightRecorder::progress(CollectiveStream stream) {
  if (poller_) poller_();
  const auto s = static_cast<size_t>(stream);
  StreamProgress p;
  std::lock_guard<std::mutex> lock(mu_);
  p.started = started_[s];
  p.completed = completed_[s];
  p.has_last = started_[s] > 0;
  p.last = last_[s];
  if (!open_[s].empty()) {
    p.has_open = true;
    p.open = open_[s].begin()->second;
    p.open_seconds = now_s() - p.open.enqueue_s;
  }
  return p;
}

std::vector<CollectiveRecord> FlightRecorder::snapshot() {
  if (poller_) poller_();
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<CollectiveRecord> out;
  const uint64_t total = next_id_ - 1;
  const uint64_t first = total > ring_.size() ? total - ring_.size() + 1 : 1;
  out.reserve(static_cast<size_t>(total - first + 1));
  for (uint64_t id = first; id <= total; ++id) out.push_back(ring_[(id - 1) % ring_.size()]);
  return out;
}

std::string FlightRecorder::to_json(int rank, const std::string& host, const std::string& reason) {
  using nlohmann::json;
  const auto records = snapshot();
  const double steady = now_s();
  const double wall = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  json entries = json::array();
  for (const auto& r : records) {
    entries.push_back({{"seq", r.seq},
                       {"stream", collective_stream_name(r.stream)},
                       {"kind", collective_kind_name(r.kind)},
                       {"state", collective_state_name(r.state)},
                       {"bytes", r.bytes},
                       {"dtype", r.dtype},
                       {"origin", describe_origin(r)},
                       {"step", r.step},
                       {"enqueue_s", r.enqueue_s},
                       {"start_s", r.start_s > 0 ? json(r.start_s) : json(nullptr)},
                       {"end_s", r.end_s > 0 ? json(r.end_s) : json(nullptr)}});
  }
  json j = {{"format", "stride-flight-recorder-1"},
            {"rank", rank},
            {"host", host},
            {"reason", reason},
            {"capacity", ring_.size()},
            {"dumped_at_s", steady},
            {"wall_minus_steady_s", wall - steady},
            {"entries", entries}};
  return j.dump(1) + "\n";
}

}  // namespace stride::comm
