// The training run of one rank: data, model, optimizer, schedule, evaluation and checkpoints, as configured by
// TrainConfig, taking part in its job through trainer/coordination.h. Implemented in setup.cpp (what the run is
// built from) and trainer.cpp (the loop); their shared state is trainer/run_state.h. Runs on the calling thread.
#pragma once

#include <memory>
#include <string>

#include "data/loader.h"
#include "trainer/config.h"

namespace stride::trainer {

struct EvalResult {
  double acc1 = 0.0, acc5 = 0.0, loss = 0.0;
  int64_t count = 0;
};

class Trainer {
 public:
  explicit Trainer(TrainConfig config);
  ~Trainer();
  // Trains (or evaluates with --test-only). Returns the process exit code.
  // A communication failure (comm::CommError) ends the process with exit code 75 (see docs/distributed.md).
  int run();

 private:
  int run_unchecked();
  struct State;
  std::unique_ptr<State> s_;
};

}  // namespace stride::trainer
