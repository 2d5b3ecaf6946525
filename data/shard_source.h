// Where a split's index and shards come from: a local directory, an http:// base URL, or a `pipe:` command.
// The loader reads shards through open file descriptors either way; remote sources first materialise a shard
// in a local cache, so the reading code is the same for all of them.
//
// Note [Shard cache]
// A remote shard lands in CACHE/<location key>/ atomically: written to a hidden temporary preallocated to its
// final size, checked against the index (size and every member's CRC32C), fsynced, renamed. A shard that fails
// the check is fetched once more, then it is an error. A file already in the cache (an earlier run, another rank
// of the host) is checked the same way before its first use in a process, so any cache state is safe to resume
// from. Ranks sharing a cache directory take a flock per shard, so one downloads and the others wait and adopt.
//
// The order is deterministic, so the loader hands the source the exact sequence of shards this rank will read
// (the rest of this epoch and the next). A prefetch thread fetches the next --prefetch-shards distinct shards in
// that order, and when --cache-limit would be exceeded the shard whose next use lies furthest in the future is
// evicted (Belady's rule; shards no longer needed go first). A prefetch never evicts a shard needed sooner than
// the one it fetches, and a shard being read is never evicted. The limit counts every file in the key
// directory (temporaries included) under a directory flock, so ranks sharing the cache share the limit. A rank
// may still read a shard another rank evicted through its open descriptor; that space returns when it closes.
// Every change of a name in the directory (the rename that publishes a shard or the index, an unlink) happens
// under that directory lock too: readdir may skip an entry renamed while it runs, and a scan that missed one would
// count a shard too few.
//
// Thread-safety: acquire/release/plan/advance/stats may be called from any thread.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "data/http_fetch.h"
#include "proto/dataset_index.pb.h"

namespace stride::data {

struct SourceOptions {
  std::string cache_dir;     // remote sources; "" = $XDG_CACHE_HOME/stride or ~/.cache/stride
  uint64_t cache_limit = 0;  // bytes; 0: unlimited
  int prefetch_shards = 4;   // distinct shards kept fetched ahead of the reader
  FetchOptions fetch;
  uint64_t rank = 0;  // for messages
};

struct SourceStats {
  uint64_t bytes_fetched = 0;   // downloaded bytes of shards and index
  uint64_t shards_fetched = 0;  // downloads (re-fetches included)
  uint64_t cache_hits = 0;      // shards found in the cache, already checked, instead of downloaded
  uint64_t refetches = 0;       // shards fetched again after a failed check
  uint64_t evictions = 0;
  double stall_seconds = 0.0;  // time readers waited for a shard to arrive
};

// True for http://, https:// and pipe: locations.
bool is_remote(const std::string& location);
// The location of a split under --data-path: DIR/SPLIT, URL/SPLIT, or the pipe: template with {split} filled.
std::string split_location(const std::string& data_path, const std::string& split);
// `--data-path fm/train` names one split, not the dataset: a UsageError saying which folder to pass instead (with
// `split_flag SPLIT` when the split is not the default). Local folders only; a folder that holds SPLIT/index.pb
// is a dataset even if it also holds an index of its own.
void check_not_a_split(const std::string& data_path, const std::string& split, const char* split_flag);

class ShardSource {
 public:
  // Throws UsageError naming the location when it cannot be used (a pipe: template without {shard}, https).
  static std::unique_ptr<ShardSource> open(const std::string& location, const SourceOptions& options);
  virtual ~ShardSource() = default;

  // Reads (remote: fetches into the cache and reads) the split's index.
  virtual proto::DatasetIndex read_index() = 0;
  // The index the loader uses. Local: checks every shard file exists with its size.
  virtual void attach(const proto::DatasetIndex& index) = 0;
  // A descriptor of `shard` for pread, valid until the matching release(). Blocks while the shard is fetched.
  virtual int acquire(uint32_t shard) = 0;
  virtual void release(uint32_t shard) = 0;
  // Whether plan()/advance() are used (remote sources); the loader skips computing the sequence otherwise.
  virtual bool wants_plan() const { return false; }
  // The shard of each sample this rank reads from now on, in order; advance(k): the reader reached entry k.
  virtual void plan(std::vector<uint32_t> /*sequence*/) {}
  virtual void advance(uint64_t /*position*/) {}
  virtual SourceStats stats() const { return {}; }
};

// read_index for any location (remote: through the cache).
proto::DatasetIndex read_index_at(const std::string& location, const SourceOptions& options);

}  // namespace stride::data
