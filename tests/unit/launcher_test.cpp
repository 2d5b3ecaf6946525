// The launcher's pure parts: the command that starts the ranks, and the sbatch script.
#include <gtest/gtest.h>

#include <unistd.h>
#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <string>

#include "cluster/coordinator.h"
#include "common/error.h"
#include "launcher/launch.h"
#include "launcher/submit.h"

namespace stride::launcher {
namespace {

std::string joined(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& a : v) s += (s.empty() ? "" : " ") + a;
  return s;
}

TEST(Launch, MpirunCommandCarriesHostsNetworkAndTheCoordinatorEnvironment) {
  ::unsetenv("SLURM_JOB_ID");
  LaunchOptions o;
  o.ranks = 4;
  o.hosts = "h1:2,h2:2";
  o.iface = "10.77.0.0/24";
  o.oversubscribe = true;
  o.stride_binary = "/opt/stride";
  o.train_args = {"--model", "resnet20", "--resume", "runs/x/checkpoints/step-00000010"};
  EXPECT_EQ(resolve_launcher(o), "mpirun");
  const std::string first = joined(rank_command(o, /*resume=*/false));
  EXPECT_EQ(first,
            "mpirun -np 4 --bind-to none --tag-output --oversubscribe --host h1:2,h2:2 --mca btl_tcp_if_include "
            "10.77.0.0/24 --mca oob_tcp_if_include 10.77.0.0/24 -x STRIDE_COORDINATOR -x STRIDE_JOB_TOKEN -x "
            "STRIDE_RESTART_COUNT -x STRIDE_PROGRESS /opt/stride train --model resnet20 --resume "
            "runs/x/checkpoints/step-00000010");
  // A restart resumes from the newest commit, whatever --resume said at first.
  const std::string again = joined(rank_command(o, /*resume=*/true));
  EXPECT_NE(again.find("/opt/stride train --model resnet20 --resume auto"), std::string::npos) << again;
  EXPECT_EQ(again.find("step-00000010"), std::string::npos) << again;
}

// A multi-host job's rank listener binds the address the ranks are told to use, not every interface (#17).
TEST(Launch, MultiHostRankListenerBindsTheCoordinatorAddress) {
  LaunchOptions o;
  std::string warning;
  EXPECT_EQ(coordinator_bind_address(o, /*remote=*/false, &warning), "127.0.0.1");
  EXPECT_EQ(warning, "");
  o.coordinator_host = "127.0.0.1";  // an address of this host (lo)
  EXPECT_EQ(coordinator_bind_address(o, true, &warning), "127.0.0.1");
  EXPECT_EQ(warning, "");
  o.coordinator_host = "localhost";  // a name, resolved to one of this host's addresses
  const std::string by_name = coordinator_bind_address(o, true, &warning);
  EXPECT_TRUE(by_name == "127.0.0.1" || by_name == "::1") << by_name;
  EXPECT_EQ(warning, "");
  o.coordinator_host.clear();
  o.iface = "127.0.0.0/8";  // --iface as a network
  EXPECT_EQ(coordinator_bind_address(o, true, &warning), "127.0.0.1");
  o.iface = "lo";  // --iface as an interface name
  EXPECT_EQ(coordinator_bind_address(o, true, &warning), "127.0.0.1");
  EXPECT_EQ(warning, "");
  // The address must be this host's; otherwise every interface, and a warning naming the flag.
  o.iface.clear();
  o.coordinator_host = "0.0.0.1";  // no interface can have it
  EXPECT_EQ(coordinator_bind_address(o, true, &warning), "0.0.0.0");
  EXPECT_NE(warning.find("--coordinator-host 0.0.0.1 (0.0.0.1) is not an address of this host"), std::string::npos)
      << warning;
  o.coordinator_host.clear();
  o.iface = "0.0.0.0/32";  // a network with no address of this host
  EXPECT_EQ(coordinator_bind_address(o, true, &warning), "0.0.0.0");
  EXPECT_NE(warning.find("--iface 0.0.0.0/32"), std::string::npos) << warning;
  o.iface.clear();
  EXPECT_EQ(coordinator_bind_address(o, true, &warning), "0.0.0.0");
  EXPECT_NE(warning.find("--coordinator-host"), std::string::npos) << warning;
  // And the coordinator listens there: a real bind of the chosen address.
  o.coordinator_host = "127.0.0.1";
  cluster::CoordinatorOptions co;
  co.bind = coordinator_bind_address(o, true, &warning);
  co.status_port = -1;
  cluster::Coordinator coordinator(co);
  EXPECT_EQ(coordinator.address(), concat("127.0.0.1:", coordinator.port()));
}

TEST(Launch, InsideASlurmAllocationRanksStartWithSrunPmix) {
  ::setenv("SLURM_JOB_ID", "42", 1);
  LaunchOptions o;
  o.ranks = 2;
  o.stride_binary = "/opt/stride";
  o.train_args = {"--epochs", "1"};
  EXPECT_EQ(resolve_launcher(o), "srun");
  EXPECT_EQ(joined(rank_command(o, false)),
            "srun --mpi=pmix --kill-on-bad-exit=1 --label --ntasks=2 /opt/stride train --epochs 1");
  o.hostfile = "hosts.txt";  // an explicit hostfile means mpirun, even inside an allocation
  EXPECT_EQ(resolve_launcher(o), "mpirun");
  ::unsetenv("SLURM_JOB_ID");
}

// Bad flags, an unreadable hostfile and --min-ranks without hosts stop the launcher before any rank starts.
TEST(Launch, BadInputIsAUsageErrorBeforeAnythingStarts) {
  ::unsetenv("SLURM_JOB_ID");
  const std::string dir = std::filesystem::temp_directory_path() / ("stride-launch-bad-" + std::to_string(::getpid()));
  auto expect_usage = [&](LaunchOptions o, const std::string& want) {
    o.stride_binary = "/bin/false";
    o.mpirun = "/bin/false";
    try {
      launch(o);
      ADD_FAILURE() << "no error, expected: " << want;
    } catch (const UsageError& e) {
      EXPECT_NE(std::string(e.what()).find(want), std::string::npos) << e.what();
    }
  };
  LaunchOptions bad_flag;
  bad_flag.train_args = {"--batch-size", "0", "--output-dir", dir};
  expect_usage(bad_flag, "--batch-size must be positive");
  LaunchOptions min_ranks;
  min_ranks.min_ranks = 1;
  min_ranks.train_args = {"--output-dir", dir};
  expect_usage(min_ranks, "--min-ranks needs --hosts or --hostfile");
  LaunchOptions hostfile = min_ranks;
  hostfile.hostfile = dir + "/no-such-hostfile";
  expect_usage(hostfile, "cannot read it");
  std::filesystem::remove_all(dir);
}

TEST(Submit, ScriptRequeuesOnTheWarningSignalAndResumes) {
  SubmitOptions o;
  o.nodes = 2;
  o.ntasks_per_node = 4;
  o.gpus_per_node = 4;
  o.time = "1:00:00";
  o.partition = "gpu";
  o.signal_seconds = 300;
  o.train_args = {"--model", "resnet50", "--job", "it's"};
  const std::string s = sbatch_script(o, "/runs/r50", "/opt/stride");
  for (const char* want :
       {"#SBATCH --nodes=2\n", "#SBATCH --ntasks-per-node=4\n", "#SBATCH --gpus-per-node=4\n",
        "#SBATCH --time=1:00:00\n", "#SBATCH --partition=gpu\n", "#SBATCH --requeue\n", "#SBATCH --open-mode=append\n",
        "#SBATCH --signal=B:USR2@300\n", "#SBATCH --output=/runs/r50/slurm/%x-%j.out\n", "--launcher srun",
        "--output-dir '/runs/r50' --resume auto", "'it'\\''s'", "trap 'requeue=1; kill -USR2", "scontrol requeue"}) {
    EXPECT_NE(s.find(want), std::string::npos) << want << "\n" << s;
  }
  o.array = "0-3";
  const std::string a = sbatch_script(o, "/runs/r50", "/opt/stride");
  EXPECT_NE(a.find("#SBATCH --array=0-3\n"), std::string::npos);
  EXPECT_NE(a.find("--output-dir '/runs/r50'/task-${SLURM_ARRAY_TASK_ID}"), std::string::npos) << a;
  EXPECT_NE(a.find("%x-%A_%a.out"), std::string::npos);
  o.nodes = 0;  // a usage error (exit code 2) naming the flags, not any exception
  try {
    sbatch_script(o, "/runs/r50", "/opt/stride");
    ADD_FAILURE() << "--nodes 0 was accepted";
  } catch (const UsageError& e) {
    EXPECT_STREQ(e.what(), "--nodes and --ntasks-per-node must be positive");
  }
}

TEST(Submit, SiteOptionsPassThroughAsSbatchLinesAndLineBreaksAreRefused) {
  SubmitOptions o;
  o.mem = "64G";
  o.qos = "high";
  o.constraint = "avx512&ib";
  o.sbatch_lines = {"--exclusive", "--mail-type=END"};
  const std::string s = sbatch_script(o, "/runs/r", "/opt/stride");
  for (const char* want : {"#SBATCH --mem=64G\n", "#SBATCH --qos=high\n", "#SBATCH --constraint=avx512&ib\n",
                           "#SBATCH --exclusive\n", "#SBATCH --mail-type=END\n"}) {
    EXPECT_NE(s.find(want), std::string::npos) << want << "\n" << s;
  }
  // Every #SBATCH line comes before the first command: sbatch stops reading options there.
  EXPECT_LT(s.find("#SBATCH --mail-type=END"), s.find("\nset -u"));
  const auto usage = [](const SubmitOptions& bad, const std::string& want) {
    try {
      sbatch_script(bad, "/runs/r", "/opt/stride");
      ADD_FAILURE() << "no error, wanted " << want;
    } catch (const UsageError& e) {
      EXPECT_NE(std::string(e.what()).find(want), std::string::npos) << e.what();
    }
  };
  SubmitOptions two_lines = o;
  two_lines.qos = "high\nrm -rf /";
  usage(two_lines, "--qos must be one line");
  SubmitOptions not_an_option = o;
  not_an_option.sbatch_lines = {"exclusive"};
  usage(not_an_option, "--sbatch-line 'exclusive'");
}

}  // namespace
}  // namespace stride::launcher
