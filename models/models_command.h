// `stride models`: the model zoo on the command line. Called once from main() on the main thread.
#pragma once

namespace CLI {
class App;
}

namespace stride::models {

void add_models_command(CLI::App& app);

}  // namespace stride::models
