// `stride bench ...`: measurements that docs/benchmarks.md reports. Called once from main() on the main thread.
#pragma once

namespace CLI {
class App;
}

namespace stride::bench {

void add_bench_command(CLI::App& app);

}  // namespace stride::bench
