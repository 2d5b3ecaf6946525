// `stride train` and `stride ckpt`. Called once from main() on the main thread.
#pragma once

namespace CLI {
class App;
}

namespace stride::trainer {

void add_train_command(CLI::App& app);
void add_ckpt_command(CLI::App& app);

}  // namespace stride::trainer
