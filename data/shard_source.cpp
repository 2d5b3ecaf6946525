#include "data/shard_source.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>

#include "data/shard_index.h"
#include "storage/crc32c.h"
#include "storage/file_io.h"

namespace stride::data {
namespace fs = std::filesystem;
namespace {

using Clock = std::chrono::steady_clock;
constexpr uint64_t kNever = UINT64_MAX;
constexpr uint64_t kMaxIndexBytes = uint64_t{1} << 30;
// How long a reader waits for room in a full cache (other readers' shards pinned, other ranks' downloads in
// flight) before the limit is declared too small.
constexpr double kRoomWaitSeconds = 120.0;

std::string sys_error() { return std::strerror(errno); }

// An exclusive flock on PATH (created if missing), released on destruction.
class FileLock {
 public:
  FileLock(const std::string& path, bool wait) {
    fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd_ < 0) throw Error(concat("cannot create lock file ", path, ": ", sys_error()));
    while (::flock(fd_, LOCK_EX | (wait ? 0 : LOCK_NB)) != 0) {
      if (errno == EINTR) continue;
      if (errno != EWOULDBLOCK) throw Error(concat("cannot lock ", path, ": ", sys_error()));
      ::close(fd_);
      fd_ = -1;
      break;
    }
  }
  ~FileLock() {
    if (fd_ >= 0) ::close(fd_);
  }
  FileLock(const FileLock&) = delete;
  FileLock& operator=(const FileLock&) = delete;
  bool held() const { return fd_ >= 0; }

 private:
  int fd_ = -1;
};

// The shard's bytes against the index: its size and every member's CRC32C. `why` says what failed.
bool check_shard(const std::string& bytes, const proto::ShardEntry& shard, std::string* why) {
  if (bytes.size() != shard.size()) {
    *why = concat(bytes.size(), " bytes but the index records ", shard.size());
    return false;
  }
  for (const auto& sample : shard.samples()) {
    for (const auto& m : sample.members()) {
      if (m.offset() + m.size() > bytes.size() || storage::crc32c(bytes.data() + m.offset(), m.size()) != m.crc32c()) {
        *why = concat("CRC32C mismatch in '", sample.key(), ".", m.ext(), "'");
        return false;
      }
    }
  }
  return true;
}

std::string read_fd(int fd, const std::string& path) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) throw Error(concat("cannot stat ", path, ": ", sys_error()));
  std::string bytes(static_cast<size_t>(st.st_size), '\0');
  if (!storage::pread_full(fd, bytes.data(), bytes.size(), 0)) {
    throw Error(concat("cannot read ", path, ": ", errno ? sys_error() : "unexpected end of file"));
  }
  return bytes;
}

void write_all(int fd, const std::string& bytes, const std::string& path) {
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::pwrite(fd, bytes.data() + done, bytes.size() - done, static_cast<off_t>(done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) throw Error(concat("cannot write ", path, ": ", errno == ENOSPC ? "disk full" : sys_error()));
    done += static_cast<size_t>(n);
  }
  if (::ftruncate(fd, static_cast<off_t>(bytes.size())) != 0 || ::fsync(fd) != 0) {
    throw Error(concat("cannot write ", path, ": ", sys_error()));
  }
}

std::string default_cache_dir() {
  if (const char* x = std::getenv("XDG_CACHE_HOME"); x && *x) return (fs::path(x) / "stride").string();
  if (const char* h = std::getenv("HOME"); h && *h) return (fs::path(h) / ".cache" / "stride").string();
  return "/tmp/stride-cache";
}

// One directory per location: readable, and distinct for locations that read alike once sanitised.
std::string cache_key(const std::string& location) {
  std::string key;
  for (char ch : location) {
    const bool ok = std::isalnum(static_cast<unsigned char>(ch)) || ch == '.' || ch == '-' || ch == '_';
    if (ok) {
      key += ch;
    } else if (key.empty() || key.back() != '_') {
      key += '_';
    }
  }
  if (key.size() > 96) key = key.substr(key.size() - 96);
  char hex[16];
  std::snprintf(hex, sizeof(hex), "%08x", storage::crc32c(location.data(), location.size()));
  return key + "-" + hex;
}

class LocalSource final : public ShardSource {
 public:
  explicit LocalSource(std::string dir) : dir_(std::move(dir)) {}
  ~LocalSource() override {
    for (int fd : fds_) {
      if (fd >= 0) ::close(fd);
    }
  }
  proto::DatasetIndex read_index() override { return data::read_index(dir_); }
  void attach(const proto::DatasetIndex& index) override {
    verify_shard_files(dir_, index);
    for (const auto& s : index.shards()) files_.push_back(s.file());
    fds_.assign(files_.size(), -1);
  }
  int acquire(uint32_t shard) override {
    std::lock_guard<std::mutex> lock(mutex_);
    if (fds_[shard] < 0) {
      const std::string path = (fs::path(dir_) / files_[shard]).string();
      fds_[shard] = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
      if (fds_[shard] < 0) throw Error(concat("cannot open shard ", path, ": ", sys_error()));
    }
    return fds_[shard];
  }
  void release(uint32_t) override {}

 private:
  std::string dir_;
  std::vector<std::string> files_;
  std::mutex mutex_;
  std::vector<int> fds_;  // -1 until opened; guarded by mutex_
};

class RemoteSource final : public ShardSource {
 public:
  RemoteSource(std::string location, SourceOptions options, bool pipe)
      : location_(std::move(location)), options_(std::move(options)), pipe_(pipe) {
    options_.fetch.cancel = &stop_;
    if (options_.fetch.who.empty()) options_.fetch.who = concat("rank ", options_.rank);
    if (pipe_ && location_.find("{shard}") == std::string::npos) {
      throw UsageError(concat("--data-path ", location_, ": a pipe: template needs {shard} (and {split})"));
    }
    if (!pipe_) parse_http_url(location_);  // a malformed URL: a usage error now
    const std::string root = options_.cache_dir.empty() ? default_cache_dir() : options_.cache_dir;
    dir_ = (fs::path(root) / cache_key(location_)).string();
    std::error_code ec;
    fs::create_directories(dir_, ec);
    if (ec) throw Error(concat("cannot create the shard cache ", dir_, " (--cache-dir): ", ec.message()));
  }

  ~RemoteSource() override {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    cv_.notify_all();
    if (prefetcher_.joinable()) prefetcher_.join();
    for (auto& e : entries_) {
      if (e.fd >= 0) ::close(e.fd);
    }
  }

  proto::DatasetIndex read_index() override {
    std::string bytes = fetch(kIndexFile, kMaxIndexBytes);
    stats_bytes_ += bytes.size();
    {
      FileLock lock(path_of("." + std::string(kIndexFile) + ".lock"), true);
      FileLock dir_lock(path_of(".dir.lock"), true);  // Note [Shard cache]: no rename while a scan counts
      storage::write_file_atomic(path_of(kIndexFile), bytes);
    }
    try {
      return data::read_index(dir_);
    } catch (const Error& e) {
      throw Error(concat(options_.fetch.who, ": the index fetched from ", describe(kIndexFile), ": ", e.what()));
    }
  }

  void attach(const proto::DatasetIndex& index) override {
    index_ = index;
    entries_ = std::vector<Entry>(static_cast<size_t>(index_.shards_size()));
    uses_.assign(entries_.size(), {});
    uint64_t largest = 0;
    for (int s = 0; s < index_.shards_size(); ++s) {
      by_file_[index_.shards(s).file()] = static_cast<uint32_t>(s);
      largest = std::max<uint64_t>(largest, index_.shards(s).size());
    }
    if (options_.cache_limit > 0 && largest + index_bytes() > options_.cache_limit) {
      throw UsageError(concat("--cache-limit ", options_.cache_limit, " is below the largest shard of ", location_,
                              " plus its index (", largest + index_bytes(), " bytes)"));
    }
    remove_dead_temporaries();
    prefetcher_ = std::thread([this] { prefetch_loop(); });
  }

  int acquire(uint32_t shard) override {
    std::unique_lock<std::mutex> lock(mutex_);
    std::optional<Clock::time_point> waiting;
    while (true) {
      Entry& e = entries_[shard];
      if (e.fd >= 0) {
        // Another rank sharing the cache may have evicted it: the open descriptor still reads the same bytes,
        // but an idle one is let go so its space returns; the next use adopts or fetches the shard afresh.
        struct stat st {};
        if (e.pins == 0 && ::fstat(e.fd, &st) == 0 && st.st_nlink == 0) {
          ::close(e.fd);
          e.fd = -1;
          continue;
        }
        ++e.pins;
        if (waiting) stall_ns_ += std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - *waiting).count();
        return e.fd;
      }
      if (!waiting) waiting = Clock::now();
      if (e.busy) {
        cv_.wait(lock);
        continue;
      }
      e.busy = true;
      lock.unlock();
      int fd = -1;
      std::exception_ptr error;
      try {
        fd = materialise(shard, /*demand=*/true);
      } catch (...) {
        error = std::current_exception();
      }
      lock.lock();
      e.busy = false;
      e.fd = fd;
      cv_.notify_all();
      if (error) std::rethrow_exception(error);
    }
  }

  void release(uint32_t shard) override {
    std::lock_guard<std::mutex> lock(mutex_);
    --entries_[shard].pins;
  }

  bool wants_plan() const override { return true; }

  void plan(std::vector<uint32_t> sequence) override {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      seq_ = std::move(sequence);
      for (auto& u : uses_) u.clear();
      for (uint64_t k = 0; k < seq_.size(); ++k) uses_[seq_[k]].push_back(k);
      pos_ = 0;
      no_room_at_ = kNever;
      for (auto& e : entries_) e.prefetch_failed = false;
    }
    cv_.notify_all();
  }

  void advance(uint64_t position) override {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (position <= pos_) return;
      pos_ = position;
    }
    cv_.notify_all();
  }

  SourceStats stats() const override {
    SourceStats s;
    s.bytes_fetched = stats_bytes_;
    s.shards_fetched = stats_fetched_;
    s.cache_hits = stats_hits_;
    s.refetches = stats_refetches_;
    s.evictions = stats_evictions_;
    s.stall_seconds = static_cast<double>(stall_ns_.load()) * 1e-9;
    return s;
  }

 private:
  struct Entry {
    int fd = -1;                   // open final file, while this process holds it
    int pins = 0;                  // readers between acquire and release
    bool busy = false;             // a thread of this process is materialising it
    bool prefetch_failed = false;  // the prefetcher leaves it to a reader (which reports the error)
  };

  std::string path_of(const std::string& name) const { return (fs::path(dir_) / name).string(); }
  std::string lock_of(const std::string& file) const { return path_of("." + file + ".lock"); }
  uint64_t index_bytes() const {
    struct stat st {};
    return ::stat(path_of(kIndexFile).c_str(), &st) == 0 ? static_cast<uint64_t>(st.st_size) : 0;
  }

  std::string describe(const std::string& name) const {
    if (!pipe_) return location_ + "/" + name;
    return concat("`", object_command(name), "`");
  }
  std::string object_command(const std::string& name) const {
    std::string cmd = location_.substr(std::string("pipe:").size());
    for (size_t at; (at = cmd.find("{shard}")) != std::string::npos;) cmd.replace(at, 7, name);
    return cmd;
  }

  std::string fetch(const std::string& name, uint64_t max_size) {
    if (pipe_) return run_pipe(object_command(name), max_size, options_.fetch.who);
    std::unique_ptr<HttpFetcher> fetcher;
    {
      std::lock_guard<std::mutex> lock(fetchers_mutex_);
      if (!fetchers_.empty()) {
        fetcher = std::move(fetchers_.back());
        fetchers_.pop_back();
      }
    }
    if (!fetcher) fetcher = std::make_unique<HttpFetcher>(options_.fetch);
    std::string body = fetcher->get(location_ + "/" + name, max_size);
    std::lock_guard<std::mutex> lock(fetchers_mutex_);
    fetchers_.push_back(std::move(fetcher));  // its keep-alive connection serves the next fetch
    return body;
  }

  // The shard's next use at or after the reader's position; kNever when the plan does not need it again.
  uint64_t next_use_locked(uint32_t shard) const {
    const auto& u = uses_[shard];
    auto it = std::lower_bound(u.begin(), u.end(), pos_);
    return it == u.end() ? kNever : *it;
  }

  // Opens the shard's cache file, adopting a checked copy already there or fetching it (Note [Shard cache]).
  // Returns -1 when a prefetch (demand = false) finds no room without evicting something needed sooner.
  int materialise(uint32_t s, bool demand) {
    const auto& shard = index_.shards(static_cast<int>(s));
    const std::string path = path_of(shard.file());
    FileLock lock(lock_of(shard.file()), /*wait=*/true);  // one download per host; the others adopt it
    for (int attempt = 0;; ++attempt) {
      const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
      if (fd >= 0) {
        std::string why;
        if (check_shard(read_fd(fd, path), shard, &why)) {
          ++stats_hits_;
          return fd;
        }
        ::close(fd);
        {
          FileLock dir_lock(path_of(".dir.lock"), /*wait=*/true);
          ::unlink(path.c_str());
        }
        std::fprintf(stderr, "stride: warning: %s: cached shard %s fails its check (%s); fetching it again\n",
                     options_.fetch.who.c_str(), path.c_str(), why.c_str());
      }
      std::string tmp;
      const int tmp_fd = reserve(s, demand, &tmp);
      if (tmp_fd < 0) return -1;
      struct Cleanup {
        int fd;
        std::string path;
        bool armed = true;
        ~Cleanup() {
          if (fd >= 0) ::close(fd);
          if (armed) ::unlink(path.c_str());
        }
      } cleanup{tmp_fd, tmp};
      // Slack over the recorded size lets an oversized response reach the check (and its re-fetch).
      const std::string bytes = fetch(shard.file(), shard.size() + (uint64_t{1} << 20));
      stats_bytes_ += bytes.size();
      ++stats_fetched_;
      std::string why;
      if (!check_shard(bytes, shard, &why)) {
        if (attempt == 0) {
          ++stats_refetches_;
          std::fprintf(stderr, "stride: warning: %s: shard %s fails its check (%s); fetching it again\n",
                       options_.fetch.who.c_str(), describe(shard.file()).c_str(), why.c_str());
          continue;
        }
        throw Error(concat(options_.fetch.who, ": shard ", describe(shard.file()), " fails its check twice: ", why,
                           " (is the index at ", describe(kIndexFile), " the one written with these shards?)"));
      }
      write_all(tmp_fd, bytes, tmp);
      {
        // Under the directory lock: a scan of the directory (make_room, in this process or another rank's) that
        // ran during the rename could see neither name (readdir is unspecified for entries changed meanwhile),
        // count one shard too few and let the cache grow a shard past --cache-limit.
        FileLock dir_lock(path_of(".dir.lock"), /*wait=*/true);
        if (::rename(tmp.c_str(), path.c_str()) != 0) {
          throw Error(concat("rename ", tmp, " -> ", path, " failed: ", sys_error()));
        }
      }
      cleanup.armed = false;
      storage::fsync_dir(dir_);
      const int out = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
      if (out < 0) throw Error(concat("cannot open ", path, ": ", sys_error()));
      return out;
    }
  }

  // Makes room for shard s under --cache-limit and creates its temporary, preallocated to the shard's size so
  // that every rank sharing the directory counts it. Evicts by Belady's rule (Note [Shard cache]). Returns the
  // temporary's descriptor, or -1 for a prefetch that finds no room.
  int reserve(uint32_t s, bool demand, std::string* tmp) {
    const uint64_t size = index_.shards(static_cast<int>(s)).size();
    const auto start = Clock::now();
    while (true) {
      {
        FileLock dir_lock(path_of(".dir.lock"), /*wait=*/true);
        if (options_.cache_limit == 0 || make_room(s, size, demand)) return create_temporary(s, size, tmp);
      }
      if (!demand) return -1;
      if (std::chrono::duration<double>(Clock::now() - start).count() > kRoomWaitSeconds) {
        throw Error(concat(options_.fetch.who, ": --cache-limit ", options_.cache_limit, " leaves no room for shard ",
                           index_.shards(static_cast<int>(s)).file(), " (", size, " bytes) in ", dir_, " after ",
                           kRoomWaitSeconds, " s: the shards in use fill it; raise the limit"));
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }

  // Under the directory lock: true when `size` more bytes fit, after evicting what may be evicted.
  bool make_room(uint32_t s, uint64_t size, bool demand) {
    uint64_t usage = 0;
    std::vector<uint32_t> candidates;
    DIR* d = ::opendir(dir_.c_str());
    if (!d) throw Error(concat("cannot list the shard cache ", dir_, ": ", sys_error()));
    while (dirent* ent = ::readdir(d)) {
      struct stat st {};
      if (::fstatat(::dirfd(d), ent->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(st.st_mode)) continue;
      usage += static_cast<uint64_t>(st.st_size);
      auto it = by_file_.find(ent->d_name);
      if (it != by_file_.end() && it->second != s) candidates.push_back(it->second);
    }
    ::closedir(d);
    if (usage + size <= options_.cache_limit) return true;
    std::lock_guard<std::mutex> lock(mutex_);
    const uint64_t needed_at = demand ? 0 : next_use_locked(s);
    std::vector<std::pair<uint64_t, uint32_t>> victims;  // (next use, shard)
    for (uint32_t c : candidates) {
      const Entry& e = entries_[c];
      if (e.pins > 0 || e.busy) continue;
      const uint64_t next = next_use_locked(c);
      if (!demand && next <= needed_at) continue;  // a prefetch never evicts what is needed sooner
      victims.emplace_back(next, c);
    }
    std::sort(victims.begin(), victims.end(), std::greater<>());
    for (const auto& v : victims) {
      if (usage + size <= options_.cache_limit) break;
      const std::string file = index_.shards(static_cast<int>(v.second)).file();
      FileLock victim(lock_of(file), /*wait=*/false);
      if (!victim.held()) continue;  // being fetched or checked by another rank
      Entry& e = entries_[v.second];
      if (e.fd >= 0) {
        ::close(e.fd);
        e.fd = -1;
      }
      struct stat st {};
      const std::string path = path_of(file);
      if (::stat(path.c_str(), &st) == 0 && ::unlink(path.c_str()) == 0) {
        usage -= std::min<uint64_t>(usage, static_cast<uint64_t>(st.st_size));
        ++stats_evictions_;
      }
    }
    return usage + size <= options_.cache_limit;
  }

  int create_temporary(uint32_t s, uint64_t size, std::string* tmp) {
    static std::atomic<uint64_t> counter{0};
    *tmp = path_of(concat(".", index_.shards(static_cast<int>(s)).file(), ".tmp.", ::getpid(), ".", ++counter));
    const int fd = ::open(tmp->c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) throw Error(concat("cannot create ", *tmp, ": ", sys_error()));
    int rc = ::posix_fallocate(fd, 0, static_cast<off_t>(size));
    if (rc == EOPNOTSUPP || rc == EINVAL) rc = ::ftruncate(fd, static_cast<off_t>(size)) == 0 ? 0 : errno;
    if (rc != 0) {
      ::close(fd);
      ::unlink(tmp->c_str());
      throw Error(
          concat("cannot reserve ", size, " bytes for ", *tmp, ": ", rc == ENOSPC ? "disk full" : std::strerror(rc)));
    }
    return fd;
  }

  // Temporaries of processes that died mid-download (".FILE.tmp.PID.N" with no process PID) would count against
  // the limit for ever.
  void remove_dead_temporaries() {
    FileLock dir_lock(path_of(".dir.lock"), /*wait=*/true);
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(dir_, ec)) {
      const std::string name = e.path().filename().string();
      const size_t at = name.rfind(".tmp.");
      if (name.empty() || name[0] != '.' || at == std::string::npos) continue;
      const long pid = std::strtol(name.c_str() + at + 5, nullptr, 10);
      if (pid > 0 && ::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH) fs::remove(e.path(), ec);
    }
  }

  // Keeps the next --prefetch-shards distinct shards of the plan fetched, in the order the reader needs them.
  void prefetch_loop() {
    std::unique_lock<std::mutex> lock(mutex_);
    std::vector<char> seen;
    while (!stop_) {
      int64_t pick = -1;
      if (options_.prefetch_shards > 0 && pos_ != no_room_at_) {
        seen.assign(entries_.size(), 0);
        int distinct = 0;
        for (uint64_t k = pos_; k < seq_.size() && distinct < options_.prefetch_shards; ++k) {
          const uint32_t s = seq_[k];
          if (seen[s]) continue;
          seen[s] = 1;
          ++distinct;
          const Entry& e = entries_[s];
          if (e.fd < 0 && !e.busy && !e.prefetch_failed) {
            pick = s;
            break;
          }
        }
      }
      if (pick < 0) {
        cv_.wait(lock);
        continue;
      }
      Entry& e = entries_[static_cast<size_t>(pick)];
      e.busy = true;
      lock.unlock();
      int fd = -1;
      bool failed = false;
      try {
        fd = materialise(static_cast<uint32_t>(pick), /*demand=*/false);
      } catch (const std::exception&) {
        failed = true;  // the reader that needs it fetches it again and reports the error with its context
      }
      lock.lock();
      e.busy = false;
      e.fd = fd;
      if (failed) e.prefetch_failed = true;
      if (fd < 0 && !failed) no_room_at_ = pos_;  // try again once the reader has moved on
      cv_.notify_all();
    }
  }

  const std::string location_;
  SourceOptions options_;
  const bool pipe_;
  std::string dir_;
  proto::DatasetIndex index_;
  std::unordered_map<std::string, uint32_t> by_file_;

  std::mutex fetchers_mutex_;
  std::vector<std::unique_ptr<HttpFetcher>> fetchers_;  // idle keep-alive connections

  std::atomic<uint64_t> stats_bytes_{0}, stats_fetched_{0}, stats_hits_{0}, stats_refetches_{0}, stats_evictions_{0};
  std::atomic<int64_t> stall_ns_{0};

  // Guarded by mutex_.
  std::mutex mutex_;
  std::condition_variable cv_;
  std::vector<Entry> entries_;
  std::vector<uint32_t> seq_;
  std::vector<std::vector<uint64_t>> uses_;  // per shard, its positions in seq_, ascending
  uint64_t pos_ = 0, no_room_at_ = kNever;
  std::atomic<bool> stop_{false};
  std::thread prefetcher_;
};

}  // namespace

bool is_remote(const std::string& location) {
  return location.rfind("http://", 0) == 0 || location.rfind("https://", 0) == 0 || location.rfind("pipe:", 0) == 0;
}

std::string split_location(const std::string& data_path, const std::string& split) {
  if (data_path.rfind("pipe:", 0) == 0) {
    if (data_path.find("{split}") == std::string::npos) {
      throw UsageError(concat("--data-path ", data_path, ": a pipe: template needs {split} and {shard}, e.g. ",
                              "'pipe:cat /srv/data/{split}/{shard}'"));
    }
    std::string out = data_path;
    for (size_t at; (at = out.find("{split}")) != std::string::npos;) out.replace(at, 7, split);
    return out;
  }
  if (is_remote(data_path)) {
    std::string base = data_path;
    while (!base.empty() && base.back() == '/') base.pop_back();
    return base + "/" + split;
  }
  return (fs::path(data_path) / split).string();
}

void check_not_a_split(const std::string& data_path, const std::string& split, const char* split_flag) {
  if (is_remote(data_path) || fs::exists(fs::path(data_path) / split / kIndexFile)) return;
  if (!fs::exists(fs::path(data_path) / kIndexFile)) return;
  const fs::path given = fs::path(data_path).lexically_normal();
  const fs::path parent = given.has_filename() ? given.parent_path() : given.parent_path().parent_path();
  const std::string name = (given.has_filename() ? given : given.parent_path()).filename().string();
  throw UsageError(concat("--data-path ", data_path, " is one split of a dataset (it holds ", kIndexFile,
                          "); pass the folder above it: --data-path ", parent.empty() ? "." : parent.string(),
                          name == split ? std::string() : concat(" ", split_flag, " ", name)));
}

std::unique_ptr<ShardSource> ShardSource::open(const std::string& location, const SourceOptions& options) {
  if (location.rfind("pipe:", 0) == 0) return std::make_unique<RemoteSource>(location, options, true);
  if (is_remote(location)) return std::make_unique<RemoteSource>(location, options, false);
  return std::make_unique<LocalSource>(location);
}

proto::DatasetIndex read_index_at(const std::string& location, const SourceOptions& options) {
  return ShardSource::open(location, options)->read_index();
}

}  // namespace stride::data
