#include "launcher/launch.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netdb.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <sstream>
#include <thread>

#include "cluster/coordinator.h"
#include "common/env.h"
#include "common/error.h"
#include "launcher/rank_output.h"
#include "launcher/restart_policy.h"
#include "trainer/config.h"
#include "trainer/data_setup.h"
#include "trainer/train_command.h"

namespace stride::launcher {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

std::atomic<int> g_signal{0};
std::atomic<int> g_signal_count{0};
extern "C" void on_signal(int sig) {
  g_signal.store(sig);
  g_signal_count.fetch_add(1);
}

bool is_local_host(const std::string& h) {
  return h.empty() || h == "localhost" || h == "127.0.0.1" || h == cluster::local_hostname();
}

struct Host {
  std::string name;
  int slots = 1;
};

// A host's slot count: a whole number from 1, or a UsageError naming where it came from ("a:x" used to mean 0
// slots through atoi, and mpirun then failed far from the typo).
int parse_slots(const std::string& text, const std::string& where) {
  char* end = nullptr;
  errno = 0;
  const long v = std::strtol(text.c_str(), &end, 10);
  if (text.empty() || !std::isdigit(static_cast<unsigned char>(text[0])) || *end != '\0' || errno == ERANGE || v < 1 ||
      v > 1 << 20) {
    throw UsageError(concat(where, ": the slot count must be a whole number from 1, not '", text, "'"));
  }
  return static_cast<int>(v);
}

// --hosts "a:2,b:2" or a hostfile ("a slots=2"), in mpirun's rank order (a host's slots are filled first).
std::vector<Host> host_slots(const LaunchOptions& o) {
  std::vector<Host> out;
  if (!o.hosts.empty()) {
    std::stringstream ss(o.hosts);
    std::string item;
    while (std::getline(ss, item, ',')) {
      const auto colon = item.find(':');
      out.push_back({item.substr(0, colon), colon == std::string::npos
                                                ? 1
                                                : parse_slots(item.substr(colon + 1), concat("--hosts '", item, "'"))});
    }
  }
  if (!o.hostfile.empty()) {
    std::ifstream in(o.hostfile);
    if (!in) throw UsageError(concat("--hostfile ", o.hostfile, ": cannot read it"));
    std::string line;
    while (std::getline(in, line)) {
      std::stringstream ls(line);
      std::string name, word;
      if (!(ls >> name) || name[0] == '#') continue;
      Host h{name, 1};
      while (ls >> word) {
        if (word.rfind("slots=", 0) == 0)
          h.slots = parse_slots(word.substr(6), concat("--hostfile ", o.hostfile, ": '", line, "'"));
      }
      out.push_back(h);
    }
  }
  return out;
}

// Replaces (or appends) `--flag value` in a train command line.
void set_flag(std::vector<std::string>& args, const std::string& flag, const std::string& value) {
  for (size_t i = 0; i < args.size(); ++i) {
    if (args[i] == flag && i + 1 < args.size()) {
      args[i + 1] = value;
      return;
    }
    if (args[i].rfind(flag + "=", 0) == 0) {
      args[i] = flag + "=" + value;
      return;
    }
  }
  args.insert(args.end(), {flag, value});
}

bool remote_hosts(const LaunchOptions& o) {
  for (const auto& h : host_slots(o)) {
    if (!is_local_host(h.name)) return true;
  }
  return false;
}

bool alive(pid_t pid) {
  // A zombie still answers kill(0): look at its state.
  std::ifstream in(concat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("State:", 0) == 0) return line.find('Z') == std::string::npos && line.find('X') == std::string::npos;
  }
  return false;
}

std::string describe_status(int status) {
  if (WIFEXITED(status)) return concat("exited with code ", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return concat("was killed by signal ", WTERMSIG(status));
  return "ended";
}

double steady_seconds() { return std::chrono::duration<double>(Clock::now().time_since_epoch()).count(); }

// "1.23 s" for the restart timings.
std::string secs(double s) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.2f s", s);
  return buf;
}

JobView view(const cluster::Coordinator& c) { return job_view(c.status_json()); }

RankOutput* g_output = nullptr;  // the job's output while launch() runs (launcher/rank_output.h)
void print(const std::string& line) {
  if (g_output) {
    g_output->print_line("launch: " + line);
    return;
  }
  std::printf("launch: %s\n", line.c_str());
  std::fflush(stdout);
}

}  // namespace

JobView job_view(const std::string& status_json) {
  JobView v;
  const auto j = nlohmann::json::parse(status_json, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return v;
  v.step = j.value("step", uint64_t{0});
  const auto& ranks = j.value("ranks", nlohmann::json::array());
  if (!ranks.empty() && ranks[0].value("joined", false)) {
    v.start_step = ranks[0].value("start_step", uint64_t{0});
    v.start_source = ranks[0].value("start_source", std::string());
  }
  if (j.contains("checkpoint")) v.commits = j["checkpoint"].value("commits", int64_t{0});
  for (const auto& r : j.value("ranks", nlohmann::json::array())) {
    if (r.value("joined", false) && !r.value("alive", true) && r["last_heartbeat_age_s"].is_number()) {
      v.silent_s = std::max(v.silent_s, r["last_heartbeat_age_s"].get<double>());
    }
  }
  return v;
}

std::string rank_failure_from_output(const std::string& raw) {
  // mpirun: "mpirun noticed that process rank 1 with PID 4242 on node vm exited on signal 9 (Killed)."
  const std::string line = raw.substr(0, raw.find_last_not_of(" .\r") + 1);
  const char* m = "mpirun noticed that process rank ";
  if (line.rfind(m, 0) == 0) {
    std::stringstream ss(line.substr(std::strlen(m)));
    std::string rank, with, pid_word, pid, on, node_word, node, exited, on2, sig_word, rest;
    if (ss >> rank >> with >> pid_word >> pid >> on >> node_word >> node >> exited >> on2 >> sig_word &&
        sig_word == "signal") {
      std::getline(ss, rest);
      // Open MPI 4.1 often reports PID 0 for a rank killed by a signal: no pid then.
      return concat("rank ", rank, " (", pid == "0" ? std::string() : concat("pid ", pid, " "), "on ", node,
                    ") was killed by signal", rest.empty() ? std::string() : rest);
    }
    return "";
  }
  // srun: "srun: error: node1: task 1: Killed" / "srun: error: node1: task 1: Exited with exit code 3".
  const auto task = line.find(": task ");
  if (line.rfind("srun: error: ", 0) == 0 && task != std::string::npos) {
    const auto colon = line.find(": ", task + 7);
    if (colon == std::string::npos) return "";
    const std::string node = line.substr(13, task - 13), rank = line.substr(task + 7, colon - task - 7);
    const std::string what = line.substr(colon + 2);
    if (what.rfind("Exited with exit code ", 0) == 0) {
      return concat("rank ", rank, " (on ", node, ") exited with code ", what.substr(22));
    }
    return concat("rank ", rank, " (on ", node, "): ", what);
  }
  return "";
}

std::string resolve_launcher(const LaunchOptions& o) {
  if (o.launcher != "auto") return o.launcher;
  const char* job = std::getenv("SLURM_JOB_ID");
  return job && *job && o.hostfile.empty() && o.hosts.empty() ? "srun" : "mpirun";
}

namespace {

struct LocalAddress {
  std::string iface, address;
  int family = AF_INET;
  unsigned char bytes[16] = {0};
};

std::vector<LocalAddress> local_addresses() {
  std::vector<LocalAddress> out;
  ifaddrs* list = nullptr;
  if (::getifaddrs(&list) != 0) return out;
  for (ifaddrs* a = list; a; a = a->ifa_next) {
    if (!a->ifa_addr || (a->ifa_addr->sa_family != AF_INET && a->ifa_addr->sa_family != AF_INET6)) continue;
    LocalAddress l;
    l.iface = a->ifa_name;
    l.family = a->ifa_addr->sa_family;
    char buf[INET6_ADDRSTRLEN] = {0};
    if (l.family == AF_INET) {
      const auto* in = reinterpret_cast<const sockaddr_in*>(a->ifa_addr);
      std::memcpy(l.bytes, &in->sin_addr, 4);
      ::inet_ntop(AF_INET, &in->sin_addr, buf, sizeof(buf));
    } else {
      const auto* in6 = reinterpret_cast<const sockaddr_in6*>(a->ifa_addr);
      if (IN6_IS_ADDR_LINKLOCAL(&in6->sin6_addr)) continue;  // would need a scope id to bind
      std::memcpy(l.bytes, &in6->sin6_addr, 16);
      ::inet_ntop(AF_INET6, &in6->sin6_addr, buf, sizeof(buf));
    }
    l.address = buf;
    out.push_back(l);
  }
  ::freeifaddrs(list);
  return out;
}

// This host's address that `name` (an IP or a host name) stands for, if any.
std::optional<std::string> local_address_of(const std::string& name, const std::vector<LocalAddress>& locals,
                                            std::vector<std::string>* resolved) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  if (::getaddrinfo(name.c_str(), nullptr, &hints, &res) != 0) return std::nullopt;
  std::optional<std::string> found;
  for (addrinfo* ai = res; ai; ai = ai->ai_next) {
    char buf[INET6_ADDRSTRLEN] = {0};
    const void* bytes = ai->ai_family == AF_INET
                            ? static_cast<const void*>(&reinterpret_cast<const sockaddr_in*>(ai->ai_addr)->sin_addr)
                            : static_cast<const void*>(&reinterpret_cast<const sockaddr_in6*>(ai->ai_addr)->sin6_addr);
    ::inet_ntop(ai->ai_family, bytes, buf, sizeof(buf));
    if (resolved) resolved->push_back(buf);
    for (const auto& l : locals) {
      if (!found && l.family == ai->ai_family && l.address == buf) found = l.address;
    }
  }
  ::freeaddrinfo(res);
  return found;
}

// This host's address on --iface: an IPv4 CIDR (10.0.0.0/24) or an interface name (eth1).
std::optional<std::string> iface_address(const std::string& iface, const std::vector<LocalAddress>& locals) {
  const auto slash = iface.find('/');
  if (slash == std::string::npos) {
    for (const auto& l : locals) {
      if (l.iface == iface && l.family == AF_INET) return l.address;
    }
    for (const auto& l : locals) {
      if (l.iface == iface) return l.address;
    }
    return std::nullopt;
  }
  in_addr net{};
  char* end = nullptr;
  const long bits = std::strtol(iface.c_str() + slash + 1, &end, 10);
  if (::inet_pton(AF_INET, iface.substr(0, slash).c_str(), &net) != 1 || *end != '\0' || bits < 0 || bits > 32) {
    return std::nullopt;
  }
  const uint32_t mask = bits == 0 ? 0 : ~uint32_t{0} << (32 - bits);
  for (const auto& l : locals) {
    if (l.family != AF_INET) continue;
    uint32_t a = 0;
    std::memcpy(&a, l.bytes, 4);
    if ((ntohl(a) & mask) == (ntohl(net.s_addr) & mask)) return l.address;
  }
  return std::nullopt;
}

}  // namespace

std::string coordinator_bind_address(const LaunchOptions& o, bool remote, std::string* warning) {
  if (!remote) return "127.0.0.1";
  const auto locals = local_addresses();
  std::string why;
  if (!o.coordinator_host.empty()) {
    std::vector<std::string> resolved;
    if (auto a = local_address_of(o.coordinator_host, locals, &resolved)) return *a;
    why = resolved.empty() ? concat("--coordinator-host ", o.coordinator_host, " does not resolve")
                           : concat("--coordinator-host ", o.coordinator_host, " (", resolved.front(),
                                    ") is not an address of this host");
  } else if (!o.iface.empty()) {
    if (auto a = iface_address(o.iface, locals)) return *a;
    why = concat("this host has no address on --iface ", o.iface);
  } else {
    why = "neither --coordinator-host nor --iface names this host's address for the ranks";
  }
  if (warning) *warning = concat(why, ": the rank listener binds 0.0.0.0 (every interface)");
  return "0.0.0.0";
}

std::vector<std::string> rank_command(const LaunchOptions& o, bool resume) {
  std::vector<std::string> cmd;
  const std::string starter = resolve_launcher(o);
  if (starter == "srun") {
    // Debian's Open MPI 4.1 works under Slurm 22.05 with pmix (not pmi2). --kill-on-bad-exit ends the step
    // when one rank fails, as mpirun does.
    cmd = {o.srun, "--mpi=pmix", "--kill-on-bad-exit=1", "--label", concat("--ntasks=", o.ranks)};
  } else {
    // orte_allowed_exit_without_sync: Open MPI 4.x's mpirun can see a rank's exit before the same rank's finalize
    // notice ("rank 1 with PID 0 ... exiting improperly", open-mpi/ompi#7833, #9389) and then fail a job whose
    // every rank finished. With it, an exit with status 0 is a normal end; a non-zero status or a signal still
    // fails the job (Stride's ranks never exit 0 without finalizing).
    // odls_base_sigkill_timeout 0: when a rank dies, Open MPI's daemons stop the others with SIGTERM and then wait
    // this many seconds (default 1) before SIGKILL. The survivors are blocked in a collective with a dead peer and
    // can do nothing useful in that second; it was most of the launcher's detection time (1.1-1.2 s -> 0.1 s).
    cmd = {o.mpirun,
           "-np",
           std::to_string(o.ranks),
           "--bind-to",
           "none",
           "--tag-output",
           "--mca",
           "orte_allowed_exit_without_sync",
           "1",
           "--mca",
           "odls_base_sigkill_timeout",
           "0"};
    if (o.oversubscribe) cmd.push_back("--oversubscribe");
    if (!o.hostfile.empty()) cmd.insert(cmd.end(), {"--hostfile", o.hostfile});
    if (!o.hosts.empty()) cmd.insert(cmd.end(), {"--host", o.hosts});
    if (!o.iface.empty()) {
      cmd.insert(cmd.end(), {"--mca", "btl_tcp_if_include", o.iface, "--mca", "oob_tcp_if_include", o.iface});
    }
    // Remote ranks get the coordinator's address and token from mpirun; local ones inherit them anyway.
    for (const char* v : {"STRIDE_COORDINATOR", "STRIDE_JOB_TOKEN", "STRIDE_RESTART_COUNT", "STRIDE_PROGRESS"}) {
      cmd.insert(cmd.end(), {"-x", v});
    }
  }
  cmd.insert(cmd.end(), o.launcher_args.begin(), o.launcher_args.end());
  cmd.push_back(o.stride_binary);
  cmd.push_back("train");
  // On a restart every rank resumes from the newest committed checkpoint, whatever --resume said first.
  for (size_t i = 0; i < o.train_args.size(); ++i) {
    const std::string& a = o.train_args[i];
    if (resume && a == "--resume") {
      ++i;
      continue;
    }
    if (resume && a.rfind("--resume=", 0) == 0) continue;
    cmd.push_back(a);
  }
  if (resume) cmd.insert(cmd.end(), {"--resume", "auto"});
  return cmd;
}

int launch(LaunchOptions o) {
  const std::string starter = resolve_launcher(o);
  if (starter != "mpirun" && starter != "srun") throw UsageError(concat("--launcher must be auto, mpirun or srun"));
  if (o.ranks <= 0) {
    o.ranks = starter == "srun" ? static_cast<int>(env_integer("SLURM_NTASKS", 1, INT32_MAX).value_or(1)) : 1;
  }
  RestartPolicyOptions po;
  po.max_restarts = o.max_restarts;
  po.window_s = o.restart_window_s;
  po.backoff_s = o.restart_backoff_s;
  po.backoff_max_s = o.restart_backoff_max_s;
  po.progress_steps = o.restart_progress_steps;
  RestartPolicy policy(po, steady_seconds);  // throws UsageError naming a bad flag
  if (o.stride_binary.empty()) o.stride_binary = fs::read_symlink("/proc/self/exe").string();
  // The ranks' flags are checked here, before anything starts (exit 2 names the flag or key).
  const trainer::TrainConfig tc = trainer::parse_train_flags(o.train_args);
  if (o.min_ranks > 0 && host_slots(o).empty()) {
    throw UsageError("--min-ranks needs --hosts or --hostfile (the hosts that may be dropped)");
  }
  // So is the dataset, where the ranks run on this host: no run directory, coordinator or rank exists yet. (Other
  // hosts may hold a --data-path that this one does not.)
  if (!remote_hosts(o) && starter == "mpirun") trainer::check_dataset_present(tc);
  fs::create_directories(tc.output_dir);
  const int initial_ranks = o.ranks;
  std::set<std::string> suspects;  // hosts whose ranks were declared dead (short names)

  const bool remote =
      (starter == "srun" && env_integer("SLURM_JOB_NUM_NODES", 1, INT32_MAX).value_or(1) > 1) || remote_hosts(o);
  cluster::CoordinatorOptions co;
  co.core.job = !tc.job.empty() ? tc.job : fs::path(tc.output_dir).filename().string();
  co.core.world_size = static_cast<uint32_t>(o.ranks);
  co.core.heartbeat_interval_s = tc.heartbeat_interval;
  co.core.heartbeat_timeout_s = tc.heartbeat_timeout;
  co.core.hang_report_after_s = tc.hang_report_after;
  co.core.reconnect_grace_s = std::min(10.0, tc.heartbeat_timeout);
  co.core.checkpoint_root = (fs::path(tc.output_dir) / "checkpoints").string();
  co.core.keep = tc.keep_checkpoints;
  co.core.straggler = {tc.straggler_threshold, tc.straggler_window};
  co.core.restarts = static_cast<int>(env_integer("SLURM_RESTART_COUNT", 0, INT32_MAX).value_or(0));  // requeues
  std::string bind_warning;
  co.bind = coordinator_bind_address(o, remote, &bind_warning);
  co.status_bind = o.status_bind;
  co.status_port = o.status_port;
  co.status_hosts = o.status_hosts;
  if (!o.coordinator_host.empty()) co.status_hosts.push_back(o.coordinator_host);
  cluster::Coordinator coordinator(co);
  if (!bind_warning.empty()) print(concat("warning: ", bind_warning));
  // The ranks reach the coordinator where it listens: --coordinator-host, else its --iface address.
  const std::string coord_host = !o.coordinator_host.empty() ? o.coordinator_host
                                 : !remote                   ? "127.0.0.1"
                                 : co.bind != "0.0.0.0"      ? co.bind
                                                             : cluster::local_hostname();
  const std::string coord_addr = concat(coord_host, ":", coordinator.port());
  ::setenv("STRIDE_COORDINATOR", coord_addr.c_str(), 1);
  ::setenv("STRIDE_JOB_TOKEN", coordinator.token().c_str(), 1);
  if (starter == "srun" && !o.iface.empty()) {
    // srun hands this environment to every rank: Open MPI's TCP traffic stays on --iface, as mpirun's --mca
    // arguments make it (a job's own OMPI_MCA_* settings win).
    ::setenv("OMPI_MCA_btl_tcp_if_include", o.iface.c_str(), 0);
    ::setenv("OMPI_MCA_oob_tcp_if_include", o.iface.c_str(), 0);
  }
  if (::geteuid() == 0) {  // Open MPI refuses root unless told; the env form also reaches nested launches
    ::setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 0);
    ::setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 0);
  }
  cluster::write_endpoint_files(coordinator, tc.output_dir, coord_addr, /*launcher=*/true);
  print(concat(o.ranks, " rank(s) via ", starter, "; run directory ", tc.output_dir,
               coordinator.status_port() >= 0 ? concat("; status ", coordinator.status_url()) : std::string()));

  // The ranks' output goes to RUN/logs/ranks.log and is shown from there (launcher/rank_output.h): one live
  // progress line for the job on a terminal, plain lines otherwise.
  ::setenv("STRIDE_PROGRESS", "tagged", 1);
  const std::string ranks_log = (fs::path(tc.output_dir) / "logs" / "ranks.log").string();
  fs::create_directories(fs::path(ranks_log).parent_path());
  RankOutput output(::isatty(STDOUT_FILENO) != 0);
  // mpirun's (srun's) own verdict on a rank that died names the rank and the signal: the restart reason.
  std::mutex died_mu;
  std::string died;  // guarded by died_mu; the first such line of the current start
  std::atomic<bool> too_few_slots{false};
  output.set_line_hook([&](const std::string& line) {
    // Open MPI refuses more ranks than a host's cores unless told to oversubscribe; retrying cannot help.
    if (line.find("There are not enough slots available in the system") != std::string::npos) too_few_slots = true;
    const std::string what = rank_failure_from_output(line);
    std::lock_guard<std::mutex> lock(died_mu);
    if (!what.empty() && died.empty()) died = what;
  });
  g_output = &output;
  struct OutputReset {
    ~OutputReset() { g_output = nullptr; }
  } output_reset;

  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  for (int s : {SIGINT, SIGTERM, SIGUSR2}) ::sigaction(s, &sa, nullptr);

  // Where the seconds of a restart go (issue #18): from the failure to the launcher noticing it (detection), to
  // every process of the start gone (stop), the back-off, mpirun's start to every rank joined (process start,
  // model build, state load: ranks join after loading), and to the first step past the resume step (warm-up; seen
  // in the ranks' heartbeats, so up to --heartbeat-interval late).
  struct Recovery {
    bool pending = false;
    double started = 0, joined = -1;  // steady seconds: the new start, every rank joined
    cluster::Recovery r;              // what the coordinator keeps (cluster/coordinator_core.h)
  } rec;
  int exit_code = 1;
  for (int attempt = 0;; ++attempt) {
    ::setenv("STRIDE_RESTART_COUNT", std::to_string(attempt).c_str(), 1);
    const auto cmd = rank_command(o, /*resume=*/attempt > 0);
    std::string shown;
    for (const auto& a : cmd) shown += (shown.empty() ? "" : " ") + a;
    print(concat("start ", attempt + 1, ": ", shown));
    const int log_fd = ::open(ranks_log.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    const int follow_fd = ::open(ranks_log.c_str(), O_RDONLY | O_CLOEXEC);
    if (log_fd < 0 || follow_fd < 0) throw Error(concat("cannot open ", ranks_log, ": ", std::strerror(errno)));
    ::lseek(follow_fd, 0, SEEK_END);  // this start's output only
    const pid_t pid = ::fork();
    if (pid < 0) throw Error(concat("fork: ", std::strerror(errno)));
    if (pid == 0) {
      ::setpgid(0, 0);  // its own process group: stopped or killed as one, Ctrl-C reaches only the launcher
      ::dup2(log_fd, STDOUT_FILENO);  // dup2 clears O_CLOEXEC on the copies
      ::dup2(log_fd, STDERR_FILENO);
      // The coordinator's sockets must die with the launcher: an inherited listening socket would accept the
      // ranks' reconnects after the launcher is gone and leave them waiting for an answer.
      if (::close_range(3, ~0U, 0) != 0) {
        for (int fd = 3; fd < 4096; ++fd) ::close(fd);
      }
      for (int s : {SIGINT, SIGTERM, SIGUSR2}) ::signal(s, SIG_DFL);
      std::vector<char*> argv;
      for (const auto& a : cmd) argv.push_back(const_cast<char*>(a.c_str()));
      argv.push_back(nullptr);
      ::execvp(argv[0], argv.data());
      std::fprintf(stderr, "stride: error: cannot run %s: %s\n", argv[0], std::strerror(errno));
      std::_Exit(127);
    }
    ::setpgid(pid, pid);
    ::close(log_fd);
    output.follow(follow_fd);
    bool stopping = false, failed = false, killed = false;
    Clock::time_point deadline{};
    int status = 0;
    int seen_signals = 0;
    std::string reason;
    const auto started = Clock::now();
    bool all_joined = false;
    {
      std::lock_guard<std::mutex> lock(died_mu);
      died.clear();
    }
    JobView seen = view(coordinator);
    const int64_t start_commits = seen.commits;
    policy.on_start(start_commits, coordinator.last_committed_step());
    rec.started = steady_seconds();
    auto next_view = Clock::now();
    double first_death = -1;  // when a joined rank's process on this host was first seen gone
    double noticed = -1;      // when the launcher knew this start had failed
    auto kill_job = [&](int sig) {
      ::kill(-pid, SIGCONT);  // a SIGSTOPped rank must run to die of SIGTERM
      ::kill(-pid, sig);
    };
    for (;;) {
      const pid_t r = ::waitpid(pid, &status, WNOHANG);
      if (r == pid) {
        if (noticed < 0) noticed = steady_seconds();
        break;
      }
      const auto now = Clock::now();
      if (!stopping && !failed && first_death < 0) {
        coordinator.with_core([&](cluster::CoordinatorCore& core) {
          // After a verdict, survivors exit because of it (ABORT): that is not the failure's time.
          if (core.failure()) return;
          for (const auto& [host, rank_pid] : core.rank_processes()) {
            if (is_local_host(host) && rank_pid > 0 && !alive(static_cast<pid_t>(rank_pid))) {
              first_death = steady_seconds();
            }
          }
        });
      }
      if (now >= next_view) {
        next_view = now + std::chrono::milliseconds(100);
        seen = view(coordinator);
        if (policy.observe(seen.commits, seen.step) && attempt > 0) {
          print(concat("progress since restart ", attempt, " (",
                       seen.commits > start_commits ? concat("commit at step ", coordinator.last_committed_step())
                                                    : concat("step ", seen.step),
                       "): the next failure waits ", format_duration(po.backoff_s), " again"));
        }
        if (rec.pending && all_joined && rec.joined < 0) rec.joined = steady_seconds();
        // Recovered once rank 0 is past the step its start continued from (a commit, or a newer snapshot).
        if (rec.pending && rec.joined >= 0 && !seen.start_source.empty() && seen.step > seen.start_step) {
          rec.pending = false;
          const double t = steady_seconds();
          cluster::Recovery& r = rec.r;
          r.start_s = rec.joined - rec.started;
          r.warmup_s = t - rec.joined;
          r.total_s = r.detection_s + r.stop_s + r.backoff_s + (t - rec.started);
          r.start_step = seen.start_step;
          r.redone = r.failed_step > seen.start_step ? r.failed_step - seen.start_step : 0;
          r.source = seen.start_source;
          const std::string from = seen.start_source == "memory"
                                       ? concat("a snapshot in memory (step ", seen.start_step, ")")
                                   : seen.start_source == "disk" ? concat("the checkpoint of step ", seen.start_step)
                                                                 : std::string("scratch");
          const std::string line =
              concat("recovered from failure ", r.restart, " in ", secs(r.total_s), " (failure to step ", seen.step,
                     "): detection ", secs(r.detection_s), ", stop ", secs(r.stop_s), ", back-off ", secs(r.backoff_s),
                     ", start to every rank joined ", secs(r.start_s), ", joined to first step ", secs(r.warmup_s),
                     " (heartbeats every ", tc.heartbeat_interval, " s); resumed from ", from, ", ", r.redone,
                     " step(s) redone");
          print(line);
          coordinator.with_core([&](cluster::CoordinatorCore& core) {
            core.note("info", line, t);
            core.recovered(r, t);
          });
        }
      }
      const int count = g_signal_count.load();
      if (count != seen_signals) {
        seen_signals = count;
        const int sig = g_signal.load();
        if (!stopping) {
          stopping = true;
          deadline = now + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(o.stop_timeout_s));
          print(concat("signal ", sig, ": asking every rank to checkpoint and stop (again to kill)"));
          coordinator.request(proto::Command::STOP, concat("the launcher got signal ", sig));
        } else {
          print("second signal: killing the job");
          kill_job(SIGKILL);
          killed = true;
        }
      }
      if (!all_joined && !failed && !stopping) {
        std::vector<uint32_t> missing;
        coordinator.with_core([&](cluster::CoordinatorCore& core) { missing = core.missing_ranks(); });
        all_joined = missing.empty();
        if (!all_joined && now - started > std::chrono::duration<double>(o.start_timeout_s)) {
          std::string list;
          for (uint32_t r : missing) list += (list.empty() ? "" : ", ") + std::to_string(r);
          failed = true;
          reason = concat("rank(s) ", list, " did not join within ", o.start_timeout_s, " s of the start");
          noticed = steady_seconds();
          kill_job(SIGTERM);
          killed = true;
          deadline = now + std::chrono::seconds(5);
        }
      }
      if (!failed && coordinator.failure()) {
        failed = true;
        reason = *coordinator.failure();
        noticed = steady_seconds();
        const JobView v = view(coordinator);
        // A hung rank failed at its last heartbeat, at the latest.
        if (first_death < 0 && v.silent_s >= 0) first_death = noticed - v.silent_s;
        // The survivors exit with code 75 on their own; give mpirun a moment before stopping it.
        deadline = now + std::chrono::seconds(10);
      }
      if ((stopping || failed) && !killed && now > deadline) {
        kill_job(SIGTERM);
        killed = true;
        deadline = now + std::chrono::seconds(5);
      } else if (killed && now > deadline) {
        kill_job(SIGKILL);
        deadline = now + std::chrono::hours(1);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    // No orphans: ranks on this host that outlived mpirun (a stopped one, say) are killed by pid.
    coordinator.with_core([&](cluster::CoordinatorCore& core) {
      for (const auto& [host, rank_pid] : core.rank_processes()) {
        const auto rpid = static_cast<pid_t>(rank_pid);
        if (rpid > 0 && is_local_host(host) && alive(rpid) && rpid != ::getpid()) {
          ::kill(rpid, SIGCONT);
          ::kill(rpid, SIGKILL);
        }
      }
    });
    ::kill(-pid, SIGKILL);  // anything left in the job's process group
    output.finish();        // the job's last lines, before the launcher's verdict
    const double gone = steady_seconds();
    const int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
    const uint64_t committed = coordinator.last_committed_step();
    const uint64_t last_step = view(coordinator).step;  // rank 0's last heartbeat of this start
    if (stopping) {
      print(
          concat("stopped: ", starter, " ", describe_status(status), "; last committed checkpoint: step ", committed));
      exit_code = code == 0 ? 0 : code;
      break;
    }
    if (code == 0 && !coordinator.failure()) {
      print(concat("finished: last committed checkpoint: step ", committed));
      exit_code = 0;
      break;
    }
    if (code == 2) {
      print("the ranks rejected their flags (exit code 2): not restarting");
      exit_code = 2;
      break;
    }
    if (too_few_slots && code != 0) {
      print(concat("error: mpirun has fewer slots than the ", o.ranks,
                   " ranks asked for (Open MPI counts one slot per core): add --oversubscribe to run them anyway, "
                   "use fewer ranks, or give --hosts/--hostfile with more slots; not restarting"));
      exit_code = 2;
      break;
    }
    if (reason.empty()) {
      // mpirun ended first: its own verdict names the dead rank and the signal when it gave one.
      std::lock_guard<std::mutex> lock(died_mu);
      reason = !died.empty() ? concat(died, " (", starter, " ", describe_status(status), ")")
                             : concat(starter, " ", describe_status(status));
    }
    // --min-ranks: hosts whose ranks never joined this start (mpirun could not start them, or they did not
    // come up in --start-timeout) are dropped while enough ranks remain; the per-rank batch grows so the global
    // batch (and so the sample order) stays the same.
    std::vector<uint32_t> missing;
    coordinator.with_core([&](cluster::CoordinatorCore& core) {
      missing = core.missing_ranks();
      for (const auto& h : core.dead_hosts()) suspects.insert(h.substr(0, h.find('.')));
    });
    if (o.min_ranks > 0 && !missing.empty()) {
      auto hosts = host_slots(o);
      std::vector<Host> keep;
      std::string dropped;
      int first = 0, kept_ranks = 0;
      // A partial start names the hosts that did not come up; when mpirun could not start anything, the hosts
      // whose ranks were declared dead before are the suspects.
      const bool nobody = missing.size() == static_cast<size_t>(o.ranks);
      for (const auto& h : hosts) {
        bool lost = false;
        if (nobody) {
          lost = suspects.count(h.name.substr(0, h.name.find('.'))) > 0;
        } else {
          for (uint32_t r : missing)
            lost = lost || (static_cast<int>(r) >= first && static_cast<int>(r) < first + h.slots);
        }
        first += h.slots;
        if (lost) {
          dropped += (dropped.empty() ? "" : ", ") + h.name;
        } else {
          keep.push_back(h);
          kept_ranks += h.slots;
        }
      }
      // With --global-batch the ranks derive their batch and accumulation from it at start: nothing to rewrite.
      const bool by_global = tc.global_batch > 0;
      const int64_t global = by_global ? tc.global_batch : tc.batch_size * static_cast<int64_t>(initial_ranks);
      if (!dropped.empty() && !keep.empty() && kept_ranks >= o.min_ranks && global % kept_ranks == 0) {
        std::string list;
        for (const auto& h : keep) list += (list.empty() ? "" : ",") + h.name + ":" + std::to_string(h.slots);
        o.hosts = list;
        o.hostfile.clear();
        o.ranks = kept_ranks;
        if (!by_global) set_flag(o.train_args, "--batch-size", std::to_string(global / kept_ranks));
        print(concat("dropping unreachable host(s) ", dropped, ": continuing on ", kept_ranks, " rank(s) (", list, ") ",
                     by_global ? std::string("with --global-batch ")
                               : concat("with --batch-size ", global / kept_ranks, ", the same global batch of "),
                     global));
      } else if (!dropped.empty()) {
        print(concat("host(s) ", dropped, " unreachable, but ", kept_ranks, " rank(s) cannot keep the global batch of ",
                     global, " at --min-ranks ", o.min_ranks, ": retrying with every host"));
      }
    }
    const auto decision = policy.on_failure();
    if (!decision.restart) {
      const std::string line = concat("giving up after ", attempt, " restart(s): ", decision.summary, ": ", reason);
      print(line);
      coordinator.with_core([&](cluster::CoordinatorCore& core) { core.note("error", line, steady_seconds()); });
      exit_code = code == 0 ? 1 : code;
      break;
    }
    const double backoff = decision.backoff_s;
    if (noticed < 0) noticed = gone;
    const double failed_at = first_death >= 0 ? std::min(first_death, noticed) : noticed;
    rec = Recovery{};
    rec.pending = true;
    rec.r.restart = attempt + 1;
    rec.r.detection_s = noticed - failed_at;
    rec.r.stop_s = gone - noticed;
    rec.r.backoff_s = backoff;
    rec.r.failed_step = last_step;
    rec.r.reason = reason;
    const std::string why = concat(reason, "; ", decision.summary);
    print(concat(reason, "; restarting every rank (last commit: step ", committed, ") in ", format_duration(backoff),
                 ": restart ", attempt + 1, ", ", decision.summary, "; detected in ", secs(rec.r.detection_s),
                 ", stopped in ", secs(rec.r.stop_s)));
    const auto until =
        Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(backoff));
    while (Clock::now() < until && g_signal_count.load() == seen_signals) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    if (g_signal_count.load() != seen_signals) {
      print("signal during the back-off: not restarting");
      exit_code = 1;
      break;
    }
    // A verdict that came after mpirun's exit (an unreachable host's heartbeat silence outlasting mpirun, which
    // gives up on a lost daemon sooner) still names its host for --min-ranks before the restart forgets it.
    coordinator.with_core([&](cluster::CoordinatorCore& core) {
      for (const auto& h : core.dead_hosts()) suspects.insert(h.substr(0, h.find('.')));
    });
    coordinator.restart(static_cast<uint32_t>(o.ranks), static_cast<uint32_t>(attempt + 1), why);
  }
  cluster::write_final_status(coordinator, tc.output_dir);
  cluster::remove_endpoint_file(tc.output_dir);
  return exit_code;
}

void add_launch_command(CLI::App& app) {
  auto o = std::make_shared<LaunchOptions>();
  auto* cmd = app.add_subcommand("launch",
                                 "Start and supervise a data-parallel job: coordinator, status endpoint, "
                                 "mpirun/srun, restarts from the last commit (docs/launch.md)");
  cmd->add_option("-n,--ranks", o->ranks, "Ranks (default: SLURM_NTASKS inside an allocation, else 1)");
  cmd->add_option("--hostfile", o->hostfile, "mpirun hostfile");
  cmd->add_option("--hosts", o->hosts, "mpirun hosts, e.g. node1:4,node2:4");
  // Durations are parsed in the callback, so a bad one is a usage error naming its flag.
  auto durations = std::make_shared<std::map<std::string, std::string>>();
  cmd->add_option("--max-restarts", o->max_restarts, "Restarts allowed within --restart-window before giving up")
      ->capture_default_str();
  cmd->add_option("--restart-window", (*durations)["--restart-window"],
                  "Sliding window for --max-restarts, e.g. 30s, 15m, 1h (0: the job's whole life)")
      ->default_str("0");
  cmd->add_option("--restart-backoff", (*durations)["--restart-backoff"],
                  "Wait before the first restart (doubles per consecutive failure)")
      ->default_str("2s");
  cmd->add_option("--restart-backoff-max", (*durations)["--restart-backoff-max"], "Cap on the back-off")
      ->default_str("60s");
  cmd->add_option("--restart-progress-steps", o->restart_progress_steps,
                  "Steps after a restart that reset the back-off (0: only a new checkpoint commit does)")
      ->capture_default_str();
  cmd->add_option("--status-port", o->status_port, "HTTP status endpoint port (0: any, -1: off)")
      ->capture_default_str();
  cmd->add_option("--status-bind", o->status_bind, "Address of the status endpoint")->capture_default_str();
  cmd->add_option("--iface", o->iface, "Network for MPI's TCP traffic (CIDR such as 10.0.0.0/24, or a name)");
  cmd->add_option("--coordinator-host", o->coordinator_host,
                  "Address the ranks use to reach the coordinator, and that its rank listener binds (default: "
                  "127.0.0.1; for multi-host jobs the --iface address, else this host's name)");
  cmd->add_option("--status-host", o->status_hosts,
                  "Another name the status endpoint answers to (repeat; e.g. this host's DNS alias); requests "
                  "naming any other Host get 421")
      ->allow_extra_args(false);
  cmd->add_flag("--oversubscribe", o->oversubscribe, "Allow more ranks than cores (mpirun)");
  cmd->add_option("--launcher", o->launcher, "auto | mpirun | srun")->capture_default_str();
  cmd->add_option("--mpirun", o->mpirun, "mpirun executable")->capture_default_str();
  cmd->add_option("--launcher-arg", o->launcher_args,
                  "Extra argument for mpirun/srun (repeat; --launcher-arg=--mca for values that start with -)")
      ->allow_extra_args(false);
  cmd->add_option("--stop-timeout", o->stop_timeout_s, "Seconds the ranks get to checkpoint after a stop request")
      ->capture_default_str();
  cmd->add_option("--min-ranks", o->min_ranks,
                  "Drop hosts that stay unreachable while at least this many ranks remain (global batch kept)");
  cmd->add_option("--start-timeout", o->start_timeout_s,
                  "Seconds every rank has to join after a start (an unreachable host counts as a failure)")
      ->capture_default_str();
  cmd->add_option("train_args", o->train_args, "stride train flags, after --");
  cmd->callback([o, durations, cmd] {
    const std::pair<const char*, double*> fields[] = {{"--restart-window", &o->restart_window_s},
                                                      {"--restart-backoff", &o->restart_backoff_s},
                                                      {"--restart-backoff-max", &o->restart_backoff_max_s}};
    for (const auto& [flag, field] : fields) {
      if (cmd->count(flag) > 0) *field = parse_duration(flag, (*durations)[flag]);
    }
    const int rc = launch(*o);
    if (rc != 0) std::exit(rc);
  });
}

}  // namespace stride::launcher
