#include "trainer/checkpoint_interval.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "common/error.h"

namespace stride::trainer {
namespace {

// Smoothing of the measured cost and step time: the newest measurement weighs this much.
constexpr double kSmoothing = 0.3;
// A new interval replaces the one in force only when it differs by more than this fraction.
constexpr double kChangeFraction = 0.1;

double smooth(double old_value, double sample) {
  return old_value > 0 ? old_value + kSmoothing * (sample - old_value) : sample;
}

std::string fmt(double v, int digits) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.*f", digits, v);
  return buf;
}

}  // namespace

double parse_duration_seconds(const std::string& text, const std::string& flag) {
  const auto bad = [&](const std::string& why) {
    return UsageError(
        concat("--", flag, " '", text, "': ", why, " (a duration such as 8h, 30m, 90s, 2d, or seconds as a number)"));
  };
  if (text.empty()) throw bad("empty");
  char* end = nullptr;
  const double v = std::strtod(text.c_str(), &end);
  if (end == text.c_str()) throw bad("not a number");
  const std::string unit(end);
  double scale = 0;
  if (unit.empty() || unit == "s") {
    scale = 1;
  } else if (unit == "m") {
    scale = 60;
  } else if (unit == "h") {
    scale = 3600;
  } else if (unit == "d") {
    scale = 86400;
  } else {
    throw bad(concat("unknown unit '", unit, "'"));
  }
  if (!std::isfinite(v) || !(v > 0)) throw bad("must be positive");
  return v * scale;
}

CheckpointInterval::CheckpointInterval(double mtbf_prior_s, int restarts, double now)
    : mtbf_prior_s_(mtbf_prior_s), restarts_(std::max(0, restarts)), start_(now) {
  STRIDE_CHECK_GT(mtbf_prior_s, 0.0, "mtbf");
}

double CheckpointInterval::young_daly(double cost_s, double mtbf_s) { return std::sqrt(2.0 * cost_s * mtbf_s); }

void CheckpointInterval::record_stall(double seconds) {
  if (seconds >= 0 && std::isfinite(seconds)) cost_s_ = smooth(cost_s_, std::max(seconds, 1e-6));
}

void CheckpointInterval::record_write(double seconds) {
  if (seconds >= 0 && std::isfinite(seconds)) write_s_ = seconds;
}

void CheckpointInterval::record_steps(int64_t steps, double seconds) {
  if (steps > 0 && seconds > 0 && std::isfinite(seconds))
    step_s_ = smooth(step_s_, seconds / static_cast<double>(steps));
}

int64_t CheckpointInterval::decide(double now, bool* changed) {
  *changed = false;
  if (!(step_s_ > 0)) return current_;
  IntervalFigures f;
  f.cost_s = cost_s_;
  f.write_s = write_s_;
  f.step_s = step_s_;
  f.mtbf_s = (mtbf_prior_s_ + std::max(0.0, now - start_)) / (1.0 + restarts_);
  const double lower = std::max(kMinSeconds, write_s_);
  const double formula = cost_s_ > 0 ? young_daly(cost_s_, f.mtbf_s) : 0.0;
  f.interval_s = std::clamp(formula, lower, std::max(lower, kMaxSeconds));
  f.clamped = f.interval_s != formula;
  f.steps = std::max<int64_t>(1, std::llround(f.interval_s / step_s_));
  const bool differs = current_ == 0 || std::abs(static_cast<double>(f.steps - current_)) >
                                            kChangeFraction * static_cast<double>(current_);
  if (differs) {
    current_ = f.steps;
    figures_ = f;
    *changed = true;
  }
  return current_;
}

std::string CheckpointInterval::describe() const {
  const auto& f = figures_;
  const std::string cost =
      f.cost_s > 0 ? concat(fmt(f.cost_s, 3), " s stall per checkpoint") : "no checkpoint measured yet";
  return concat(f.steps, " steps = ", fmt(f.interval_s, 0), " s at ", fmt(f.step_s * 1e3, 1), " ms/step (",
                f.clamped ? "clamped to [max(60 s, write latency), 24 h]; formula " : "", "sqrt(2 x C x M): C = ", cost,
                ", M = ", fmt(f.mtbf_s / 3600, 2), " h from --mtbf ", fmt(mtbf_prior_s_ / 3600, 2), " h, ", restarts_,
                " restart(s), ", fmt(f.mtbf_s * (1.0 + restarts_) / 3600 - mtbf_prior_s_ / 3600, 2),
                " h up; write latency ", fmt(f.write_s, 2), " s)");
}

}  // namespace stride::trainer
