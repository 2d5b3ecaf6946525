// Learning-rate schedule as a pure function of the optimizer step, so a resumed run needs only the step.
// Warmup (linear from lr x warmup_decay, or constant at that value) for the first warmup steps, then cosine
// (to lr_min), poly (lr_min + (lr - lr_min) x (1 - t)^power, t the fraction of the steps after the warm-up: the
// MLPerf ResNet recipe's polynomial decay), step (x gamma every step_size epochs), multistep (x gamma at each
// milestone epoch) or constant.
// Thread-safe (immutable).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace stride::trainer {

struct TrainConfig;

enum class LrScheduler { kCosine, kPoly, kStep, kMultiStep, kConstant };
enum class WarmupMethod { kLinear, kConstant };
// --lr-scheduler's and --lr-warmup-method's names; another name is a UsageError naming the flag and the choices.
LrScheduler parse_lr_scheduler(const std::string& name);
WarmupMethod parse_warmup_method(const std::string& name);

struct ScheduleOptions {
  double base_lr = 0.1;
  LrScheduler kind = LrScheduler::kCosine;
  int64_t steps_per_epoch = 1;
  int64_t total_steps = 1;
  int64_t warmup_steps = 0;
  WarmupMethod warmup_method = WarmupMethod::kLinear;
  double warmup_decay = 0.01;
  int64_t step_size_epochs = 30;
  std::vector<int64_t> milestones_epochs;
  double gamma = 0.1;
  double lr_min = 0.0;
  double power = 2.0;  // poly
};

// The schedule the config asks for, with --lr-warmup-epochs turned into steps (rounded to the nearest).
ScheduleOptions schedule_options(const TrainConfig& c, double base_lr, int64_t steps_per_epoch, int64_t total_steps);

class LrSchedule {
 public:
  explicit LrSchedule(ScheduleOptions options);
  // The learning rate for optimizer step `step` (0-based).
  double at(int64_t step) const;

 private:
  ScheduleOptions o_;
};

}  // namespace stride::trainer
