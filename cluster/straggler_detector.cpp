#include "cluster/straggler_detector.h"

#include <algorithm>

#include "common/error.h"

namespace stride::cluster {

double median(std::vector<double> values) {
  if (values.empty()) return 0;
  const size_t mid = values.size() / 2;
  std::nth_element(values.begin(), values.begin() + static_cast<std::ptrdiff_t>(mid), values.end());
  const double upper = values[mid];
  if (values.size() % 2 == 1) return upper;
  const double lower = *std::max_element(values.begin(), values.begin() + static_cast<std::ptrdiff_t>(mid));
  return (lower + upper) / 2;
}

StragglerDetector::StragglerDetector(StragglerOptions options, uint32_t world_size) : o_(options), ranks_(world_size) {
  STRIDE_CHECK_GT(o_.threshold, 0.0, "straggler threshold");
  STRIDE_CHECK_GT(o_.window, int64_t{0}, "straggler window");
}

void StragglerDetector::reset(uint32_t world_size) { ranks_.assign(world_size, Rank{}); }

void StragglerDetector::forget(uint32_t rank) { ranks_.at(rank) = Rank{}; }

std::optional<StragglerChange> StragglerDetector::observe(uint32_t rank, uint64_t steps, double compute_total_s,
                                                          double data_wait_total_s, double comm_exposed_total_s,
                                                          double optimizer_total_s, double now) {
  auto& r = ranks_.at(rank);
  const Totals t{true, steps, compute_total_s, data_wait_total_s, comm_exposed_total_s, optimizer_total_s};
  if (!r.last.valid || steps < r.last.steps) {  // the first heartbeat, or a new process: a new baseline
    r.last = t;
    return std::nullopt;
  }
  if (steps == r.last.steps) return std::nullopt;  // no step finished since the last sample
  const double n = static_cast<double>(steps - r.last.steps);
  auto& v = r.view;
  v.has_sample = true;
  v.sample = {steps - r.last.steps, (t.compute - r.last.compute) / n, (t.data - r.last.data) / n,
              (t.comm - r.last.comm) / n, (t.optimizer - r.last.optimizer) / n};
  r.last = t;

  std::vector<double> peers;
  for (uint32_t i = 0; i < ranks_.size(); ++i) {
    if (i != rank && ranks_[i].view.has_sample) peers.push_back(ranks_[i].view.sample.compute_s);
  }
  const double base = median(std::move(peers));
  if (!(base > 0)) {  // no peer sample yet (or peers that compute nothing): no baseline, no verdict
    v.ratio = v.peer_median_s = 0;
    return std::nullopt;
  }
  v.peer_median_s = base;
  v.ratio = v.sample.compute_s / base;
  if (v.ratio > 1 + o_.threshold) {
    ++v.over;
    v.within = 0;
  } else {
    ++v.within;
    v.over = 0;
  }
  const bool flip = v.flagged ? v.within >= o_.window : v.over >= o_.window;
  if (!flip) return std::nullopt;
  v.flagged = !v.flagged;
  if (v.flagged) v.flagged_since = now;
  return StragglerChange{rank, v.flagged, v.sample.compute_s, base};
}

}  // namespace stride::cluster
