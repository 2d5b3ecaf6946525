// `stride bench loader`: images/s of the sharded loader, per worker thread, with peak RSS.
#include <sys/resource.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "bench/bench_command.h"
#include "common/error.h"
#include "data/loader.h"

namespace stride::bench {
namespace {

struct LoaderBenchArgs {
  data::LoaderOptions loader;
  std::string crop = "pad-crop";
  std::string normalize = "none";
  double seconds = 10.0;
  int64_t warmup_batches = 5;
  bool json = false;
};

void run_loader_bench(LoaderBenchArgs a) {
  a.loader.augment.crop = data::parse_crop(a.crop);
  if (a.normalize == "imagenet") {
    a.loader.mean = {0.485, 0.456, 0.406};
    a.loader.std = {0.229, 0.224, 0.225};
  } else if (a.normalize != "none") {
    throw UsageError(concat("--normalize must be none or imagenet, got '", a.normalize, "'"));
  }
  data::ShardedLoader loader(a.loader);
  loader.start({0, 0, a.loader.seed});
  uint64_t images = 0, batches = 0, epochs = 0;
  auto next = [&]() {
    auto b = loader.next();
    if (!b) {
      ++epochs;
      loader.start({epochs, 0, a.loader.seed});
      b = loader.next();
    }
    return b;
  };
  for (int64_t i = 0; i < a.warmup_batches; ++i) next();
  const double wait0 = loader.wait_seconds();
  const auto t0 = std::chrono::steady_clock::now();
  double elapsed = 0.0;
  while (elapsed < a.seconds) {
    auto b = next();
    images += static_cast<uint64_t>(b->images.size(0));
    ++batches;
    elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  struct rusage ru {};
  getrusage(RUSAGE_SELF, &ru);
  const double ips = images / elapsed;
  nlohmann::json out = {{"dataset", a.loader.path},
                        {"crop", a.crop},
                        {"size", a.loader.augment.size},
                        {"workers", a.loader.workers},
                        {"batch_size", a.loader.batch_size},
                        {"images", images},
                        {"seconds", elapsed},
                        {"images_per_s", ips},
                        {"images_per_s_per_worker", ips / a.loader.workers},
                        {"consumer_wait_fraction", (loader.wait_seconds() - wait0) / elapsed},
                        {"peak_rss_mb", ru.ru_maxrss / 1024.0}};
  if (a.json) {
    std::printf("%s\n", out.dump().c_str());
  } else {
    std::printf(
        "loader: %s crop=%s size=%d workers=%d batch=%llu: %.0f img/s (%.0f img/s per worker), "
        "peak RSS %.0f MB\n",
        a.loader.path.c_str(), a.crop.c_str(), a.loader.augment.size, a.loader.workers,
        static_cast<unsigned long long>(a.loader.batch_size), ips, ips / a.loader.workers, ru.ru_maxrss / 1024.0);
  }
}

}  // namespace

void add_loader_bench(CLI::App& bench) {
  auto a = std::make_shared<LoaderBenchArgs>();
  auto* cmd = bench.add_subcommand("loader", "Images/s of the sharded loader (decode + augment), per worker");
  cmd->add_option("--data-path", a->loader.path, "Dataset directory (with index.pb)")->required();
  cmd->add_option("--batch-size", a->loader.batch_size, "Batch size")->capture_default_str();
  cmd->add_option("--workers", a->loader.workers, "Worker threads")->capture_default_str();
  cmd->add_option("--prefetch", a->loader.prefetch, "Batches in flight")->capture_default_str();
  cmd->add_option("--crop", a->crop, "none | pad-crop | random-resized | center")->capture_default_str();
  cmd->add_option("--size", a->loader.augment.size, "Output side (0: input size)")->capture_default_str();
  cmd->add_option("--pad", a->loader.augment.pad, "pad-crop padding")->capture_default_str();
  cmd->add_option("--normalize", a->normalize, "none | imagenet (mean/std of float output)")->capture_default_str();
  cmd->add_flag("!--no-flip", a->loader.augment.hflip, "Disable horizontal flips");
  cmd->add_flag(
      "--uint8", [a](int64_t) { a->loader.float_output = false; }, "uint8 output (no normalisation)");
  cmd->add_flag("!--no-scaled-decode", a->loader.augment.jpeg_scaled_decode, "Decode JPEGs at full size");
  cmd->add_option("--seconds", a->seconds, "Measurement time")->capture_default_str();
  cmd->add_flag("--json", a->json, "One JSON line");
  a->loader.augment.hflip = true;
  cmd->callback([a] { run_loader_bench(*a); });
}

}  // namespace stride::bench
