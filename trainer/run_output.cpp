#include "trainer/run_output.h"

#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>

#include "common/error.h"

namespace stride::trainer {

namespace {

bool under_a_job_starter() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "SLURM_PROCID"}) {
    const char* value = std::getenv(v);
    if (value && *value) return true;
  }
  return false;
}

}  // namespace

RunOutput::RunOutput(const std::string& run_dir, bool quiet_rank) : enabled_(!quiet_rank), mode_(Progress::kPlain) {
  const char* env = std::getenv("STRIDE_PROGRESS");
  const std::string how = env ? env : "";
  if (how == "live") {
    mode_ = Progress::kLive;
  } else if (how == "tagged") {
    mode_ = Progress::kTagged;
  } else if (how.empty() || how == "auto") {
    mode_ = ::isatty(STDOUT_FILENO) != 0 && !under_a_job_starter() ? Progress::kLive : Progress::kPlain;
  } else if (how != "plain") {
    throw UsageError(concat("STRIDE_PROGRESS must be auto, live, plain or tagged, not '", how, "'"));
  }
  if (!enabled_) return;
  const std::string path = run_dir + "/metrics.jsonl";
  metrics_ = std::fopen(path.c_str(), "a");
  if (!metrics_) throw Error(concat("cannot open ", path, ": ", std::strerror(errno)));
  tb_ = std::make_unique<TensorBoardWriter>(run_dir + "/tensorboard");
}

RunOutput::~RunOutput() {
  if (metrics_) std::fclose(metrics_);
  if (live_line_) std::fputc('\n', stdout);
}

void RunOutput::record(const std::string& type, int64_t step, const nlohmann::json& fields) {
  if (!enabled_) return;
  nlohmann::json line = fields;
  line["type"] = type;
  line["step"] = step;
  line["time"] = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  std::fprintf(metrics_, "%s\n", line.dump().c_str());
  std::fflush(metrics_);
  for (const auto& [key, value] : fields.items()) {
    if (value.is_number()) tb_->scalar(type + "/" + key, value.get<double>(), step);
  }
  tb_->flush();
}

void RunOutput::progress(const std::string& line) {
  if (!enabled_) return;
  switch (mode_) {
    case Progress::kLive:
      std::printf("\r\033[K%s", line.c_str());
      live_line_ = true;
      break;
    case Progress::kTagged:
      std::printf("@progress %s\n", line.c_str());  // launcher/rank_output.h kProgressMarker
      break;
    case Progress::kPlain:
      std::printf("%s\n", line.c_str());
      break;
  }
  std::fflush(stdout);
}

void RunOutput::print(const std::string& line) {
  if (!enabled_) return;
  if (live_line_) std::fputc('\n', stdout);
  live_line_ = false;
  std::printf("%s\n", line.c_str());
  std::fflush(stdout);
}

}  // namespace stride::trainer
