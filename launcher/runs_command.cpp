#include "launcher/runs_command.h"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "common/error.h"
#include "launcher/status_command.h"
#include "storage/file_io.h"
#include "trainer/checkpoint.h"
#include "trainer/config.h"
#include "trainer/config_diff.h"

namespace stride::launcher {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

bool is_run(const fs::path& p) { return fs::exists(p / "metrics.jsonl") || fs::exists(p / "config.toml"); }

// Every complete JSON line of metrics.jsonl (a line still being written, or damaged, is skipped).
std::vector<json> records(const std::string& run_dir) {
  std::vector<json> out;
  std::ifstream in(fs::path(run_dir) / "metrics.jsonl");
  for (std::string line; std::getline(in, line);) {
    auto j = json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_object()) out.push_back(std::move(j));
  }
  return out;
}

std::string host_name() {
  char buf[256] = {};
  ::gethostname(buf, sizeof(buf) - 1);
  return buf;
}

// status.json holds the final state of a job that ended; coordinator.json names a live one's process.
std::string run_state(const fs::path& dir) {
  if (fs::exists(dir / "status.json")) {
    const auto j = json::parse(storage::read_file((dir / "status.json").string()), nullptr, false);
    if (j.is_object() && j.contains("state") && j["state"].is_string()) return j["state"];
  }
  if (fs::exists(dir / "coordinator.json")) {
    const auto j = json::parse(storage::read_file((dir / "coordinator.json").string()), nullptr, false);
    if (j.is_object() && j.value("host", "") == host_name() && j.contains("pid") && j["pid"].is_number_integer()) {
      const pid_t pid = j["pid"].get<pid_t>();
      return ::kill(pid, 0) == 0 || errno == EPERM ? "running" : "interrupted";
    }
    return "running?";  // on another host: `stride status` can ask its endpoint
  }
  return "unknown";
}

std::string percent(const std::optional<double>& v) {
  if (!v) return "-";
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.2f", *v);
  return buf;
}

json summary_json(const RunSummary& s) {
  json j = {{"dir", s.dir},     {"state", s.state},
            {"step", s.step},   {"total_steps", s.total_steps},
            {"model", s.model}, {"wall_seconds", s.wall_seconds}};
  j["best_acc1"] = s.best_acc1 ? json(*s.best_acc1) : json(nullptr);
  j["last_acc1"] = s.last_acc1 ? json(*s.last_acc1) : json(nullptr);
  j["checkpoint_step"] = s.checkpoint_step ? json(*s.checkpoint_step) : json(nullptr);
  j["checkpoint_version"] = s.checkpoint_version;
  return j;
}

// The final metrics of a run worth comparing: the last evaluation and the last training interval.
std::map<std::string, double> final_metrics(const std::string& run_dir) {
  std::map<std::string, double> m;
  for (const auto& r : records(run_dir)) {
    const std::string type = r.value("type", "");
    if (type != "eval" && type != "train") continue;
    for (const auto& [k, v] : r.items()) {
      if (v.is_number() && k != "time") m[type + "." + k] = v.get<double>();
    }
  }
  return m;
}

std::string config_text(const std::string& run_dir) {
  const auto path = fs::path(run_dir) / "config.toml";
  if (!fs::exists(path)) throw UsageError(concat(run_dir, " has no config.toml: not a run directory"));
  return storage::read_file(path.string());
}

void compare(const std::string& a, const std::string& b, bool as_json) {
  trainer::TrainConfig cb;
  const std::string text_b = config_text(b);
  trainer::parse_toml(text_b, (fs::path(b) / "config.toml").string(), cb);
  const auto changes = trainer::config_changes(config_text(a), 1, cb, 1);
  const auto ma = final_metrics(a), mb = final_metrics(b);
  std::set<std::string> keys;
  for (const auto& [k, v] : ma) keys.insert(k);
  for (const auto& [k, v] : mb) keys.insert(k);
  if (as_json) {
    json out = {{"a", a}, {"b", b}, {"config", json::array()}, {"metrics", json::object()}};
    for (const auto& c : changes) {
      if (c.key != "output-dir") out["config"].push_back({{"key", c.key}, {"a", c.before}, {"b", c.after}});
    }
    for (const auto& k : keys) {
      out["metrics"][k] = {{"a", ma.count(k) ? json(ma.at(k)) : json(nullptr)},
                           {"b", mb.count(k) ? json(mb.at(k)) : json(nullptr)}};
    }
    std::cout << out.dump(2) << "\n";
    return;
  }
  std::printf("A: %s\nB: %s\n\nconfiguration (A -> B):\n", a.c_str(), b.c_str());
  int shown = 0;
  for (const auto& c : changes) {
    if (c.key == "output-dir") continue;
    std::printf("  %-28s %s -> %s\n", c.key.c_str(), c.before.c_str(), c.after.c_str());
    ++shown;
  }
  if (shown == 0) std::printf("  (the same)\n");
  std::printf("\nfinal metrics:          %14s %14s\n", "A", "B");
  for (const auto& k : keys) {
    if (k.rfind("eval.", 0) != 0 && k != "train.loss" && k != "train.img_per_s") continue;
    auto cell = [](const std::map<std::string, double>& m, const std::string& key) {
      char buf[32] = "-";
      if (m.count(key)) std::snprintf(buf, sizeof(buf), "%.4g", m.at(key));
      return std::string(buf);
    };
    std::printf("  %-21s %14s %14s\n", k.c_str(), cell(ma, k).c_str(), cell(mb, k).c_str());
  }
}

}  // namespace

std::vector<std::string> find_runs(const std::string& dir) {
  if (!fs::is_directory(dir)) throw UsageError(concat(dir, ": no such folder"));
  if (is_run(dir)) return {dir};
  std::vector<std::string> runs;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (e.is_directory() && is_run(e.path())) runs.push_back(e.path().string());
  }
  std::sort(runs.begin(), runs.end());
  return runs;
}

RunSummary summarize_run(const std::string& run_dir) {
  RunSummary s;
  s.dir = run_dir;
  s.state = run_state(run_dir);
  double first = 0, last = 0;
  for (const auto& r : records(run_dir)) {
    const double t = r.value("time", 0.0);
    if (first == 0) first = t;
    last = std::max(last, t);
    s.step = std::max<int64_t>(s.step, r.value("step", int64_t{0}));
    if (r.value("type", "") == "eval" && r.contains("acc1") && r["acc1"].is_number()) {
      const double acc = r["acc1"];
      s.best_acc1 = s.best_acc1 ? std::max(*s.best_acc1, acc) : acc;
      s.last_acc1 = acc;
      s.last_eval_step = r.value("step", int64_t{-1});
    }
  }
  s.wall_seconds = last > first ? last - first : 0;
  if (fs::exists(fs::path(run_dir) / "status.json")) {
    const auto j = json::parse(storage::read_file((fs::path(run_dir) / "status.json").string()), nullptr, false);
    if (j.is_object()) s.total_steps = j.value("total_steps", int64_t{0});
  }
  if (fs::exists(fs::path(run_dir) / "config.toml")) {
    trainer::TrainConfig c;
    try {
      trainer::parse_toml(storage::read_file((fs::path(run_dir) / "config.toml").string()), run_dir, c);
      s.model = c.model;
    } catch (const std::exception&) {
      s.model = "?";
    }
  }
  if (fs::is_directory(fs::path(run_dir) / "checkpoints")) {
    if (auto latest = trainer::CheckpointStore(run_dir).latest()) {
      s.checkpoint_step = latest->step;
      s.checkpoint_version = latest->manifest.stride_version();
    }
  }
  return s;
}

Series read_series(const std::string& run_dir, const std::string& type, const std::string& metric) {
  Series s;
  s.label = fs::path(run_dir).filename().string();
  if (s.label.empty()) s.label = run_dir;
  for (const auto& r : records(run_dir)) {
    if (r.value("type", "") != type || !r.contains(metric) || !r[metric].is_number()) continue;
    s.points.emplace_back(r.value("step", 0.0), r[metric].get<double>());
  }
  return s;
}

std::string render_svg(const std::vector<std::pair<std::string, std::vector<Series>>>& panels) {
  std::vector<LinePanel> lines;
  for (const auto& [title, curves] : panels) lines.push_back({title, curves});
  return render_line_svg(lines);
}

void add_runs_command(CLI::App& app) {
  struct Args {
    std::string dir = "runs";
    std::vector<std::string> compare;
    bool json = false;
    std::vector<std::string> plot_runs;
    std::string output;
  };
  auto a = std::make_shared<Args>();
  auto* runs = app.add_subcommand("runs", "List the runs under a folder, or compare two runs");
  runs->add_option("dir", a->dir, "A folder of run directories, or one run directory")->capture_default_str();
  runs->add_option("--compare", a->compare, "Two run directories: their differing settings and final metrics")
      ->expected(2);
  runs->add_flag("--json", a->json, "JSON output");
  runs->callback([a] {
    if (!a->compare.empty()) return compare(a->compare[0], a->compare[1], a->json);
    const auto dirs = find_runs(a->dir);
    json all = json::array();
    if (!a->json) {
      std::printf("%-28s %-12s %-10s %15s %8s %8s %9s  %s\n", "RUN", "STATE", "MODEL", "STEPS", "BEST", "LAST", "WALL",
                  "CHECKPOINT");
    }
    for (const auto& d : dirs) {
      const RunSummary s = summarize_run(d);
      all.push_back(summary_json(s));
      if (a->json) continue;
      const std::string steps = s.total_steps > 0 ? concat(s.step, "/", s.total_steps) : std::to_string(s.step);
      const std::string ckpt =
          s.checkpoint_step ? concat("step ", *s.checkpoint_step, " (stride ", s.checkpoint_version, ")") : "-";
      std::printf("%-28s %-12s %-10s %15s %8s %8s %9s  %s\n", fs::path(d).filename().c_str(), s.state.c_str(),
                  s.model.c_str(), steps.c_str(), percent(s.best_acc1).c_str(), percent(s.last_acc1).c_str(),
                  clock_duration(s.wall_seconds).c_str(), ckpt.c_str());
    }
    if (a->json) std::cout << all.dump(2) << "\n";
    if (dirs.empty()) std::fprintf(stderr, "no runs under %s\n", a->dir.c_str());
  });

  auto* plot = app.add_subcommand("plot", "Draw loss, accuracy and throughput curves of runs into an SVG");
  plot->add_option("runs", a->plot_runs, "Run directories")->required();
  plot->add_option("--output,-o", a->output, "The SVG file to write")->required();
  plot->callback([a] {
    std::vector<std::pair<std::string, std::vector<Series>>> panels = {
        {"training loss", {}}, {"test top-1 (%)", {}}, {"images/s", {}}};
    size_t points = 0;
    for (const auto& run : a->plot_runs) {
      if (!fs::exists(fs::path(run) / "metrics.jsonl")) throw UsageError(concat(run, ": no metrics.jsonl in it"));
      panels[0].second.push_back(read_series(run, "train", "loss"));
      panels[1].second.push_back(read_series(run, "eval", "acc1"));
      panels[2].second.push_back(read_series(run, "train", "img_per_s"));
      for (const auto& panel : panels) points += panel.second.back().points.size();
    }
    storage::write_file_atomic(a->output, render_svg(panels));
    std::printf("%s: %zu runs, %zu points\n", a->output.c_str(), a->plot_runs.size(), points);
  });
}

}  // namespace stride::launcher
