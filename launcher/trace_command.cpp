#include "launcher/trace_command.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>
#include <regex>

#include "common/error.h"
#include "storage/file_io.h"

namespace stride::launcher {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// Every RUN/trace/rank-R.json, by rank.
std::vector<json> read_dumps(const std::string& run_dir) {
  const fs::path dir = fs::path(run_dir) / "trace";
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    throw UsageError(concat("no flight recorder dumps in ", dir.string(),
                            " (ranks write them when the coordinator reports a hang, on abort and at exit; "
                            "--flight-recorder 0 turns them off)"));
  }
  const std::regex name("rank-([0-9]+)\\.json");
  std::vector<json> dumps;
  for (const auto& e : fs::directory_iterator(dir)) {
    std::smatch m;
    const std::string file = e.path().filename().string();
    if (!std::regex_match(file, m, name)) continue;
    json j;
    try {
      j = json::parse(storage::read_file(e.path().string()));
    } catch (const json::exception& err) {
      throw Error(concat(e.path().string(), ": not a flight recorder dump: ", err.what()));
    }
    if (!j.is_object() || !j.contains("entries") || !j["entries"].is_array() || !j.contains("rank")) {
      throw Error(concat(e.path().string(), ": not a flight recorder dump (no rank or entries)"));
    }
    dumps.push_back(std::move(j));
  }
  if (dumps.empty()) throw UsageError(concat("no rank-R.json files in ", dir.string()));
  std::sort(dumps.begin(), dumps.end(),
            [](const json& a, const json& b) { return a["rank"].get<int>() < b["rank"].get<int>(); });
  return dumps;
}

double number(const json& j, const char* key) {
  return j.contains(key) && j[key].is_number() ? j[key].get<double>() : 0;
}

json chrome_trace(const std::vector<json>& dumps) {
  // Unix time of every record (steady clock + the dump's offset), shifted so the trace starts at 0.
  double t0 = std::numeric_limits<double>::infinity();
  for (const auto& d : dumps) {
    for (const auto& e : d["entries"]) t0 = std::min(t0, number(e, "enqueue_s") + number(d, "wall_minus_steady_s"));
  }
  if (!std::isfinite(t0)) t0 = 0;
  json events = json::array();
  for (const auto& d : dumps) {
    const int rank = d["rank"].get<int>();
    const double offset = number(d, "wall_minus_steady_s"), dumped = number(d, "dumped_at_s");
    const std::string host = d.value("host", "");
    events.push_back(
        {{"ph", "M"},
         {"name", "process_name"},
         {"pid", rank},
         {"args", {{"name", concat("rank ", rank, host.empty() ? "" : " (", host, host.empty() ? "" : ")")}}}});
    events.push_back({{"ph", "M"}, {"name", "process_sort_index"}, {"pid", rank}, {"args", {{"sort_index", rank}}}});
    for (int tid = 0; tid < 2; ++tid) {
      events.push_back({{"ph", "M"},
                        {"name", "thread_name"},
                        {"pid", rank},
                        {"tid", tid},
                        {"args", {{"name", tid == 0 ? "collectives" : "blocking collectives (SyncBN)"}}}});
    }
    for (const auto& e : d["entries"]) {
      const double enq = number(e, "enqueue_s");
      const bool open = !e["end_s"].is_number();
      const double end = open ? dumped : number(e, "end_s");
      const std::string stream = e.value("stream", "async");
      const std::string state = e.value("state", "");
      json args = {{"seq", e.value("seq", 0)},
                   {"origin", e.value("origin", "")},
                   {"bytes", e.value("bytes", 0)},
                   {"dtype", e.value("dtype", "")},
                   {"state", state}};
      if (e["start_s"].is_number()) args["run_us"] = (end - number(e, "start_s")) * 1e6;
      events.push_back({{"ph", "X"},
                        {"name", concat(e.value("kind", "?"), " #", e.value("seq", 0))},
                        {"cat", stream},
                        {"pid", rank},
                        {"tid", stream == "blocking" ? 1 : 0},
                        {"ts", (enq + offset - t0) * 1e6},
                        {"dur", std::max(0.0, end - enq) * 1e6},
                        {"args", args}});
      if (open) {  // a marker where the rank was still waiting when it dumped
        events.push_back({{"ph", "i"},
                          {"s", "t"},
                          {"name", concat("open: ", e.value("kind", "?"), " #", e.value("seq", 0))},
                          {"pid", rank},
                          {"tid", stream == "blocking" ? 1 : 0},
                          {"ts", (enq + offset - t0) * 1e6}});
      }
    }
  }
  return {{"traceEvents", events}, {"displayTimeUnit", "ms"}, {"otherData", {{"start_unix_s", t0}}}};
}

}  // namespace

std::string merge_traces(const std::string& run_dir, const std::string& format) {
  if (format != "json" && format != "chrome") {
    throw UsageError(concat("--format must be json or chrome, got '", format, "'"));
  }
  const auto dumps = read_dumps(run_dir);
  if (format == "chrome") return chrome_trace(dumps).dump() + "\n";
  json j = {{"format", "stride-trace-1"}, {"run_dir", run_dir}, {"ranks", dumps}};
  return j.dump(1) + "\n";
}

void add_trace_command(CLI::App& app) {
  struct Args {
    std::string run_dir, out, format = "chrome";
  };
  auto args = std::make_shared<Args>();
  auto* cmd = app.add_subcommand(
      "trace", "Merge the ranks' flight recorder dumps (RUN_DIR/trace) into JSON or a Chrome/Perfetto trace");
  cmd->add_option("run_dir", args->run_dir, "Run directory")->required();
  cmd->add_option("--out", args->out, "Write here instead of standard output");
  cmd->add_option("--format", args->format, "chrome (chrome://tracing, Perfetto: one track per rank) | json");
  cmd->callback([args] {
    const std::string doc = merge_traces(args->run_dir, args->format);
    if (args->out.empty()) {
      std::fwrite(doc.data(), 1, doc.size(), stdout);
    } else {
      storage::write_file_atomic(args->out, doc);
    }
  });
}

}  // namespace stride::launcher
