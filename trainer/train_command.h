// `stride train` and `stride ckpt`. Called once from main() on the main thread.
#pragma once

#include <string>
#include <vector>

namespace CLI {
class App;
}

namespace stride::trainer {

struct TrainConfig;
// The configuration `stride train ARGS...` would run with (flags, --config file, validation). Throws
// UsageError naming the flag or key. The launcher uses it to check a job's flags before starting any rank.
TrainConfig parse_train_flags(const std::vector<std::string>& args);

void add_train_command(CLI::App& app);
void add_ckpt_command(CLI::App& app);

}  // namespace stride::trainer
