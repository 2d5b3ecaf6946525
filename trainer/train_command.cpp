#include "trainer/train_command.h"

#include <CLI/CLI.hpp>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <nlohmann/json.hpp>

#include "common/cli_error.h"
#include "common/error.h"
#include "trainer/checkpoint.h"
#include "trainer/config.h"
#include "trainer/safetensors.h"
#include "trainer/stop_signals.h"
#include "trainer/trainer.h"

namespace stride::trainer {
namespace fs = std::filesystem;

TrainConfig parse_train_flags(const std::vector<std::string>& args) {
  TrainConfig config;
  CLI::App app{"stride train", "stride train"};
  add_train_options(app, config);
  std::vector<std::string> reversed(args.rbegin(), args.rend());  // CLI11 takes them last-first
  try {
    app.parse(reversed);
  } catch (const CLI::ParseError& e) {
    throw UsageError(concat("train flags: ", describe_parse_error(app, e, args)));
  }
  if (!config.config_file.empty()) apply_config_file(config.config_file, app, config);
  normalize_aliases(config);
  validate(config);
  return config;
}

void add_train_command(CLI::App& app) {
  auto config = std::make_shared<TrainConfig>();
  auto* cmd = app.add_subcommand("train", "Train (or evaluate) a model: one rank, alone or under mpirun/srun");
  add_train_options(*cmd, *config);
  cmd->callback([config, cmd] {
    if (!config->config_file.empty()) apply_config_file(config->config_file, *cmd, *config);
    normalize_aliases(*config);
    if (!config->test_only) install_stop_signals();  // a stop then checkpoints first (trainer/stop_signals.h)
    Trainer trainer(*config);
    const int rc = trainer.run();
    if (rc != 0) throw Error(concat("training failed with code ", rc));
  });
}

namespace {

// A run directory (its checkpoints) or one checkpoint directory.
std::vector<CheckpointInfo> checkpoints_of(const std::string& path) {
  if (fs::exists(fs::path(path) / "MANIFEST") || fs::path(path).filename().string().rfind("step-", 0) == 0) {
    CheckpointInfo info;
    info.path = path;
    try {
      info.manifest = verify_checkpoint(path);
      info.step = info.manifest.step();
      info.valid = true;
    } catch (const Error& e) {
      info.problem = e.what();
    }
    return {info};
  }
  if (!fs::is_directory(path)) throw UsageError(concat(path, " is neither a run directory nor a checkpoint"));
  return CheckpointStore(path).list();
}

struct CkptArgs {
  std::string path;
  std::string output;
  bool ema = false;
  bool json = false;
};

}  // namespace

void add_ckpt_command(CLI::App& app) {
  auto a = std::make_shared<CkptArgs>();
  auto* ckpt = app.add_subcommand("ckpt", "List, verify and export checkpoints");
  ckpt->require_subcommand(1);

  auto* list = ckpt->add_subcommand("list", "Checkpoints of a run, newest first, with step, epoch and metrics");
  list->add_option("path", a->path, "Run directory")->required();
  list->add_flag("--json", a->json, "JSON output");
  list->callback([a] {
    nlohmann::json all = nlohmann::json::array();
    for (const auto& info : checkpoints_of(a->path)) {
      nlohmann::json j = {{"path", info.path}, {"step", info.step}, {"valid", info.valid}};
      if (info.valid) {
        j["epoch"] = info.manifest.epoch();
        j["world_size"] = info.manifest.world_size();
        for (const auto& [k, v] : info.manifest.metrics()) j["metrics"][k] = v;
        if (info.manifest.has_precision()) {
          const auto& p = info.manifest.precision();
          j["precision"] = {{"compute_dtype", p.compute_dtype()}, {"device", p.device()},
                            {"cpu_bf16", p.cpu_bf16()},           {"emulated", p.emulated()},
                            {"amp_requested", p.amp_requested()}, {"channels_last", p.channels_last()}};
        }
      } else {
        j["problem"] = info.problem;
      }
      all.push_back(j);
      if (!a->json) {
        std::string metrics;
        for (const auto& [k, v] : info.manifest.metrics()) metrics += concat(" ", k, "=", v);
        std::printf("%-40s step %-8llu %s%s\n", info.path.c_str(), static_cast<unsigned long long>(info.step),
                    info.valid ? concat("epoch ", info.manifest.epoch()).c_str() : ("INVALID: " + info.problem).c_str(),
                    metrics.c_str());
      }
    }
    if (a->json) std::cout << all.dump(2) << "\n";
  });

  auto* verify = ckpt->add_subcommand("verify", "Check every file of every checkpoint against its MANIFEST");
  verify->add_option("path", a->path, "Run directory or checkpoint directory")->required();
  verify->callback([a] {
    int bad = 0;
    const auto infos = checkpoints_of(a->path);
    int interrupted = 0;
    for (const auto& info : infos) {
      // A directory without a MANIFEST never was a checkpoint (an interrupted or in-flight one): not an error.
      if (!info.valid && !fs::exists(fs::path(info.path) / "MANIFEST")) {
        std::printf("%s: interrupted (no MANIFEST): not a checkpoint, ignored\n", info.path.c_str());
        ++interrupted;
        continue;
      }
      std::printf("%s: %s\n", info.path.c_str(), info.valid ? "ok" : info.problem.c_str());
      bad += info.valid ? 0 : 1;
    }
    if (infos.size() == static_cast<size_t>(interrupted)) throw Error(concat("no checkpoints under ", a->path));
    if (bad) throw Error(concat(bad, " of ", infos.size(), " checkpoints failed verification"));
  });

  auto* exp = ckpt->add_subcommand("export", "Write a checkpoint's weights as torchvision-named safetensors");
  exp->add_option("path", a->path, "Checkpoint directory, or a run directory (its newest valid checkpoint)")
      ->required();
  exp->add_option("--output,-o", a->output, "Output .safetensors file")->required();
  exp->add_flag("--ema", a->ema, "Export the EMA weights");
  exp->callback([a] {
    std::string dir = a->path;
    if (!fs::exists(fs::path(dir) / "MANIFEST")) {
      auto latest = CheckpointStore(dir).latest();
      if (!latest) throw Error(concat("no valid checkpoint under ", dir));
      dir = latest->path;
    }
    auto data = load_checkpoint(dir);
    if (a->ema && data.ema.empty()) throw UsageError(concat(dir, " has no EMA weights"));
    write_safetensors(a->output, a->ema ? data.ema : data.model,
                      {{"model", data.manifest.model()}, {"step", std::to_string(data.manifest.step())}});
    std::printf("%s: %zu tensors from %s (step %llu)\n", a->output.c_str(), (a->ema ? data.ema : data.model).size(),
                dir.c_str(), static_cast<unsigned long long>(data.manifest.step()));
  });
}

}  // namespace stride::trainer
