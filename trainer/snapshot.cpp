#include "trainer/snapshot.h"

#include <pthread.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include "common/error.h"
#include "storage/checkpoint_files.h"
#include "storage/crc32c.h"
#include "storage/file_io.h"
#include "trainer/safetensors.h"

namespace stride::trainer {
namespace fs = std::filesystem;

namespace {
constexpr int64_t kKeep = 2;   // snapshots a rank keeps
constexpr int64_t kSlots = 4;  // steps per rank compared at a start (kKeep; a crash may leave one more)
constexpr uint64_t kPackMagic = 0x3130534e50525453ULL;  // "STRPNS01"

void put_u64(std::string& out, uint64_t v) { out.append(reinterpret_cast<const char*>(&v), sizeof(v)); }

// Removes all but the newest kKeep step directories up to step `upto` under checkpoint_root (newer ones are
// left to the caller).
void keep_newest(const std::string& checkpoint_root, uint64_t upto = UINT64_MAX) {
  std::error_code ec;
  int64_t kept = 0;
  for (const auto& info : storage::list_checkpoints(checkpoint_root, /*deep=*/false)) {
    if (info.step <= upto && ++kept > kKeep) fs::remove_all(info.path, ec);
  }
}

// Removes the step directories newer than `step` under checkpoint_root.
void remove_newer(const std::string& checkpoint_root, uint64_t step) {
  std::error_code ec;
  for (const auto& info : storage::list_checkpoints(checkpoint_root, /*deep=*/false)) {
    if (info.step > step) fs::remove_all(info.path, ec);
  }
}

// The snapshots under checkpoint_root that verify deeply, newest first; those with a MANIFEST that do not go to
// `skipped` (one cut short, without a MANIFEST, is normal after a kill).
std::vector<CheckpointInfo> list_valid(const std::string& checkpoint_root, std::vector<CheckpointInfo>* skipped) {
  std::vector<CheckpointInfo> ok;
  std::error_code ec;
  for (auto& info : storage::list_checkpoints(checkpoint_root, /*deep=*/true)) {
    if (info.valid) {
      ok.push_back(std::move(info));
    } else if (skipped && fs::exists(fs::path(info.path) / "MANIFEST", ec)) {
      skipped->push_back(std::move(info));
    }
  }
  return ok;
}
}  // namespace

std::vector<int> plan_buddies(const std::vector<int64_t>& host_of, std::string* why) {
  // Hosts in the order of their first rank; each host's ranks in rank order.
  std::vector<std::vector<int>> hosts;
  std::map<int64_t, size_t> index;
  for (size_t r = 0; r < host_of.size(); ++r) {
    auto [it, fresh] = index.emplace(host_of[r], hosts.size());
    if (fresh) hosts.emplace_back();
    hosts[it->second].push_back(static_cast<int>(r));
  }
  if (hosts.size() < 2) {
    if (why) *why = "every rank runs on one host";
    return {};
  }
  for (const auto& h : hosts) {
    if (h.size() != hosts[0].size()) {
      if (why) {
        std::string sizes;
        for (const auto& g : hosts) sizes += concat(sizes.empty() ? "" : ", ", g.size());
        *why = concat("the hosts run different numbers of ranks (", sizes, ")");
      }
      return {};
    }
  }
  std::vector<int> order;
  for (const auto& h : hosts) order.insert(order.end(), h.begin(), h.end());
  const size_t w = order.size(), l = hosts[0].size();
  std::vector<int> buddy(w);
  for (size_t i = 0; i < w; ++i) buddy[static_cast<size_t>(order[i])] = order[(i + l) % w];
  return buddy;
}

torch::Tensor pack_snapshot(const std::string& dir, uint64_t owner, uint64_t step) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (e.is_regular_file()) names.push_back(e.path().filename().string());
  }
  std::sort(names.begin(), names.end());
  std::string out;
  put_u64(out, kPackMagic);
  put_u64(out, owner);
  put_u64(out, step);
  put_u64(out, names.size());
  for (const auto& name : names) {
    const std::string bytes = storage::read_file((fs::path(dir) / name).string());
    put_u64(out, name.size());
    out += name;
    put_u64(out, bytes.size());
    out += bytes;
  }
  auto t = torch::empty({static_cast<int64_t>(out.size())}, torch::kUInt8);
  std::memcpy(t.data_ptr(), out.data(), out.size());
  return t;
}

std::string unpack_snapshot(const torch::Tensor& packed, const std::string& root, const std::string& from) {
  const auto* p = static_cast<const char*>(packed.data_ptr());
  const size_t n = static_cast<size_t>(packed.numel());
  size_t at = 0;
  auto bad = [&](const std::string& what) {
    return Error(concat("the buddy copy from ", from, " is damaged: ", what, " (", n, " bytes)"));
  };
  auto u64 = [&] {
    if (n - at < sizeof(uint64_t)) throw bad("cut short");
    uint64_t v;
    std::memcpy(&v, p + at, sizeof(v));
    at += sizeof(v);
    return v;
  };
  if (u64() != kPackMagic) throw bad("not a snapshot");
  const uint64_t owner = u64(), step = u64(), files = u64();
  const std::string checkpoints = (fs::path(root) / concat("rank-", owner) / "checkpoints").string();
  const std::string tmp = (fs::path(checkpoints) / concat(".buddy-", step, ".tmp")).string();
  std::error_code ec;
  fs::remove_all(tmp, ec);
  fs::create_directories(tmp);
  for (uint64_t i = 0; i < files; ++i) {
    const uint64_t len = u64();
    if (len == 0 || len > 255 || n - at < len) throw bad("a file name is cut short or too long");
    const std::string name(p + at, len);
    at += len;
    if (name == "." || name == ".." || name.find('/') != std::string::npos || name.find('\0') != std::string::npos) {
      throw bad(concat("the file name '", name, "' is not a plain name"));
    }
    const uint64_t size = u64();
    if (n - at < size) throw bad(concat(name, " is cut short"));
    std::ofstream f((fs::path(tmp) / name).string(), std::ios::binary | std::ios::trunc);
    f.write(p + at, static_cast<std::streamsize>(size));
    f.close();
    if (!f) throw Error(concat("writing the buddy copy ", (fs::path(tmp) / name).string(), " failed"));
    at += size;
  }
  if (at != n) throw bad("trailing bytes");
  const std::string dir = storage::step_dir(checkpoints, step);
  fs::remove_all(dir, ec);
  fs::rename(tmp, dir);
  return dir;
}

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
    : root_(std::move(root)),
      rank_dir_((fs::path(root_) / concat("rank-", rank)).string()),
      rank_(static_cast<int64_t>(rank)),
      store_(rank_dir_) {
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

std::string SnapshotStore::rank_dir(int64_t r) const { return (fs::path(root_) / concat("rank-", r)).string(); }

void SnapshotStore::set_buddies(std::vector<int> buddy) {
  buddy_ = std::move(buddy);
  holdee_ = -1;
  for (size_t r = 0; r < buddy_.size(); ++r) {
    if (buddy_[r] == rank_) holdee_ = static_cast<int>(r);
  }
}

std::vector<CheckpointInfo> SnapshotStore::valid(std::vector<CheckpointInfo>* skipped) const {
  return list_valid(store_.dir(), skipped);
}

std::vector<CheckpointInfo> SnapshotStore::candidates(const std::string& dir,
                                                      const std::optional<std::pair<uint64_t, std::string>>& disk,
                                                      uint64_t world) const {
  std::vector<CheckpointInfo> out, skipped;
  for (auto& info : list_valid((fs::path(dir) / "checkpoints").string(), &skipped)) {
    const auto& m = info.manifest;
    const auto& l = m.lineage();
    const bool continues_disk =
        disk ? (l.has_parent() && l.parent_step() == disk->first && l.parent_id() == disk->second) : !l.has_parent();
    if (m.world_size() == world && continues_disk && (!disk || info.step > disk->first)) out.push_back(info);
  }
  for (const auto& s : skipped) {
    std::fprintf(stderr, "stride: warning: skipping snapshot %s: %s\n", s.path.c_str(), s.problem.c_str());
  }
  return out;
}

std::optional<SnapshotChoice> SnapshotStore::choose(const std::optional<std::pair<uint64_t, std::string>>& disk,
                                                    uint64_t world, comm::Communicator& comm, std::string* why) {
  const std::vector<CheckpointInfo> mine = candidates(rank_dir_, disk, world);
  const std::vector<CheckpointInfo> kept =
      holdee_ >= 0 ? candidates(rank_dir(holdee_), disk, world) : std::vector<CheckpointInfo>{};
  // Every rank's steps, its own and those of the copies it keeps (Note [Buddy copies]), via one max-reduction
  // over a table in which each rank fills its own row.
  const int64_t w = static_cast<int64_t>(world);
  auto table = torch::full({w, 2, kSlots}, -1, torch::kInt64);
  for (int64_t i = 0; i < std::min<int64_t>(kSlots, static_cast<int64_t>(mine.size())); ++i) {
    table[comm.rank()][0][i] = static_cast<int64_t>(mine[static_cast<size_t>(i)].step);
  }
  for (int64_t i = 0; i < std::min<int64_t>(kSlots, static_cast<int64_t>(kept.size())); ++i) {
    table[comm.rank()][1][i] = static_cast<int64_t>(kept[static_cast<size_t>(i)].step);
  }
  if (world > 1) comm.allreduce(table, comm::ReduceOp::kMax)->wait();
  auto a = table.accessor<int64_t, 3>();
  auto steps_of = [&](int64_t r, int64_t kind) {
    std::vector<uint64_t> out;
    for (int64_t i = 0; i < kSlots; ++i) {
      if (a[r][kind][i] >= 0) out.push_back(static_cast<uint64_t>(a[r][kind][i]));
    }
    return out;
  };
  std::vector<std::vector<uint64_t>> held(static_cast<size_t>(w));
  for (int64_t r = 0; r < w; ++r) {
    held[static_cast<size_t>(r)] = steps_of(r, 0);
    if (buddy_.size() == static_cast<size_t>(w)) {
      for (uint64_t s : steps_of(buddy_[static_cast<size_t>(r)], 1)) held[static_cast<size_t>(r)].push_back(s);
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
  // Ranks without their own snapshot of the step receive their buddy's copy, one after another, in rank order.
  SnapshotChoice choice;
  for (int64_t r = 0; r < w; ++r) {
    const auto own = steps_of(r, 0);
    if (std::find(own.begin(), own.end(), *step) != own.end()) continue;
    const int holder = buddy_[static_cast<size_t>(r)];
    torch::Tensor packed;
    if (comm.rank() == holder) {
      packed = pack_snapshot(storage::step_dir((fs::path(rank_dir(r)) / "checkpoints").string(), *step),
                             static_cast<uint64_t>(r), *step);
    }
    auto size = torch::tensor({packed.defined() ? packed.numel() : int64_t{0}}, torch::kInt64);
    comm.broadcast(size, holder)->wait();
    if (!packed.defined()) packed = torch::empty({size.item<int64_t>()}, torch::kUInt8);
    comm.broadcast(packed, holder)->wait();
    choice.from_buddies.emplace_back(static_cast<int>(r), holder);
    if (r == rank_) {
      unpack_snapshot(packed, root_, concat("rank ", holder));
      choice.mine_from_buddy = true;
    }
  }
  const std::vector<CheckpointInfo> now = choice.mine_from_buddy ? candidates(rank_dir_, disk, world) : mine;
  for (const auto& info : now) {
    if (info.step != *step) continue;
    choice.path = info.path;
    choice.step = info.step;
    if (info.manifest.lineage().has_parent()) {
      choice.parent = std::make_pair(info.manifest.lineage().parent_step(), info.manifest.lineage().parent_id());
    }
    return choice;
  }
  // The copy received did not verify here (or vanished): the ranks cannot all continue the snapshot.
  throw Error(concat("snapshot step ", *step, " was agreed on but is not in ", dir(),
                     choice.mine_from_buddy ? " after receiving its buddy copy" : ""));
}

void SnapshotStore::discard_after(uint64_t step) {
  remove_newer(store_.dir(), step);
  if (holdee_ >= 0) remove_newer((fs::path(rank_dir(holdee_)) / "checkpoints").string(), step);
}

void SnapshotStore::remove_all() {
  finish_exchange();
  drain();
  std::error_code ec;
  fs::remove_all(rank_dir_, ec);
  if (holdee_ >= 0) fs::remove_all(rank_dir(holdee_), ec);
  fs::remove(root_, ec);  // only once empty: other ranks of this host may still be writing theirs
}

bool SnapshotStore::submit(CheckpointData data) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (writing_own_ || job_ || failed_ || stop_) return false;
    job_ = std::move(data);
  }
  cv_.notify_all();
  return true;
}

void SnapshotStore::drain() {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [&] { return !job_ && !foreign_.defined() && !busy_; });
}

void SnapshotStore::exchange(comm::Communicator& comm, int64_t steps) {
  if (buddy_.empty()) return;
  finish_exchange();
  torch::Tensor send;
  {
    // This rank's newest snapshot, once the writer has it on disk (it normally had a step's time).
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return !job_ && !writing_own_; });
    if (ready_.defined() && ready_step_ > last_sent_step_) {
      send = std::move(ready_);
      last_sent_step_ = ready_step_;
      buddy_sent_bytes_ = static_cast<uint64_t>(send.numel());
    }
    ready_ = torch::Tensor();
  }
  if (!send.defined()) send = torch::empty({0}, torch::kUInt8);
  // Every rank's size (a small collective between steps): the holdee's says what to receive, the largest fixes
  // the schedule, which every rank must follow alike.
  auto sizes = torch::empty({comm.size()}, torch::kInt64);
  comm.allgather(torch::tensor({send.numel()}, torch::kInt64), sizes)->wait();
  const int64_t most = sizes.max().item<int64_t>();
  constexpr int64_t kMinChunk = int64_t{256} << 10;
  const int64_t spread = std::max<int64_t>(1, steps);
  chunk_bytes_ = std::max(kMinChunk, (most + spread - 1) / spread);
  chunk_count_ = most == 0 ? 0 : (most + chunk_bytes_ - 1) / chunk_bytes_;
  next_chunk_ = 0;
  sent_ = send;
  received_ = torch::empty({sizes[holdee_].item<int64_t>()}, torch::kUInt8);
  send_chunk(comm);
}

void SnapshotStore::exchange_step(comm::Communicator& comm) {
  if (buddy_.empty()) return;
  send_chunk(comm);
  poll();
}

void SnapshotStore::send_chunk(comm::Communicator& comm) {
  if (next_chunk_ >= chunk_count_) return;
  auto part = [&](const torch::Tensor& t) {
    const int64_t at = std::min(next_chunk_ * chunk_bytes_, t.numel());
    return t.narrow(0, at, std::min(chunk_bytes_, t.numel() - at));
  };
  chunks_.push_back(comm.sendrecv(part(sent_), buddy_[static_cast<size_t>(rank_)], part(received_), holdee_));
  ++next_chunk_;
}

void SnapshotStore::poll() {
  if (next_chunk_ < chunk_count_) return;
  for (const auto& w : chunks_) {
    if (!w->completed()) return;
  }
  finish_exchange();
}

void SnapshotStore::finish_exchange() {
  if (!sent_.defined()) return;
  auto chunks = std::move(chunks_);
  chunks_.clear();
  for (const auto& w : chunks) w->wait();
  if (next_chunk_ == chunk_count_ && received_.numel() > 0) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      foreign_ = received_;  // an older one not yet written is superseded
    }
    cv_.notify_all();
  }
  sent_ = received_ = torch::Tensor();
  chunk_count_ = next_chunk_ = 0;
}

uint64_t SnapshotStore::buddy_copies() const {
  std::lock_guard<std::mutex> lock(mu_);
  return buddy_copies_;
}

uint64_t SnapshotStore::buddy_sent_bytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  return buddy_sent_bytes_;
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
    std::optional<CheckpointData> own;
    torch::Tensor foreign;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return stop_ || job_ || foreign_.defined(); });
      if (job_) {
        own = std::move(job_);
        job_.reset();
        writing_own_ = true;
      } else if (foreign_.defined()) {
        foreign = std::move(foreign_);
        foreign_ = torch::Tensor();
      } else {
        return;
      }
      busy_ = true;
    }
    if (own) {
      write_own(std::move(*own));
    } else {
      write_foreign(foreign);
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      busy_ = writing_own_ = false;
    }
    cv_.notify_all();
  }
}

void SnapshotStore::write_own(CheckpointData data) {
  const auto t0 = std::chrono::steady_clock::now();
  uint64_t bytes = 0;
  bool ok = true;
  torch::Tensor packed;
  const uint64_t step = data.manifest.step();
  try {
    for (const auto& [name, tensors] : checkpoint_parts(data)) {
      for (const auto& [k, t] : *tensors) bytes += static_cast<uint64_t>(t.nbytes());
    }
    const std::string dir = store_.publish(std::move(data));
    // The newest two stay; snapshots form no branches (Note [In-memory snapshots]).
    keep_newest(store_.dir(), step);
    // Note [Buddy copies]: the message the next exchange sends, read back from RAM here, off the training thread.
    if (!buddy_.empty()) packed = pack_snapshot(dir, static_cast<uint64_t>(rank_), step);
  } catch (const std::exception& e) {
    ok = false;
    std::fprintf(stderr, "stride: warning: snapshots turned off: writing one in %s failed: %s\n", rank_dir_.c_str(),
                 e.what());
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::lock_guard<std::mutex> lock(mu_);
  if (ok) {
    last_bytes_ = bytes;
    last_seconds_ = secs;
    ++written_;
    if (packed.defined()) {
      ready_ = std::move(packed);
      ready_step_ = step;
    }
  } else {
    failed_ = true;
  }
}

void SnapshotStore::write_foreign(const torch::Tensor& packed) {
  // A buddy copy that cannot be written costs the holdee its copy, not this rank its run: a warning, no more.
  try {
    const std::string dir = unpack_snapshot(packed, root_, concat("rank ", holdee_));
    keep_newest(fs::path(dir).parent_path().string());
    std::lock_guard<std::mutex> lock(mu_);
    ++buddy_copies_;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "stride: warning: rank %lld: keeping rank %d's buddy copy failed: %s\n",
                 static_cast<long long>(rank_), holdee_, e.what());
  }
}

}  // namespace stride::trainer
