#include <filesystem>

#include "common/error.h"
#include "data/shard_index.h"
#include "data/sources.h"
#include "trainer/trainer.h"

namespace stride::trainer {
namespace fs = std::filesystem;

void ensure_dataset(const TrainConfig& c) {
  const auto train_dir = fs::path(c.data_path) / c.train_split;
  if (fs::exists(train_dir / data::kIndexFile)) return;
  if (c.dataset == "shards") {
    throw UsageError(concat("no dataset at ", train_dir.string(), " (", data::kIndexFile, " missing): make one with ",
                            "`stride shard`, or pass --dataset fashion-mnist|cifar10|imagefolder to shard it now"));
  }
  data::ShardJob job;
  job.input = c.dataset_source;
  if (job.input.empty()) {
    if (c.dataset != "fashion-mnist") throw UsageError(concat("--dataset ", c.dataset, " needs --dataset-source"));
    job.input = "/usr/share/datasets/fashion-mnist";  // Debian's dataset-fashion-mnist package
  }
  job.output = c.data_path;
  job.samples_per_shard = 10000;
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

data::LoaderOptions loader_options(const TrainConfig& c, bool train, uint64_t rank, uint64_t world_size) {
  data::LoaderOptions o;
  o.path = (fs::path(c.data_path) / (train ? c.train_split : c.val_split)).string();
  o.batch_size = static_cast<uint64_t>(c.batch_size);
  o.rank = rank;
  o.world_size = world_size;
  o.seed = static_cast<uint64_t>(c.seed);
  o.train = train;
  o.workers = static_cast<int>(c.workers);
  o.prefetch = static_cast<int>(c.prefetch);
  o.max_corrupt = c.max_corrupt;
  o.pin_memory = true;
  const auto index = data::read_index(o.path);
  const bool fixed_shape = index.image_shape_size() == 3;
  const int channels = fixed_shape ? static_cast<int>(index.image_shape(2)) : 3;
  using Crop = data::AugmentOptions::Crop;
  auto& a = o.augment;
  a.channels = fixed_shape ? 0 : 3;
  if (train) {
    a.crop = data::parse_crop(c.crop);
    a.pad = static_cast<int>(c.pad);
    a.size = static_cast<int>(c.image_size);
    if (a.crop == Crop::kRandomResized && a.size == 0) a.size = 224;
    a.hflip = c.hflip;
    a.cutout = static_cast<int>(c.cutout);
    a.erasing = c.random_erase;
    o.mix = {c.mixup_alpha, c.cutmix_alpha};
  } else if (!fixed_shape || c.crop == "random-resized") {
    a.crop = Crop::kCenter;
    a.size = c.image_size > 0 ? static_cast<int>(c.image_size) : 224;
  }
  // Normalisation: explicit values, else the dataset's well-known statistics.
  o.mean = c.mean;
  o.std = c.std;
  if (o.mean.empty()) {
    const std::string name = index.name();
    if (name.rfind("fashion-mnist", 0) == 0) {
      o.mean = {0.2860};
      o.std = {0.3530};
    } else if (name.rfind("cifar10", 0) == 0) {
      o.mean = {0.4914, 0.4822, 0.4465};
      o.std = {0.2470, 0.2435, 0.2616};
    } else if (channels == 3) {
      o.mean = {0.485, 0.456, 0.406};  // ImageNet
      o.std = {0.229, 0.224, 0.225};
    }
  }
  if (!o.mean.empty() && o.mean.size() != static_cast<size_t>(channels)) {
    throw UsageError(
        concat("--mean/--std have ", o.mean.size(), " values but ", o.path, " has ", channels, "-channel images"));
  }
  return o;
}

}  // namespace stride::trainer
