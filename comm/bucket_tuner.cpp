#include "comm/bucket_tuner.h"

#include <algorithm>
#include <cstdio>

#include "comm/flight_recorder.h"
#include "common/error.h"

namespace stride::comm {

BucketCapTuner::BucketCapTuner(BucketTunerOptions options) : options_(std::move(options)) {
  STRIDE_CHECK(!options_.candidates.empty(), "bucket cap tuning without candidates");
  STRIDE_CHECK_GE(options_.steps_per_candidate, 1, "timed steps per bucket cap");
  STRIDE_CHECK_GE(options_.warmup_steps, 0, "bucket cap warm-up steps");
  STRIDE_CHECK_GE(options_.settle_steps, 0, "bucket cap settle steps");
  samples_.resize(options_.candidates.size());
}

int64_t BucketCapTuner::total_steps() const {
  const auto n = static_cast<int64_t>(options_.candidates.size());
  return options_.warmup_steps + (n - 1) * options_.settle_steps + n * options_.steps_per_candidate;
}

int64_t BucketCapTuner::after_step(double seconds, Communicator& comm) {
  if (done_) return chosen_;
  const int64_t untimed = current_ == 0 ? options_.warmup_steps : options_.settle_steps;
  if (in_phase_ >= untimed) samples_[current_].push_back(seconds);
  if (++in_phase_ < untimed + options_.steps_per_candidate) return options_.candidates[current_];
  if (current_ + 1 < options_.candidates.size()) {
    ++current_;
    in_phase_ = 0;
    return options_.candidates[current_];
  }
  // Every rank ends the last candidate at this step: the decision's control point.
  int64_t index = static_cast<int64_t>(choose_bucket_cap(results()));
  if (comm.size() > 1) {
    const OriginScope origin(OriginKind::kOther, -1, "bucket cap decision");
    auto t = torch::tensor({index}, torch::kLong);
    comm.broadcast(t, 0)->wait();
    index = t.item<int64_t>();
  }
  STRIDE_CHECK(index >= 0 && index < static_cast<int64_t>(options_.candidates.size()), "bucket cap index ", index,
               " from rank 0");
  chosen_ = options_.candidates[static_cast<size_t>(index)];
  done_ = true;
  return chosen_;
}

std::vector<BucketCapResult> BucketCapTuner::results() const {
  std::vector<BucketCapResult> out;
  for (size_t i = 0; i < options_.candidates.size(); ++i) {
    out.push_back({options_.candidates[i], median(samples_[i]), static_cast<int64_t>(samples_[i].size())});
  }
  return out;
}

std::string BucketCapTuner::describe() const {
  std::string line;
  for (const auto& r : results()) {
    char ms[32];
    std::snprintf(ms, sizeof(ms), "%.1f ms", r.median_s * 1e3);
    line += concat(line.empty() ? "" : ", ", format_mib(r.cap_bytes), " ", ms);
  }
  return concat(line, " per step -> ", done_ ? format_mib(chosen_) : std::string("(undecided)"));
}

std::vector<int64_t> default_bucket_cap_candidates() {
  std::vector<int64_t> out;
  for (int64_t mib : {1, 4, 16, 25, 64}) out.push_back(mib << 20);
  return out;
}

std::vector<int64_t> distinct_bucket_caps(const GradientReducer::NamedParameters& parameters,
                                          std::vector<int64_t> candidates) {
  std::sort(candidates.begin(), candidates.end());
  candidates.erase(std::unique(candidates.begin(), candidates.end()), candidates.end());
  std::vector<int64_t> out;
  std::vector<std::vector<std::string>> last;
  for (int64_t cap : candidates) {
    auto layout = plan_buckets(parameters, cap);
    // Layouts only coarsen as the cap grows, so equal layouts are neighbours: keep the larger cap.
    if (!out.empty() && layout == last) {
      out.back() = cap;
    } else {
      out.push_back(cap);
    }
    last = std::move(layout);
  }
  return out;
}

double median(std::vector<double> values) {
  if (values.empty()) return 0.0;
  std::sort(values.begin(), values.end());
  const size_t n = values.size();
  return n % 2 ? values[n / 2] : 0.5 * (values[n / 2 - 1] + values[n / 2]);
}

size_t choose_bucket_cap(const std::vector<BucketCapResult>& results) {
  size_t best = 0;
  for (size_t i = 1; i < results.size(); ++i) {
    const bool lower = results[i].median_s < results[best].median_s;
    const bool tie_larger =
        results[i].median_s == results[best].median_s && results[i].cap_bytes > results[best].cap_bytes;
    if (lower || tie_larger) best = i;
  }
  return best;
}

std::string format_mib(int64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%g MiB", static_cast<double>(bytes) / (1 << 20));
  return buf;
}

}  // namespace stride::comm
