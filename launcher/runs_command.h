// `stride runs [DIR]` (the runs under a folder: state, steps, accuracy, wall time, newest checkpoint),
// `stride runs --compare A B` (differing configuration and final metrics) and `stride plot RUN... -o FILE.svg`
// (loss, accuracy and throughput curves from metrics.jsonl). They read run directories only; a run that is still
// writing is read as far as its complete lines go.
#pragma once

#include <CLI/CLI.hpp>
#include <optional>
#include <string>
#include <vector>

#include "common/svg_plot.h"

namespace stride::launcher {

// One run directory's summary.
struct RunSummary {
  std::string dir;
  std::string state;  // status.json's state (running, finished, stopped, failed, ...), "unknown" without it
  int64_t step = 0;   // the newest step metrics.jsonl records
  int64_t total_steps = 0;
  std::optional<double> best_acc1, last_acc1;
  int64_t last_eval_step = -1;
  double wall_seconds = 0;  // first to last record of metrics.jsonl
  std::string model;
  std::optional<uint64_t> checkpoint_step;  // the newest valid checkpoint of the current lineage
  std::string checkpoint_version;           // the Stride version that wrote it
};

// A folder that holds metrics.jsonl or config.toml is a run; `dir` itself may be one.
std::vector<std::string> find_runs(const std::string& dir);
RunSummary summarize_run(const std::string& run_dir);

// One curve: (x, y) points of `metric` from metrics.jsonl records of `type`, x = fractional epoch.
using Series = stride::Series;
Series read_series(const std::string& run_dir, const std::string& type, const std::string& metric);

// An SVG with one panel per entry of `panels` (title, curves), side by side.
std::string render_svg(const std::vector<std::pair<std::string, std::vector<Series>>>& panels);

void add_runs_command(CLI::App& app);

}  // namespace stride::launcher
