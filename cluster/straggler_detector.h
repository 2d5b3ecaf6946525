// Finds ranks that compute slower than their peers, from the step breakdown their heartbeats carry. Part of the
// coordinator's core (cluster/coordinator_core.h): fed from its one thread, not thread-safe, no clock of its own.
//
// Note [Straggler detection]
// 1. What is compared. With synchronous data parallelism every rank's wall step time is the same: the fast ranks
//    wait for the slow one inside the gradient all-reduce. So the detector compares compute time per step
//    (forward + backward, without data waits and without exposed gradient communication), which is where a slow
//    GPU, a throttled CPU or a noisy neighbour shows. The fast ranks' waiting appears as their exposed
//    communication instead.
// 2. Samples. A heartbeat carries running totals (steps, compute seconds, ...). Between two heartbeats of a rank
//    whose step counter advanced, the differences give that rank's newest sample: seconds per step over those
//    steps. Heartbeats without new steps give no sample; a counter going backwards (a new process) restarts the
//    baseline.
// 3. The baseline is the median of the *other* ranks' newest samples, not of all ranks: a rank must not be part of
//    its own yardstick. With 2 ranks a median over both would be their mean, and a rank twice as slow would look
//    only 33% slower; against its one peer it is 100% slower. With 3 or more ranks the median of the others is
//    robust to one straggler among them.
// 4. The window. A rank is flagged after `window` consecutive samples (heartbeats with new steps) whose compute
//    exceeds the baseline by more than `threshold` (0.2: 20% slower), and cleared after `window` consecutive
//    samples within it. One slow interval (a checkpoint snapshot, an evaluation, a page fault storm) flags nothing;
//    the recovery has the same inertia so the flag does not flicker.
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

namespace stride::cluster {

struct StragglerOptions {
  double threshold = 0.2;  // flagged above (1 + threshold) x the peers' median compute time per step
  int64_t window = 5;      // consecutive samples (heartbeats with new steps) to flag, and to clear
};

// Seconds per step over one sample (Note [Straggler detection] 2).
struct StepBreakdown {
  uint64_t steps = 0;  // steps the sample covers
  double compute_s = 0, data_wait_s = 0, comm_exposed_s = 0, optimizer_s = 0;
};

// A rank's flag flipped.
struct StragglerChange {
  uint32_t rank = 0;
  bool flagged = false;  // true: became a straggler; false: recovered
  double compute_s = 0;  // its compute time per step in the sample that flipped the flag
  double peer_median_s = 0;
};

class StragglerDetector {
 public:
  struct RankView {
    bool has_sample = false;
    StepBreakdown sample;  // the newest
    double ratio = 0;      // sample.compute_s / peers' median (0 while there is no baseline)
    double peer_median_s = 0;
    bool flagged = false;
    double flagged_since = 0;      // the `now` passed with the sample that flagged it
    int64_t over = 0, within = 0;  // consecutive samples above / within the threshold
  };

  StragglerDetector(StragglerOptions options, uint32_t world_size);

  // One heartbeat's running totals (seconds since the rank's start). Returns the flag's change, if any.
  std::optional<StragglerChange> observe(uint32_t rank, uint64_t steps, double compute_total_s,
                                         double data_wait_total_s, double comm_exposed_total_s,
                                         double optimizer_total_s, double now);
  // The rank is gone (dead, finished): it neither is a straggler nor counts as a peer any more.
  void forget(uint32_t rank);
  // A new start of the job.
  void reset(uint32_t world_size);

  const RankView& rank(uint32_t r) const { return ranks_.at(r).view; }
  const StragglerOptions& options() const { return o_; }

 private:
  struct Totals {
    bool valid = false;
    uint64_t steps = 0;
    double compute = 0, data = 0, comm = 0, optimizer = 0;
  };
  struct Rank {
    Totals last;
    RankView view;
  };
  StragglerOptions o_;
  std::vector<Rank> ranks_;
};

// The median of `values` (the mean of the middle two for an even count); 0 for none.
double median(std::vector<double> values);

}  // namespace stride::cluster
