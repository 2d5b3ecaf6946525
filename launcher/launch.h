// `stride launch`: starts the job's coordinator and status endpoint, starts every rank with mpirun (or srun
// inside a Slurm allocation), and supervises them: a dead or hung rank (the coordinator's verdict) or a failed
// mpirun stops what is left and restarts all ranks with --resume auto from the last committed checkpoint, up to
// --max-restarts times within --restart-window, with back-off (launcher/restart_policy.h). SIGINT/SIGTERM/SIGUSR2
// ask the ranks to checkpoint and stop (a second SIGINT kills). See docs/launch.md.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace CLI {
class App;
}

namespace stride::launcher {

struct LaunchOptions {
  int ranks = 0;                       // 0: SLURM_NTASKS inside an allocation, else 1
  std::string hostfile;                // mpirun --hostfile
  std::string hosts;                   // mpirun --host h1:2,h2:2
  int max_restarts = 3;                // within restart_window_s (launcher/restart_policy.h)
  double restart_window_s = 0;         // 0: over the job's whole life
  double restart_backoff_s = 2;        // the first back-off; doubles per consecutive failure
  double restart_backoff_max_s = 60;   // the cap
  int64_t restart_progress_steps = 0;  // steps after a restart that reset the back-off (0: only a new commit)
  int status_port = 8470;              // -1: off; 0: any free port
  std::string status_bind = "127.0.0.1";
  std::string iface;                      // network for MPI's TCP traffic (CIDR or interface name)
  std::string coordinator_host;           // address the ranks use to reach the coordinator (default: 127.0.0.1 for a
                                          // local job; for a multi-host job the --iface address, else this host's name)
  std::vector<std::string> status_hosts;  // more Host names the status endpoint answers to
  bool oversubscribe = false;
  std::string launcher = "auto";  // auto (srun inside a Slurm allocation, else mpirun) | mpirun | srun
  std::string mpirun = "mpirun";
  std::string srun = "srun";
  std::vector<std::string> launcher_args;  // extra arguments for mpirun/srun
  double stop_timeout_s = 120;             // after a stop request, how long the ranks get to checkpoint
  double start_timeout_s = 180;            // every rank must join the coordinator within this after a start
  int min_ranks = 0;                       // > 0: drop hosts that stay unreachable while this many ranks remain
  std::vector<std::string> train_args;     // after --
  std::string stride_binary;               // this executable
};

// The command that starts every rank for one attempt (`resume`: with --resume auto). Pure; unit-tested.
std::vector<std::string> rank_command(const LaunchOptions& o, bool resume);
// What a line of mpirun's or srun's own output says about a rank that died ("rank 1 (pid 42 on vm) was killed
// by signal 9 (Killed)"), or "" when it says nothing of the kind. Pure; unit-tested.
std::string rank_failure_from_output(const std::string& line);
// What the launcher reads from its coordinator's /status JSON while a start runs (it owns the coordinator, so
// this is in-process: no files, no output parsing). Pure; unit-tested.
struct JobView {
  uint64_t step = 0;  // rank 0's step (0 until it joined)
  // Where rank 0's start continued from: its step once its state was loaded, and "disk", "memory" or "scratch"
  // ("" until it said).
  uint64_t start_step = 0;
  std::string start_source;
  int64_t commits = 0;   // checkpoints committed by this coordinator
  double silent_s = -1;  // the longest heartbeat silence of a rank declared dead (-1: none)
};
JobView job_view(const std::string& status_json);
// Which starter `auto` means here.
std::string resolve_launcher(const LaunchOptions& o);
// The address the coordinator's rank listener binds. A job on this host: 127.0.0.1. A multi-host job
// (`remote`): the --coordinator-host address (an IP, or a name resolved to one of this host's addresses), else
// this host's address on --iface (a CIDR or an interface name), else 0.0.0.0. When it falls back to 0.0.0.0,
// `warning` says why and which flag would avoid it. Reads this host's interfaces (getifaddrs).
std::string coordinator_bind_address(const LaunchOptions& o, bool remote, std::string* warning);

// Runs the job to its end; returns the exit code (0 finished or stopped on request, 2 usage error, 75 or 1 when
// the restarts ran out).
int launch(LaunchOptions options);

void add_launch_command(CLI::App& app);

}  // namespace stride::launcher
