#include "launcher/restart_policy.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "common/error.h"

namespace stride::launcher {

void validate(const RestartPolicyOptions& o) {
  if (o.max_restarts < 0) throw UsageError(concat("--max-restarts must be 0 or more, got ", o.max_restarts));
  if (!(o.window_s >= 0) || std::isinf(o.window_s))
    throw UsageError(concat("--restart-window must be 0 (the job's life) or a duration, got ", o.window_s));
  if (!(o.backoff_s >= 0) || std::isinf(o.backoff_s))
    throw UsageError(concat("--restart-backoff must be 0 or more seconds, got ", o.backoff_s));
  if (!(o.backoff_max_s > 0) || std::isinf(o.backoff_max_s))
    throw UsageError(concat("--restart-backoff-max must be a positive duration, got ", o.backoff_max_s));
  if (o.progress_steps < 0)
    throw UsageError(concat("--restart-progress-steps must be 0 (commits only) or more, got ", o.progress_steps));
}

double parse_duration(const std::string& flag, const std::string& text) {
  const auto bad = [&](const std::string& why) {
    return UsageError(concat(flag, " must be a duration such as 30s, 15m, 1h or 0: '", text, "' ", why));
  };
  if (text.empty()) throw bad("is empty");
  const char* begin = text.c_str();
  char* end = nullptr;
  const double v = std::strtod(begin, &end);
  if (end == begin || !std::isfinite(v)) throw bad("is not a number");
  const std::string unit(end);
  double scale = 0;
  if (unit.empty() || unit == "s") {
    scale = 1;
  } else if (unit == "ms") {
    scale = 1e-3;
  } else if (unit == "m" || unit == "min") {
    scale = 60;
  } else if (unit == "h") {
    scale = 3600;
  } else if (unit == "d") {
    scale = 86400;
  } else {
    throw bad(concat("has an unknown unit '", unit, "' (s, m, h or d)"));
  }
  if (v < 0) throw bad("is negative");
  return v * scale;
}

std::string format_duration(double s) {
  char buf[64];
  if (s < 60 || std::fmod(s, 60) != 0) {
    std::snprintf(buf, sizeof(buf), "%gs", s);
    return buf;
  }
  const auto t = static_cast<long long>(s);
  std::string out;
  if (t >= 86400 && t % 3600 == 0 && (t / 3600) % 24 == 0) return concat(t / 86400, "d");
  if (t >= 3600) out += concat(t / 3600, "h");
  if (t % 3600 != 0) out += concat((t % 3600) / 60, "m");
  return out;
}

RestartPolicy::RestartPolicy(RestartPolicyOptions options, std::function<double()> now)
    : o_(options), now_(std::move(now)) {
  validate(o_);
}

std::string RestartPolicy::window_text() const {
  return o_.window_s > 0 ? concat("within ", format_duration(o_.window_s)) : std::string("over the job's life");
}

RestartPolicy::Decision RestartPolicy::on_failure() {
  const double now = now_();
  failures_.push_back(now);
  if (o_.window_s > 0) {
    while (!failures_.empty() && failures_.front() <= now - o_.window_s) failures_.pop_front();
  }
  ++consecutive_;
  Decision d;
  d.failures_in_window = static_cast<int>(failures_.size());
  d.consecutive = consecutive_;
  if (d.failures_in_window > o_.max_restarts) {
    d.restart = false;
    d.summary =
        concat(d.failures_in_window, " failure(s) ", window_text(), " exceed --max-restarts ", o_.max_restarts,
               o_.window_s > 0 ? concat(" (--restart-window ", format_duration(o_.window_s), ")") : std::string());
    return d;
  }
  d.restart = true;
  // 2^(consecutive-1), computed without overflow: the cap is reached long before.
  double b = o_.backoff_s;
  for (int i = 1; i < consecutive_ && b < o_.backoff_max_s; ++i) b *= 2;
  d.backoff_s = std::min(b, o_.backoff_max_s);
  d.summary = concat("failure ", d.failures_in_window, " of at most ", o_.max_restarts, " ", window_text(),
                     "; back-off ", format_duration(d.backoff_s), " (consecutive failure ", consecutive_, ")");
  return d;
}

void RestartPolicy::on_start(int64_t commits, uint64_t step) {
  start_commits_ = commits;
  start_step_ = step;
  progressed_ = false;
}

bool RestartPolicy::observe(int64_t commits, uint64_t step) {
  if (progressed_) return false;
  const bool committed = commits > start_commits_;
  const bool stepped = o_.progress_steps > 0 && step >= start_step_ + static_cast<uint64_t>(o_.progress_steps);
  if (!committed && !stepped) return false;
  progressed_ = true;
  consecutive_ = 0;
  return true;
}

}  // namespace stride::launcher
