// `stride submit`: writes a readable sbatch script into the run directory and submits it. Inside the
// allocation the script runs `stride launch --launcher srun`, which supervises the ranks; on USR2 (the time limit
// is near: --signal=B:USR2@S) or SIGTERM the ranks agree on a step and commit a checkpoint, and the script
// requeues the job, which resumes from that checkpoint (docs/launch.md).
#include "launcher/submit.h"

#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <ctime>
#include <filesystem>

#include "common/error.h"
#include "launcher/restart_policy.h"
#include "storage/file_io.h"
#include "trainer/config.h"
#include "trainer/train_command.h"

namespace stride::launcher {
namespace {

namespace fs = std::filesystem;

// Single-quoted for bash.
std::string quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

std::string run_capture(const std::vector<std::string>& argv, int* status) {
  std::string cmd;
  for (const auto& a : argv) cmd += quote(a) + " ";
  cmd += "2>&1";
  FILE* p = ::popen(cmd.c_str(), "r");
  if (!p) throw Error(concat("cannot run ", argv[0]));
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
  const int rc = ::pclose(p);
  *status = WIFEXITED(rc) ? WEXITSTATUS(rc) : 1;
  return out;
}

}  // namespace

std::string sbatch_script(const SubmitOptions& o, const std::string& output_dir, const std::string& stride_binary) {
  if (o.nodes < 1 || o.ntasks_per_node < 1) throw UsageError("--nodes and --ntasks-per-node must be positive");
  if (o.signal_seconds < 1) throw UsageError("--signal-seconds must be positive");
  if (!o.restart_window.empty()) parse_duration("--restart-window", o.restart_window);  // a usage error if bad
  // A value is one #SBATCH line: a line break would start another line of the script.
  for (const auto& [flag, value] :
       std::vector<std::pair<const char*, const std::string*>>{{"--time", &o.time},
                                                               {"--partition", &o.partition},
                                                               {"--account", &o.account},
                                                               {"--job-name", &o.job_name},
                                                               {"--array", &o.array},
                                                               {"--mem", &o.mem},
                                                               {"--qos", &o.qos},
                                                               {"--constraint", &o.constraint},
                                                               {"--iface", &o.iface},
                                                               {"--coordinator-host", &o.coordinator_host}}) {
    if (value->find_first_of("\r\n") != std::string::npos) throw UsageError(concat(flag, " must be one line"));
  }
  for (const auto& line : o.sbatch_lines) {
    if (line.rfind("--", 0) != 0 || line.find_first_of("\r\n") != std::string::npos) {
      throw UsageError(concat("--sbatch-line '", line, "': give one sbatch option, starting with --, on one line"));
    }
  }
  const std::string slurm_dir = (fs::path(output_dir) / "slurm").string();
  const std::string name = !o.job_name.empty() ? o.job_name : fs::path(output_dir).filename().string();
  std::string s = "#!/bin/bash\n";
  char when[64];
  const std::time_t now = std::time(nullptr);
  std::strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S", std::localtime(&now));
  s += concat("# Written by `stride submit` on ", when, ". Submit again with: sbatch ", slurm_dir, "/job.sbatch\n");
  s += concat("#SBATCH --job-name=", name, "\n");
  s += concat("#SBATCH --nodes=", o.nodes, "\n");
  s += concat("#SBATCH --ntasks-per-node=", o.ntasks_per_node, "\n");
  s += concat("#SBATCH --cpus-per-task=", o.cpus_per_task, "\n");
  if (o.gpus_per_node > 0) s += concat("#SBATCH --gpus-per-node=", o.gpus_per_node, "\n");
  if (!o.time.empty()) s += concat("#SBATCH --time=", o.time, "\n");
  if (!o.partition.empty()) s += concat("#SBATCH --partition=", o.partition, "\n");
  if (!o.account.empty()) s += concat("#SBATCH --account=", o.account, "\n");
  if (!o.array.empty()) s += concat("#SBATCH --array=", o.array, "\n");
  if (!o.mem.empty()) s += concat("#SBATCH --mem=", o.mem, "\n");
  if (!o.qos.empty()) s += concat("#SBATCH --qos=", o.qos, "\n");
  if (!o.constraint.empty()) s += concat("#SBATCH --constraint=", o.constraint, "\n");
  for (const auto& line : o.sbatch_lines) s += concat("#SBATCH ", line, "\n");
  s += "#SBATCH --requeue\n";
  s += "#SBATCH --open-mode=append\n";
  s += concat("#SBATCH --signal=B:USR2@", o.signal_seconds, "\n");
  s += concat("#SBATCH --output=", slurm_dir, o.array.empty() ? "/%x-%j.out" : "/%x-%A_%a.out", "\n");
  s += concat("#SBATCH --chdir=", fs::current_path().string(), "\n");
  s += R"sh(
# Every start of this job (the first, and each requeue: SLURM_RESTART_COUNT) resumes from the newest committed
# checkpoint. `stride launch` starts the ranks with `srun --mpi=pmix` and restarts them after a failure.
set -u
echo "stride: job ${SLURM_JOB_ID} start ${SLURM_RESTART_COUNT:-0} on $(hostname) at $(date '+%F %T')"
)sh";
  if (::geteuid() == 0) s += "export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1\n";
  std::string out_dir = quote(output_dir);
  if (!o.array.empty()) out_dir = concat(quote(output_dir), "/task-${SLURM_ARRAY_TASK_ID}");
  s += concat("STRIDE=", quote(stride_binary), "\n");
  s += concat("\"$STRIDE\" launch --launcher srun --max-restarts ", o.max_restarts, " --status-port ", o.status_port,
              " --restart-backoff ", o.restart_backoff_s);
  if (!o.restart_window.empty()) s += concat(" --restart-window ", quote(o.restart_window));
  if (!o.iface.empty()) s += concat(" --iface ", quote(o.iface));
  if (!o.coordinator_host.empty()) s += concat(" --coordinator-host ", quote(o.coordinator_host));
  s += " -- \\\n   ";
  for (const auto& a : o.train_args) s += " " + quote(a);
  s += concat(" \\\n    --output-dir ", out_dir, " --resume auto &\n");
  s += R"sh(launcher=$!
# USR2 (the time limit is near) or TERM (scancel, preemption): the ranks agree on a step and commit a checkpoint,
# the launcher exits, and the job goes back to the queue to resume from that checkpoint.
requeue=0
trap 'requeue=1; kill -USR2 "$launcher" 2>/dev/null' USR2
trap 'requeue=1; kill -TERM "$launcher" 2>/dev/null' TERM
rc=0
while :; do
  wait "$launcher"
  rc=$?
  kill -0 "$launcher" 2>/dev/null || break
done
if [ "$requeue" = 1 ]; then
  echo "stride: checkpointed on a signal (launch exit $rc): requeueing job ${SLURM_JOB_ID}"
  scontrol requeue "${SLURM_JOB_ID}" && exit 0
  echo "stride: scontrol requeue failed: resubmit ${0} by hand to continue"
fi
exit "$rc"
)sh";
  return s;
}

int submit(const SubmitOptions& o) {
  const trainer::TrainConfig tc = trainer::parse_train_flags(o.train_args);
  // --output-dir and --resume are set by the script (the absolute run directory; --resume auto on every start).
  SubmitOptions clean = o;
  clean.train_args.clear();
  for (size_t i = 0; i < o.train_args.size(); ++i) {
    const std::string& a = o.train_args[i];
    if (a == "--output-dir" || a == "--resume") {
      ++i;
      continue;
    }
    if (a.rfind("--output-dir=", 0) == 0 || a.rfind("--resume=", 0) == 0) continue;
    clean.train_args.push_back(a);
  }
  const std::string output_dir = fs::absolute(tc.output_dir).lexically_normal().string();
  const std::string stride_binary = fs::read_symlink("/proc/self/exe").string();
  const std::string script = sbatch_script(clean, output_dir, stride_binary);
  const fs::path slurm_dir = fs::path(output_dir) / "slurm";
  fs::create_directories(slurm_dir);
  const std::string path = (slurm_dir / "job.sbatch").string();
  storage::write_file_atomic(path, script);
  fs::permissions(path, fs::perms::owner_all | fs::perms::group_read | fs::perms::others_read,
                  fs::perm_options::replace);
  if (o.dry_run) {
    std::printf("%s", script.c_str());
    std::printf("# written to %s (not submitted: --dry-run)\n", path.c_str());
    return 0;
  }
  int status = 0;
  const std::string out = run_capture({o.sbatch, "--parsable", path}, &status);
  if (status != 0) throw Error(concat("sbatch ", path, " failed: ", out));
  std::string id = out.substr(0, out.find_first_of(";\n"));
  std::printf("submitted job %s: %s (output in %s)\n", id.c_str(), path.c_str(), slurm_dir.c_str());
  return 0;
}

void add_submit_command(CLI::App& app) {
  auto o = std::make_shared<SubmitOptions>();
  auto* cmd = app.add_subcommand("submit", "Write an sbatch script for a supervised, requeueable job and submit it");
  cmd->add_option("--nodes", o->nodes, "Nodes (#SBATCH --nodes)")->capture_default_str();
  cmd->add_option("--ntasks-per-node", o->ntasks_per_node, "Ranks per node")->capture_default_str();
  cmd->add_option("--cpus-per-task", o->cpus_per_task, "CPUs per rank (#SBATCH --cpus-per-task)")
      ->capture_default_str();
  cmd->add_option("--gpus-per-node", o->gpus_per_node, "GPUs per node, 0 for none (#SBATCH --gpus-per-node)")
      ->capture_default_str();
  cmd->add_option("--time", o->time, "Time limit (Slurm format, e.g. 1:00:00)");
  cmd->add_option("--partition", o->partition, "Slurm partition (#SBATCH --partition)");
  cmd->add_option("--account", o->account, "Account to charge (#SBATCH --account)");
  cmd->add_option("--mem", o->mem, "Memory per node (Slurm format, e.g. 64G; #SBATCH --mem)");
  cmd->add_option("--qos", o->qos, "Quality of service (#SBATCH --qos)");
  cmd->add_option("--constraint", o->constraint, "Node features (e.g. 'avx512&ib'; #SBATCH --constraint)");
  cmd->add_option("--sbatch-line", o->sbatch_lines,
                  "Any other sbatch option, written as its own #SBATCH line (repeatable; give it with '=', "
                  "e.g. --sbatch-line=--exclusive)")
      ->allow_extra_args(false);
  cmd->add_option("--job-name", o->job_name, "Default: the run directory's name");
  cmd->add_option("--array", o->array, "Array job (e.g. 0-3): each task trains into OUTPUT_DIR/task-ID");
  cmd->add_option("--signal-seconds", o->signal_seconds, "USR2 this long before the time limit")->capture_default_str();
  cmd->add_option("--max-restarts", o->max_restarts, "stride launch --max-restarts")->capture_default_str();
  cmd->add_option("--restart-backoff", o->restart_backoff_s, "stride launch --restart-backoff")->capture_default_str();
  cmd->add_option("--restart-window", o->restart_window,
                  "stride launch --restart-window: --max-restarts counts failures within it (e.g. 1h)");
  cmd->add_option("--status-port", o->status_port, "stride launch --status-port")->capture_default_str();
  cmd->add_option("--iface", o->iface,
                  "stride launch --iface: the network between the nodes (CIDR such as 10.0.0.0/24, or a name)");
  cmd->add_option("--coordinator-host", o->coordinator_host,
                  "stride launch --coordinator-host: the address the ranks reach the coordinator at");
  cmd->add_option("--sbatch", o->sbatch, "sbatch executable")->capture_default_str();
  cmd->add_flag("--dry-run", o->dry_run, "Write and print the script, do not submit");
  cmd->add_option("train_args", o->train_args, "stride train flags, after --");
  cmd->callback([o] {
    const int rc = submit(*o);
    if (rc != 0) std::exit(rc);
  });
}

}  // namespace stride::launcher
