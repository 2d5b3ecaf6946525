// `stride submit`: a Slurm batch script for a supervised, requeueable job (docs/launch.md).
#pragma once

#include <string>
#include <vector>

namespace CLI {
class App;
}

namespace stride::launcher {

struct SubmitOptions {
  int nodes = 1;
  int ntasks_per_node = 1;
  int cpus_per_task = 1;
  int gpus_per_node = 0;
  std::string time, partition, account, job_name, array;
  std::string mem, qos, constraint;       // passed through as #SBATCH --mem=, --qos=, --constraint=
  std::vector<std::string> sbatch_lines;  // raw sbatch options, one #SBATCH line each (e.g. "--exclusive")
  int signal_seconds = 120;               // --signal=B:USR2@N
  int max_restarts = 3;
  double restart_backoff_s = 2;
  std::string restart_window;  // stride launch --restart-window (empty: launch's default, the job's whole life)
  int status_port = 8470;
  // stride launch --iface / --coordinator-host: the network the ranks of several nodes talk over (MPI's TCP
  // traffic and the coordinator's listener), and the address they reach the coordinator at.
  std::string iface, coordinator_host;
  std::string sbatch = "sbatch";
  bool dry_run = false;
  std::vector<std::string> train_args;
};

// The script's text (pure; unit-tested). `output_dir` is absolute; train_args hold neither --output-dir nor
// --resume.
std::string sbatch_script(const SubmitOptions& o, const std::string& output_dir, const std::string& stride_binary);
int submit(const SubmitOptions& o);
void add_submit_command(CLI::App& app);

}  // namespace stride::launcher
