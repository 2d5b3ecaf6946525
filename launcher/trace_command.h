// `stride trace RUN_DIR`: merges the ranks' flight recorder dumps (RUN/trace/rank-R.json, comm/flight_recorder.h)
// into one JSON document or a Chrome trace (chrome://tracing, Perfetto) with one process per rank and one thread
// per collective stream. Torch-free; reads files only.
#pragma once

#include <CLI/CLI.hpp>
#include <string>

namespace stride::launcher {

// The merged document; `format` json or chrome. Throws UsageError for a bad format or a run directory without
// dumps, Error naming the file for a dump that cannot be read.
std::string merge_traces(const std::string& run_dir, const std::string& format);

void add_trace_command(CLI::App& app);

}  // namespace stride::launcher
