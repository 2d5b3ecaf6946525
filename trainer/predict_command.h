// `stride predict CHECKPOINT IMAGE|DIR...`: the top-k classes of image files under a trained model, prepared
// exactly as the run's evaluation prepared its images (the checkpoint's proto::Preprocess), so no dataset is needed.
#pragma once

#include <CLI/CLI.hpp>
#include <string>
#include <vector>

#include "models/resnet.h"
#include "proto/checkpoint.pb.h"

namespace stride::trainer {

// One image's answer: the k most likely classes, most likely first. `error` is set instead when the file could
// not be read or decoded (the other files are still answered).
struct Prediction {
  std::string path;
  std::vector<int64_t> classes;
  std::vector<double> probabilities;
  std::string error;
};

struct PredictOptions {
  std::string checkpoint;           // a checkpoint directory, or a run directory (its newest valid checkpoint)
  std::vector<std::string> inputs;  // image files, or folders searched recursively for .jpg/.jpeg/.png/.npy
  int64_t top_k = 5;
  int64_t batch_size = 64;
  int64_t threads = 0;  // decode workers and intra-op threads; 0: the machine's cores
  bool ema = false;     // the EMA weights instead of the trained ones
};

// The image files `inputs` name, in order (each folder's files sorted). Throws UsageError naming a path that does
// not exist or a file whose extension is not an image format Stride decodes.
std::vector<std::string> collect_images(const std::vector<std::string>& inputs);

// A checkpoint directory as given, or a run directory's newest valid checkpoint of its current lineage. Throws
// UsageError naming `path` when it is neither, or when a run directory holds no valid checkpoint.
std::string resolve_checkpoint(const std::string& path);

// A trained model as a checkpoint holds it: built from the MANIFEST's model name with the classifier's width and
// the input channels the run's images had, weights loaded, in eval mode. `expected_model` (when not empty) must
// be the checkpoint's model name, else UsageError naming both. `ema`: the EMA weights (UsageError without them).
struct TrainedModel {
  std::string checkpoint;  // the checkpoint directory used
  proto::Manifest manifest;
  proto::Preprocess preprocess;  // how the run's evaluation prepared images
  models::ResNet model{nullptr};
};
TrainedModel load_trained_model(const std::string& checkpoint_or_run, bool ema = false,
                                const std::string& expected_model = "");

struct PredictResult {
  std::string checkpoint;  // the checkpoint directory used
  uint64_t step = 0;
  std::string model;
  proto::Preprocess preprocess;          // how the images were prepared
  std::vector<std::string> class_names;  // by class index; empty where the checkpoint records none
  std::vector<Prediction> predictions;   // one per image, in collect_images() order
};

// Runs the model on every image: decoding and transforms on `threads` workers, the model in batches. Throws
// UsageError/Error for a bad checkpoint or option; a bad image only sets its Prediction::error.
PredictResult predict(const PredictOptions& options);

void add_predict_command(CLI::App& app);

}  // namespace stride::trainer
