// `stride launch`: starts the job's coordinator and status endpoint, starts every rank with mpirun (or srun
// inside a Slurm allocation), and supervises them: a dead or hung rank (the coordinator's verdict) or a failed
// mpirun stops what is left and restarts all ranks with --resume auto from the last committed checkpoint, up to
// --max-restarts times with back-off. SIGINT/SIGTERM/SIGUSR2 ask the ranks to checkpoint and stop (a second
// SIGINT kills). See docs/launch.md.
#pragma once

#include <string>
#include <vector>

namespace CLI {
class App;
}

namespace stride::launcher {

struct LaunchOptions {
  int ranks = 0;         // 0: SLURM_NTASKS inside an allocation, else 1
  std::string hostfile;  // mpirun --hostfile
  std::string hosts;     // mpirun --host h1:2,h2:2
  int max_restarts = 3;
  double restart_backoff_s = 2;  // doubles per restart, at most 60 s
  int status_port = 8470;        // -1: off; 0: any free port
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
