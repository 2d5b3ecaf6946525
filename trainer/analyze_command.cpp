#include "trainer/analyze_command.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>
#include <thread>

#include "common/error.h"
#include "common/svg_plot.h"
#include "storage/file_io.h"
#include "trainer/config.h"
#include "trainer/data_setup.h"
#include "trainer/loss.h"
#include "trainer/predict_command.h"

namespace stride::trainer {
namespace fs = std::filesystem;
using json = nlohmann::json;

// ---------------------------------------------------------------------------------------------------------
// Samples and evaluation
// ---------------------------------------------------------------------------------------------------------

SampleSet load_samples(data::LoaderOptions o, int64_t limit) {
  o.train = false;  // dataset order, evaluation transform, tail padding flagged invalid
  o.rank = 0;
  o.world_size = 1;
  o.float_output = true;
  o.channels_last = false;
  o.pin_memory = false;
  o.mix = {};
  o.pool = nullptr;
  if (limit > 0) o.batch_size = std::min<uint64_t>(o.batch_size, static_cast<uint64_t>(limit));
  data::ShardedLoader loader(o);
  loader.start({0, 0, o.seed});
  std::vector<torch::Tensor> images, labels;
  int64_t n = 0;
  while (auto b = loader.next()) {
    auto keep = b->valid.to(torch::kBool);
    auto x = b->images.index({keep}), y = b->labels.index({keep});
    if (limit > 0 && n + y.size(0) > limit) {
      x = x.slice(0, 0, limit - n);
      y = y.slice(0, 0, limit - n);
    }
    images.push_back(x.contiguous().clone());
    labels.push_back(y.clone());
    n += y.size(0);
    if (limit > 0 && n >= limit) break;
  }
  if (n == 0) throw Error(concat(o.path, ": no samples to evaluate"));
  return {torch::cat(images), torch::cat(labels)};
}

Evaluation evaluate_samples(models::ResNetImpl& model, const SampleSet& samples, int64_t batch_size) {
  STRIDE_CHECK(batch_size > 0, "batch size ", batch_size);
  model.eval();
  torch::NoGradGuard no_grad;
  TopK total;
  for (int64_t begin = 0; begin < samples.size(); begin += batch_size) {
    const int64_t end = std::min(samples.size(), begin + batch_size);
    const auto x = samples.images.slice(0, begin, end), y = samples.labels.slice(0, begin, end);
    const auto r = count_correct(model.forward(x).to(torch::kFloat), y, torch::ones({end - begin}, torch::kBool));
    total.top1 += r.top1;
    total.count += r.count;
    total.loss_sum += r.loss_sum;
  }
  const double n = static_cast<double>(std::max<int64_t>(total.count, 1));
  return {total.loss_sum / n, 100.0 * static_cast<double>(total.top1) / n};
}

// ---------------------------------------------------------------------------------------------------------
// Lesion
// ---------------------------------------------------------------------------------------------------------

std::vector<std::string> block_names(const models::ResNetImpl& model) {
  std::vector<std::string> names;
  const auto& stages = model.stages();
  for (size_t s = 0; s < stages.size(); ++s) {
    for (size_t i = 0; i < stages[s]->size(); ++i) names.push_back(concat("layer", s + 1, ".", i));
  }
  return names;
}

namespace {

// Deletes the blocks `which` (indexes into blocks()) for the guard's lifetime.
class Deleted {
 public:
  Deleted(const std::vector<models::ResidualBlock>& blocks, const std::vector<size_t>& which) : blocks_(blocks) {
    for (size_t i : which) {
      blocks_[i]->set_deleted(true);
      which_.push_back(i);
    }
  }
  ~Deleted() {
    for (size_t i : which_) blocks_[i]->set_deleted(false);
  }
  Deleted(const Deleted&) = delete;
  Deleted& operator=(const Deleted&) = delete;

 private:
  std::vector<models::ResidualBlock> blocks_;
  std::vector<size_t> which_;
};

std::vector<int64_t> default_ks(int64_t n) {
  std::vector<int64_t> ks;
  for (int64_t k = 1; k < n; k *= 2) ks.push_back(k);
  if (n > 0) ks.push_back(n);
  return ks;
}

}  // namespace

LesionResult lesion_study(models::ResNetImpl& model, const SampleSet& samples, const LesionOptions& o,
                          const std::function<void(const std::string&)>& progress) {
  if (o.repeats < 1) throw UsageError(concat("--repeats must be at least 1, got ", o.repeats));
  auto say = [&](const std::string& s) {
    if (progress) progress(s);
  };
  LesionResult r;
  const auto blocks = model.blocks();
  const auto names = block_names(model);
  std::vector<size_t> deletable;
  for (size_t i = 0; i < blocks.size(); ++i) {
    if (blocks[i]->deletable()) deletable.push_back(i);
  }
  const int64_t n = static_cast<int64_t>(deletable.size());
  for (int64_t k : o.k) {
    if (k < 1 || k > n) {
      throw UsageError(concat("--k ", k, ": the model has ", n, " blocks that can be deleted (k from 1 to ", n, ")"));
    }
  }
  r.full = evaluate_samples(model, samples, o.batch_size);
  say(concat("nothing deleted: top-1 ", r.full.acc1, "%"));
  for (size_t i = 0; i < blocks.size(); ++i) {
    BlockLesion b;
    b.name = names[i];
    b.deleted = blocks[i]->deletable();
    if (b.deleted) {
      Deleted d(blocks, {i});
      const auto e = evaluate_samples(model, samples, o.batch_size);
      b.acc1 = e.acc1;
      b.loss = e.loss;
      say(concat("deleted ", b.name, ": top-1 ", b.acc1, "%"));
    }
    r.blocks.push_back(b);
  }
  std::mt19937_64 rng(o.seed);
  for (int64_t k : o.k.empty() ? default_ks(n) : o.k) {
    RandomLesion rl;
    rl.k = k;
    for (int64_t rep = 0; rep < o.repeats; ++rep) {
      auto pick = deletable;
      std::shuffle(pick.begin(), pick.end(), rng);
      pick.resize(static_cast<size_t>(k));
      std::sort(pick.begin(), pick.end());
      std::vector<std::string> which;
      for (size_t i : pick) which.push_back(names[i]);
      Deleted d(blocks, pick);
      const auto e = evaluate_samples(model, samples, o.batch_size);
      rl.deleted.push_back(which);
      rl.acc1.push_back(e.acc1);
      say(concat("deleted ", k, " random blocks (draw ", rep + 1, "): top-1 ", e.acc1, "%"));
    }
    r.random.push_back(rl);
  }
  return r;
}

// ---------------------------------------------------------------------------------------------------------
// Landscape
// ---------------------------------------------------------------------------------------------------------

torch::Tensor filter_normalize(const torch::Tensor& direction, const torch::Tensor& weight) {
  STRIDE_CHECK(direction.sizes() == weight.sizes(), "direction ", direction.sizes(), " and weight ", weight.sizes());
  if (weight.dim() <= 1) return torch::zeros_like(direction);
  const auto d = direction.flatten(1), w = weight.flatten(1);
  const auto scale = w.norm(2, {1}, /*keepdim=*/true) / (d.norm(2, {1}, /*keepdim=*/true) + 1e-10);
  return (d * scale).view(direction.sizes());
}

std::vector<torch::Tensor> random_direction(const models::ResNetImpl& model, uint64_t seed) {
  auto gen = at::detail::createCPUGenerator(seed);
  std::vector<torch::Tensor> out;
  for (const auto& p : model.named_parameters()) {
    const auto w = p.value().detach().to(torch::kFloat);
    out.push_back(filter_normalize(at::normal(0.0, 1.0, w.sizes(), gen), w));
  }
  return out;
}

LandscapeResult loss_landscape(models::ResNetImpl& model, const SampleSet& samples,
                               const std::vector<std::vector<torch::Tensor>>& directions, const LandscapeOptions& o,
                               comm::Communicator& comm, const std::function<void(const std::string&)>& progress) {
  if (o.grid < 1) throw UsageError(concat("--grid must be at least 1, got ", o.grid));
  if (o.dims != 1 && o.dims != 2) throw UsageError(concat("--dims must be 1 or 2, got ", o.dims));
  if (!(o.hi > o.lo)) throw UsageError(concat("--range ", o.lo, ":", o.hi, ": the end must be above the start"));
  STRIDE_CHECK(static_cast<int>(directions.size()) == o.dims, directions.size(), " directions for ", o.dims, " dims");
  LandscapeResult r;
  for (int64_t j = 0; j < o.grid; ++j) {
    r.coords.push_back(o.grid == 1 ? (o.lo + o.hi) / 2
                                   : o.lo + (o.hi - o.lo) * static_cast<double>(j) / static_cast<double>(o.grid - 1));
  }
  const int64_t points = o.dims == 1 ? o.grid : o.grid * o.grid;
  auto params = model.parameters();
  for (const auto& d : directions) STRIDE_CHECK(d.size() == params.size(), "direction of the wrong model");
  std::vector<torch::Tensor> centre;
  for (const auto& p : params) centre.push_back(p.detach().clone());
  r.centre = evaluate_samples(model, samples, o.batch_size);

  const int rank = comm.rank(), size = comm.size();
  // [points, 2]: loss and top-1 of the points this rank took, zeros elsewhere; the sum over ranks is the grid.
  auto results = torch::zeros({points, 2}, torch::kFloat64);
  const int64_t mine = (points - rank + size - 1) / size;
  int64_t done = 0;
  {
    torch::NoGradGuard no_grad;
    for (int64_t p = rank; p < points; p += size) {
      const double a = r.coords[static_cast<size_t>(p % o.grid)];
      const double b = o.dims == 2 ? r.coords[static_cast<size_t>(p / o.grid)] : 0.0;
      for (size_t i = 0; i < params.size(); ++i) {
        auto w = centre[i] + directions[0][i].to(centre[i].dtype()) * a;
        if (o.dims == 2) w += directions[1][i].to(centre[i].dtype()) * b;
        params[i].copy_(w);
      }
      const auto e = evaluate_samples(model, samples, o.batch_size);
      results[p][0].fill_(e.loss);
      results[p][1].fill_(e.acc1);
      ++done;
      if (progress) {
        progress(o.dims == 1 ? concat("rank ", rank, ": point ", done, "/", mine, " alpha ", a, ": loss ", e.loss)
                             : concat("rank ", rank, ": point ", done, "/", mine, " (alpha ", a, ", beta ", b,
                                      "): loss ", e.loss));
      }
    }
    for (size_t i = 0; i < params.size(); ++i) params[i].copy_(centre[i]);
  }
  comm::allreduce(comm, results);
  const auto acc = results.accessor<double, 2>();
  for (int64_t p = 0; p < points; ++p) {
    r.loss.push_back(acc[p][0]);
    r.acc1.push_back(acc[p][1]);
  }
  return r;
}

// ---------------------------------------------------------------------------------------------------------
// The command
// ---------------------------------------------------------------------------------------------------------

namespace {

struct CommonOptions {
  std::vector<std::string> checkpoints;
  std::vector<std::string> models;  // expected model names, one per checkpoint (or none)
  std::string output;               // writes OUTPUT.json and OUTPUT.svg
  std::string data_path;            // overrides the run's --data-path
  int64_t samples = 0;
  int64_t threads = 0;
  bool ema = false;
};

struct Loaded {
  TrainedModel trained;
  DataPlan plan;
  std::string label;  // "resnet56 (runs/r56)"
};

Loaded load(const CommonOptions& o, size_t i, bool need_train_split) {
  Loaded l;
  l.trained = load_trained_model(o.checkpoints[i], o.ema, o.models.empty() ? "" : o.models[i]);
  TrainConfig c;
  parse_toml(l.trained.manifest.config(), l.trained.checkpoint + "/MANIFEST", c);
  if (!o.data_path.empty()) c.data_path = o.data_path;
  c.test_only = !need_train_split;
  c.workers = std::max<int64_t>(1, std::min<int64_t>(c.workers, 2));
  l.plan = plan_data(c);
  if (need_train_split && l.plan.train.path.empty()) {
    throw UsageError(concat(c.data_path, ": no training split to take the landscape's samples from"));
  }
  l.label = concat(l.trained.manifest.model(), " (", o.checkpoints[i], ")");
  return l;
}

void check_common(const CommonOptions& o) {
  if (!o.models.empty() && o.models.size() != o.checkpoints.size()) {
    throw UsageError(concat("--model: give one name per checkpoint (", o.checkpoints.size(), " checkpoints, ",
                            o.models.size(), " names)"));
  }
  if (o.samples < 0) throw UsageError(concat("--samples must be 0 (all) or more, got ", o.samples));
  if (o.threads < 0) throw UsageError("--threads must be 0 (all cores) or more");
  if (o.output.empty()) throw UsageError("--output must name a file prefix");
  const auto parent = fs::path(o.output).parent_path();
  if (!parent.empty() && !fs::is_directory(parent)) {
    throw UsageError(concat("--output ", o.output, ": the folder ", parent.string(), " does not exist"));
  }
}

void add_common(CLI::App* cmd, CommonOptions& o, const std::string& default_output) {
  o.output = default_output;
  cmd->add_option("checkpoints", o.checkpoints,
                  "Checkpoint directories or run directories (their newest valid checkpoint); several are compared")
      ->required();
  cmd->add_option("--model", o.models,
                  "The model each checkpoint must hold, in order (an error otherwise), e.g. --model resnet56 plain56");
  cmd->add_option("--output,-o", o.output, "Output prefix: writes PREFIX.json and PREFIX.svg")->capture_default_str();
  cmd->add_option("--data-path", o.data_path, "The dataset, when it is no longer where the run read it");
  cmd->add_option("--threads,-j", o.threads, "Compute threads (0: LibTorch's default)")->capture_default_str();
  cmd->add_flag("--ema", o.ema, "Use the checkpoints' EMA weights");
}

void write_outputs(const std::string& prefix, const json& j, const std::string& svg) {
  storage::write_file_atomic(prefix + ".json", j.dump(2) + "\n");
  storage::write_file_atomic(prefix + ".svg", svg);
  std::fprintf(stderr, "wrote %s.json and %s.svg\n", prefix.c_str(), prefix.c_str());
}

void run_lesion(const CommonOptions& co, const LesionOptions& lo) {
  check_common(co);
  if (co.threads > 0) torch::set_num_threads(static_cast<int>(co.threads));
  json out = {{"experiment", "lesion"},
              {"samples", co.samples},
              {"repeats", lo.repeats},
              {"seed", lo.seed},
              {"models", json::array()}};
  std::vector<Series> single, random;
  for (size_t i = 0; i < co.checkpoints.size(); ++i) {
    Loaded l = load(co, i, /*need_train_split=*/false);
    const SampleSet test = load_samples(l.plan.eval, co.samples);
    std::fprintf(stderr, "%s: %s, %lld test samples\n", l.label.c_str(), l.trained.checkpoint.c_str(),
                 static_cast<long long>(test.size()));
    const auto r = lesion_study(*l.trained.model, test, lo,
                                [](const std::string& s) { std::fprintf(stderr, "  %s\n", s.c_str()); });
    std::printf("%s: top-1 %.2f%% with every block\n", l.label.c_str(), r.full.acc1);
    std::printf("  %-12s %9s %8s\n", "deleted", "top-1 %", "drop");
    json blocks = json::array();
    Series s{l.label, {}};
    for (size_t b = 0; b < r.blocks.size(); ++b) {
      const auto& bl = r.blocks[b];
      if (!bl.deleted) {
        std::printf("  %-12s %9s %8s  (skipped: the block changes shape, no identity path)\n", bl.name.c_str(), "-",
                    "-");
        blocks.push_back({{"block", bl.name}, {"skipped", "shape changes: no identity path"}});
        continue;
      }
      std::printf("  %-12s %9.2f %8.2f\n", bl.name.c_str(), bl.acc1, r.full.acc1 - bl.acc1);
      blocks.push_back({{"block", bl.name}, {"acc1", bl.acc1}, {"loss", bl.loss}, {"drop", r.full.acc1 - bl.acc1}});
      s.points.emplace_back(static_cast<double>(b), bl.acc1);
    }
    single.push_back(s);
    std::printf("  %-12s %9s %8s %8s %8s\n", "random k", "mean %", "min", "max", "drop");
    json rand = json::array();
    Series rs{l.label, {std::make_pair(0.0, r.full.acc1)}};
    for (const auto& rl : r.random) {
      const double mean = std::accumulate(rl.acc1.begin(), rl.acc1.end(), 0.0) / static_cast<double>(rl.acc1.size());
      const auto [mn, mx] = std::minmax_element(rl.acc1.begin(), rl.acc1.end());
      std::printf("  %-12lld %9.2f %8.2f %8.2f %8.2f\n", static_cast<long long>(rl.k), mean, *mn, *mx,
                  r.full.acc1 - mean);
      rand.push_back({{"k", rl.k}, {"acc1", rl.acc1}, {"mean_acc1", mean}, {"deleted", rl.deleted}});
      rs.points.emplace_back(static_cast<double>(rl.k), mean);
    }
    random.push_back(rs);
    out["models"].push_back({{"label", l.label},
                             {"model", l.trained.manifest.model()},
                             {"checkpoint", l.trained.checkpoint},
                             {"step", l.trained.manifest.step()},
                             {"test_samples", test.size()},
                             {"acc1", r.full.acc1},
                             {"loss", r.full.loss},
                             {"blocks", blocks},
                             {"random", rand}});
  }
  // Two SVG documents side by side would not be one file: one panel per view instead.
  LineAxes axes;
  axes.x_label = "deleted block (index) / number of random blocks deleted";
  write_outputs(co.output, out,
                render_line_svg({{"top-1 % after deleting one block", single},
                                 {"top-1 % after deleting k random blocks (mean)", random}},
                                axes));
}

void run_landscape(const CommonOptions& co, const LandscapeOptions& lo_in, const std::string& range) {
  check_common(co);
  LandscapeOptions lo = lo_in;
  const auto colon = range.find(':');
  try {
    if (colon == std::string::npos) throw std::invalid_argument("no colon");
    size_t used = 0;
    lo.lo = std::stod(range.substr(0, colon), &used);
    if (used != colon) throw std::invalid_argument("trailing");
    lo.hi = std::stod(range.substr(colon + 1), &used);
    if (used != range.size() - colon - 1) throw std::invalid_argument("trailing");
  } catch (const std::exception&) {
    throw UsageError(concat("--range ", range, ": expected START:END, e.g. -1:1"));
  }
  if (lo.grid < 1) throw UsageError(concat("--grid must be at least 1, got ", lo.grid));
  if (lo.dims != 1 && lo.dims != 2) throw UsageError(concat("--dims must be 1 or 2, got ", lo.dims));
  if (!(lo.hi > lo.lo)) throw UsageError(concat("--range ", range, ": the end must be above the start"));
  if (co.samples < 1) throw UsageError(concat("--samples must be at least 1, got ", co.samples));

  comm::CommOptions opts;
  if (co.threads > 0) torch::set_num_threads(static_cast<int>(co.threads));
  opts.busy_threads = torch::get_num_threads();
  auto comm = comm::create_communicator(opts);
  const bool root = comm->rank() == 0;
  json out = {{"experiment", "landscape"}, {"dims", lo.dims}, {"grid", lo.grid},       {"range", {lo.lo, lo.hi}},
              {"samples", co.samples},     {"seed", lo.seed}, {"ranks", comm->size()}, {"models", json::array()}};
  std::vector<Series> curves;
  std::vector<HeatmapPanel> maps;
  for (size_t i = 0; i < co.checkpoints.size(); ++i) {
    Loaded l = load(co, i, /*need_train_split=*/true);
    data::LoaderOptions train = l.plan.eval;  // the evaluation transform (no augmentation) on the training split
    train.path = l.plan.train.path;
    train.index = l.plan.train.index;
    train.source = l.plan.train.source;
    const SampleSet samples = load_samples(train, co.samples);
    if (root) {
      std::fprintf(stderr, "%s: %s, %lld training samples, %lld points on %d ranks\n", l.label.c_str(),
                   l.trained.checkpoint.c_str(), static_cast<long long>(samples.size()),
                   static_cast<long long>(lo.dims == 1 ? lo.grid : lo.grid * lo.grid), comm->size());
    }
    std::vector<std::vector<torch::Tensor>> dirs;
    for (int d = 0; d < lo.dims; ++d) dirs.push_back(random_direction(*l.trained.model, lo.seed * 2 + d));
    const auto r = loss_landscape(*l.trained.model, samples, dirs, lo, *comm,
                                  [](const std::string& s) { std::fprintf(stderr, "  %s\n", s.c_str()); });
    if (!root) continue;
    std::printf("%s: loss %.4f (top-1 %.2f%%) at the trained weights, %lld samples\n", l.label.c_str(), r.centre.loss,
                r.centre.acc1, static_cast<long long>(samples.size()));
    json points = json::array();
    if (lo.dims == 1) {
      std::printf("  %9s %10s %9s\n", "alpha", "loss", "top-1 %");
      Series s{l.label, {}};
      for (size_t j = 0; j < r.coords.size(); ++j) {
        std::printf("  %9.3f %10.4f %9.2f\n", r.coords[j], r.loss[j], r.acc1[j]);
        points.push_back({{"alpha", r.coords[j]}, {"loss", r.loss[j]}, {"acc1", r.acc1[j]}});
        s.points.emplace_back(r.coords[j], r.loss[j]);
      }
      curves.push_back(s);
    } else {
      HeatmapPanel h{l.label, r.coords, r.coords, {}};
      const size_t g = r.coords.size();
      std::printf("  loss, rows beta from %.3g (top) to %.3g, columns alpha from %.3g to %.3g\n", r.coords.back(),
                  r.coords.front(), r.coords.front(), r.coords.back());
      for (size_t row = 0; row < g; ++row) {
        h.z.emplace_back(r.loss.begin() + static_cast<std::ptrdiff_t>(row * g),
                         r.loss.begin() + static_cast<std::ptrdiff_t>((row + 1) * g));
        for (size_t col = 0; col < g; ++col) {
          points.push_back({{"alpha", r.coords[col]},
                            {"beta", r.coords[row]},
                            {"loss", r.loss[row * g + col]},
                            {"acc1", r.acc1[row * g + col]}});
        }
      }
      for (size_t row = g; row-- > 0;) {
        std::printf("  ");
        for (size_t col = 0; col < g; ++col) std::printf(" %7.3f", r.loss[row * g + col]);
        std::printf("\n");
      }
      maps.push_back(h);
    }
    out["models"].push_back({{"label", l.label},
                             {"model", l.trained.manifest.model()},
                             {"checkpoint", l.trained.checkpoint},
                             {"step", l.trained.manifest.step()},
                             {"train_samples", samples.size()},
                             {"centre", {{"loss", r.centre.loss}, {"acc1", r.centre.acc1}}},
                             {"points", points}});
  }
  if (!root) return;
  if (lo.dims == 1) {
    LineAxes axes;
    axes.x_label = "alpha (filter-normalised direction)";
    axes.x_format = "%.2f";
    write_outputs(co.output, out, render_line_svg({{"training loss along a random direction", curves}}, axes));
  } else {
    // Far from the minimum the loss grows by orders of magnitude; the colours resolve the basin when the scale
    // stops at a few times the largest centre loss.
    double clip = 0.0;
    for (const auto& m : out["models"]) clip = std::max(clip, 10.0 * m["centre"]["loss"].get<double>() + 1.0);
    write_outputs(co.output, out, render_heatmap_svg(maps, clip));
  }
}

}  // namespace

void add_analyze_command(CLI::App& app) {
  auto* analyze = app.add_subcommand("analyze", "Experiments on trained checkpoints: block lesion, loss landscape");
  analyze->require_subcommand(1);

  auto lc = std::make_shared<CommonOptions>();
  auto lo = std::make_shared<LesionOptions>();
  auto* lesion = analyze->add_subcommand(
      "lesion",
      "Delete residual blocks at test time (Veit et al. 2016): test top-1 per deleted block and for k random");
  add_common(lesion, *lc, "lesion");
  lesion->add_option("--samples", lc->samples, "Test samples to evaluate on, the first in dataset order (0: all)")
      ->capture_default_str();
  lesion->add_option("--k", lo->k, "Numbers of random blocks to delete at once (default 1, 2, 4, ... and all)");
  lesion->add_option("--repeats", lo->repeats, "Random draws per k")->capture_default_str();
  lesion->add_option("--seed", lo->seed, "Seed of the random draws")->capture_default_str();
  lesion->add_option("--batch-size,-b", lo->batch_size, "Samples per forward pass")->capture_default_str();
  lesion->callback([lc, lo] {
    if (lo->batch_size < 1) throw UsageError("--batch-size must be at least 1");
    run_lesion(*lc, *lo);
  });

  auto gc = std::make_shared<CommonOptions>();
  gc->samples = 1024;
  auto go = std::make_shared<LandscapeOptions>();
  auto range = std::make_shared<std::string>("-1:1");
  auto* landscape = analyze->add_subcommand(
      "landscape",
      "Training loss along filter-normalised random directions (Li et al. 2018); under mpirun ranks share the grid");
  add_common(landscape, *gc, "landscape");
  landscape->add_option("--samples", gc->samples, "Training samples (the first in dataset order) the loss is over")
      ->capture_default_str();
  landscape->add_option("--grid", go->grid, "Points per axis")->capture_default_str();
  landscape->add_option("--range", *range, "Step sizes along each direction, START:END")->capture_default_str();
  landscape->add_option("--dims", go->dims, "1: a line (one direction); 2: a surface (two directions)")
      ->capture_default_str();
  landscape->add_option("--seed", go->seed, "Seed of the random directions")->capture_default_str();
  landscape->add_option("--batch-size,-b", go->batch_size, "Samples per forward pass")->capture_default_str();
  landscape->callback([gc, go, range] {
    if (go->batch_size < 1) throw UsageError("--batch-size must be at least 1");
    run_landscape(*gc, *go, *range);
  });
}

}  // namespace stride::trainer
