// `stride bench loader`: images/s of the sharded loader, per worker thread, with peak RSS.
#include <sys/resource.h>

#include <CLI/CLI.hpp>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>

#include "bench/bench_command.h"
#include "common/error.h"
#include "data/loader.h"

namespace stride::bench {
namespace {

struct LoaderBenchArgs {
  data::LoaderOptions loader;
  std::string data_path;  // the dataset, as `stride train --data-path` takes it
  std::string split = "train";
  std::string crop = "pad-crop";
  std::string normalize = "none";
  double seconds = 10.0;
  int64_t warmup_batches = 5;
  bool json = false;
  // Replay mode (tests of the order and resume): read whole epochs from a cursor and write the sample ids.
  int64_t epochs = 0;       // > 0: read this many epochs (from --start) instead of timing for --seconds
  int64_t max_batches = 0;  // > 0: stop after this many batches (an interrupted run)
  std::string start = "0:0";
  std::string trace;  // "epoch step id id ..." per batch, valid samples only
};

data::Cursor parse_start(const std::string& text, uint64_t seed) {
  data::Cursor c;
  c.seed = seed;
  const size_t colon = text.find(':');
  try {
    if (colon == std::string::npos) throw std::invalid_argument(text);
    c.epoch = std::stoull(text.substr(0, colon));
    c.consumed = std::stoull(text.substr(colon + 1));
  } catch (const std::exception&) {
    throw UsageError(concat("--start must be EPOCH:CONSUMED, got '", text, "'"));
  }
  return c;
}

// Reads epochs from a cursor like the trainer does, writing each batch's valid sample ids.
void replay(LoaderBenchArgs& a) {
  data::ShardedLoader loader(a.loader);
  data::Cursor cursor = parse_start(a.start, a.loader.seed);
  std::FILE* out = a.trace.empty() ? stdout : std::fopen(a.trace.c_str(), "w");
  if (!out) throw Error(concat("cannot create --trace ", a.trace, ": ", std::strerror(errno)));
  int64_t batches = 0;
  const auto t0 = std::chrono::steady_clock::now();
  for (int64_t e = 0; e < a.epochs && (a.max_batches == 0 || batches < a.max_batches); ++e) {
    loader.start(cursor);
    while (a.max_batches == 0 || batches < a.max_batches) {
      auto b = loader.next();
      if (!b) break;
      ++batches;
      std::fprintf(out, "%llu %llu", static_cast<unsigned long long>(b->cursor.epoch),
                   static_cast<unsigned long long>(b->step));
      auto ids = b->sample_ids.accessor<int64_t, 1>();
      auto ok = b->valid.accessor<bool, 1>();
      for (int64_t i = 0; i < ids.size(0); ++i) {
        if (ok[i]) std::fprintf(out, " %lld", static_cast<long long>(ids[i]));
      }
      std::fprintf(out, "\n");
      cursor = b->cursor;
    }
    if (a.max_batches == 0 || batches < a.max_batches) cursor = {cursor.epoch + 1, 0, cursor.seed};
  }
  if (out != stdout) std::fclose(out);
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const auto s = loader.source_stats();
  std::fprintf(stderr,
               "replay: %lld batches in %.2f s; next cursor %llu:%llu; fetched %llu bytes in %llu shards, %llu cache "
               "hits, %llu re-fetched, %llu evicted\n",
               static_cast<long long>(batches), elapsed, static_cast<unsigned long long>(cursor.epoch),
               static_cast<unsigned long long>(cursor.consumed), static_cast<unsigned long long>(s.bytes_fetched),
               static_cast<unsigned long long>(s.shards_fetched), static_cast<unsigned long long>(s.cache_hits),
               static_cast<unsigned long long>(s.refetches), static_cast<unsigned long long>(s.evictions));
}

void run_loader_bench(LoaderBenchArgs a) {
  a.loader.augment.crop = data::parse_crop(a.crop);
  if (a.normalize == "imagenet") {
    a.loader.mean = {0.485, 0.456, 0.406};
    a.loader.std = {0.229, 0.224, 0.225};
  } else if (a.normalize != "none") {
    throw UsageError(concat("--normalize must be none or imagenet, got '", a.normalize, "'"));
  }
  if (a.epochs > 0) return replay(a);
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
  const auto src = loader.source_stats();
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
                        {"peak_rss_mb", ru.ru_maxrss / 1024.0},
                        {"bytes_fetched", src.bytes_fetched},
                        {"fetch_bytes_per_s", src.bytes_fetched / elapsed},
                        {"shards_fetched", src.shards_fetched},
                        {"cache_hits", src.cache_hits},
                        {"stall_seconds", src.stall_seconds}};
  if (a.json) {
    std::printf("%s\n", out.dump().c_str());
  } else {
    std::printf(
        "loader: %s crop=%s size=%d workers=%d batch=%llu: %.0f img/s (%.0f img/s per worker), "
        "peak RSS %.0f MB\n",
        a.loader.path.c_str(), a.crop.c_str(), a.loader.augment.size, a.loader.workers,
        static_cast<unsigned long long>(a.loader.batch_size), ips, ips / a.loader.workers, ru.ru_maxrss / 1024.0);
    if (src.bytes_fetched > 0 || src.cache_hits > 0) {
      std::printf("source: fetched %.1f MB (%.1f MB/s) in %llu shards, %llu cache hits, readers stalled %.2f s\n",
                  src.bytes_fetched / 1e6, src.bytes_fetched / 1e6 / elapsed,
                  static_cast<unsigned long long>(src.shards_fetched), static_cast<unsigned long long>(src.cache_hits),
                  src.stall_seconds);
    }
  }
}

}  // namespace

void add_loader_bench(CLI::App& bench) {
  auto a = std::make_shared<LoaderBenchArgs>();
  auto* cmd = bench.add_subcommand("loader", "Images/s of the sharded loader (decode + augment), per worker");
  cmd->add_option("--data-path", a->data_path,
                  "The dataset, as stride train takes it: a folder holding SPLIT/index.pb, its http:// base URL, or "
                  "a pipe: template with {split} and {shard}")
      ->required();
  cmd->add_option("--split", a->split, "The split to read (a folder under --data-path)")->capture_default_str();
  cmd->add_option("--cache-dir", a->loader.source.cache_dir, "Remote data: shard cache directory");
  cmd->add_option("--cache-limit", a->loader.source.cache_limit, "Remote data: cache limit in bytes (0: none)");
  cmd->add_option("--prefetch-shards", a->loader.source.prefetch_shards, "Remote data: shards fetched ahead")
      ->capture_default_str();
  cmd->add_option("--fetch-retries", a->loader.source.fetch.retries, "Remote data: retries of a failed fetch")
      ->capture_default_str();
  cmd->add_option("--fetch-timeout", a->loader.source.fetch.timeout_s, "Remote data: seconds per HTTP attempt")
      ->capture_default_str();
  cmd->add_option("--seed", a->loader.seed, "Order seed")->capture_default_str();
  cmd->add_option("--rank", a->loader.rank, "This reader's rank (replay)")->capture_default_str();
  cmd->add_option("--world-size", a->loader.world_size, "Ranks sharing the order (replay)")->capture_default_str();
  cmd->add_option("--epochs", a->epochs, "Replay: read this many epochs from --start and print the sample ids");
  cmd->add_option("--start", a->start, "Replay: start cursor EPOCH:CONSUMED")->capture_default_str();
  cmd->add_option("--max-batches", a->max_batches, "Replay: stop after this many batches");
  cmd->add_option("--trace", a->trace, "Replay: write the ids here instead of stdout");
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
  cmd->callback([a] {
    data::check_not_a_split(a->data_path, a->split, "--split");
    a->loader.path = data::split_location(a->data_path, a->split);
    run_loader_bench(*a);
  });
}

}  // namespace stride::bench
