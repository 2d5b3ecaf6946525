#include "launcher/status_command.h"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <thread>

#include "cluster/client.h"
#include "common/error.h"
#include "storage/file_io.h"

namespace stride::launcher {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

struct StatusArgs {
  std::string url, run_dir, token, token_file;
  bool json_out = false, checkpoint = false, stop = false, timeline = false;
  double watch = 0.0;
  bool watch_set = false;
};

// A short duration for the rank table: "15us", "2.3ms", "154ms", "1.52s".
std::string seconds(double s) {
  if (!(s >= 0)) return "-";
  char buf[32];
  if (s < 1e-3) {
    std::snprintf(buf, sizeof(buf), "%.0fus", s * 1e6);
  } else if (s < 1e-2) {
    std::snprintf(buf, sizeof(buf), "%.1fms", s * 1e3);
  } else if (s < 1.0) {
    std::snprintf(buf, sizeof(buf), "%.0fms", s * 1e3);
  } else {
    std::snprintf(buf, sizeof(buf), "%.2fs", s);
  }
  return buf;
}

double num(const json& j, const char* key, double fallback = 0.0) {
  return j.contains(key) && j[key].is_number() ? j[key].get<double>() : fallback;
}
std::string str(const json& j, const char* key) {
  return j.contains(key) && j[key].is_string() ? j[key].get<std::string>() : "-";
}

std::string resolve_url(const StatusArgs& a) {
  std::string url = a.url;
  if (url.empty() && !a.run_dir.empty()) {
    const std::string path = (fs::path(a.run_dir) / "coordinator.json").string();
    if (!fs::exists(path)) throw UsageError(concat(path, " not found: is a job running in ", a.run_dir, "?"));
    url = json::parse(storage::read_file(path)).value("status_url", "");
    if (url.empty()) throw UsageError(concat(path, ": the job runs without a status endpoint (--status-port -1)"));
  }
  if (url.empty()) {
    const char* env = std::getenv("STRIDE_STATUS_URL");
    url = env && *env ? env : "http://127.0.0.1:8470/";
  }
  if (url.back() != '/') url += '/';
  return url;
}

// The token in a file (RUN/job_token or --token-file), without the trailing newline.
std::string read_token_file(const std::string& path, const char* flag) {
  std::string t;
  try {
    t = storage::read_file(path);
  } catch (const Error& e) {
    throw UsageError(concat(flag, ": ", e.what()));
  }
  while (!t.empty() && (t.back() == '\n' || t.back() == '\r')) t.pop_back();
  if (t.empty()) throw UsageError(concat(flag, ": ", path, " is empty"));
  return t;
}

// In this order: --token, --token-file, RUN_DIR/job_token, $STRIDE_JOB_TOKEN. A file keeps the token out of the
// command line, which every user of the machine can read (ps).
std::string resolve_token(const StatusArgs& a) {
  if (!a.token.empty()) return a.token;
  if (!a.token_file.empty()) return read_token_file(a.token_file, "--token-file");
  if (!a.run_dir.empty()) {
    const std::string path = (fs::path(a.run_dir) / "job_token").string();
    if (fs::exists(path)) return read_token_file(path, "--run-dir");
  }
  const char* env = std::getenv("STRIDE_JOB_TOKEN");
  if (env && *env) return env;
  throw UsageError(
      "--checkpoint/--stop need the job token: --run-dir DIR (reads DIR/job_token), --token-file FILE, "
      "$STRIDE_JOB_TOKEN or --token T");
}

// "83%" of a rank's last-step communication hidden behind backward, "-" before its first timeline.
std::string hidden_percent(const json& r) {
  if (!r.contains("overlap") || !r["overlap"].is_object()) return "-";
  const auto& o = r["overlap"];
  if (!o.contains("hidden_fraction") || !o["hidden_fraction"].is_number()) return "-";
  return concat(static_cast<int>(std::lround(o["hidden_fraction"].get<double>() * 100)), "%");
}

// Each rank's last-step overlap timeline, one line per bucket (Note [Overlap timeline] in comm/timeline.h).
void print_timelines(const json& s) {
  for (const auto& r : s.value("ranks", json::array())) {
    if (!r.contains("overlap") || !r["overlap"].is_object()) continue;
    const auto& o = r["overlap"];
    std::printf(
        "\noverlap of rank %d's step (reducing step %.0f): backward %s, %s communicating, %s hidden, %s after "
        "backward\n",
        static_cast<int>(num(r, "rank")), num(o, "step"), seconds(num(o, "backward_s")).c_str(),
        seconds(num(o, "comm_s")).c_str(), hidden_percent(r).c_str(), seconds(num(o, "after_backward_s")).c_str());
    std::printf("  %-6s %-10s %-6s %-9s %-9s %-9s %-9s %-7s\n", "BUCKET", "BYTES", "PARAMS", "READY", "LAUNCHED",
                "STARTED", "DONE", "HIDDEN");
    for (const auto& b : o.value("buckets", json::array())) {
      const bool comm = b.value("communicated", false);
      const std::string hidden =
          b.contains("hidden_fraction") && b["hidden_fraction"].is_number()
              ? concat(static_cast<int>(std::lround(b["hidden_fraction"].get<double>() * 100)), "%")
              : "-";
      std::printf("  %-6d %-10.0f %-6d %-9s %-9s %-9s %-9s %-7s\n", static_cast<int>(num(b, "index")), num(b, "bytes"),
                  static_cast<int>(num(b, "parameters")), seconds(num(b, "ready_s")).c_str(),
                  seconds(num(b, "launched_s")).c_str(), comm ? seconds(num(b, "started_s")).c_str() : "-",
                  comm ? seconds(num(b, "done_s")).c_str() : "-", hidden.c_str());
    }
  }
}

void print_summary(const json& s, bool timeline) {
  std::printf("job %s  state %s  world %d  restarts %d  up %s\n", str(s, "job").c_str(), str(s, "state").c_str(),
              static_cast<int>(num(s, "world_size")), static_cast<int>(num(s, "restarts")),
              clock_duration(num(s, "uptime_seconds", -1)).c_str());
  const double step = num(s, "step"), total = num(s, "total_steps");
  std::printf(
      "step %.0f/%.0f (%.1f%%)  epoch %.0f  loss %s  acc1 %s  %.0f img/s  eta %s\n", step, total,
      total > 0 ? 100.0 * step / total : 0.0, num(s, "epoch") + 1,
      s.contains("loss") && s["loss"].is_number() ? concat(s["loss"].get<double>()).c_str() : "-",
      s.contains("accuracy") && s["accuracy"].is_number() ? concat(s["accuracy"].get<double>(), "%").c_str() : "-",
      num(s, "img_per_s"), clock_duration(num(s, "eta_seconds", -1)).c_str());
  if (s.contains("checkpoint")) {
    const auto& c = s["checkpoint"];
    std::printf(
        "checkpoint: last committed %s, %d committed, %d discarded, in progress %s\n",
        c["last_committed_step"].is_number()
            ? concat("step ", c["last_committed_step"].get<uint64_t>(), " (", str(c, "last_committed_path"), ")")
                  .c_str()
            : "none",
        static_cast<int>(num(c, "commits")), static_cast<int>(num(c, "discarded")),
        c["in_progress_step"].is_number() ? concat("step ", c["in_progress_step"].get<uint64_t>()).c_str() : "-");
  }
  const auto recoveries = s.value("recoveries", json::array());
  if (!recoveries.empty()) {
    // Per failure: where the seconds went, the steps redone and where the state came from (the newest 5).
    std::map<std::string, int> from;
    double redone = 0;
    for (const auto& r : recoveries) {
      ++from[str(r, "source")];
      redone += num(r, "steps_redone");
    }
    std::string sources;
    for (const auto& [source, n] : from) sources += concat(sources.empty() ? "" : ", ", source, " ", n);
    std::printf("\nrecoveries: %d (%s), %.0f step(s) redone\n", static_cast<int>(recoveries.size()), sources.c_str(),
                redone);
    std::printf("  %-7s %-7s %-6s %-6s %-8s %-8s %-8s %-8s %-8s %-8s %s\n", "RESTART", "FROM", "STEP", "REDONE",
                "TOTAL", "DETECT", "STOP", "BACKOFF", "START", "WARMUP", "REASON");
    const size_t first = recoveries.size() > 5 ? recoveries.size() - 5 : 0;
    for (size_t i = first; i < recoveries.size(); ++i) {
      const auto& r = recoveries[i];
      std::printf("  %-7d %-7s %-6.0f %-6.0f %-8s %-8s %-8s %-8s %-8s %-8s %s\n", static_cast<int>(num(r, "restart")),
                  str(r, "source").c_str(), num(r, "start_step"), num(r, "steps_redone"),
                  seconds(num(r, "recovery_seconds")).c_str(), seconds(num(r, "detection_seconds")).c_str(),
                  seconds(num(r, "stop_seconds")).c_str(), seconds(num(r, "backoff_seconds")).c_str(),
                  seconds(num(r, "start_seconds")).c_str(), seconds(num(r, "warmup_seconds")).c_str(),
                  str(r, "reason").c_str());
    }
  }
  if (s.contains("failure")) std::printf("FAILURE: %s\n", str(s, "failure").c_str());
  if (s.contains("hang") && s["hang"].is_object()) {
    std::printf("HANG: %s\n", str(s["hang"], "message").c_str());
    const std::string run = s.contains("run_dir") && s["run_dir"].is_string() ? s["run_dir"].get<std::string>() : "RUN";
    std::printf("      (the ranks' flight recorders: stride trace %s)\n", run.c_str());
  }
  for (const auto& g : s.value("stragglers", json::array())) {
    std::printf("STRAGGLER: rank %d on %s computes %.0f%% slower than its peers (%.1f ms vs %.1f ms per step)\n",
                static_cast<int>(num(g, "rank")), str(g, "host").c_str(), num(g, "slower_percent"),
                num(g, "compute_s") * 1e3, num(g, "peer_median_compute_s") * 1e3);
  }
  std::printf("\n%-5s %-16s %-8s %-6s %-8s %-10s %-10s %-10s %-10s %-6s\n", "RANK", "HOST", "PID", "ALIVE", "STEP",
              "HEARTBEAT", "STEP TIME", "DATA WAIT", "COMM WAIT", "HIDDEN");
  for (const auto& r : s.value("ranks", json::array())) {
    const bool joined = r.value("joined", false);
    std::printf("%-5d %-16s %-8d %-6s %-8.0f %-10s %-10s %-10s %-10s %-6s\n", static_cast<int>(num(r, "rank")),
                joined ? str(r, "host").c_str() : "-", static_cast<int>(num(r, "pid")),
                !joined ? "-" : (r.value("alive", false) ? (r.value("finished", false) ? "done" : "yes") : "DEAD"),
                num(r, "step"), joined ? seconds(num(r, "last_heartbeat_age_s")).c_str() : "-",
                seconds(num(r, "step_time_s")).c_str(), seconds(num(r, "data_wait_s")).c_str(),
                seconds(num(r, "comm_wait_s")).c_str(), hidden_percent(r).c_str());
  }
  const auto events = s.value("events", json::array());
  if (!events.empty()) {
    std::printf("\nrecent events:\n");
    int n = 0;
    for (const auto& e : events) {
      if (++n > 8) break;
      const auto t = static_cast<std::time_t>(num(e, "time"));
      char when[16];
      std::strftime(when, sizeof(when), "%H:%M:%S", std::localtime(&t));
      std::printf("  %s %-7s %s\n", when, str(e, "level").c_str(), str(e, "message").c_str());
    }
  }
  if (timeline) print_timelines(s);
}

bool is_final(const std::string& state) { return state == "finished" || state == "stopped" || state == "failed"; }

// The exit code of `stride status` for a job in `state`: 0 while it runs and when it finished or was stopped on
// request (resumable), 1 when it failed.
int outcome(const std::string& state) { return state == "failed" ? 1 : 0; }

// After the job's end: RUN/status.json, written by the coordinator as the job ended.
int show_final_state(const std::string& run_dir, const std::string& url, const json& last_seen, bool timeline) {
  const fs::path path = fs::path(run_dir.empty() ? "." : run_dir) / "status.json";
  for (int i = 0; i < 20 && !run_dir.empty() && !fs::exists(path); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));  // the endpoint may close just before it lands
  }
  if (run_dir.empty() || !fs::exists(path)) {
    throw Error(
        concat("the job's status endpoint ", url, " is gone and ",
               run_dir.empty() ? std::string("no run directory is known") : concat(run_dir, " holds no status.json"),
               ": the job ended abnormally (last seen: ", last_seen.value("state", "?"), " at step ",
               last_seen.value("step", 0), ")"));
  }
  const json s = json::parse(storage::read_file(path.string()), nullptr, /*allow_exceptions=*/false);
  if (s.is_discarded()) throw Error(concat(path.string(), ": not JSON"));
  std::printf("job ended (final state from %s):\n", path.string().c_str());
  print_summary(s, timeline);
  std::fflush(stdout);
  return outcome(s.value("state", ""));
}

int run_status(const StatusArgs& a) {
  // A run whose job has ended: its final state, without an endpoint.
  if (a.url.empty() && !a.run_dir.empty() && !fs::exists(fs::path(a.run_dir) / "coordinator.json") &&
      fs::exists(fs::path(a.run_dir) / "status.json") && !a.checkpoint && !a.stop) {
    if (a.json_out) {
      std::printf("%s\n", storage::read_file((fs::path(a.run_dir) / "status.json").string()).c_str());
      return outcome(
          json::parse(storage::read_file((fs::path(a.run_dir) / "status.json").string())).value("state", ""));
    }
    return show_final_state(a.run_dir, "", json::object(), a.timeline);
  }
  const std::string url = resolve_url(a);
  if (a.checkpoint || a.stop) {
    const std::string token = resolve_token(a);
    const std::string what = a.stop ? "stop" : "checkpoint";
    // Signed, not a bearer token: the token never crosses the network (Note [HTTP control requests]).
    auto r = cluster::http_post_signed(url + what, token);
    if (r.status != 202) throw Error(concat(url, what, ": HTTP ", r.status, ": ", r.body));
    std::printf("%s requested: %s\n", what.c_str(), url.c_str());
    return 0;
  }
  const bool tty = ::isatty(STDOUT_FILENO) != 0;
  std::string run_dir = a.run_dir;
  json last;
  for (;;) {
    cluster::HttpResponse r;
    try {
      r = cluster::http_request("GET", url + "status");
    } catch (const Error& e) {
      // Gone after it answered: the job ended. Its final state is in the run directory.
      if (!last.is_null()) return show_final_state(run_dir, url, last, a.timeline);
      throw Error(concat("no status endpoint at ", url, " (", e.what(), "); pass --url or --run-dir"));
    }
    if (r.status != 200) throw Error(concat(url, "status: HTTP ", r.status));
    const json s = json::parse(r.body, nullptr, /*allow_exceptions=*/false);
    if (s.is_discarded()) throw Error(concat(url, "status: not JSON"));
    last = s;
    if (run_dir.empty() && s.contains("run_dir") && s["run_dir"].is_string()) run_dir = s["run_dir"];
    if (a.watch_set && tty) std::printf("\033[H\033[2J");
    if (a.json_out) {
      std::printf("%s\n", s.dump(2).c_str());
    } else {
      print_summary(s, a.timeline);
    }
    std::fflush(stdout);
    const std::string state = s.value("state", "");
    if (!a.watch_set || is_final(state)) return outcome(state);
    std::this_thread::sleep_for(std::chrono::duration<double>(a.watch));
    if (!tty) std::printf("\n");
  }
}

}  // namespace

std::string clock_duration(double s) {
  if (!(s >= 0)) return "-";
  const auto t = static_cast<long long>(s + 0.5);
  char buf[32];
  if (t >= 3600) {
    std::snprintf(buf, sizeof(buf), "%lldh%02lldm%02llds", t / 3600, (t / 60) % 60, t % 60);
  } else {
    std::snprintf(buf, sizeof(buf), "%lldm%02llds", t / 60, t % 60);
  }
  return buf;
}

void add_status_command(CLI::App& app) {
  auto args = std::make_shared<StatusArgs>();
  auto* cmd = app.add_subcommand("status", "Show a running job's state from its status endpoint");
  cmd->add_option("--url", args->url,
                  "Status endpoint (default: from --run-dir, $STRIDE_STATUS_URL, "
                  "or http://127.0.0.1:8470/)");
  cmd->add_option("--run-dir", args->run_dir, "Run directory of the job (reads coordinator.json, job_token)");
  cmd->add_option("--watch", args->watch, "Refresh every SECONDS until the job ends")->expected(0, 1)->default_str("2");
  cmd->add_flag("--json", args->json_out, "Print the raw /status JSON");
  cmd->add_flag("--timeline", args->timeline,
                "Also print each rank's per-bucket overlap timeline of its last step (when each gradient bucket was "
                "ready, launched and done, relative to backward)");
  cmd->add_flag("--checkpoint", args->checkpoint, "Ask the job to checkpoint now (needs the job token)");
  cmd->add_flag("--stop", args->stop, "Ask the job to checkpoint and stop (needs the job token)");
  auto* token_file = cmd->add_option("--token-file", args->token_file,
                                     "File holding the job token (default: RUN_DIR/job_token, else $STRIDE_JOB_TOKEN)");
  cmd->add_option("--token", args->token, "Job token (visible to every user in ps: prefer --run-dir or --token-file)")
      ->excludes(token_file);
  cmd->callback([args, cmd] {
    args->watch_set = cmd->count("--watch") > 0;
    if (args->watch_set && !(args->watch > 0)) args->watch = 2.0;
    const int rc = run_status(*args);
    if (rc != 0) std::exit(rc);
  });
}

}  // namespace stride::launcher
