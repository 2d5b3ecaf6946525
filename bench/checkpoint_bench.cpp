// `stride bench checkpoint`: what a checkpoint costs training. One rank trains a model on a synthetic batch and
// checkpoints every K steps through the real path (in-memory snapshot on the training thread, background
// writer, in-process coordinator committing the MANIFEST). Reports:
//   stall      the time the training thread spends on the checkpoint (snapshot + hand-over), as a fraction
//              of the median step time without checkpoints;
//   slowdown   how much longer the steps run while the writer works (it shares the cores);
//   commit     latency from the snapshot to COMMITTED, and the write bandwidth of the writer.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>

#include "cluster/client.h"
#include "cluster/coordinator.h"
#include "common/error.h"
#include "models/registry.h"
#include "models/state_dict.h"
#include "trainer/checkpoint_writer.h"
#include "trainer/loss.h"
#include "trainer/sgd.h"

namespace stride::bench {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

struct CkptArgs {
  std::string model = "resnet50";
  int64_t batch = 32;
  int64_t image_size = 224;
  int64_t in_channels = 3;
  int64_t num_classes = 1000;
  int64_t threads = 0;
  int64_t warmup = 2;
  int64_t steps = 12;
  int64_t every = 4;
  std::string dir;
  bool json = false;
};

double median(std::vector<double> v) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

void run(const CkptArgs& a) {
  if (a.threads > 0) torch::set_num_threads(static_cast<int>(a.threads));
  const std::string dir = a.dir.empty() ? (fs::temp_directory_path() / "stride-bench-checkpoint").string() : a.dir;
  fs::remove_all(dir);
  fs::create_directories(dir);
  models::ModelOptions mo;
  mo.num_classes = a.num_classes;
  mo.in_channels = a.in_channels;
  torch::manual_seed(0);
  auto model = models::make_model(a.model, mo);
  model->train();
  trainer::Sgd sgd(trainer::weight_decay_groups(model->named_parameters().pairs(), 1e-4, 0.0), 0.9, false);
  auto x = torch::randn({a.batch, a.in_channels, a.image_size, a.image_size});
  auto y = torch::randint(a.num_classes, {a.batch}, torch::kLong);

  cluster::CoordinatorOptions co;
  co.core.job = "bench-checkpoint";
  co.core.checkpoint_root = dir;
  co.core.keep = 2;
  co.status_port = -1;
  cluster::Coordinator coordinator(co);
  cluster::ClientOptions cl;
  cl.address = coordinator.address();
  cl.token = coordinator.token();
  cl.host = "bench";
  cluster::CoordinatorClient client(cl, [](const std::string& why) { throw Error(why); });
  trainer::CheckpointWriter writer(dir, [&](proto::CheckpointReport r) { client.report(std::move(r)); });
  if (!client.wait_connected(10.0)) throw Error("the in-process coordinator did not answer");

  auto train_step = [&] {
    auto loss = trainer::cross_entropy(model->forward(x), y, 0.0);
    loss.backward();
    sgd.step(0.01);
    sgd.zero_grad();
  };
  for (int64_t i = 0; i < a.warmup; ++i) train_step();

  std::vector<double> plain, during, stalls, commits, bandwidth;
  uint64_t bytes = 0;
  std::mutex mu;
  std::vector<std::thread> waiters;
  int64_t since_ckpt = -1;  // steps since the last checkpoint (-1: none in flight)
  for (int64_t i = 1; i <= a.steps; ++i) {
    const auto t0 = Clock::now();
    train_step();
    const double step_s = std::chrono::duration<double>(Clock::now() - t0).count();
    (since_ckpt >= 0 && writer.queued() > 0 ? during : plain).push_back(step_s);
    if (i % a.every == 0) {
      const auto s0 = Clock::now();
      trainer::CheckpointJob job;
      job.step = static_cast<uint64_t>(i);
      job.files.emplace_back("model.safetensors", trainer::snapshot_to_host(models::state_dict(*model)));
      job.files.emplace_back("optimizer.safetensors", trainer::snapshot_to_host(sgd.momentum_buffers()));
      proto::Manifest m;
      m.set_step(static_cast<uint64_t>(i));
      m.set_model(a.model);
      job.manifest = m;
      writer.submit(std::move(job));
      stalls.push_back(std::chrono::duration<double>(Clock::now() - s0).count());
      since_ckpt = 0;
      waiters.emplace_back([&, s0, i] {  // the commit lands while training goes on
        if (client.wait_commit(static_cast<uint64_t>(i), 300.0) == cluster::CoordinatorClient::Commit::kCommitted) {
          const auto [b, secs] = writer.last_write();
          std::lock_guard<std::mutex> lock(mu);
          commits.push_back(std::chrono::duration<double>(Clock::now() - s0).count());
          bytes = b;
          if (secs > 0) bandwidth.push_back(static_cast<double>(b) / secs / 1e6);
        }
      });
    }
  }
  writer.drain();
  for (auto& t : waiters) t.join();
  client.goodbye(true, "benchmark done");
  const double step_med = median(plain), stall_med = median(stalls);
  nlohmann::json r = {{"model", a.model},
                      {"batch", a.batch},
                      {"image_size", a.image_size},
                      {"threads", torch::get_num_threads()},
                      {"checkpoint_mb", static_cast<double>(bytes) / 1e6},
                      {"step_s", step_med},
                      {"stall_s", stall_med},
                      {"stall_fraction_of_step", step_med > 0 ? stall_med / step_med : 0.0},
                      {"step_while_writing_s", median(during)},
                      {"commit_latency_s", median(commits)},
                      {"write_mb_per_s", median(bandwidth)},
                      {"checkpoints", stalls.size()}};
  if (a.json) {
    std::printf("%s\n", r.dump().c_str());
    return;
  }
  std::printf(
      "%s b%lld %lldx%lld, %d threads: checkpoint %.1f MB; step %.3f s; stall %.4f s (%.1f%% of a step); "
      "commit latency %.3f s; writes %.0f MB/s\n",
      a.model.c_str(), static_cast<long long>(a.batch), static_cast<long long>(a.image_size),
      static_cast<long long>(a.image_size), torch::get_num_threads(), static_cast<double>(bytes) / 1e6, step_med,
      stall_med, 100.0 * r["stall_fraction_of_step"].get<double>(), median(commits), median(bandwidth));
}

}  // namespace

void add_checkpoint_bench(CLI::App& bench) {
  auto a = std::make_shared<CkptArgs>();
  auto* cmd = bench.add_subcommand("checkpoint", "Training stall, commit latency and write bandwidth of checkpoints");
  cmd->add_option("--model", a->model)->capture_default_str();
  cmd->add_option("--batch-size", a->batch)->capture_default_str();
  cmd->add_option("--image-size", a->image_size)->capture_default_str();
  cmd->add_option("--in-channels", a->in_channels)->capture_default_str();
  cmd->add_option("--num-classes", a->num_classes)->capture_default_str();
  cmd->add_option("--threads", a->threads, "Intra-op threads (0: LibTorch's default)")->capture_default_str();
  cmd->add_option("--warmup", a->warmup)->capture_default_str();
  cmd->add_option("--steps", a->steps)->capture_default_str();
  cmd->add_option("--every", a->every, "Steps between checkpoints")->capture_default_str();
  cmd->add_option("--dir", a->dir, "Where to write (default: a temporary directory)");
  cmd->add_flag("--json", a->json, "One JSON line");
  cmd->callback([a] { run(*a); });
}

}  // namespace stride::bench
