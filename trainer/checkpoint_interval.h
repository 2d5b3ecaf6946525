// `--checkpoint-every auto`: the checkpoint interval chosen from measured figures by the Young/Daly rule. Rank 0
// owns one CheckpointInterval and proposes its interval at control points; the control point's collective hands
// rank 0's value to every rank, so all ranks checkpoint at the same steps (trainer/coordination.h). Time is
// passed in (seconds on a steady clock), so tests drive it with a fake clock. Not thread-safe: training thread.
//
// Note [Checkpoint interval]
// 1. The rule. A job that fails on average every M seconds and pays C seconds per checkpoint loses, per second,
//    C/T to checkpointing and about (T/2)/M to rework after failures. The sum is smallest at T = sqrt(2 C M)
//    (Young 1974; Daly 2006 refines it for C close to M, which a trainer never is).
// 2. C is what a checkpoint costs the training thread: the stall of the in-memory snapshot and the hand-over to
//    the background writer (trainer.cpp's "stall_seconds"), smoothed over the checkpoints of this run. The writing
//    itself overlaps training, so its latency adds a constant to the rework and does not move the optimum; it sets
//    the lower bound instead: checkpoints closer than one write would queue behind each other and stall.
// 3. M comes from a prior and from this job's history: the prior `--mtbf` counts as one failure observed over that
//    long, and the job adds its restarts (failures) and the time this start has run without one:
//    M = (mtbf + uptime) / (1 + restarts). A job that keeps failing shortens its interval; one that runs cleanly
//    lengthens it. (Time spent in earlier starts is not known to the ranks; their failures are.)
// 4. Bounds: at least max(60 s, the newest write's latency), at most 24 h, at least one step. Until a checkpoint
//    was measured the interval is the lower bound, so the first measurement comes early.
// 5. Seconds become steps through the measured step time (smoothed). A new interval replaces the one in force
//    only when it differs by more than 10%, so jitter in the figures does not spam the log; every change is
//    logged with its inputs.
#pragma once

#include <cstdint>
#include <string>

namespace stride::trainer {

// "8h", "30m", "90s", "2d", "3600" (seconds), fractions allowed ("1.5h"). Throws UsageError naming `flag`.
double parse_duration_seconds(const std::string& text, const std::string& flag);

// The inputs and the result of one evaluation (Note [Checkpoint interval]).
struct IntervalFigures {
  double cost_s = 0;      // C: smoothed stall per checkpoint (0: none measured yet)
  double write_s = 0;     // newest background write latency
  double mtbf_s = 0;      // M
  double step_s = 0;      // smoothed seconds per step
  double interval_s = 0;  // sqrt(2 C M), clamped
  int64_t steps = 0;      // interval_s in steps (>= 1)
  bool clamped = false;   // interval_s is a bound, not the formula's value
};

class CheckpointInterval {
 public:
  static constexpr double kMinSeconds = 60.0;
  static constexpr double kMaxSeconds = 24 * 3600.0;

  // `mtbf_prior_s`: --mtbf. `restarts`: failures of this job before this start. `now`: this start's beginning.
  CheckpointInterval(double mtbf_prior_s, int restarts, double now);

  // A checkpoint's stall on the training thread (seconds).
  void record_stall(double seconds);
  // The newest background write's latency (seconds), as the writer reports it.
  void record_write(double seconds);
  // `steps` optimizer steps took `seconds` of wall time.
  void record_steps(int64_t steps, double seconds);

  // At a control point: the interval in steps to use now. `changed` is set when it differs from the one in force
  // (then figures() holds the inputs to log); 0 until a step time was measured (keep the current interval).
  int64_t decide(double now, bool* changed);
  const IntervalFigures& figures() const { return figures_; }
  // A one-line account of figures() for the log.
  std::string describe() const;

  static double young_daly(double cost_s, double mtbf_s);

 private:
  double mtbf_prior_s_;
  int restarts_;
  double start_;
  double cost_s_ = 0, write_s_ = 0, step_s_ = 0;
  int64_t current_ = 0;
  IntervalFigures figures_;
};

}  // namespace stride::trainer
