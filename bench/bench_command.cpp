#include "bench/bench_command.h"

#include <CLI/CLI.hpp>

namespace stride::bench {

void add_loader_bench(CLI::App& bench);
void add_step_bench(CLI::App& bench);
void add_allreduce_bench(CLI::App& bench);
void add_checkpoint_bench(CLI::App& bench);
void add_http_bench(CLI::App& bench);
void add_gemm_bench(CLI::App& bench);

void add_bench_command(CLI::App& app) {
  auto* bench = app.add_subcommand("bench", "Benchmarks (results and commands in docs/benchmarks.md)");
  bench->require_subcommand(1);
  add_loader_bench(*bench);
  add_step_bench(*bench);
  add_allreduce_bench(*bench);
  add_checkpoint_bench(*bench);
  add_http_bench(*bench);
  add_gemm_bench(*bench);
}

}  // namespace stride::bench
