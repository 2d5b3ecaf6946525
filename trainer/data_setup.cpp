#include "trainer/data_setup.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include "common/error.h"
#include "data/shard_index.h"
#include "data/shard_source.h"
#include "data/sources.h"

namespace stride::trainer {
namespace fs = std::filesystem;

void check_dataset_present(const TrainConfig& c) {
  if (data::is_remote(c.data_path) || c.dataset != "shards") return;
  const auto train_dir = fs::path(c.data_path) / c.train_split;
  if (fs::exists(train_dir / data::kIndexFile)) return;
  data::check_not_a_split(c.data_path, c.train_split, "--train-split");
  throw UsageError(concat("no dataset at ", train_dir.string(), " (", data::kIndexFile, " missing): make one with ",
                          "`stride shard`, or pass --dataset fashion-mnist|cifar10|imagefolder to shard it now"));
}

data::SourceOptions source_options(const TrainConfig& c, uint64_t rank) {
  data::SourceOptions o;
  o.rank = rank;
  o.cache_dir = c.cache_dir;
  o.cache_limit = static_cast<uint64_t>(c.cache_limit);
  o.prefetch_shards = static_cast<int>(c.prefetch_shards);
  o.fetch.timeout_s = c.fetch_timeout;
  o.fetch.retries = static_cast<int>(c.fetch_retries);
  return o;
}

void ensure_dataset(const TrainConfig& c) {
  if (data::is_remote(c.data_path)) return;  // a remote dataset is read as it is; sharding is local only
  const auto train_dir = fs::path(c.data_path) / c.train_split;
  if (fs::exists(train_dir / data::kIndexFile)) return;
  check_dataset_present(c);
  data::ShardJob job;
  job.input = c.dataset_source;
  if (job.input.empty()) {
    if (c.dataset != "fashion-mnist") throw UsageError(concat("--dataset ", c.dataset, " needs --dataset-source"));
    job.input = "/usr/share/datasets/fashion-mnist";  // Debian's dataset-fashion-mnist package
  }
  job.output = c.data_path;
  job.samples_per_shard = 10000;
  // Every rank comes here; the first to take the lock shards, the others wait for it and then find the index
  // (ranks of other hosts too, where data-path is a shared filesystem with flock, as NFS v4 has).
  fs::create_directories(c.data_path);
  const std::string lock_path = (fs::path(c.data_path) / ".shard.lock").string();
  const int fd = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) throw Error(concat("cannot create ", lock_path, ": ", std::strerror(errno)));
  struct Unlock {
    int fd;
    ~Unlock() { ::close(fd); }
  } unlock{fd};
  while (::flock(fd, LOCK_EX) != 0) {
    if (errno != EINTR) throw Error(concat("cannot lock ", lock_path, ": ", std::strerror(errno)));
  }
  if (fs::exists(train_dir / data::kIndexFile)) return;  // another rank made it while this one waited
  std::fprintf(stderr, "stride: sharding %s from %s into %s\n", c.dataset.c_str(), job.input.c_str(),
               c.data_path.c_str());
  if (c.dataset == "fashion-mnist") {
    data::shard_fashion_mnist(job);
  } else if (c.dataset == "cifar10") {
    data::shard_cifar10(job);
  } else {
    data::shard_image_folder(job);
  }
}

namespace {

std::string side(int64_t h, int64_t w) { return concat(h, "x", w); }

// The shape of a split's images as its index records it.
struct SplitShape {
  bool fixed = false;
  int64_t height = 0, width = 0;
  std::string describe() const { return fixed ? side(height, width) : std::string("images of different sizes"); }
};

SplitShape shape_of(const proto::DatasetIndex& index) {
  SplitShape s;
  s.fixed = index.image_shape_size() == 3;
  if (s.fixed) {
    s.height = index.image_shape(0);
    s.width = index.image_shape(1);
  }
  return s;
}

std::string number(double v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.4g", v);
  return buf;
}

std::string list(const std::vector<double>& v) {
  std::string out;
  for (size_t i = 0; i < v.size(); ++i) out += (i ? "," : "") + number(v[i]);
  return out;
}

// --mean/--std, else the dataset's well-known statistics (by the index's name), else none (x / 255).
void set_normalisation(const TrainConfig& c, const proto::DatasetIndex& index, int channels, DataPlan& p) {
  std::vector<double> mean = c.mean, std = c.std;
  if (mean.empty()) {
    const std::string& name = index.name();
    if (name.rfind("fashion-mnist", 0) == 0) {
      mean = {0.2860};
      std = {0.3530};
    } else if (name.rfind("cifar10", 0) == 0) {
      mean = {0.4914, 0.4822, 0.4465};
      std = {0.2470, 0.2435, 0.2616};
    } else if (channels == 3) {
      mean = {0.485, 0.456, 0.406};  // ImageNet
      std = {0.229, 0.224, 0.225};
    }
  }
  if (!mean.empty() && mean.size() != static_cast<size_t>(channels)) {
    throw UsageError(concat("--mean/--std have ", mean.size(), " values but the images have ", channels, " channel",
                            channels == 1 ? "" : "s"));
  }
  p.train.mean = p.eval.mean = mean;
  p.train.std = p.eval.std = std;
  p.normalisation = mean.empty() ? "x / 255" : concat("mean ", list(mean), " std ", list(std));
}

}  // namespace

DataPlan plan_data(const TrainConfig& c, uint64_t rank) {
  using Crop = data::AugmentOptions::Crop;
  DataPlan p;
  const std::string train_dir = data::split_location(c.data_path, c.train_split);
  const std::string eval_dir = data::split_location(c.data_path, c.val_split);
  const data::SourceOptions sources = source_options(c, rank);
  std::shared_ptr<const proto::DatasetIndex> train_index, eval_index;
  if (!c.test_only) train_index = std::make_shared<proto::DatasetIndex>(data::read_index_at(train_dir, sources));
  eval_index = std::make_shared<proto::DatasetIndex>(data::read_index_at(eval_dir, sources));
  // The reference split decides sizes and channels: training's, or evaluation's when only evaluating.
  const auto& ref = train_index ? *train_index : *eval_index;
  const std::string& ref_dir = train_index ? train_dir : eval_dir;
  const SplitShape own = shape_of(ref), eval_own = shape_of(*eval_index);
  const int channels = data::index_channels(ref) > 0 ? data::index_channels(ref) : 3;
  p.in_channels = channels;
  p.num_classes = ref.num_classes();

  const Crop crop = data::parse_crop(c.crop);
  if (!own.fixed && crop != Crop::kRandomResized) {
    throw UsageError(concat(ref_dir, " holds images of different sizes, which --crop ", c.crop,
                            " cannot batch: pass --crop random-resized (--image-size N, default 224), or reshard "
                            "the images to one size (if they do share one, `stride shard --index-only ",
                            ref_dir, "` records it)"));
  }
  // Training: S x S (or the images' own H x W with --crop none).
  auto& a = p.train.augment;
  a.crop = crop;
  a.channels = channels;
  int64_t s_h = 0, s_w = 0;
  if (crop == Crop::kPadCrop) {
    s_h = s_w = c.image_size > 0 ? c.image_size : std::min(own.height, own.width);
    if (s_h > std::min(own.height, own.width) + 2 * c.pad) {
      throw UsageError(concat("--image-size ", s_h, " is larger than the padded images (", own.describe(), " + 2 x ",
                              c.pad, " of --pad)"));
    }
    a.size = static_cast<int>(s_h);
    a.pad = static_cast<int>(c.pad);
    p.train_transform = concat("pad-crop ", side(s_h, s_w), " (pad ", c.pad, ")");
  } else if (crop == Crop::kNone) {
    if (c.image_size > 0 && (c.image_size != own.height || c.image_size != own.width)) {
      throw UsageError(concat("--crop none keeps the images' own size (", own.describe(), "), not --image-size ",
                              c.image_size, ": drop --image-size or pass --crop pad-crop|random-resized"));
    }
    s_h = own.height;
    s_w = own.width;
    p.train_transform = concat("none (", side(s_h, s_w), ", the images' own size)");
  } else {
    s_h = s_w = c.image_size > 0 ? c.image_size : 224;
    a.size = static_cast<int>(s_h);
    p.train_transform =
        concat("random-resized ", side(s_h, s_w), " (scale ", number(a.scale_min), "-", number(a.scale_max), ")");
  }
  a.hflip = c.hflip;
  a.cutout = static_cast<int>(c.cutout);
  a.erasing = c.random_erase;
  a.auto_augment = {data::parse_auto_augment(c.auto_augment), static_cast<int>(c.ra_magnitude),
                    static_cast<int>(c.ra_num_ops)};
  const auto jitter = [&](size_t i) { return i < c.color_jitter.size() ? c.color_jitter[i] : 0.0; };
  a.brightness = jitter(0);
  a.contrast = jitter(1);
  a.saturation = jitter(2);
  p.train.ra_reps = c.ra_sampler ? static_cast<uint64_t>(c.ra_reps) : 1;
  p.train.mix = {c.mixup_alpha, c.cutmix_alpha};
  if (c.hflip) p.train_transform += ", hflip";
  switch (a.auto_augment.policy) {
    case data::AutoAugmentPolicy::kNone:
      break;
    case data::AutoAugmentPolicy::kRandAugment:
      p.train_transform += concat(", randaugment (", c.ra_num_ops, " ops, magnitude ", c.ra_magnitude, "/30)");
      break;
    case data::AutoAugmentPolicy::kTrivialAugmentWide:
      p.train_transform += ", trivialaugment-wide";
      break;
    default:
      p.train_transform += concat(", autoaugment ", c.auto_augment);
  }
  if (!c.color_jitter.empty()) {
    p.train_transform +=
        concat(", colour jitter ", number(a.brightness), "/", number(a.contrast), "/", number(a.saturation));
  }
  if (c.ra_sampler && c.ra_reps > 1) p.train_transform += concat(", repeated augmentation x", c.ra_reps);
  if (c.cutout > 0) p.train_transform += concat(", cutout ", c.cutout);
  if (c.random_erase > 0) p.train_transform += concat(", random erasing ", number(c.random_erase));
  if (c.mixup_alpha > 0) p.train_transform += concat(", mixup ", number(c.mixup_alpha));
  if (c.cutmix_alpha > 0) p.train_transform += concat(", cutmix ", number(c.cutmix_alpha));

  // Evaluation: V x V by Note [One transform rule].
  auto& e = p.eval.augment;
  e.channels = channels;
  const int64_t v = c.val_crop_size > 0 ? c.val_crop_size : s_h;
  const bool own_side = eval_own.fixed && eval_own.height == v && eval_own.width == v;
  if (crop != Crop::kNone || c.val_crop_size > 0) p.eval_side = v;
  if (crop == Crop::kRandomResized) {
    if (own_side && c.val_resize_size == 0) {
      p.eval_transform = concat("none (", eval_own.describe(), ", the images' own size)");
    } else {
      e.crop = Crop::kCenter;
      e.size = static_cast<int>(v);
      e.resize = static_cast<int>(c.val_resize_size > 0 ? c.val_resize_size : std::llround(v * 256.0 / 224.0));
      p.eval_transform = concat("resize ", e.resize, ", centre crop ", side(v, v));
    }
  } else {
    if (!eval_own.fixed || eval_own.height != own.height || eval_own.width != own.width) {
      throw UsageError(concat(eval_dir, " holds ", eval_own.describe(), " but ", ref_dir, " holds ", own.describe(),
                              ": with --crop ", c.crop,
                              " both splits must share one shape (or pass --crop random-resized)"));
    }
    if (c.val_resize_size > 0) throw UsageError("--val-resize-size applies to --crop random-resized only");
    if (own_side || (crop == Crop::kNone && c.val_crop_size == 0)) {
      p.eval_transform = concat("none (", eval_own.describe(), ", the images' own size)");
    } else {
      e.crop = Crop::kCenterPad;
      e.size = static_cast<int>(v);
      p.eval_transform = concat("centre ", side(v, v), " (no resampling)");
    }
  }

  set_normalisation(c, ref, channels, p);
  // The evaluation loader reuses the training loader's batch buffers (one pool per process).
  const auto pool = data::BufferPool::create(static_cast<size_t>(c.prefetch + c.workers + 2));
  for (auto* o : {&p.train, &p.eval}) {
    o->batch_size = static_cast<uint64_t>(c.batch_size);
    o->seed = static_cast<uint64_t>(c.seed);
    o->workers = static_cast<int>(c.workers);
    o->prefetch = static_cast<int>(c.prefetch);
    o->max_corrupt = c.max_corrupt;
    o->pin_memory = true;
    o->pool = pool;
    o->source = sources;
  }
  p.train.train = true;
  p.eval.train = false;
  p.train.path = train_index ? train_dir : std::string();
  p.train.index = train_index;
  p.eval.path = eval_dir;
  p.eval.index = eval_index;
  return p;
}

void apply_resolved(const DataPlan& plan, TrainConfig& c) {
  using Crop = data::AugmentOptions::Crop;
  if (plan.train.augment.crop != Crop::kNone) c.image_size = plan.train.augment.size;
  c.val_crop_size = plan.eval_side;
  if (plan.eval.augment.crop == Crop::kCenter) c.val_resize_size = plan.eval.augment.resize;
}

proto::Preprocess preprocess_record(const DataPlan& plan) {
  proto::Preprocess p;
  const auto& e = plan.eval.augment;
  p.set_channels(static_cast<uint32_t>(plan.in_channels));
  p.set_crop(data::crop_name(e.crop));
  p.set_size(static_cast<uint32_t>(e.size));
  p.set_resize(static_cast<uint32_t>(e.resize));
  for (double m : plan.eval.mean) p.add_mean(m);
  for (double s : plan.eval.std) p.add_std(s);
  const auto& index = plan.train.index ? plan.train.index : plan.eval.index;
  if (index) {
    for (const auto& name : index->class_names()) p.add_class_names(name);
  }
  p.set_description(concat(plan.eval_transform, "; ", plan.normalisation));
  return p;
}

}  // namespace stride::trainer
