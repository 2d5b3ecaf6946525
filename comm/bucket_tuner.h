// BucketCapTuner: --bucket-cap-mb auto. Times the first training steps at a few bucket caps and settles on the
// fastest, the same on every rank. It only schedules and decides; the trainer rebuilds its GradientReducer
// (GradientReducer::rebuild) at the caps it names, between steps. Not thread-safe: the training thread only.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "comm/reducer.h"

namespace stride::comm {

// Note [Bucket cap tuning]. The gradient bucket cap trades an early start of communication during backward (small
// buckets) against the per-collective cost (large ones); which wins depends on the model, the ranks, the transport
// and the host, so `--bucket-cap-mb auto` measures it in the run itself:
//  - candidates: 1 MiB (the first bucket's size: every bucket as early as possible), 4, 16, 25 (PyTorch's and
//    Stride's default, so the default is always among those measured) and 64 MiB (few large collectives, little
//    overlap). Caps that cut the model's gradients into the same buckets behave the same and are measured once
//    (distinct_bucket_caps keeps the largest cap of each layout);
//  - schedule: `warmup_steps` untimed steps at the first candidate (allocator and caches warming up), then per
//    candidate `settle_steps` untimed steps after the rebuild and `steps_per_candidate` timed ones. Each step's
//    time runs from the start of backward of the reducing micro-batch to the moment its gradients are averaged
//    (StepTimeline::finished_s): the part of the step the cap can change. A candidate scores the median of its steps;
//  - decision: the lowest median, ties to the larger cap. Only rank 0's figures count and it broadcasts the chosen
//    index in one collective at the step that ends the last candidate, which every rank reaches at the same step:
//    local timings differ between ranks and must not split them onto different layouts (their collectives would no
//    longer match). Rank 0's figures see the others: a step's averaging waits for the slowest rank.
// The trial steps are ordinary training steps: the bucket layout changes which collective carries a gradient, not
// what it sums (see docs/distributed.md for where rounding can differ at 3+ ranks).
struct BucketTunerOptions {
  std::vector<int64_t> candidates;  // caps in bytes, ascending; distinct layouts (distinct_bucket_caps)
  int64_t warmup_steps = 3;
  int64_t settle_steps = 1;
  int64_t steps_per_candidate = 5;
};

struct BucketCapResult {
  int64_t cap_bytes = 0;
  double median_s = 0;  // this rank's median over the candidate's timed steps
  int64_t steps = 0;    // timed steps
};

class BucketCapTuner {
 public:
  explicit BucketCapTuner(BucketTunerOptions options);

  // The cap the reducer must have for the first tuning step.
  int64_t initial_cap() const { return options_.candidates.front(); }
  // Steps from the first tuning step to the decision.
  int64_t total_steps() const;
  // After every optimizer step, on every rank at the same steps: `seconds` is what this rank measured for it.
  // Returns the cap the reducer must have for the next step (rebuild when it changed). The step that ends the last
  // candidate makes the decision: a broadcast from rank 0 over `comm`, so every rank returns rank 0's choice.
  int64_t after_step(double seconds, Communicator& comm);

  bool done() const { return done_; }
  int64_t chosen_cap() const { return chosen_; }
  // This rank's figures per candidate (rank 0's decided).
  std::vector<BucketCapResult> results() const;
  // "1 MiB 41.2 ms, 4 MiB 38.0 ms per step -> 4 MiB" (once done).
  std::string describe() const;

 private:
  BucketTunerOptions options_;
  size_t current_ = 0;    // the candidate being measured
  int64_t in_phase_ = 0;  // steps taken at it
  std::vector<std::vector<double>> samples_;
  bool done_ = false;
  int64_t chosen_ = 0;
};

// The default candidate caps (Note [Bucket cap tuning]), in bytes, ascending.
std::vector<int64_t> default_bucket_cap_candidates();
// The candidates that give distinct bucket layouts for these parameters: of caps with the same layout, the largest.
std::vector<int64_t> distinct_bucket_caps(const GradientReducer::NamedParameters& parameters,
                                          std::vector<int64_t> candidates);
// The median (the mean of the middle two for an even count); 0 for none.
double median(std::vector<double> values);
// Index of the lowest median; ties to the larger cap.
size_t choose_bucket_cap(const std::vector<BucketCapResult>& results);
// "25 MiB", "0.5 MiB".
std::string format_mib(int64_t bytes);

}  // namespace stride::comm
