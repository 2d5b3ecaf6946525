// What `stride train` reads and how it prepares it: the dataset's splits, the training and evaluation
// transforms, the model's input channels. Built once at start-up, before anything is written, so a dataset or
// flag problem stops the run before it leaves a run directory behind. Not thread-safe; call from main.
//
// Note [One transform rule]
// Training and evaluation transforms come from one rule, so they cannot disagree (say, training at 28 px and
// evaluating at 224 px). With S the training side and V the evaluation side (--val-crop-size, default S):
//   - pad-crop / none (fixed-size data only): evaluation at the images' own size when that is V; otherwise the
//     centre V x V without resampling (zero padding where the image is smaller). The evaluation images must
//     have the training images' shape.
//   - random-resized (any data): evaluation images of exactly V x V are used as they are; otherwise resize the
//     shorter side to --val-resize-size (default V x 256 / 224, torchvision's 256 -> 224) and take the centre.
//   - images of different sizes with pad-crop or none: an error naming the flags to set.
// Channels: the training split's channel count when every image has it (a grayscale set stays 1-channel),
// else 3; every split is decoded to it, and the model is built with it.
#pragma once

#include <memory>
#include <string>

#include "data/loader.h"
#include "proto/checkpoint.pb.h"
#include "trainer/config.h"

namespace stride::trainer {

struct DataPlan {
  // rank and world_size are left for the caller; train.path is empty with --test-only.
  data::LoaderOptions train, eval;
  int in_channels = 3;
  int64_t num_classes = 0;      // the dataset's (0: it does not record them)
  int64_t eval_side = 0;        // V (0 with --crop none: the images' own shape)
  std::string train_transform;  // "pad-crop 28x28 (pad 4), hflip"
  std::string eval_transform;   // "none (28x28, the images' own size)"
  std::string normalisation;    // "mean 0.286 std 0.353" or "x / 255"
};

// The shard cache and fetch settings of a remote --data-path.
data::SourceOptions source_options(const TrainConfig& config, uint64_t rank = 0);

// Shards the dataset into config.data_path when it has no index and config.dataset names a raw format.
// For `--dataset shards` on a local --data-path: throws UsageError when the training split's index is missing,
// naming the folder (and the parent folder when --data-path points at a split). Cheap; `stride launch` calls it
// before anything starts.
void check_dataset_present(const TrainConfig& config);
void ensure_dataset(const TrainConfig& config);

// Reads the splits' indexes and applies Note [One transform rule]. Throws UsageError naming the flags when the
// configuration cannot be applied to the data, Error naming the file when an index is missing or damaged.
// `rank` only names this rank in errors of a remote --data-path.
DataPlan plan_data(const TrainConfig& config, uint64_t rank = 0);

// The plan's resolved sides written back into the configuration (image-size, val-crop-size, val-resize-size),
// so the run directory's config.toml states what ran.
void apply_resolved(const DataPlan& plan, TrainConfig& config);

// The evaluation side of the plan as a checkpoint records it (proto::Preprocess): what `stride predict` needs to
// prepare an image without the dataset.
proto::Preprocess preprocess_record(const DataPlan& plan);

}  // namespace stride::trainer
