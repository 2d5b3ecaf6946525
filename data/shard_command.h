// `stride shard`: build sharded datasets. Called once from main() on the main thread.
#pragma once

namespace CLI {
class App;
}

namespace stride::data {

void add_shard_command(CLI::App& app);

}  // namespace stride::data
