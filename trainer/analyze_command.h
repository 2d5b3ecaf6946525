// `stride analyze lesion` and `stride analyze landscape`: two experiments about why residual networks train,
// run on trained checkpoints, each writing a table on the terminal, a JSON file and an SVG plot.
//
//   lesion (Veit et al. 2016, "Residual networks behave like ensembles of relatively shallow networks"): delete
//     each residual block in turn at test time (the block becomes the identity) and measure the test accuracy;
//     then delete k random blocks at once for several k. Only blocks whose input and output shapes agree can be
//     deleted: a downsampling block's shortcut is a projection (or zero-padded subsampling) and a plain block has
//     none, so there is no identity to keep; these blocks are listed as skipped, as Veit et al. lesioned only
//     identity-shortcut blocks. A plain network's blocks are deleted the same way (the block becomes the identity).
//   landscape (Li et al. 2018, "Visualizing the loss landscape of neural nets"): the loss at w + a d1 (+ b d2) on a
//     fixed subset of the training set, for filter-normalised random directions d1, d2 (see filter_normalize). Under
//     mpirun every rank evaluates its share of the grid points; rank 0 gathers them and writes the results.
#pragma once

#include <CLI/CLI.hpp>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "data/loader.h"
#include "models/resnet.h"

namespace stride::trainer {

// Samples held in memory: normalised float images [N, C, H, W] and labels [N].
struct SampleSet {
  torch::Tensor images, labels;
  int64_t size() const { return labels.defined() ? labels.size(0) : 0; }
};

// The first `limit` valid samples (all of them when limit <= 0) of the split `options` reads, in dataset order
// with its evaluation transform.
SampleSet load_samples(data::LoaderOptions options, int64_t limit);

struct Evaluation {
  double loss = 0.0;  // mean cross-entropy
  double acc1 = 0.0;  // top-1 accuracy, percent
};
// The model (as it is, in eval mode) on every sample, in batches of `batch_size`.
Evaluation evaluate_samples(models::ResNetImpl& model, const SampleSet& samples, int64_t batch_size);

// ---- lesion -------------------------------------------------------------------------------------------------
struct LesionOptions {
  std::vector<int64_t> k;  // numbers of blocks deleted at random at once; empty: 1, 2, 4, ... and all
  int64_t repeats = 3;     // random draws per k
  uint64_t seed = 0;
  int64_t batch_size = 256;
};

struct BlockLesion {
  std::string name;      // "layer2.3"
  bool deleted = false;  // false: skipped (no identity path)
  double acc1 = 0.0, loss = 0.0;
};
struct RandomLesion {
  int64_t k = 0;
  std::vector<std::vector<std::string>> deleted;  // per repeat
  std::vector<double> acc1;                       // per repeat
};
struct LesionResult {
  Evaluation full;                  // nothing deleted
  std::vector<BlockLesion> blocks;  // every block, in forward order
  std::vector<RandomLesion> random;
};

// Every block's name in forward order ("layer1.0", ...), the names ResNetImpl::blocks() has in the state dict.
std::vector<std::string> block_names(const models::ResNetImpl& model);
// Runs the study; `progress` (may be empty) hears one line per evaluation. Leaves no block deleted.
LesionResult lesion_study(models::ResNetImpl& model, const SampleSet& samples, const LesionOptions& options,
                          const std::function<void(const std::string&)>& progress = {});

// ---- landscape ----------------------------------------------------------------------------------------------
// Li et al.'s filter normalisation of one parameter's random direction: for a weight of two or more dimensions
// (convolution [out, in, kh, kw], linear [out, in]) each filter d[i] (one output unit) is rescaled to the norm of
// the weight's filter w[i]: d[i] * ||w[i]|| / (||d[i]|| + 1e-10). One-dimensional parameters (BN scale and shift,
// biases) get a zero direction, the paper's default.
torch::Tensor filter_normalize(const torch::Tensor& direction, const torch::Tensor& weight);
// A random Gaussian direction for every parameter (in model->named_parameters() order), filter-normalised. The
// same seed gives the same direction on every rank.
std::vector<torch::Tensor> random_direction(const models::ResNetImpl& model, uint64_t seed);

struct LandscapeOptions {
  int64_t grid = 21;  // points per axis
  double lo = -1.0, hi = 1.0;
  int dims = 1;
  uint64_t seed = 0;
  int64_t batch_size = 256;
};
struct LandscapeResult {
  std::vector<double> coords;  // the grid along each axis
  // dims 1: loss[j] at alpha = coords[j]; dims 2: loss[i * grid + j] at (alpha, beta) = (coords[j], coords[i]).
  std::vector<double> loss, acc1;
  Evaluation centre;  // at the trained weights
};
// Evaluates the grid: point p is computed by rank p % size of `comm` and the results are summed over ranks, so
// every rank returns the whole grid. `directions` has one entry per dimension (random_direction()'s layout). The
// model's weights are restored before returning.
LandscapeResult loss_landscape(models::ResNetImpl& model, const SampleSet& samples,
                               const std::vector<std::vector<torch::Tensor>>& directions,
                               const LandscapeOptions& options, comm::Communicator& comm,
                               const std::function<void(const std::string&)>& progress = {});

void add_analyze_command(CLI::App& app);

}  // namespace stride::trainer
