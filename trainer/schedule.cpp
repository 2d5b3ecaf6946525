#include "trainer/schedule.h"

#include <algorithm>
#include <cmath>

#include "common/error.h"
#include "trainer/config.h"

namespace stride::trainer {

LrScheduler parse_lr_scheduler(const std::string& name) {
  if (name == "cosine") return LrScheduler::kCosine;
  if (name == "poly") return LrScheduler::kPoly;
  if (name == "step") return LrScheduler::kStep;
  if (name == "multistep") return LrScheduler::kMultiStep;
  if (name == "constant") return LrScheduler::kConstant;
  throw UsageError(concat("--lr-scheduler: unknown '", name, "' (cosine, step, multistep, poly, constant)"));
}

WarmupMethod parse_warmup_method(const std::string& name) {
  if (name == "linear") return WarmupMethod::kLinear;
  if (name == "constant") return WarmupMethod::kConstant;
  throw UsageError(concat("--lr-warmup-method: unknown '", name, "' (linear, constant)"));
}

ScheduleOptions schedule_options(const TrainConfig& c, double base_lr, int64_t steps_per_epoch, int64_t total_steps) {
  ScheduleOptions so;
  so.base_lr = base_lr;
  so.kind = parse_lr_scheduler(c.lr_scheduler);
  so.steps_per_epoch = steps_per_epoch;
  so.total_steps = total_steps;
  so.warmup_steps = static_cast<int64_t>(std::llround(c.lr_warmup_epochs * static_cast<double>(steps_per_epoch)));
  so.warmup_method = parse_warmup_method(c.lr_warmup_method);
  so.warmup_decay = c.lr_warmup_decay;
  so.step_size_epochs = c.lr_step_size;
  so.milestones_epochs = c.lr_milestones;
  so.gamma = c.lr_gamma;
  so.lr_min = c.lr_min;
  so.power = c.lr_power;
  return so;
}

LrSchedule::LrSchedule(ScheduleOptions options) : o_(std::move(options)) {
  STRIDE_CHECK_GT(o_.steps_per_epoch, 0, "steps per epoch");
  STRIDE_CHECK_GT(o_.total_steps, 0, "total steps");
  STRIDE_CHECK_GE(o_.warmup_steps, 0, "warmup steps");
}

double LrSchedule::at(int64_t step) const {
  if (step < o_.warmup_steps) {
    if (o_.warmup_method == WarmupMethod::kConstant) return o_.base_lr * o_.warmup_decay;
    // torchvision's LinearLR: start_factor -> 1 over the warmup.
    const double t = static_cast<double>(step) / static_cast<double>(o_.warmup_steps);
    return o_.base_lr * (o_.warmup_decay + (1.0 - o_.warmup_decay) * t);
  }
  const int64_t s = step - o_.warmup_steps;
  const int64_t main_steps = std::max<int64_t>(1, o_.total_steps - o_.warmup_steps);
  if (o_.kind == LrScheduler::kCosine) {
    const double t = std::min(1.0, static_cast<double>(s) / static_cast<double>(main_steps));
    return o_.lr_min + 0.5 * (o_.base_lr - o_.lr_min) * (1.0 + std::cos(M_PI * t));
  }
  if (o_.kind == LrScheduler::kPoly) {
    const double t = std::min(1.0, static_cast<double>(s) / static_cast<double>(main_steps));
    return o_.lr_min + (o_.base_lr - o_.lr_min) * std::pow(1.0 - t, o_.power);
  }
  const int64_t epoch = s / o_.steps_per_epoch;
  if (o_.kind == LrScheduler::kStep)
    return o_.base_lr * std::pow(o_.gamma, static_cast<double>(epoch / o_.step_size_epochs));
  if (o_.kind == LrScheduler::kMultiStep) {
    const auto passed =
        std::count_if(o_.milestones_epochs.begin(), o_.milestones_epochs.end(), [&](int64_t m) { return epoch >= m; });
    return o_.base_lr * std::pow(o_.gamma, static_cast<double>(passed));
  }
  return o_.base_lr;  // kConstant
}

}  // namespace stride::trainer
