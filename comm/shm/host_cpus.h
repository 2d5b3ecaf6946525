// How many CPUs this process may really use, and whether the ranks of one host leave a core idle for each
// waiting thread. The shared-memory collectives use it to choose how a waiting rank waits: spinning is free on
// a core nothing else wants and wins the wake-up latency of a futex (hundreds of microseconds on a VM whose idle
// vCPU has halted); on a host whose cores are all computing, a spinning waiter takes time from backward.
#pragma once

#include <string>

namespace stride::comm {

// CPUs this process may run on: its affinity mask, capped by a cgroup CPU quota (cgroup v2 cpu.max or v1
// cpu.cfs_quota_us / cpu.cfs_period_us), rounded up. At least 1.
int usable_cpus();

// The quota in a cgroup v2 cpu.max text ("max 100000" or "200000 100000") as CPUs, rounded up; 0 when there is
// no quota or the text is malformed.
int cpus_from_cpu_max(const std::string& text);

// The tightest cpu.max quota (in CPUs) from cgroup `path` ("/a/b", as /proc/self/cgroup's "0::" line gives it)
// up to the root of the cgroup v2 hierarchy mounted at `mount` (a job step's cgroup under Slurm, a container's
// root under Docker); 0 when none sets one.
int cgroup_v2_quota_cpus(const std::string& mount, std::string path);

// Whether `local_ranks` ranks of `threads` compute threads each, plus one communication thread each, fit in
// `cpus` CPUs.
inline bool spare_cores(int local_ranks, int threads, int cpus) {
  return local_ranks > 0 && threads > 0 && local_ranks * (threads + 1) <= cpus;
}

}  // namespace stride::comm
