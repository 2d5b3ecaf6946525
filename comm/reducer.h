// GradientReducer: what PyTorch's DistributedDataParallel does, in C++.
//
// Parameters (those that require grad) are packed, in reverse registration order, into flat buckets: a small
// first bucket (so communication starts early in backward) and then buckets up to a cap (default 25 MiB). Each
// parameter's .grad is a view into its bucket, so autograd accumulates straight into the buffer that is
// communicated and the averaged result needs no copy back. The buckets are slices of one buffer per dtype and
// device (Note [Gradient arena] in reducer.cpp), so rebuild() can re-cut them at another cap between steps. A post-hook
// on every parameter's gradient accumulator marks it ready; when all of a bucket's parameters are ready the bucket is
// all-reduced (average) while backward continues. Buckets are launched strictly in index order on every rank (a ready
// bucket waits for its predecessors), which keeps the collective order identical across ranks even when ranks differ in
// which parameters get gradients. finish() launches what is left (buckets holding parameters unused this iteration),
// waits for everything, and leaves averaged gradients in .grad.
//
// Usage per optimizer step:
//   for each micro-batch: reducer.prepare(/*reduce=*/is_last_micro_batch); loss.backward();
//   reducer.finish(); optimizer.step(); zero_grad (in place: the .grad views must stay views)
//
// With compression "powersgd" each bucket is compressed as Note [PowerSGD] (comm/powersgd.h) says: the bucket's
// first collective (uncompressed tensors and P) starts when the bucket is ready, during backward; finish() runs
// the second half (orthonormalise P, all-reduce Q) for every bucket in order, then decompresses.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "comm/communicator.h"
#include "comm/timeline.h"

namespace stride::comm {

// How gradients travel (--grad-compression):
//   kNone: float32; kFp16 | kBf16: in 16 bits (pre-divided by the world size, so the sum cannot overflow where the
//   average would not), widened back into the float buckets; kPowerSgd: low-rank with error feedback
//   (comm/powersgd.h).
enum class Compression { kNone, kFp16, kBf16, kPowerSgd };
// "none" | "fp16" | "bf16" | "powersgd"; anything else is a UsageError naming --grad-compression and the choices.
Compression parse_compression(const std::string& name);
const char* compression_name(Compression c);

struct ReducerOptions {
  int64_t bucket_cap_bytes = int64_t{25} << 20;
  int64_t first_bucket_bytes = int64_t{1} << 20;
  // false: no bucket is launched during backward; finish() reduces them all (for measuring overlap).
  bool overlap = true;
  // PowerSGD starts after powersgd_warmup_steps reducing steps of plain all-reduce, as PyTorch's
  // start_powerSGD_iter.
  Compression compression = Compression::kNone;
  int64_t powersgd_rank = 1;             // PyTorch's default matrix_approximation_rank
  int64_t powersgd_warmup_steps = 1000;  // PyTorch 1.13's default start_powerSGD_iter
  double powersgd_min_compression_rate = 2.0;
  uint64_t powersgd_seed = 0;  // the initial Q; the same on every rank
  // Measurement only: gradients are not communicated at all (results are per-rank, i.e. wrong).
  bool skip_communication = false;
};

struct ReducerStats {
  int64_t steps = 0;              // finish() calls that reduced
  int64_t buckets = 0;            // buckets per step
  int64_t bytes = 0;              // bytes communicated per step
  int64_t unused_parameters = 0;  // parameters without a gradient in the last step
  double comm_seconds = 0;        // total time the collectives ran (sum over steps)
  double exposed_seconds = 0;     // total time finish() waited for them (not hidden behind backward)
  double hidden_fraction() const {
    return comm_seconds > 0 ? std::max(0.0, 1.0 - exposed_seconds / comm_seconds) : 0.0;
  }
};

class GradientReducer {
 public:
  using NamedParameters = std::vector<std::pair<std::string, torch::Tensor>>;
  GradientReducer(const NamedParameters& parameters, std::shared_ptr<Communicator> comm, ReducerOptions options = {});
  ~GradientReducer();
  GradientReducer(const GradientReducer&) = delete;
  GradientReducer& operator=(const GradientReducer&) = delete;

  // Before a micro-batch's backward: reduce=false accumulates locally without communication (all but the last
  // micro-batch of gradient accumulation).
  void prepare(bool reduce = true);
  // After the last micro-batch's backward: completes the reduction; .grad holds the average over ranks.
  void finish();

  // Measurement switches, between steps only (after finish()): overlap, and skipping communication (results
  // are then per-rank). `stride bench step --interleave` flips them block by block within one run.
  void set_overlap(bool overlap);
  void set_skip_communication(bool skip);

  // Re-cuts the buckets at another cap (between steps only, on every rank at the same step: with the layout the
  // collectives change). Gradients stay where they are (.grad keeps its views) and nothing is allocated except
  // fp16/bf16 staging copies; the result is the reducer a fresh GradientReducer with that cap would be, with
  // stats and timeline carried on. Not with PowerSGD (UsageError): its per-bucket state and buffers stay.
  void rebuild(int64_t bucket_cap_bytes);
  int64_t bucket_cap_bytes() const;

  // Bucket layout: parameter names per bucket, in launch order.
  std::vector<std::vector<std::string>> bucket_names() const;
  std::vector<int64_t> bucket_bytes() const;
  // Names of the parameters that got no gradient in the last reduced step.
  std::vector<std::string> unused_parameters() const;
  ReducerStats stats() const;
  void reset_stats();
  // The last reducing step's timeline (Note [Overlap timeline]); step 0 before the first.
  StepTimeline timeline() const;

  // State that must survive a resume for it to be exact (between steps only): with powersgd this rank's
  // error-feedback residuals, the warm-start Q matrices, "powersgd.rank" and "powersgd.steps" (reducing steps so
  // far, which end the warm-up); empty for the other compressions. The residuals differ between ranks.
  std::map<std::string, torch::Tensor> compression_state() const;
  // Restores compression_state() of a run with the same parameters and world size. Throws UsageError naming
  // --powersgd-rank when the state was made with another rank.
  void load_compression_state(const std::map<std::string, torch::Tensor>& state);

  struct State;

 private:
  std::shared_ptr<State> s_;
};

// The bucket layout a GradientReducer with this cap would make (parameter names per bucket, in launch order),
// without building one: how --bucket-cap-mb auto drops candidate caps that would give the same buckets.
std::vector<std::vector<std::string>> plan_buckets(const GradientReducer::NamedParameters& parameters,
                                                   int64_t bucket_cap_bytes,
                                                   int64_t first_bucket_bytes = int64_t{1} << 20);

// Copies rank 0's parameters and buffers into every rank's module (one collective per dtype).
void broadcast_module_state(torch::nn::Module& module, Communicator& comm, int root = 0);
// Averages floating-point buffers (BatchNorm running statistics) over ranks; see docs/distributed.md.
void average_buffers(torch::nn::Module& module, Communicator& comm);

}  // namespace stride::comm
