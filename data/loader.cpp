#include "data/loader.h"

#include <fcntl.h>
#include <unistd.h>

#include <torch/cuda.h>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>

#include "common/error.h"
#include "data/shard_index.h"
#include "storage/crc32c.h"
#include "storage/file_io.h"

#include <array>

namespace stride::data {
namespace {

constexpr uint64_t kAugmentStream = 11;
constexpr uint64_t kMixStream = 12;

// Marks a sample that cannot be used; the batch keeps its shape and flags the slot invalid.
struct CorruptData : Error {
  using Error::Error;
};

}  // namespace

ShardedLoader::ShardedLoader(LoaderOptions options) : options_(std::move(options)) {
  options_.source.rank = options_.rank;
  source_ = ShardSource::open(options_.path, options_.source);
  index_ = options_.index ? *options_.index : source_->read_index();
  source_->attach(index_);
  for (uint32_t s = 0; s < static_cast<uint32_t>(index_.shards_size()); ++s) {
    const auto& shard = index_.shards(static_cast<int>(s));
    shard_sizes_.push_back(static_cast<uint64_t>(shard.samples_size()));
    for (const auto& sample : shard.samples()) samples_.push_back({s, &sample});
  }
  if (samples_.empty()) throw Error(concat("dataset ", options_.path, " has no samples"));
  pool_ =
      options_.pool ? options_.pool : BufferPool::create(static_cast<size_t>(options_.prefetch + options_.workers + 2));
  if (options_.workers < 1) throw UsageError(concat("workers must be at least 1, got ", options_.workers));
  if (options_.prefetch < 1) throw UsageError(concat("prefetch must be at least 1, got ", options_.prefetch));
  if (options_.mix.enabled() && !options_.float_output) {
    throw UsageError("MixUp/CutMix in the loader needs float output (or mix on the device)");
  }
  if (options_.mix.enabled() && num_classes() <= 0) {
    throw Error(concat("dataset ", options_.path, " does not record its number of classes; MixUp needs it"));
  }
  validate(plan());
  for (int i = 0; i < options_.workers; ++i) workers_.emplace_back([this] { worker_loop(); });
}

ShardedLoader::~ShardedLoader() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  work_cv_.notify_all();
  for (auto& t : workers_) t.join();
}

EpochPlan ShardedLoader::plan() const {
  EpochPlan p;
  p.num_samples = samples_.size();
  p.per_rank_batch = options_.batch_size;
  p.world_size = options_.world_size;
  p.rank = options_.rank;
  p.drop_last = options_.train;
  return p;
}

void ShardedLoader::start(const Cursor& cursor) {
  auto epoch = std::make_shared<Epoch>();
  epoch->cursor = cursor;
  OrderOptions order;
  order.shuffle = options_.train;
  order.window_shards = options_.window_shards;
  if (options_.train && options_.ra_reps > 1) {
    order.repeats = options_.ra_reps;
    order.repeat_group = options_.ra_group > 0 ? options_.ra_group : plan().global_batch();
  }
  epoch->order = epoch_order(shard_sizes_, cursor.seed, cursor.epoch, order);
  const auto p = plan();
  epoch->first_step = cursor.consumed / p.global_batch();
  epoch->end_step = p.steps(cursor.consumed);
  if (source_->wants_plan()) source_->plan(shard_sequence(*epoch, order));
  {
    std::lock_guard<std::mutex> lock(mutex_);
    epoch->generation = epoch_ ? epoch_->generation + 1 : 1;
    epoch_ = epoch;
    next_schedule_ = next_deliver_ = 0;
    ready_.clear();
  }
  work_cv_.notify_all();
}

std::optional<Batch> ShardedLoader::next() {
  std::unique_lock<std::mutex> lock(mutex_);
  STRIDE_CHECK(epoch_ != nullptr, "ShardedLoader::next() before start()");
  if (next_deliver_ >= epoch_->end_step) return std::nullopt;
  const auto t0 = std::chrono::steady_clock::now();
  ready_cv_.wait(lock, [&] { return ready_.count(next_deliver_) > 0; });
  wait_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  Slot slot = std::move(ready_.at(next_deliver_));
  ready_.erase(next_deliver_);
  ++next_deliver_;
  // The oldest batch still in flight starts here in the plan: shards before it are done with.
  source_->advance(next_deliver_ * options_.batch_size);
  lock.unlock();
  work_cv_.notify_all();
  if (slot.error) std::rethrow_exception(slot.error);
  return std::move(slot.batch);
}

void ShardedLoader::worker_loop() {
  while (true) {
    std::shared_ptr<const Epoch> epoch;
    uint64_t j;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      work_cv_.wait(lock, [&] {
        return stop_ || (epoch_ && next_schedule_ < epoch_->end_step &&
                         next_schedule_ < next_deliver_ + static_cast<uint64_t>(options_.prefetch));
      });
      if (stop_) return;
      epoch = epoch_;
      j = next_schedule_++;
    }
    Slot slot;
    try {
      slot.batch = build_batch(*epoch, j);
    } catch (...) {
      slot.error = std::current_exception();
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (epoch_ && epoch_->generation == epoch->generation) ready_[j] = std::move(slot);
    }
    ready_cv_.notify_all();
  }
}

std::vector<uint32_t> ShardedLoader::shard_sequence(const Epoch& epoch, const OrderOptions& order) const {
  // This rank's samples in reading order: the rest of this epoch, then the whole next one (so the cache
  // prefetches across the boundary and keeps what the next epoch starts with).
  const auto p = plan();
  const uint64_t n = samples_.size(), b = options_.batch_size;
  std::vector<uint32_t> seq;
  auto add = [&](const std::vector<uint64_t>& ids, uint64_t consumed, uint64_t steps) {
    for (uint64_t j = 0; j < steps; ++j) {
      const uint64_t first = p.slice_begin(consumed + j * p.global_batch());
      for (uint64_t i = 0; i < b; ++i) seq.push_back(samples_[ids[(first + i) % n]].shard);
    }
  };
  add(epoch.order, epoch.cursor.consumed, epoch.end_step);
  add(epoch_order(shard_sizes_, epoch.cursor.seed, epoch.cursor.epoch + 1, order), 0, p.steps(0));
  return seq;
}

std::string ShardedLoader::read_span(const SampleRef& ref, uint64_t* span_begin) {
  const auto& members = ref.entry->members();
  if (members.empty()) throw CorruptData("sample has no members");
  uint64_t begin = members[0].offset(), end = 0;
  for (const auto& m : members) {
    begin = std::min(begin, m.offset());
    end = std::max(end, m.offset() + m.size());
  }
  std::string buf(end - begin, '\0');
  const int fd = source_->acquire(ref.shard);
  const bool ok = storage::pread_full(fd, buf.data(), buf.size(), begin);
  const int read_errno = errno;
  source_->release(ref.shard);
  if (!ok) {
    errno = read_errno;
    throw Error(concat("read of ", buf.size(), " bytes at offset ", begin, " of shard ",
                       index_.shards(static_cast<int>(ref.shard)).file(),
                       " failed: ", errno ? std::strerror(errno) : "unexpected end of file"));
  }
  *span_begin = begin;
  return buf;
}

namespace {

struct Members {
  const uint8_t* image = nullptr;
  size_t image_size = 0;
  Codec codec = Codec::kUnknown;
  int64_t label = -1;
};

Members check_members(const proto::SampleEntry& entry, const std::string& span, uint64_t span_begin) {
  Members m;
  m.label = entry.label();
  for (const auto& member : entry.members()) {
    const auto* p = reinterpret_cast<const uint8_t*>(span.data()) + (member.offset() - span_begin);
    if (storage::crc32c(p, member.size()) != member.crc32c())
      throw CorruptData(concat("CRC32C mismatch in .", member.ext()));
    const Codec c = codec_for(member.ext());
    if (c != Codec::kUnknown && m.codec == Codec::kUnknown) {
      m.image = p;
      m.image_size = member.size();
      m.codec = c;
    } else if (member.ext() == "cls") {
      const std::string text(reinterpret_cast<const char*>(p), member.size());
      char* end = nullptr;
      const long long v = std::strtoll(text.c_str(), &end, 10);
      if (end == text.c_str() || v < 0) throw CorruptData(concat(".cls is not a class number: '", text, "'"));
      m.label = v;
    }
  }
  if (m.codec == Codec::kUnknown) throw CorruptData("no .jpg, .png or .npy member");
  if (m.label < 0) throw CorruptData("no .cls label");
  return m;
}

}  // namespace

std::pair<Image, int64_t> ShardedLoader::read_sample(uint64_t id) {
  STRIDE_CHECK_LE(id + 1, samples_.size(), "sample id out of range");
  uint64_t begin = 0;
  const auto span = read_span(samples_[id], &begin);
  const auto m = check_members(*samples_[id].entry, span, begin);
  return {decode_image(m.codec, m.image, m.image_size, 8, options_.augment.channels), m.label};
}

void ShardedLoader::report_corrupt(const SampleRef& ref, const std::string& reason) {
  const auto& shard = index_.shards(static_cast<int>(ref.shard)).file();
  const int64_t n = ++corrupt_count_;
  {
    std::lock_guard<std::mutex> lock(corrupt_mutex_);
    corrupt_.push_back({ref.entry->key(), shard, reason});
  }
  std::fprintf(stderr, "stride: warning: rank %llu: skipped corrupt sample '%s' in %s/%s: %s (%lld of at most %lld)\n",
               static_cast<unsigned long long>(options_.rank), ref.entry->key().c_str(), options_.path.c_str(),
               shard.c_str(), reason.c_str(), static_cast<long long>(n), static_cast<long long>(options_.max_corrupt));
  if (n > options_.max_corrupt) {
    throw Error(concat("dataset ", options_.path, ": ", n, " corrupt samples exceed the budget of ",
                       options_.max_corrupt, " (last: '", ref.entry->key(), "' in ", shard, ": ", reason,
                       "); raise --max-corrupt or repair the shards"));
  }
}

// Note [Fused collate]
// One pass from the HWC uint8 images into the [b, C, H, W] batch; float output is normalised on the way through a
// 256-entry table per channel ((v / 255 - mean) / std), instead of separate convert, divide, subtract and divide
// passes over a 40 MB batch. With channels_last the batch is stored NHWC, which is the images' own HWC order: the
// uint8 batch is one memcpy per image, and the [b, C, H, W] tensor handed out has channels-last strides, so
// `contiguous(ChannelsLast)` in the training loop is free.
torch::Tensor ShardedLoader::collate(const std::vector<Image>& images, int c, int h, int w) {
  const int64_t b = static_cast<int64_t>(images.size());
  const size_t plane = static_cast<size_t>(h) * w;
  const bool nhwc = options_.channels_last;
  // NHWC storage viewed as [b, C, H, W] (strides H*W*C, 1, W*C, C), or plain NCHW.
  auto batch_tensor = [&](torch::ScalarType dtype) {
    return nhwc ? pool_->empty({b, h, w, c}, dtype).permute({0, 3, 1, 2}) : pool_->empty({b, c, h, w}, dtype);
  };
  if (!options_.float_output) {
    auto out = batch_tensor(torch::kUInt8);
    uint8_t* dst = out.data_ptr<uint8_t>();
    for (int64_t i = 0; i < b; ++i) {
      const uint8_t* src = images[i].pixels.data();
      uint8_t* o = dst + i * plane * c;
      if (c == 1 || nhwc) {
        std::memcpy(o, src, plane * c);
      } else {
        for (size_t px = 0; px < plane; ++px) {
          for (int ch = 0; ch < c; ++ch) o[ch * plane + px] = src[px * c + ch];
        }
      }
    }
    return out;
  }
  if (!options_.mean.empty()) {
    STRIDE_CHECK(options_.mean.size() == static_cast<size_t>(c) && options_.std.size() == static_cast<size_t>(c),
                 "mean/std need ", c, " values for ", c, "-channel images");
  }
  std::vector<std::array<float, 256>> lut(static_cast<size_t>(c));
  for (int ch = 0; ch < c; ++ch) {
    const double mean = options_.mean.empty() ? 0.0 : options_.mean[ch];
    const double stdv = options_.std.empty() ? 1.0 : options_.std[ch];
    for (int v = 0; v < 256; ++v) lut[ch][v] = static_cast<float>((v / 255.0 - mean) / stdv);
  }
  auto out = batch_tensor(torch::kFloat32);
  float* dst = out.data_ptr<float>();
  for (int64_t i = 0; i < b; ++i) {
    const uint8_t* src = images[i].pixels.data();
    float* o = dst + i * plane * c;
    if (nhwc) {
      for (size_t px = 0; px < plane; ++px) {
        for (int ch = 0; ch < c; ++ch) o[px * c + ch] = lut[ch][src[px * c + ch]];
      }
      continue;
    }
    for (int ch = 0; ch < c; ++ch) {
      const float* t = lut[ch].data();
      float* oc = o + ch * plane;
      for (size_t px = 0; px < plane; ++px) oc[px] = t[src[px * c + ch]];
    }
  }
  return out;
}

std::vector<CorruptSample> ShardedLoader::corrupt_samples() const {
  std::lock_guard<std::mutex> lock(corrupt_mutex_);
  return corrupt_;
}

Batch ShardedLoader::build_batch(const Epoch& epoch, uint64_t j) {
  const auto p = plan();
  const uint64_t n = samples_.size();
  const uint64_t b = options_.batch_size;
  const uint64_t batch_start = epoch.cursor.consumed + j * p.global_batch();
  const uint64_t first = p.slice_begin(batch_start);

  std::vector<Image> images(b);
  std::vector<int64_t> labels(b, 0), ids(b, 0);
  std::vector<uint8_t> valid(b, 0);
  for (uint64_t i = 0; i < b; ++i) {
    const uint64_t pos = first + i;
    const bool padding = pos >= n;
    const uint64_t id = epoch.order[pos % n];
    ids[i] = static_cast<int64_t>(id);
    const SampleRef& ref = samples_[id];
    try {
      uint64_t span_begin = 0;
      const std::string span = read_span(ref, &span_begin);
      const Members m = check_members(*ref.entry, span, span_begin);
      Rng rng(derive_seed(epoch.cursor.seed, epoch.cursor.epoch, kAugmentStream, pos));
      try {
        images[i] = augment(m.image, m.image_size, m.codec, options_.augment, rng);
      } catch (const Error& e) {
        throw CorruptData(concat("decode failed: ", e.what()));
      }
      labels[i] = m.label;
      valid[i] = padding ? 0 : 1;
    } catch (const CorruptData& e) {
      report_corrupt(ref, e.what());
    }
  }
  // Substitute corrupt slots with a good sample of the same batch (flagged invalid), keeping the shape fixed.
  int64_t good = -1;
  for (uint64_t i = 0; i < b; ++i) {
    if (!images[i].empty()) good = static_cast<int64_t>(i);
  }
  if (good < 0) {
    throw Error(concat("dataset ", options_.path, ": every sample of batch ", epoch.first_step + j, " is corrupt"));
  }
  for (uint64_t i = 0; i < b; ++i) {
    if (images[i].empty()) {
      images[i] = images[good];
      labels[i] = labels[good];
      valid[i] = 0;
    }
  }

  // Collate HWC uint8 images into [b, C, H, W].
  const int h = images[0].height, w = images[0].width, c = images[0].channels;
  for (uint64_t i = 1; i < b; ++i) {
    if (images[i].height != h || images[i].width != w || images[i].channels != c) {
      throw UsageError(concat("dataset ", options_.path, ": sample '", samples_[ids[i]].entry->key(), "' is ",
                              images[i].height, "x", images[i].width, "x", images[i].channels, " but the batch is ", h,
                              "x", w, "x", c, "; use a crop to a fixed size"));
    }
  }
  Batch batch;
  batch.labels = torch::tensor(labels, torch::kLong);
  batch.sample_ids = torch::tensor(ids, torch::kLong);
  batch.valid = torch::from_blob(valid.data(), {static_cast<int64_t>(b)}, torch::kUInt8).to(torch::kBool);
  batch.step = epoch.first_step + j;
  batch.cursor = epoch.cursor;
  batch.cursor.consumed = std::min(n, batch_start + p.global_batch());
  batch.images = collate(images, c, h, w);
  if (options_.mix.enabled()) {
    auto mixed = mix_batch(batch.images, batch.labels, num_classes(), options_.mix,
                           derive_seed(epoch.cursor.seed, epoch.cursor.epoch, kMixStream, first));
    // Mixing may hand back a contiguous batch (roll does): back to the layout this loader promises.
    batch.images = options_.channels_last ? mixed.images.contiguous(torch::MemoryFormat::ChannelsLast) : mixed.images;
    batch.targets = mixed.targets;
  }
  if (options_.pin_memory && torch::cuda::is_available()) batch.images = batch.images.pin_memory();
  return batch;
}

}  // namespace stride::data
