// What a run shows and records: the progress line on the terminal, metrics.jsonl and the TensorBoard event
// file in the run directory. Used by the training loop's thread only.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdio>
#include <memory>
#include <string>

#include "trainer/tensorboard.h"

namespace stride::trainer {

class RunOutput {
 public:
  // `quiet_rank`: ranks other than 0 print nothing and write no files.
  RunOutput(const std::string& run_dir, bool quiet_rank);
  ~RunOutput();

  // One JSON object per line in metrics.jsonl; every numeric field also becomes a TensorBoard scalar
  // "<type>/<field>" at `step`.
  void record(const std::string& type, int64_t step, const nlohmann::json& fields);
  // A progress line: rewritten in place on a terminal, printed as a line every call otherwise.
  void progress(const std::string& line);
  // A line that stays (ends a progress line first).
  void print(const std::string& line);

 private:
  bool enabled_;
  bool tty_;
  bool live_line_ = false;
  std::FILE* metrics_ = nullptr;
  std::unique_ptr<TensorBoardWriter> tb_;
};

}  // namespace stride::trainer
