// ShardedLoader: each rank streams its slice of the global order (data/order.h, Note [Global order]) from a
// sharded dataset: worker threads read samples with pread, verify their CRC32C, decode and augment them, and
// assemble whole batches that a bounded prefetch queue hands out strictly in order.
//
// Threading: construct, start() and next() from one thread (the training loop). Worker threads are internal.
// Determinism: a sample's augmentation is seeded by (seed, epoch, position in the global order), so batches are
// identical for any worker count, and the union over ranks is identical for any world size.
#pragma once

#include <torch/torch.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "data/buffer_pool.h"
#include "data/mix.h"
#include "data/order.h"
#include "data/shard_source.h"
#include "data/transforms.h"
#include "proto/dataset_index.pb.h"

namespace stride::data {

struct LoaderOptions {
  std::string path;           // dataset directory holding index.pb and the shards, or a remote location
                              // (http:// URL, pipe: command; data/shard_source.h)
  uint64_t batch_size = 128;  // per rank
  uint64_t rank = 0;
  uint64_t world_size = 1;
  uint64_t seed = 0;
  bool train = true;          // shuffle and drop the tail; false: dataset order, pad the tail (flagged invalid)
  int64_t window_shards = 8;  // see OrderOptions
  // Repeated augmentation (training only; Note [Repeated augmentation] in data/order.h): copies per sample and
  // the global batch (images per optimizer step over all ranks) that fixes their layout.
  uint64_t ra_reps = 1;
  uint64_t ra_group = 0;
  int workers = 2;   // decode/augment threads
  int prefetch = 4;  // batches in flight (>= workers keeps every worker busy)
  AugmentOptions augment;
  bool float_output = true;       // float32 normalised; false: uint8 (normalise on the device)
  bool channels_last = false;     // images in NHWC memory: [b, C, H, W] with channels-last strides (no extra copy)
  std::vector<double> mean, std;  // per channel, in [0, 1] units; empty: plain x / 255
  MixOptions mix;                 // MixUp/CutMix (float output only)
  int64_t max_corrupt = 100;      // corrupt samples tolerated before the run stops
  bool pin_memory = true;         // pinned host memory when CUDA is available
  // Where batch buffers come from. Loaders of one process may share a pool (the evaluation loader reuses the
  // training loader's buffers); null: a pool of the loader's own.
  std::shared_ptr<BufferPool> pool;
  // The index of `path` when the caller has read it already (read_index otherwise).
  std::shared_ptr<const proto::DatasetIndex> index;
  // Remote locations: the shard cache, prefetch and fetch retries (rank is filled in from `rank`).
  SourceOptions source;
};

struct Batch {
  torch::Tensor images;      // [b, C, H, W] float32 or uint8; contiguous, or channels-last with channels_last
  torch::Tensor labels;      // [b] int64
  torch::Tensor targets;     // [b, classes] float soft targets when MixUp/CutMix is on; undefined otherwise
  torch::Tensor valid;       // [b] bool: false for tail padding and substitutes of corrupt samples
  torch::Tensor sample_ids;  // [b] int64: ids in index order (shard by shard)
  uint64_t step = 0;         // global batch number within the epoch, counted from position 0
  Cursor cursor;             // where the job stands after this batch (store it in a checkpoint of this step)
};

struct CorruptSample {
  std::string key, shard, reason;
};

class ShardedLoader {
 public:
  // Reads and checks the index and the shard files. Throws stride::Error naming the file on problems.
  explicit ShardedLoader(LoaderOptions options);
  ~ShardedLoader();
  ShardedLoader(const ShardedLoader&) = delete;
  ShardedLoader& operator=(const ShardedLoader&) = delete;

  // Starts (or restarts) streaming at `cursor`; discards anything prefetched for an earlier start.
  void start(const Cursor& cursor);
  // The next batch of this rank, or nullopt at the end of the epoch (then start({epoch + 1, 0, seed})).
  // Rethrows a worker's error (I/O failure, corrupt-sample budget exceeded).
  std::optional<Batch> next();

  uint64_t num_samples() const { return samples_.size(); }
  int64_t num_classes() const { return index_.num_classes(); }
  const proto::DatasetIndex& index() const { return index_; }
  EpochPlan plan() const;
  uint64_t steps_per_epoch() const { return plan().steps(0); }
  // Corrupt samples met so far (all of them, in the order found).
  std::vector<CorruptSample> corrupt_samples() const;
  // Seconds next() spent waiting for workers since construction.
  double wait_seconds() const { return wait_seconds_; }
  // Remote sources: bytes fetched, cache hits, stall time (zeros for a local directory).
  SourceStats source_stats() const { return source_->stats(); }

  // Reads and decodes one sample without augmentation (tools and tests). Throws on corrupt data.
  std::pair<Image, int64_t> read_sample(uint64_t id);

 private:
  struct SampleRef {
    uint32_t shard = 0;
    const proto::SampleEntry* entry = nullptr;
  };
  struct Epoch {
    Cursor cursor;  // start cursor
    uint64_t generation = 0;
    std::vector<uint64_t> order;
    uint64_t first_step = 0;  // step number of the first batch
    uint64_t end_step = 0;    // one past the last
  };
  struct Slot {
    std::optional<Batch> batch;
    std::exception_ptr error;
  };

  void worker_loop();
  Batch build_batch(const Epoch& epoch, uint64_t step);
  std::vector<uint32_t> shard_sequence(const Epoch& epoch, const OrderOptions& order) const;
  std::string read_span(const SampleRef& ref, uint64_t* span_begin);
  void report_corrupt(const SampleRef& ref, const std::string& reason);
  torch::Tensor collate(const std::vector<Image>& images, int c, int h, int w);

  LoaderOptions options_;
  std::unique_ptr<ShardSource> source_;  // destroyed after the workers (declared before them)
  proto::DatasetIndex index_;
  std::vector<SampleRef> samples_;
  std::vector<uint64_t> shard_sizes_;
  double wait_seconds_ = 0.0;
  std::shared_ptr<BufferPool> pool_;

  mutable std::mutex corrupt_mutex_;
  std::vector<CorruptSample> corrupt_;  // guarded by corrupt_mutex_
  std::atomic<int64_t> corrupt_count_{0};

  // State below is protected by mutex_.
  std::mutex mutex_;
  std::condition_variable work_cv_, ready_cv_;
  bool stop_ = false;
  std::shared_ptr<const Epoch> epoch_;
  uint64_t next_schedule_ = 0, next_deliver_ = 0;
  std::map<uint64_t, Slot> ready_;
  std::vector<std::thread> workers_;
};

}  // namespace stride::data
