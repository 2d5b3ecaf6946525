// The `stride` executable: one binary, one subcommand per task. Exit codes: 0 ok, 2 usage or configuration
// error, 1 anything else; errors are one line on stderr.
#include <torch/version.h>

#include <malloc.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <exception>

#include "bench/bench_command.h"
#include "comm/build_info.h"
#include "common/cli_error.h"
#include "common/error.h"
#include "data/shard_command.h"
#include "launcher/launch.h"
#include "launcher/runs_command.h"
#include "launcher/status_command.h"
#include "launcher/submit.h"
#include "launcher/trace_command.h"
#include "models/models_command.h"
#include "trainer/analyze_command.h"
#include "trainer/predict_command.h"
#include "trainer/train_command.h"

#ifndef STRIDE_VERSION
#define STRIDE_VERSION "unknown"
#endif

namespace {

void add_version_command(CLI::App& app) {
  auto* cmd = app.add_subcommand("version", "Print the version and what this binary was built with");
  cmd->callback([] {
    std::printf("stride %s\n", STRIDE_VERSION);
    std::printf("libtorch %s\n", TORCH_VERSION);
    std::printf("nccl %s\n", stride::comm::nccl_version().c_str());
  });
}

}  // namespace

int main(int argc, char** argv) {
  // Keep freed memory in the heap instead of returning it to the kernel after every batch: decode buffers and
  // activations are the same sizes step after step, and re-faulting them in cost ~20% of loader time.
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 512 << 20);
  CLI::App app{"Stride: data-parallel ResNet training", "stride"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("stride ") + STRIDE_VERSION);
  stride::models::add_models_command(app);
  stride::data::add_shard_command(app);
  stride::trainer::add_train_command(app);
  stride::trainer::add_ckpt_command(app);
  stride::trainer::add_predict_command(app);
  stride::trainer::add_analyze_command(app);
  stride::bench::add_bench_command(app);
  stride::launcher::add_launch_command(app);
  stride::launcher::add_submit_command(app);
  stride::launcher::add_status_command(app);
  stride::launcher::add_runs_command(app);
  stride::launcher::add_trace_command(app);
  add_version_command(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help, --version
    std::fprintf(stderr, "stride: error: %s\n",
                 stride::describe_parse_error(app, e, std::vector<std::string>(argv + 1, argv + argc)).c_str());
    return 2;
  } catch (const stride::UsageError& e) {
    std::fprintf(stderr, "stride: error: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "stride: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
