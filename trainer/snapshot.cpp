#include "trainer/snapshot.h"

#include <pthread.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <set>

#include "common/error.h"
#include "storage/crc32c.h"
#include "trainer/safetensors.h"

namespace stride::trainer {
namespace fs = std::filesystem;

namespace {
constexpr int64_t kKeep = 2;   // snapshots a rank keeps
constexpr int64_t kSlots = 4;  // steps per rank compared at a start (kKeep; a crash may leave one more)
}  // namespace

std::string default_snapshot_dir(const std::string& output_dir) {
  std::error_code ec;
  fs::path abs = fs::weakly_canonical(fs::absolute(output_dir), ec);
  if (ec) abs = fs::absolute(output_dir);
  const std::string key = abs.string();
  std::string name = abs.filename().string();
  if (name.empty()) name = "run";
  char hash[16];
  std::snprintf(hash, sizeof(hash), "%08x", storage::crc32c(key.data(), key.size()));
  return (fs::path("/dev/shm/stride-snapshots") / concat(name, "-", hash)).string();
}

std::optional<uint64_t> newest_common_step(const std::vector<std::vector<uint64_t>>& held) {
  if (held.empty()) return std::nullopt;
  std::set<uint64_t> common(held[0].begin(), held[0].end());
  for (size_t r = 1; r < held.size(); ++r) {
    const std::set<uint64_t> mine(held[r].begin(), held[r].end());
    std::set<uint64_t> both;
    std::set_intersection(common.begin(), common.end(), mine.begin(), mine.end(), std::inserter(both, both.end()));
    common = std::move(both);
  }
  if (common.empty()) return std::nullopt;
  return *common.rbegin();
}

SnapshotStore::SnapshotStore(std::string root, uint64_t rank)
    : root_(std::move(root)), rank_dir_((fs::path(root_) / concat("rank-", rank)).string()), store_(rank_dir_) {
  thread_ = std::thread([this] {
    ::pthread_setname_np(::pthread_self(), "stride-snap");
    run();
  });
}

SnapshotStore::~SnapshotStore() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

std::vector<CheckpointInfo> SnapshotStore::valid(std::vector<CheckpointInfo>* skipped) const {
  std::vector<CheckpointInfo> ok;
  std::error_code ec;
  for (auto& info : store_.list(/*deep=*/true)) {
    if (info.valid) {
      ok.push_back(std::move(info));
    } else if (skipped && fs::exists(fs::path(info.path) / "MANIFEST", ec)) {
      skipped->push_back(std::move(info));  // one cut short (no MANIFEST) is normal after a kill: no warning
    }
  }
  return ok;
}

std::optional<SnapshotChoice> SnapshotStore::choose(const std::optional<std::pair<uint64_t, std::string>>& disk,
                                                    uint64_t world, comm::Communicator& comm, std::string* why) {
  std::vector<CheckpointInfo> skipped;
  std::vector<CheckpointInfo> mine;
  for (auto& info : valid(&skipped)) {
    const auto& m = info.manifest;
    const auto& l = m.lineage();
    const bool continues_disk =
        disk ? (l.has_parent() && l.parent_step() == disk->first && l.parent_id() == disk->second) : !l.has_parent();
    if (m.world_size() == world && continues_disk && (!disk || info.step > disk->first)) mine.push_back(info);
  }
  for (const auto& s : skipped) {
    std::fprintf(stderr, "stride: warning: skipping snapshot %s: %s\n", s.path.c_str(), s.problem.c_str());
  }
  // Every rank's steps, via one max-reduction over a table in which each rank fills its own row.
  const int64_t w = static_cast<int64_t>(world);
  auto table = torch::full({w * kSlots}, -1, torch::kInt64);
  for (int64_t i = 0; i < std::min<int64_t>(kSlots, static_cast<int64_t>(mine.size())); ++i) {
    table[comm.rank() * kSlots + i] = static_cast<int64_t>(mine[static_cast<size_t>(i)].step);
  }
  if (world > 1) comm.allreduce(table, comm::ReduceOp::kMax)->wait();
  std::vector<std::vector<uint64_t>> held(static_cast<size_t>(w));
  auto a = table.accessor<int64_t, 1>();
  for (int64_t r = 0; r < w; ++r) {
    for (int64_t i = 0; i < kSlots; ++i) {
      if (a[r * kSlots + i] >= 0) held[static_cast<size_t>(r)].push_back(static_cast<uint64_t>(a[r * kSlots + i]));
    }
  }
  const auto step = newest_common_step(held);
  if (!step) {
    int64_t holders = 0;
    for (const auto& h : held) holders += h.empty() ? 0 : 1;
    if (why) {
      *why = holders == 0 ? std::string("no rank holds a snapshot newer than the disk checkpoint")
                          : concat(holders, " of ", w,
                                   " ranks hold snapshots newer than the disk checkpoint, but no step is "
                                   "complete on every rank");
    }
    return std::nullopt;
  }
  for (const auto& info : mine) {
    if (info.step != *step) continue;
    SnapshotChoice choice;
    choice.path = info.path;
    choice.step = info.step;
    if (info.manifest.lineage().has_parent()) {
      choice.parent = std::make_pair(info.manifest.lineage().parent_step(), info.manifest.lineage().parent_id());
    }
    return choice;
  }
  throw Error(concat("snapshot step ", *step, " was agreed on but is not in ", dir()));  // unreachable
}

void SnapshotStore::discard_after(uint64_t step) {
  std::error_code ec;
  for (const auto& info : store_.list(/*deep=*/false)) {
    if (info.step > step) fs::remove_all(info.path, ec);
  }
}

void SnapshotStore::remove_all() {
  drain();
  std::error_code ec;
  fs::remove_all(rank_dir_, ec);
  fs::remove(root_, ec);  // only once empty: other ranks of this host may still be writing theirs
}

bool SnapshotStore::submit(CheckpointData data) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (busy_ || job_ || failed_ || stop_) return false;
    job_ = std::move(data);
  }
  cv_.notify_all();
  return true;
}

void SnapshotStore::drain() {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [&] { return !job_ && !busy_; });
}

uint64_t SnapshotStore::last_bytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  return last_bytes_;
}

double SnapshotStore::last_seconds() const {
  std::lock_guard<std::mutex> lock(mu_);
  return last_seconds_;
}

uint64_t SnapshotStore::written() const {
  std::lock_guard<std::mutex> lock(mu_);
  return written_;
}

void SnapshotStore::run() {
  for (;;) {
    CheckpointData data;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return stop_ || job_; });
      if (!job_) return;
      data = std::move(*job_);
      job_.reset();
      busy_ = true;
    }
    const auto t0 = std::chrono::steady_clock::now();
    uint64_t bytes = 0;
    bool ok = true;
    try {
      for (const auto& [name, tensors] : checkpoint_parts(data)) {
        for (const auto& [k, t] : *tensors) bytes += static_cast<uint64_t>(t.nbytes());
      }
      const uint64_t step = data.manifest.step();
      store_.publish(std::move(data));
      // The newest two stay; snapshots form no branches (Note [In-memory snapshots]).
      std::error_code ec;
      int64_t kept = 0;
      for (const auto& info : store_.list(/*deep=*/false)) {
        if (info.step > step) continue;
        if (++kept > kKeep) fs::remove_all(info.path, ec);
      }
    } catch (const std::exception& e) {
      ok = false;
      std::fprintf(stderr, "stride: warning: snapshots turned off: writing one in %s failed: %s\n", rank_dir_.c_str(),
                   e.what());
    }
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    {
      std::lock_guard<std::mutex> lock(mu_);
      busy_ = false;
      if (ok) {
        last_bytes_ = bytes;
        last_seconds_ = secs;
        ++written_;
      } else {
        failed_ = true;
      }
    }
    cv_.notify_all();
  }
}

}  // namespace stride::trainer
