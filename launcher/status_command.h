// `stride status`: a readable summary of a running job from its status endpoint (cluster/coordinator.h), and
// the token-guarded control actions (--checkpoint, --stop).
#pragma once

#include <CLI/CLI.hpp>
#include <string>

namespace stride::launcher {

// "4m05s", "1h02m03s"; "-" for a negative or unknown value. Shared by `stride status` and `stride runs`.
std::string clock_duration(double seconds);

void add_status_command(CLI::App& app);

}  // namespace stride::launcher
