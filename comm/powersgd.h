// PowerSGD gradient compression (Vogels, Karimireddy, Jaggi: "PowerSGD: Practical Low-Rank Gradient Compression
// for Distributed Optimization", NeurIPS 2019) for one gradient bucket, as PyTorch's powerSGD_hook
// (torch/distributed/algorithms/ddp_comm_hooks/powerSGD_hook.py) does it.
//
// Note [PowerSGD]
// Each gradient of the bucket is viewed as a matrix M (dim 0 x the rest). A matrix is compressed only when the
// rank-r factors are smaller than it by min_compression_rate: (n + m) * r * rate < n * m with r = min(n, m, rank)
// (PyTorch's rule and default rate 2); vectors (biases, norm weights) and small matrices are averaged exactly, in
// the same collective as the P factors. Per step, for each compressed M:
//   1. error feedback: M += residual (what compression lost on this rank in earlier steps);
//   2. warm start: Q (m x r) is the previous step's Q, orthonormalised (Gram-Schmidt); the
//      first time it is drawn from N(0, 1) by a CPU generator seeded from (seed, the parameter's index), so every
//      rank starts from the same Q without communicating;
//   3. P = M Q; all-reduce [uncompressed | P] (sum); uncompressed /= world;
//   4. orthonormalise P; Q = M^T P; all-reduce Q (sum); Q /= world;
//   5. the gradient becomes P Q^T (an average over ranks, like the uncompressed path), and
//      residual = M - P Q^T.
// PyTorch 1.13's defaults: rank 1, 1000 warm-up steps (start_powerSGD_iter; older releases had 10), rate 2,
// orthogonalization_epsilon 0 (exact normalisation).
// Differences from the PyTorch hook: Gram-Schmidt at every rank (PyTorch switches to QR above rank 2: the same
// columns up to sign, and the product P Q^T does not see the sign); an all-zero column stays zero (PyTorch's
// epsilon 0 turns it into NaN; its ZeroDivisionError branch meant to zero it, but tensor division never raises);
// error feedback covers the compressed matrices only (PyTorch also keeps
// "residuals" of the uncompressed tensors, local - average, which sum to zero over ranks and so do not change the
// average), P and the uncompressed tensors share one collective, and Q's initial draw is seeded per parameter
// instead of per bucket, so the state does not depend on the bucket layout (--bucket-cap-mb may change on resume).
// The state (residuals, Q) is saved in checkpoints per rank (trainer: powersgd-rank-R.safetensors).
//
// Thread-safety: none; the GradientReducer calls it under its mutex.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "comm/communicator.h"

namespace stride::comm {

struct PowerSgdOptions {
  int64_t rank = 1;                   // matrix approximation rank (PyTorch's matrix_approximation_rank)
  double min_compression_rate = 2.0;  // compress only matrices at least this much larger than their factors
  uint64_t seed = 0;                  // seeds the initial Q (identical on every rank)
};

// Orthonormalises the columns of `matrix` (n x r) in place (Gram-Schmidt, as PyTorch's _orthogonalize_gram_schmidt):
// each column is divided by its norm (by norm + epsilon when epsilon > 0; an all-zero column stays zero), then
// projected out of the later columns.
void orthogonalize(torch::Tensor matrix, double epsilon = 0.0);
// True when an n x m matrix is worth compressing at `rank` (see Note [PowerSGD]).
bool powersgd_compresses(int64_t n, int64_t m, int64_t rank, double min_compression_rate);

class PowerSgdBucket {
 public:
  struct Gradient {
    std::string name;
    torch::Tensor grad;  // the gradient's view into the bucket (read at start(), written at finish())
    int64_t index = 0;   // seeds this gradient's initial Q
  };
  // Collective (allocates communication buffers through `comm`): every rank in the same order.
  PowerSgdBucket(std::vector<Gradient> gradients, const PowerSgdOptions& options, Communicator& comm);

  // Steps 1-3 of Note [PowerSGD]; returns the all-reduce of [uncompressed | P].
  WorkPtr start(Communicator& comm);
  // After start()'s Work: step 4; returns the all-reduce of Q, or nullptr when nothing is compressed.
  WorkPtr middle(Communicator& comm);
  // After middle()'s Work: step 5.
  void finish(Communicator& comm);

  // Bytes one compressed step communicates.
  int64_t bytes() const;
  int64_t compressed_count() const { return static_cast<int64_t>(compressed_.size()); }
  // "powersgd.residual.NAME" and "powersgd.q.NAME" for every compressed gradient, once Q exists.
  void save(std::map<std::string, torch::Tensor>& out) const;
  // Restores what save() wrote; a gradient missing from `in` keeps a fresh state. Throws Error on a shape mismatch.
  void load(const std::map<std::string, torch::Tensor>& in);

 private:
  struct Matrix {
    std::string name;
    torch::Tensor grad;
    int64_t index = 0;
    int64_t n = 0, m = 0, r = 0;
    torch::Tensor residual;  // n x m; between start() and finish() it holds M (gradient + old residual)
    torch::Tensor p, q;      // n x r, m x r views into packed_ / q_
  };
  std::vector<torch::Tensor> uncompressed_;  // gradient views
  int64_t uncompressed_numel_ = 0;
  std::vector<Matrix> compressed_;
  torch::Tensor packed_;  // [uncompressed gradients | P factors], all-reduced together
  torch::Tensor q_;       // Q factors; kept across steps (warm start)
  bool q_ready_ = false;  // Q holds a previous step's (or a checkpoint's) value
};

}  // namespace stride::comm
