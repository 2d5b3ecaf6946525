// RUN/coordinator.json, RUN/job_token and RUN/status.json: how `stride status` finds a job and what it shows
// once the job is gone.
#include <nlohmann/json.hpp>

#include <unistd.h>

#include <cstdio>
#include <filesystem>

#include "cluster/coordinator.h"
#include "common/error.h"
#include "storage/file_io.h"

namespace stride::cluster {

std::string local_hostname() {
  char buf[256] = {0};
  ::gethostname(buf, sizeof(buf) - 1);
  return buf;
}

void write_endpoint_files(const Coordinator& coordinator, const std::string& run_dir, const std::string& rank_address,
                          bool launcher) {
  nlohmann::json info = {{"status_url", coordinator.status_url()},
                         {"coordinator", rank_address},
                         {"pid", ::getpid()},
                         {"host", local_hostname()}};
  if (launcher) info["launcher"] = true;
  std::error_code ec;
  std::filesystem::remove(std::filesystem::path(run_dir) / "status.json", ec);  // an earlier start's final state
  storage::write_file_atomic((std::filesystem::path(run_dir) / "coordinator.json").string(), info.dump(2) + "\n");
  const std::string token_path = (std::filesystem::path(run_dir) / "job_token").string();
  // Created 0600: the token authorises control, and run directories often live on shared file systems.
  storage::write_file_atomic(token_path, coordinator.token() + "\n", 0600);
}

void write_final_status(const Coordinator& coordinator, const std::string& run_dir) {
  try {
    storage::write_file_atomic((std::filesystem::path(run_dir) / "status.json").string(),
                               coordinator.status_json() + "\n");
  } catch (const Error& e) {
    std::fprintf(stderr, "stride: warning: cannot write the final status: %s\n", e.what());
  }
}

void remove_endpoint_file(const std::string& run_dir) {
  std::error_code ec;
  std::filesystem::remove(std::filesystem::path(run_dir) / "coordinator.json", ec);
}

}  // namespace stride::cluster
