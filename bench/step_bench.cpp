// `stride bench step`: training steps per second of one replica on a fixed synthetic batch (forward,
// cross-entropy, backward, SGD with momentum), the number `bench/train_compare.sh` compares with PyTorch eager.
#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "models/registry.h"
#include "trainer/loss.h"
#include "trainer/sgd.h"

namespace stride::bench {
namespace {

struct StepArgs {
  std::string model = "resnet50";
  int64_t batch = 32;
  int64_t image_size = 224;
  int64_t in_channels = 3;
  int64_t num_classes = 1000;
  int64_t threads = 0;
  int64_t warmup = 3;
  int64_t steps = 10;
  bool channels_last = false;
};

void run_step_bench(const StepArgs& a) {
  if (a.threads > 0) torch::set_num_threads(static_cast<int>(a.threads));
  torch::manual_seed(0);
  models::ModelOptions mo;
  mo.num_classes = a.num_classes;
  mo.in_channels = a.in_channels;
  auto model = models::make_model(a.model, mo);
  auto x = torch::randn({a.batch, a.in_channels, a.image_size, a.image_size});
  auto y = torch::randint(a.num_classes, {a.batch}, torch::kLong);
  if (a.channels_last) {
    torch::NoGradGuard no_grad;
    for (auto& p : model->parameters()) {
      if (p.dim() == 4) p.set_data(p.contiguous(torch::MemoryFormat::ChannelsLast));
    }
    x = x.contiguous(torch::MemoryFormat::ChannelsLast);
  }
  model->train();
  trainer::Sgd sgd(trainer::weight_decay_groups(model->named_parameters().pairs(), 1e-4, 0.0), 0.9, false);
  auto step = [&] {
    auto loss = trainer::cross_entropy(model->forward(x), y, 0.0);
    loss.backward();
    sgd.step(0.01);
    sgd.zero_grad();
  };
  for (int64_t i = 0; i < a.warmup; ++i) step();
  const auto t0 = std::chrono::steady_clock::now();
  for (int64_t i = 0; i < a.steps; ++i) step();
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  nlohmann::json out = {{"impl", "stride"},
                        {"model", a.model},
                        {"batch", a.batch},
                        {"image_size", a.image_size},
                        {"threads", torch::get_num_threads()},
                        {"channels_last", a.channels_last},
                        {"steps", a.steps},
                        {"seconds", secs},
                        {"images_per_s", static_cast<double>(a.batch * a.steps) / secs}};
  std::printf("%s\n", out.dump().c_str());
}

}  // namespace

void add_step_bench(CLI::App& bench) {
  auto a = std::make_shared<StepArgs>();
  auto* cmd = bench.add_subcommand("step", "Training images/s of one replica on a synthetic batch");
  cmd->add_option("--model", a->model)->capture_default_str();
  cmd->add_option("--batch-size", a->batch)->capture_default_str();
  cmd->add_option("--image-size", a->image_size)->capture_default_str();
  cmd->add_option("--in-channels", a->in_channels)->capture_default_str();
  cmd->add_option("--num-classes", a->num_classes)->capture_default_str();
  cmd->add_option("--threads", a->threads, "Intra-op threads (0: LibTorch's default)")->capture_default_str();
  cmd->add_option("--warmup", a->warmup)->capture_default_str();
  cmd->add_option("--steps", a->steps)->capture_default_str();
  cmd->add_flag("--channels-last", a->channels_last, "NHWC activations and weights");
  cmd->callback([a] { run_step_bench(*a); });
}

}  // namespace stride::bench
