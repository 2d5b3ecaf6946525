// When `stride launch` restarts a failed job, and how long it waits first (issue #18).
//
// - At most --max-restarts K restarts within a sliding window of --restart-window seconds: the (K+1)-th failure
//   inside the window stops the job. A window of 0 counts over the job's whole life.
// - The back-off before a restart is --restart-backoff (2 s) for the first failure and doubles with every
//   consecutive failure, capped at --restart-backoff-max (60 s). Once the job has made progress after a restart
//   (a new checkpoint commit, or --restart-progress-steps steps past the step it resumed from), the next failure
//   starts from the first back-off again.
//
// The clock is injected (seconds on a steady clock), so tests drive the window with a fake one. Not thread-safe.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <string>

namespace stride::launcher {

struct RestartPolicyOptions {
  int max_restarts = 3;
  double window_s = 0;         // 0: the job's whole life
  double backoff_s = 2;        // the first back-off
  double backoff_max_s = 60;   // the cap
  int64_t progress_steps = 0;  // 0: only a new commit counts as progress
};

// Throws UsageError naming the flag when a value makes no sense (negative, a zero cap).
void validate(const RestartPolicyOptions& o);

// "90", "1.5", "30s", "15m", "1h", "2d" -> seconds. Throws UsageError naming `flag` when `text` is not a
// duration or is negative.
double parse_duration(const std::string& flag, const std::string& text);
// 30 -> "30s", 900 -> "15m", 5400 -> "1h30m", 2.5 -> "2.5s".
std::string format_duration(double seconds);

class RestartPolicy {
 public:
  struct Decision {
    bool restart = false;
    int failures_in_window = 0;  // this failure included
    int consecutive = 0;         // failures since the job last made progress, this one included
    double backoff_s = 0;        // when restarting
    std::string summary;         // "failure 2 of at most 3 in 15m; back-off 4 s" or why it gives up
  };

  RestartPolicy(RestartPolicyOptions options, std::function<double()> now);

  // The job failed now: restart it (after decision.backoff_s) or give up.
  Decision on_failure();
  // A start of the job (the first or a restart): progress is measured from these.
  void on_start(int64_t commits, uint64_t step);
  // What the job has done so far (the coordinator's commit count and the step the ranks reached). Returns true
  // once, when this is the first progress since the last restart (the back-off is then reset).
  bool observe(int64_t commits, uint64_t step);
  // Whether the job has made progress since the last start.
  bool progressed() const { return progressed_; }
  const RestartPolicyOptions& options() const { return o_; }
  // "within 15m" or "over the job's life".
  std::string window_text() const;

 private:
  RestartPolicyOptions o_;
  std::function<double()> now_;
  std::deque<double> failures_;  // times of the failures inside the window
  int consecutive_ = 0;
  bool progressed_ = false;
  int64_t start_commits_ = 0;
  uint64_t start_step_ = 0;
};

}  // namespace stride::launcher
