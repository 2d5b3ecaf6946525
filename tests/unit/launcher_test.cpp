// The launcher's pure parts: the command that starts the ranks, and the sbatch script.
#include <gtest/gtest.h>

#include <unistd.h>
#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "cluster/auth.h"
#include "cluster/coordinator.h"
#include "cluster/coordinator_core.h"
#include "common/error.h"
#include "launcher/launch.h"
#include "launcher/restart_policy.h"
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
            "mpirun -np 4 --bind-to none --tag-output --mca orte_allowed_exit_without_sync 1 --mca "
            "odls_base_sigkill_timeout 0 --oversubscribe --host "
            "h1:2,h2:2 --mca btl_tcp_if_include "
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
  // Slot counts are whole numbers: "h2:x" used to mean 0 slots and "slots=2x" 2.
  LaunchOptions bad_slots = min_ranks;
  bad_slots.hosts = "h1:2,h2:x";
  expect_usage(bad_slots, "--hosts 'h2:x': the slot count must be a whole number from 1, not 'x'");
  bad_slots.hosts = "h1:0";
  expect_usage(bad_slots, "--hosts 'h1:0': the slot count must be a whole number from 1, not '0'");
  {
    std::filesystem::create_directories(dir);
    std::ofstream(dir + "/hosts") << "# cluster\nh1 slots=2\nh2 slots=2x\n";
    LaunchOptions bad_hostfile = min_ranks;
    bad_hostfile.hostfile = dir + "/hosts";
    expect_usage(bad_hostfile, "--hostfile " + dir + "/hosts: 'h2 slots=2x': the slot count must be a whole number");
  }
  // A launcher's variable that is not a number stops the launch naming the variable.
  ::setenv("SLURM_RESTART_COUNT", "two", 1);
  LaunchOptions bad_env;
  bad_env.train_args = {"--dataset", "fashion-mnist", "--output-dir", dir};  // past the dataset check
  expect_usage(bad_env, "SLURM_RESTART_COUNT must be a whole number from 0");
  ::unsetenv("SLURM_RESTART_COUNT");
  LaunchOptions no_backoff_cap;
  no_backoff_cap.restart_backoff_max_s = 0;
  no_backoff_cap.train_args = {"--output-dir", dir};
  expect_usage(no_backoff_cap, "--restart-backoff-max must be a positive duration");
  // Durations given on the command line are checked by the subcommand, naming the flag.
  for (const auto& [args, want] : std::vector<std::pair<std::string, std::string>>{
           {"launch --restart-window 5x -- --epochs 1", "--restart-window must be a duration"},
           {"launch --restart-window=-1h -- --epochs 1", "is negative"},
           {"launch --restart-backoff-max 0 -- --epochs 1", "--restart-backoff-max must be a positive duration"},
           {"launch --restart-backoff soon -- --epochs 1", "--restart-backoff must be a duration"}}) {
    CLI::App app;
    add_launch_command(app);
    try {
      app.parse(args, /*program_name_included=*/false);
      ADD_FAILURE() << args << ": no error, expected: " << want;
    } catch (const UsageError& e) {
      EXPECT_NE(std::string(e.what()).find(want), std::string::npos) << args << ": " << e.what();
    }
  }
  std::filesystem::remove_all(dir);
}

// mpirun's and srun's verdicts on a dead rank become the restart reason.
TEST(Launch, TheRankAndSignalOfADeadRankComeFromMpirunsVerdict) {
  EXPECT_EQ(rank_failure_from_output(
                "mpirun noticed that process rank 1 with PID 4242 on node vm1 exited on signal 9 (Killed)."),
            "rank 1 (pid 4242 on vm1) was killed by signal 9 (Killed)");
  EXPECT_EQ(rank_failure_from_output(
                "mpirun noticed that process rank 0 with PID 0 on node vm1 exited on signal 9 (Killed)."),
            "rank 0 (on vm1) was killed by signal 9 (Killed)");
  EXPECT_EQ(rank_failure_from_output("srun: error: node2: task 3: Killed"), "rank 3 (on node2): Killed");
  EXPECT_EQ(rank_failure_from_output("srun: error: node2: task 0: Exited with exit code 75"),
            "rank 0 (on node2) exited with code 75");
  EXPECT_EQ(rank_failure_from_output("[1,0]<stdout>:epoch 1/1 step 10/120 loss 2.1"), "");
  EXPECT_EQ(rank_failure_from_output("mpirun noticed that the job aborted, but has no info as to the process"), "");
}

// What the launcher reads from its coordinator: rank 0's step, the commits, and how long a rank declared dead
// for silence had been silent (the failure time of a hang, for the detection timing).
TEST(Launch, JobViewReadsStepCommitsStartAndTheSilenceOfADeadRank) {
  cluster::CoreOptions o;
  o.token = "secret";
  o.world_size = 2;
  o.heartbeat_timeout_s = 3.0;
  o.checkpoint_root = std::filesystem::temp_directory_path() / ("stride-jobview-" + std::to_string(::getpid()));
  cluster::CoordinatorCore core(o, 0.0, 1e9);
  for (uint32_t r = 0; r < 2; ++r) {
    proto::Hello h;
    h.set_rank(r);
    h.set_world_size(2);
    h.set_host("testhost");
    h.set_pid(1000 + r);
    h.set_step(40);
    const std::string nonce(cluster::auth::kNonceBytes, 'n');
    cluster::auth::sign_hello(&h, "secret", nonce, "");
    ASSERT_EQ(core.admit(h, nonce, 0.0), "");
  }
  auto v = job_view(core.status_json(0.1));
  EXPECT_EQ(v.step, 40u);
  EXPECT_EQ(v.commits, 0);
  EXPECT_EQ(v.silent_s, -1);
  EXPECT_EQ(v.start_source, "");  // not said yet: the launcher's recovery waits for it
  proto::Heartbeat hb;
  hb.set_step(41);
  hb.set_start_step(37);
  hb.set_start_source("memory");
  core.heartbeat(1, hb, 0.5);  // rank 1's last word
  for (double t = 1.0; t <= 4.0; t += 0.5) {
    core.heartbeat(0, hb, t);
    core.tick(t);
  }
  ASSERT_TRUE(core.failure().has_value());
  v = job_view(core.status_json(4.0));
  EXPECT_EQ(v.step, 41u);
  EXPECT_EQ(v.start_step, 37u);
  EXPECT_EQ(v.start_source, "memory");
  EXPECT_NEAR(v.silent_s, 3.5, 1e-9);
  EXPECT_EQ(job_view("not json").step, 0u);
}

// A clock the test moves by hand.
struct FakeClock {
  double t = 1000;
  std::function<double()> fn() {
    return [this] { return t; };
  }
};

RestartPolicyOptions policy(int max_restarts, double window_s) {
  RestartPolicyOptions o;
  o.max_restarts = max_restarts;
  o.window_s = window_s;
  return o;
}

// K failures spread wider than the window never stop the job: only those inside the window count.
TEST(RestartPolicy, FailuresThatLeftTheWindowNoLongerCount) {
  FakeClock clock;
  RestartPolicy p(policy(2, 60), clock.fn());
  for (int i = 0; i < 10; ++i) {
    const auto d = p.on_failure();
    EXPECT_TRUE(d.restart) << "failure " << i + 1 << ": " << d.summary;
    EXPECT_LE(d.failures_in_window, 2) << d.summary;
    clock.t += 31;  // two failures fit in any 60 s window, never three
  }
}

// More than K failures inside the window stop the job, with a message naming the count and the window.
TEST(RestartPolicy, TooManyFailuresInsideTheWindowStopTheJob) {
  FakeClock clock;
  RestartPolicy p(policy(3, 900), clock.fn());
  for (int i = 0; i < 3; ++i) {
    const auto d = p.on_failure();
    ASSERT_TRUE(d.restart) << d.summary;
    EXPECT_EQ(d.failures_in_window, i + 1);
    EXPECT_NE(d.summary.find(concat("failure ", i + 1, " of at most 3 within 15m")), std::string::npos) << d.summary;
    clock.t += 299;
  }
  const auto d = p.on_failure();  // the 4th within 15 minutes (3 x 299 s < 900 s)
  EXPECT_FALSE(d.restart);
  EXPECT_EQ(d.failures_in_window, 4);
  EXPECT_EQ(d.summary, "4 failure(s) within 15m exceed --max-restarts 3 (--restart-window 15m)");
}

// A window of 0 is the old lifetime count: K restarts in the job's life, however far apart.
TEST(RestartPolicy, ZeroWindowCountsOverTheJobsLife) {
  FakeClock clock;
  RestartPolicy p(policy(2, 0), clock.fn());
  EXPECT_TRUE(p.on_failure().restart);
  clock.t += 1e6;
  EXPECT_TRUE(p.on_failure().restart);
  clock.t += 1e6;
  const auto d = p.on_failure();
  EXPECT_FALSE(d.restart);
  EXPECT_EQ(d.summary, "3 failure(s) over the job's life exceed --max-restarts 2");
  RestartPolicy none(policy(0, 0), clock.fn());
  EXPECT_FALSE(none.on_failure().restart);  // --max-restarts 0: never restart
}

// The back-off doubles per consecutive failure up to the cap, and starts over once the job made progress after
// a restart: a new commit, or --restart-progress-steps steps past where it resumed.
TEST(RestartPolicy, BackoffDoublesIsCappedAndResetsAfterProgress) {
  FakeClock clock;
  auto o = policy(100, 0);
  o.backoff_s = 2;
  o.backoff_max_s = 20;
  o.progress_steps = 50;
  RestartPolicy p(o, clock.fn());
  p.on_start(/*commits=*/0, /*step=*/0);
  std::vector<double> got;
  for (int i = 0; i < 6; ++i) {
    got.push_back(p.on_failure().backoff_s);
    p.on_start(0, 0);
    EXPECT_FALSE(p.observe(0, 10));  // no commit, too few steps: no progress
  }
  EXPECT_EQ(got, (std::vector<double>{2, 4, 8, 16, 20, 20}));
  // A commit after the restart is progress: the next failure waits the first back-off again.
  p.on_start(/*commits=*/4, /*step=*/40);
  EXPECT_FALSE(p.observe(4, 45));
  EXPECT_TRUE(p.observe(5, 46));
  EXPECT_FALSE(p.observe(6, 47));  // reported once per start
  EXPECT_EQ(p.on_failure().backoff_s, 2);
  p.on_start(5, 50);
  EXPECT_EQ(p.on_failure().backoff_s, 4);  // no progress in between: doubles again
  // Steps alone: 50 steps past the resume step.
  p.on_start(5, 50);
  EXPECT_FALSE(p.observe(5, 99));
  EXPECT_TRUE(p.observe(5, 100));
  const auto d = p.on_failure();
  EXPECT_EQ(d.backoff_s, 2);
  EXPECT_EQ(d.consecutive, 1);
  // With --restart-progress-steps 0 only a commit counts.
  auto commits_only = o;
  commits_only.progress_steps = 0;
  RestartPolicy q(commits_only, clock.fn());
  q.on_start(0, 0);
  EXPECT_FALSE(q.observe(0, 1000000));
}

TEST(RestartPolicy, DurationsParseAndBadValuesNameTheFlag) {
  EXPECT_EQ(parse_duration("--restart-window", "0"), 0);
  EXPECT_EQ(parse_duration("--restart-window", "90"), 90);
  EXPECT_EQ(parse_duration("--restart-window", "30s"), 30);
  EXPECT_EQ(parse_duration("--restart-window", "15m"), 900);
  EXPECT_EQ(parse_duration("--restart-window", "1.5h"), 5400);
  EXPECT_EQ(parse_duration("--restart-window", "2d"), 172800);
  EXPECT_EQ(parse_duration("--restart-backoff", "250ms"), 0.25);
  EXPECT_EQ(format_duration(900), "15m");
  EXPECT_EQ(format_duration(5400), "1h30m");
  EXPECT_EQ(format_duration(3600), "1h");
  EXPECT_EQ(format_duration(2.5), "2.5s");
  auto expect_usage = [](const std::function<void()>& fn, const std::string& want) {
    try {
      fn();
      ADD_FAILURE() << "no error, expected: " << want;
    } catch (const UsageError& e) {
      EXPECT_NE(std::string(e.what()).find(want), std::string::npos) << e.what();
    }
  };
  expect_usage([] { parse_duration("--restart-window", "-5m"); }, "--restart-window must be a duration");
  expect_usage([] { parse_duration("--restart-window", "soon"); }, "'soon' is not a number");
  expect_usage([] { parse_duration("--restart-backoff-max", "5y"); }, "--restart-backoff-max");
  expect_usage([] { parse_duration("--restart-window", ""); }, "is empty");
  auto o = policy(3, 0);
  o.backoff_max_s = 0;
  expect_usage([&] { validate(o); }, "--restart-backoff-max must be a positive duration");
  o = policy(-1, 0);
  expect_usage([&] { validate(o); }, "--max-restarts must be 0 or more");
  o = policy(3, 0);
  o.progress_steps = -2;
  expect_usage([&] { validate(o); }, "--restart-progress-steps");
  o = policy(3, -1);
  expect_usage([&] { validate(o); }, "--restart-window");
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
  // The restart window goes to stride launch inside the job, checked before anything is submitted.
  SubmitOptions windowed = o;
  windowed.restart_window = "1h";
  EXPECT_NE(sbatch_script(windowed, "/runs/r", "/opt/stride").find("--restart-window '1h' --"), std::string::npos);
  windowed.restart_window = "an hour";
  usage(windowed, "--restart-window");
  // Several nodes: the network between them and the coordinator's address go to stride launch.
  SubmitOptions nodes = o;
  nodes.nodes = 2;
  nodes.iface = "10.0.0.0/24";
  nodes.coordinator_host = "node1";
  const std::string two = sbatch_script(nodes, "/runs/r", "/opt/stride");
  EXPECT_NE(two.find("launch --launcher srun"), std::string::npos) << two;
  EXPECT_NE(two.find(" --iface '10.0.0.0/24' --coordinator-host 'node1' --"), std::string::npos) << two;
  nodes.iface = "10.0.0.0/24\nrm -rf /";
  usage(nodes, "--iface must be one line");
}

}  // namespace
}  // namespace stride::launcher
