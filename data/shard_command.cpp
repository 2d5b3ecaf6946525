#include "data/shard_command.h"

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>

#include "common/error.h"
#include "data/shard_index.h"
#include "data/sources.h"

namespace stride::data {
namespace {

struct ShardArgs {
  std::string format;
  std::string input;
  std::string output;
  std::string index_only;
  uint64_t samples_per_shard = 10000;
  bool quiet = false;
};

void run(const ShardArgs& a) {
  const auto t0 = std::chrono::steady_clock::now();
  auto progress = [&](const std::string& line) {
    if (!a.quiet) std::fprintf(stderr, "shard: %s\n", line.c_str());
  };
  if (!a.index_only.empty()) {
    if (!a.format.empty() || !a.input.empty() || !a.output.empty()) {
      throw UsageError("--index-only takes no --format, --input or --output");
    }
    // DIR holds the tars of one split, or one folder of tars per split (DIR/train, DIR/test, ...).
    namespace fs = std::filesystem;
    auto has_tars = [](const fs::path& d) {
      for (const auto& e : fs::directory_iterator(d)) {
        if (e.is_regular_file() && e.path().extension() == ".tar") return true;
      }
      return false;
    };
    fs::path root = fs::path(a.index_only).lexically_normal();
    if (root.filename().empty()) root = root.parent_path();  // "DIR/"
    if (!fs::is_directory(root)) throw UsageError(concat("--index-only: ", a.index_only, " is not a directory"));
    std::vector<fs::path> dirs;
    if (has_tars(root)) {
      dirs.push_back(root);
    } else {
      for (const auto& e : fs::directory_iterator(root)) {
        if (e.is_directory() && has_tars(e.path())) dirs.push_back(e.path());
      }
      std::sort(dirs.begin(), dirs.end());
    }
    if (dirs.empty()) {
      throw UsageError(concat("--index-only: no .tar files in ", a.index_only, " nor in its subfolders"));
    }
    for (const auto& dir : dirs) {
      const auto index = index_webdataset_dir(dir.string(), dir.filename().string());
      write_index(dir.string(), index);
      std::string shape = "images of different sizes";
      if (index.image_shape_size() == 3) {
        shape = concat(index.image_shape(0), "x", index.image_shape(1), "x", index.image_shape(2));
      }
      const int channels = index_channels(index);
      std::printf("%s: indexed %llu samples in %d shards (%d classes, %s, %s)\n", dir.string().c_str(),
                  static_cast<unsigned long long>(index.num_samples()), index.shards_size(), index.num_classes(),
                  shape.c_str(),
                  channels ? concat(channels, channels == 1 ? " channel" : " channels").c_str() : "mixed channels");
    }
    return;
  }
  if (a.format.empty() || a.input.empty() || a.output.empty()) {
    throw UsageError("stride shard needs --format, --input and --output (or --index-only DIR)");
  }
  ShardJob job{a.input, a.output, a.samples_per_shard, progress};
  std::vector<std::string> dirs;
  if (a.format == "fashion-mnist" || a.format == "mnist") {
    dirs = shard_fashion_mnist(job);
  } else if (a.format == "cifar10") {
    dirs = shard_cifar10(job);
  } else if (a.format == "imagefolder") {
    dirs = shard_image_folder(job);
  } else {
    throw UsageError(concat("unknown --format '", a.format, "' (fashion-mnist, cifar10, imagefolder)"));
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  for (const auto& d : dirs) {
    const auto index = read_index(d);
    std::printf("%s: %llu samples in %d shards, %d classes\n", d.c_str(),
                static_cast<unsigned long long>(index.num_samples()), index.shards_size(), index.num_classes());
  }
  if (!a.quiet) std::fprintf(stderr, "shard: done in %.1f s\n", secs);
}

}  // namespace

void add_shard_command(CLI::App& app) {
  auto args = std::make_shared<ShardArgs>();
  auto* cmd = app.add_subcommand("shard", "Convert a dataset into WebDataset tar shards plus an index");
  cmd->add_option("--format", args->format, "fashion-mnist | cifar10 | imagefolder");
  cmd->add_option("--input", args->input, "Where the dataset is (e.g. /usr/share/datasets/fashion-mnist)");
  cmd->add_option("--output", args->output, "Output directory; each split goes to OUTPUT/<split>");
  cmd->add_option("--samples-per-shard", args->samples_per_shard, "Samples per tar shard")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--index-only", args->index_only,
                  "Only write index.pb for an existing directory of WebDataset tars (or for each split folder in it)");
  cmd->add_flag("--quiet", args->quiet, "No progress lines");
  cmd->callback([args] { run(*args); });
}

}  // namespace stride::data
