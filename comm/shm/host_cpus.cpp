#include "comm/shm/host_cpus.h"

#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <fstream>
#include <sstream>
#include <string>

namespace stride::comm {

namespace {

std::string read_first_line(const char* path) {
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);
  return line;
}

int cgroup_quota_cpus() {
  std::ifstream in("/proc/self/cgroup");
  std::string line, path;
  while (std::getline(in, line)) {
    if (line.rfind("0::", 0) == 0) path = line.substr(3);
  }
  if (int n = cgroup_v2_quota_cpus("/sys/fs/cgroup", path); n > 0) return n;
  // cgroup v1
  const std::string quota = read_first_line("/sys/fs/cgroup/cpu/cpu.cfs_quota_us");
  const std::string period = read_first_line("/sys/fs/cgroup/cpu/cpu.cfs_period_us");
  if (quota.empty() || period.empty()) return 0;
  return cpus_from_cpu_max(quota + " " + period);
}

}  // namespace

int cgroup_v2_quota_cpus(const std::string& mount, std::string path) {
  int best = 0;
  for (;;) {
    const int n = cpus_from_cpu_max(read_first_line((mount + path + "/cpu.max").c_str()));
    if (n > 0) best = best > 0 ? std::min(best, n) : n;
    const size_t slash = path.find_last_of('/');
    if (path.empty() || slash == std::string::npos) break;
    path.resize(slash);
  }
  return best;
}

int cpus_from_cpu_max(const std::string& text) {
  std::istringstream in(text);
  std::string quota_text;
  long long period = 0;
  if (!(in >> quota_text >> period) || period <= 0 || quota_text == "max") return 0;
  long long quota = 0;
  try {
    size_t used = 0;
    quota = std::stoll(quota_text, &used);
    if (used != quota_text.size()) return 0;
  } catch (const std::exception&) {
    return 0;
  }
  if (quota <= 0) return 0;  // cgroup v1 writes -1 for "no quota"
  const long long cpus = quota / period + (quota % period != 0 ? 1 : 0);
  return static_cast<int>(std::min<long long>(cpus, INT_MAX));
}

int usable_cpus() {
  int cpus = 0;
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) cpus = CPU_COUNT(&set);
  if (cpus <= 0) cpus = static_cast<int>(sysconf(_SC_NPROCESSORS_ONLN));
  if (const int quota = cgroup_quota_cpus(); quota > 0) cpus = std::min(cpus, quota);
  return std::max(cpus, 1);
}

}  // namespace stride::comm
