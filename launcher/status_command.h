// `stride status`: a readable summary of a running job from its status endpoint (cluster/coordinator.h), and
// the token-guarded control actions (--checkpoint, --stop).
#pragma once

#include <CLI/CLI.hpp>

namespace stride::launcher {

void add_status_command(CLI::App& app);

}  // namespace stride::launcher
