// What a run shows and records: the progress line on the terminal, metrics.jsonl and the TensorBoard event
// file in the run directory. Used by the training loop's thread only.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdio>
#include <memory>
#include <string>

#include "trainer/tensorboard.h"

namespace stride::trainer {

// Note [Progress lines]
// A live line ("\r" + erase, rewritten in place) is right only on the user's own terminal. Under mpirun or srun
// a rank's stdout may be a pseudo-terminal even when the job's output goes to a file, so there a rank prints
// plain lines unless told otherwise: STRIDE_PROGRESS=live|plain|tagged overrides the guess, and `stride launch`
// sets tagged, which marks progress lines ("@progress ...") so that the launcher can show one live line for the
// whole job on its terminal and plain lines in logs (launcher/rank_output.h).

class RunOutput {
 public:
  // `quiet_rank`: ranks other than 0 print nothing and write no files.
  RunOutput(const std::string& run_dir, bool quiet_rank);
  ~RunOutput();

  // One JSON object per line in metrics.jsonl; every numeric field also becomes a TensorBoard scalar
  // "<type>/<field>" at `step`.
  void record(const std::string& type, int64_t step, const nlohmann::json& fields);
  // A progress line (Note [Progress lines]): rewritten in place on the user's terminal, a plain line otherwise.
  void progress(const std::string& line);
  // A line that stays (ends a progress line first).
  void print(const std::string& line);

 private:
  enum class Progress { kLive, kPlain, kTagged };
  bool enabled_;
  Progress mode_;
  bool live_line_ = false;
  std::FILE* metrics_ = nullptr;
  std::unique_ptr<TensorBoardWriter> tb_;
};

}  // namespace stride::trainer
