#include "trainer/config.h"

#include <toml++/toml.h>
#include <CLI/CLI.hpp>
#include <charconv>
#include <cmath>
#include <map>
#include <sstream>

#include "common/error.h"
#include "common/suggest.h"
#include "data/auto_augment.h"
#include "trainer/checkpoint_interval.h"

namespace stride::trainer {

std::vector<OptionSpec> option_specs(TrainConfig& c) {
  return {
      {"model", "Model name (`stride models` lists them)", &c.model},
      {"num-classes", "Classifier outputs; 0: the dataset's class count", &c.num_classes},
      {"drop-path", "Stochastic depth rate of the last block (linear in depth)", &c.drop_path},
      {"dropout", "Dropout before the classifier", &c.dropout},
      {"zero-init-residual", "Zero-init the last BN of each residual branch", &c.zero_init_residual},
      {"weights", "Initial weights: a checkpoint directory or a torchvision-named safetensors file", &c.weights},
      {"adapt-stem",
       "sum | mean | none: --weights with an RGB stem on 1-channel (or >3-channel) data: sum the RGB weights, "
       "average them, or refuse",
       &c.adapt_stem},
      {"freeze", "Stages to freeze (stem, layer1, ...); their BNs stay in eval mode", &c.freeze},
      {"sync-bn", "Synchronised BatchNorm across ranks", &c.sync_bn},
      {"data-path",
       "Dataset directory holding one folder per split (train/, test/) with index.pb; or an http:// base URL of the "
       "same layout; or a pipe: command template writing {split}/{shard} to stdout (docs/data.md)",
       &c.data_path},
      {"dataset", "shards | fashion-mnist | cifar10 | imagefolder: make the shards from dataset-source if missing",
       &c.dataset},
      {"dataset-source", "Raw dataset to shard when data-path has none (default: the format's usual place)",
       &c.dataset_source},
      {"train-split", "Training split folder under data-path", &c.train_split},
      {"val-split", "Evaluation split folder under data-path", &c.val_split},
      {"workers", "Loader worker threads", &c.workers},
      {"prefetch", "Batches prefetched", &c.prefetch},
      {"crop", "Training crop: pad-crop | random-resized | none", &c.crop},
      {"pad", "pad-crop padding in pixels", &c.pad},
      {"image-size", "Training crop side; 0: the images' own size (224 for random-resized)", &c.image_size},
      {"val-crop-size", "Evaluation image side; 0: the training side", &c.val_crop_size},
      {"val-resize-size",
       "Evaluation resize of the shorter side before the centre crop (random-resized training); 0: side x 256/224",
       &c.val_resize_size},
      {"hflip", "Random horizontal flips", &c.hflip},
      {"cutout", "Cutout square side in pixels (0: off)", &c.cutout},
      {"random-erase", "Random erasing probability", &c.random_erase},
      {"auto-augment",
       "torchvision's --auto-augment policy: ra (RandAugment) | ta_wide (TrivialAugmentWide) | imagenet | cifar10 | "
       "svhn (AutoAugment); empty: off",
       &c.auto_augment},
      {"ra-magnitude", "RandAugment's magnitude bin, 0..30", &c.ra_magnitude},
      {"ra-num-ops", "RandAugment's ops per image", &c.ra_num_ops},
      {"ra-sampler", "Repeated augmentation: each sample --ra-reps times per global batch, on different ranks",
       &c.ra_sampler},
      {"ra-reps", "Repeated augmentation: copies of each sample (with --ra-sampler)", &c.ra_reps},
      {"color-jitter", "Colour jitter strengths B[,C[,S]]: brightness, contrast, saturation factors in [1-x, 1+x]",
       &c.color_jitter},
      {"mean", "Normalisation mean per channel (0..1); default: the dataset's", &c.mean},
      {"std", "Normalisation std per channel (0..1); default: the dataset's", &c.std},
      {"max-corrupt", "Corrupt samples tolerated before stopping", &c.max_corrupt},
      {"cache-dir", "Remote data-path: local shard cache (default ~/.cache/stride; ranks of a host may share it)",
       &c.cache_dir},
      {"cache-limit", "Remote data-path: cache size limit in bytes (0: unlimited); evicts by Belady's rule",
       &c.cache_limit},
      {"prefetch-shards", "Remote data-path: shards fetched ahead, in the order this rank reads them",
       &c.prefetch_shards},
      {"fetch-timeout", "Remote data-path: seconds per HTTP request attempt", &c.fetch_timeout},
      {"fetch-retries", "Remote data-path: retries of a failed fetch (5xx, reset, short read, timeout)",
       &c.fetch_retries},
      {"batch-size", "Images per rank per step (with --global-batch: the largest per-rank micro-batch)", &c.batch_size},
      {"global-batch",
       "Images per optimizer step over all ranks (0: --batch-size x ranks x --accum-steps); the per-rank batch and "
       "the accumulation steps follow from it and the number of ranks at start (docs/training.md)",
       &c.global_batch},
      {"epochs", "Training epochs", &c.epochs},
      {"max-steps", "Stop after this many optimizer steps in total (0: no limit)", &c.max_steps},
      {"lr", "Base learning rate", &c.lr},
      {"lr-scaling", "none | linear (lr x global batch / 256)", &c.lr_scaling},
      {"momentum", "SGD momentum", &c.momentum},
      {"nesterov", "Nesterov momentum", &c.nesterov},
      {"opt", "Optimizer: sgd | sgd_nesterov | lars | lamb (docs/training.md)", &c.opt},
      {"lars-eta", "LARS trust coefficient eta (trust ratio eta x |w| / (|g| + wd x |w|))", &c.lars_eta},
      {"lamb-beta1", "LAMB first-moment decay", &c.lamb_beta1},
      {"lamb-beta2", "LAMB second-moment decay", &c.lamb_beta2},
      {"lamb-eps", "LAMB epsilon added to the second moment's square root", &c.lamb_eps},
      {"weight-decay", "L2 weight decay", &c.weight_decay},
      {"norm-weight-decay",
       "Weight decay for BN and bias parameters (<0: same as weight-decay with sgd, none with lars and lamb)",
       &c.norm_weight_decay},
      {"label-smoothing", "Label smoothing epsilon", &c.label_smoothing},
      {"mixup-alpha", "MixUp Beta(alpha, alpha); 0: off", &c.mixup_alpha},
      {"cutmix-alpha", "CutMix Beta(alpha, alpha); 0: off", &c.cutmix_alpha},
      {"lr-scheduler", "cosine | step | multistep | poly | constant", &c.lr_scheduler},
      {"lr-warmup-epochs", "Warmup length in epochs (fractions allowed)", &c.lr_warmup_epochs},
      {"lr-warmup-method", "linear | constant", &c.lr_warmup_method},
      {"lr-warmup-decay", "Warmup starts at lr x this", &c.lr_warmup_decay},
      {"lr-step-size", "step: epochs between decays", &c.lr_step_size},
      {"lr-milestones", "multistep: epochs at which lr is multiplied by lr-gamma", &c.lr_milestones},
      {"lr-gamma", "step/multistep decay factor", &c.lr_gamma},
      {"lr-min", "cosine and poly: final learning rate", &c.lr_min},
      {"lr-power", "poly: lr-min + (lr - lr-min) x (1 - t)^power over the steps after the warm-up", &c.lr_power},
      {"clip-grad-norm", "Clip the global gradient norm to this (0: off)", &c.clip_grad_norm},
      {"accum-steps", "Micro-batches accumulated per optimizer step", &c.accum_steps},
      {"model-ema", "Keep an exponential moving average of the weights and evaluate it too", &c.model_ema},
      {"model-ema-decay", "EMA decay per optimizer step (per update, rescaled, with --model-ema-steps)",
       &c.model_ema_decay},
      {"model-ema-steps",
       "torchvision's EMA cadence: update every N steps, decay rescaled by world x batch x N / epochs (0: every "
       "step, decay as given)",
       &c.model_ema_steps},
      {"output-dir", "Run directory (config, metrics, checkpoints)", &c.output_dir},
      {"resume",
       "auto (the newest valid checkpoint of output-dir's current lineage: LATEST or its ancestors) or a checkpoint "
       "directory",
       &c.resume},
      {"allow-config-change",
       "Resume even though settings that change the result (lr, schedule, augmentation, ...) differ from the "
       "checkpoint's run",
       &c.allow_config_change},
      {"checkpoint-every",
       "Optimizer steps between checkpoints (0: end of each epoch only), or auto: sqrt(2 x checkpoint stall x MTBF) "
       "(Young/Daly) from measured figures, re-evaluated as they change",
       &c.checkpoint_every},
      {"mtbf",
       "checkpoint-every auto: prior mean time between failures of the job (8h, 30m, 2d, seconds); the job's own "
       "restarts and clean running time refine it",
       &c.mtbf},
      {"keep-checkpoints", "Committed checkpoints kept", &c.keep_checkpoints},
      {"snapshot-every",
       "Optimizer steps between in-memory snapshots of every rank's state (0: none); a restart resumes from the "
       "newest snapshot complete on every rank when it is newer than the last checkpoint",
       &c.snapshot_every},
      {"snapshot-dir",
       "Where snapshots are kept, on a RAM-backed file system (default: /dev/shm/stride-snapshots/<run>-<hash>)",
       &c.snapshot_dir},
      {"snapshot-buddy",
       "auto | on | off: each rank also keeps a copy of another host's rank's snapshots, so that losing a whole host "
       "still leaves one (auto: when the job spans hosts with equal numbers of ranks; on: fail otherwise)",
       &c.snapshot_buddy},
      {"print-freq", "Steps between progress lines", &c.print_freq},
      {"eval-freq", "Epochs between evaluations (0: only after the last epoch)", &c.eval_freq},
      {"test-only", "Only evaluate (with --weights or --resume)", &c.test_only},
      {"seed", "Seed for weights, data order and augmentation", &c.seed},
      {"threads", "Intra-op threads (0: LibTorch's default)", &c.threads},
      {"amp",
       "Automatic mixed precision: autocast (CUDA: float16 with dynamic loss scaling; CPU: bfloat16 where the CPU has "
       "bf16 instructions)",
       &c.amp},
      {"amp-dtype", "auto | float16 (CUDA only) | bfloat16", &c.amp_dtype},
      {"amp-force", "CPU: bf16 autocast even on a CPU without bf16 instructions (emulated, slow)", &c.amp_force},
      {"device", "auto (a GPU when one is visible; rank r uses GPU local_rank) | cpu | cuda", &c.device},
      {"channels-last", "NHWC memory format for activations and convolution weights (faster with AMP)",
       &c.channels_last},
      {"comm-backend", "auto | single | mpi | nccl (auto: mpi when started by mpirun/srun with several ranks)",
       &c.comm_backend},
      {"comm-timeout", "Seconds a collective may take before the run stops with exit code 75", &c.comm_timeout},
      {"bucket-cap-mb",
       "Gradient bucket size cap in MiB (the first bucket is 1 MiB at most), or auto: time the first steps at 1, 4, "
       "16, 25 and 64 MiB and keep the fastest (rank 0 decides for all)",
       &c.bucket_cap_mb},
      {"bucket-tune-steps", "bucket-cap-mb auto: timed optimizer steps per candidate cap (the median counts)",
       &c.bucket_tune_steps},
      {"grad-compression",
       "none | fp16 | bf16 | powersgd: communicate gradients in 16 bits, or as low-rank factors with error feedback "
       "(PowerSGD)",
       &c.grad_compression},
      {"powersgd-rank",
       "PowerSGD: rank of each gradient matrix's approximation (1-4 typical; more is closer and costs more)",
       &c.powersgd_rank},
      {"powersgd-warmup-steps", "PowerSGD: optimizer steps of plain all-reduce before compression starts",
       &c.powersgd_warmup_steps},
      {"job", "Job name shown by the status endpoint (default: the output directory's name)", &c.job},
      {"status-port",
       "Port of the HTTP status endpoint (0: any free port, -1: off; a taken port falls back to a free one)",
       &c.status_port},
      {"status-bind", "Address the status endpoint listens on", &c.status_bind},
      {"coordinator-bind",
       "Address rank 0's coordinator listens on for the ranks (another host's ranks need an "
       "address they can reach, e.g. 0.0.0.0)",
       &c.coordinator_bind},
      {"heartbeat-interval", "Seconds between a rank's heartbeats to the coordinator", &c.heartbeat_interval},
      {"heartbeat-timeout", "Seconds of silence after which a rank is declared dead and the job stops (exit code 75)",
       &c.heartbeat_timeout},
      {"control-every", "Steps between the ranks' agreement on checkpoint/stop requests (a tiny collective)",
       &c.control_every},
      {"straggler-threshold",
       "Coordinator: a rank whose compute time per step exceeds the median of the other ranks' by this fraction "
       "(0.2: 20%) is a straggler",
       &c.straggler_threshold},
      {"straggler-window",
       "Coordinator: consecutive heartbeats (with new steps) over the threshold before a rank is flagged, and "
       "within it before the flag clears",
       &c.straggler_window},
      {"use-deterministic-algorithms", "Make LibTorch refuse nondeterministic kernels (torchvision's flag)",
       &c.use_deterministic_algorithms},
      {"eval-hflip", "Test-time augmentation: evaluation averages the logits of each image and its horizontal mirror",
       &c.eval_hflip},
      {"trace-samples",
       "Append every step's sample ids to RUN/samples/rank-R.txt (checks the sample order across "
       "resumes and world sizes)",
       &c.trace_samples},
      {"flight-recorder",
       "Collectives each rank's flight recorder keeps for hang diagnosis and `stride trace` (0: off)",
       &c.flight_recorder},
      {"hang-report-after",
       "Seconds a collective may stay open before the coordinator names the rank(s) the others wait for",
       &c.hang_report_after},
  };
}

void add_train_options(CLI::App& cmd, TrainConfig& config) {
  // torchvision's train.py spellings of the same options (docs/training.md lists the mapping).
  static const std::map<std::string, std::string> aliases = {
      {"batch-size", ",-b"}, {"workers", ",-j"}, {"weight-decay", ",--wd"}, {"image-size", ",--train-crop-size"}};
  cmd.add_option("--config", config.config_file, "TOML file whose keys are these flag names");
  for (auto& spec : option_specs(config)) {
    const auto alias = aliases.find(spec.name);
    const std::string flag = "--" + spec.name + (alias != aliases.end() ? alias->second : "");
    std::visit(
        [&](auto* p) {
          using T = std::remove_pointer_t<decltype(p)>;
          if constexpr (std::is_same_v<T, bool>) {
            cmd.add_flag(flag + ",!--no-" + spec.name, *p, spec.help);
          } else if constexpr (std::is_same_v<T, std::vector<int64_t>> || std::is_same_v<T, std::vector<double>> ||
                               std::is_same_v<T, std::vector<std::string>>) {
            cmd.add_option(flag, *p, spec.help)->delimiter(',');
          } else {
            cmd.add_option(flag, *p, spec.help)->capture_default_str();
          }
        },
        spec.target);
  }
}

namespace {

template <typename T>
T get_as(const toml::node& node, const std::string& where, const char* type) {
  if constexpr (std::is_same_v<T, double>) {
    if (auto v = node.value<double>()) return *v;  // integers convert too
  } else {
    if (auto v = node.value_exact<T>()) return *v;
  }
  throw UsageError(concat(where, ": expected ", type, ", got ", toml::node_type(node.type())));
}

void assign(const toml::node& node, OptionTarget target, const std::string& where) {
  std::visit(
      [&](auto* p) {
        using T = std::remove_pointer_t<decltype(p)>;
        if constexpr (std::is_same_v<T, int64_t>) {
          *p = get_as<int64_t>(node, where, "an integer");
        } else if constexpr (std::is_same_v<T, double>) {
          *p = get_as<double>(node, where, "a number");
        } else if constexpr (std::is_same_v<T, bool>) {
          *p = get_as<bool>(node, where, "true or false");
        } else if constexpr (std::is_same_v<T, std::string>) {
          // checkpoint-every and bucket-cap-mb are "auto" or a number; older config.toml files hold the number.
          if (auto i = node.value_exact<int64_t>()) {
            *p = std::to_string(*i);
            return;
          }
          if (auto d = node.value_exact<double>()) {
            char buf[32];
            const auto r = std::to_chars(buf, buf + sizeof(buf), *d);
            *p = std::string(buf, r.ptr);
            return;
          }
          *p = get_as<std::string>(node, where, "a string");
        } else {
          const auto* arr = node.as_array();
          if (!arr) throw UsageError(concat(where, ": expected an array"));
          p->clear();
          using E = typename T::value_type;
          for (const auto& e : *arr) {
            if constexpr (std::is_same_v<E, int64_t>) p->push_back(get_as<int64_t>(e, where, "integers"));
            if constexpr (std::is_same_v<E, double>) p->push_back(get_as<double>(e, where, "numbers"));
            if constexpr (std::is_same_v<E, std::string>) p->push_back(get_as<std::string>(e, where, "strings"));
          }
        }
      },
      target);
}

toml::table parse_file_or_text(const std::string& text_or_path, const std::string& source, bool is_path) {
  try {
    return is_path ? toml::parse_file(text_or_path) : toml::parse(text_or_path, source);
  } catch (const toml::parse_error& e) {
    const auto& where = e.source().begin;
    throw UsageError(concat(source, ":", where.line, ":", where.column, ": ", e.description()));
  }
}

void apply_table(const toml::table& table, const std::string& source, TrainConfig& config,
                 const std::function<bool(const std::string&)>& skip) {
  auto specs = option_specs(config);
  for (const auto& [key, node] : table) {
    std::string name(key.str());
    std::replace(name.begin(), name.end(), '_', '-');
    auto it = std::find_if(specs.begin(), specs.end(), [&](const OptionSpec& s) { return s.name == name; });
    if (it == specs.end()) {
      throw UsageError(concat(source, ": unknown key '", key.str(), "' (`stride train --help` lists the keys)"));
    }
    if (skip && skip(name)) continue;
    assign(node, it->target, concat(source, ": key '", key.str(), "'"));
  }
}

}  // namespace

void apply_config_file(const std::string& path, CLI::App& cmd, TrainConfig& config) {
  if (!std::filesystem::exists(path)) throw UsageError(concat("config file ", path, " does not exist"));
  const auto table = parse_file_or_text(path, path, true);
  apply_table(table, path, config, [&](const std::string& name) { return cmd.count("--" + name) > 0; });
}

void parse_toml(const std::string& text, const std::string& source, TrainConfig& config) {
  apply_table(parse_file_or_text(text, source, false), source, config, {});
}

void normalize_aliases(TrainConfig& c) {
  static const std::map<std::string, std::string> schedulers = {{"steplr", "step"},
                                                                {"cosineannealinglr", "cosine"},
                                                                {"multisteplr", "multistep"},
                                                                {"constantlr", "constant"},
                                                                {"polynomiallr", "poly"}};
  if (auto it = schedulers.find(c.lr_scheduler); it != schedulers.end()) c.lr_scheduler = it->second;
  if (c.opt == "sgd_nesterov") {
    c.opt = "sgd";
    c.nesterov = true;
  }
  if (c.workers == 0) c.workers = 1;  // torchvision: load in the main process; here one loader thread
}

bool checkpoint_every_auto(const TrainConfig& c) { return c.checkpoint_every == "auto"; }

int64_t checkpoint_every_steps(const TrainConfig& c) {
  if (checkpoint_every_auto(c)) return 0;
  const std::string& v = c.checkpoint_every;
  size_t used = 0;
  int64_t steps = -1;
  try {
    steps = std::stoll(v, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (v.empty() || used != v.size() || steps < 0) {
    throw UsageError(
        concat("--checkpoint-every must be auto or a number of steps >= 0 (0: epoch ends only), got '", v, "'"));
  }
  return steps;
}

bool bucket_cap_auto(const TrainConfig& c) { return c.bucket_cap_mb == "auto"; }

int64_t bucket_cap_bytes(const TrainConfig& c) { return parse_bucket_cap_mb(c.bucket_cap_mb); }

int64_t parse_bucket_cap_mb(const std::string& v) {
  if (v == "auto") return 0;
  size_t used = 0;
  double mb = 0.0;
  try {
    mb = std::stod(v, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  const double bytes = mb * 1024.0 * 1024.0;
  if (v.empty() || used != v.size() || !(bytes >= 1.0) || !std::isfinite(bytes) || bytes > 1e15) {
    throw UsageError(
        concat("--bucket-cap-mb must be positive (a size in MiB) or auto, got '", v, "'", did_you_mean(v, {"auto"})));
  }
  return static_cast<int64_t>(bytes);
}

void validate(const TrainConfig& c) {
  auto positive = [](const char* key, int64_t v) {
    if (v <= 0) throw UsageError(concat("--", key, " must be positive, got ", v));
  };
  auto non_negative = [](const char* key, double v) {
    if (!(v >= 0.0)) throw UsageError(concat("--", key, " must be >= 0, got ", v));
  };
  auto one_of = [](const char* key, const std::string& v, std::initializer_list<const char*> allowed) {
    std::string list;
    std::vector<std::string> names;
    for (const char* a : allowed) {
      if (v == a) return;
      list += (list.empty() ? "" : ", ") + std::string(a);
      names.emplace_back(a);
    }
    throw UsageError(concat("--", key, " must be one of ", list, "; got '", v, "'", did_you_mean(v, names)));
  };
  positive("batch-size", c.batch_size);
  positive("epochs", c.epochs);
  positive("workers", c.workers);
  positive("prefetch", c.prefetch);
  non_negative("cache-limit", static_cast<double>(c.cache_limit));
  non_negative("prefetch-shards", static_cast<double>(c.prefetch_shards));
  if (!(c.fetch_timeout > 0.0)) throw UsageError(concat("--fetch-timeout must be positive, got ", c.fetch_timeout));
  non_negative("fetch-retries", static_cast<double>(c.fetch_retries));
  positive("accum-steps", c.accum_steps);
  positive("keep-checkpoints", c.keep_checkpoints);
  non_negative("snapshot-every", static_cast<double>(c.snapshot_every));
  positive("print-freq", c.print_freq);
  if (c.lr <= 0.0 || !std::isfinite(c.lr)) throw UsageError(concat("--lr must be positive, got ", c.lr));
  non_negative("momentum", c.momentum);
  non_negative("weight-decay", c.weight_decay);
  non_negative("lr-warmup-epochs", c.lr_warmup_epochs);
  non_negative("clip-grad-norm", c.clip_grad_norm);
  non_negative("mixup-alpha", c.mixup_alpha);
  non_negative("cutmix-alpha", c.cutmix_alpha);
  non_negative("max-steps", static_cast<double>(c.max_steps));
  checkpoint_every_steps(c);  // throws on anything but "auto" or a step count
  if (checkpoint_every_auto(c)) parse_duration_seconds(c.mtbf, "mtbf");
  if (!(c.straggler_threshold > 0.0) || !std::isfinite(c.straggler_threshold)) {
    throw UsageError(concat("--straggler-threshold must be a positive fraction (0.2: 20% slower than the peers), got ",
                            c.straggler_threshold));
  }
  if (c.straggler_window < 1) {
    throw UsageError(concat("--straggler-window must be at least 1 heartbeat, got ", c.straggler_window));
  }
  non_negative("cutout", static_cast<double>(c.cutout));
  non_negative("eval-freq", static_cast<double>(c.eval_freq));
  non_negative("pad", static_cast<double>(c.pad));
  non_negative("image-size", static_cast<double>(c.image_size));
  non_negative("val-crop-size", static_cast<double>(c.val_crop_size));
  non_negative("val-resize-size", static_cast<double>(c.val_resize_size));
  one_of("comm-backend", c.comm_backend, {"auto", "single", "mpi", "nccl"});
  one_of("snapshot-buddy", c.snapshot_buddy, {"auto", "on", "off"});
  one_of("device", c.device, {"auto", "cpu", "cuda"});
  one_of("amp-dtype", c.amp_dtype, {"auto", "float16", "bfloat16"});
  one_of("grad-compression", c.grad_compression, {"none", "fp16", "bf16", "powersgd"});
  positive("powersgd-rank", c.powersgd_rank);
  non_negative("powersgd-warmup-steps", static_cast<double>(c.powersgd_warmup_steps));
  if (!(c.comm_timeout > 0.0)) throw UsageError(concat("--comm-timeout must be positive, got ", c.comm_timeout));
  if (c.status_port < -1 || c.status_port > 65535)
    throw UsageError(concat("--status-port must be -1 (off), 0 (any) or a port number, got ", c.status_port));
  if (!(c.heartbeat_interval > 0.0))
    throw UsageError(concat("--heartbeat-interval must be positive, got ", c.heartbeat_interval));
  if (!(c.heartbeat_timeout > c.heartbeat_interval))
    throw UsageError(concat("--heartbeat-timeout must exceed --heartbeat-interval, got ", c.heartbeat_timeout));
  if (c.flight_recorder < 0 || c.flight_recorder > 10000000)
    throw UsageError(concat("--flight-recorder must be 0 (off) to 10000000 collectives, got ", c.flight_recorder));
  if (!(c.hang_report_after > 0.0) || !std::isfinite(c.hang_report_after))
    throw UsageError(concat("--hang-report-after must be a positive number of seconds, got ", c.hang_report_after));
  if (c.control_every < 1) throw UsageError(concat("--control-every must be positive, got ", c.control_every));
  bucket_cap_bytes(c);  // throws on anything but "auto" or a positive size
  positive("bucket-tune-steps", c.bucket_tune_steps);
  if (bucket_cap_auto(c) && c.grad_compression == "powersgd") {
    throw UsageError(
        "--bucket-cap-mb auto does not combine with --grad-compression powersgd (its per-bucket state cannot be "
        "re-cut, and its first steps are uncompressed, so they would time the wrong thing): give a size in MiB");
  }
  if (c.label_smoothing < 0.0 || c.label_smoothing >= 1.0)
    throw UsageError(concat("--label-smoothing must be in [0, 1), got ", c.label_smoothing));
  if (c.momentum >= 1.0) throw UsageError(concat("--momentum must be < 1, got ", c.momentum));
  if (c.nesterov && c.momentum <= 0.0) throw UsageError("--nesterov needs --momentum > 0");
  if (c.model_ema_decay <= 0.0 || c.model_ema_decay >= 1.0)
    throw UsageError(concat("--model-ema-decay must be in (0, 1), got ", c.model_ema_decay));
  if (c.random_erase < 0.0 || c.random_erase > 1.0)
    throw UsageError(concat("--random-erase must be in [0, 1], got ", c.random_erase));
  data::parse_auto_augment(c.auto_augment);  // names the flag and the choices
  if (c.ra_magnitude < 0 || c.ra_magnitude > 30) {
    throw UsageError(concat("--ra-magnitude must be a bin of RandAugment's 31, 0..30, got ", c.ra_magnitude));
  }
  if (c.ra_num_ops < 1) throw UsageError(concat("--ra-num-ops must be at least 1, got ", c.ra_num_ops));
  if (c.ra_reps < 1) throw UsageError(concat("--ra-reps must be at least 1 (copies of each sample), got ", c.ra_reps));
  if (c.color_jitter.size() > 3) {
    throw UsageError(
        concat("--color-jitter takes up to three strengths B[,C[,S]] (brightness, contrast, saturation), "
               "got ",
               c.color_jitter.size(), " values; a hue term is not supported"));
  }
  for (double v : c.color_jitter) {
    if (!(v >= 0.0) || !std::isfinite(v)) throw UsageError(concat("--color-jitter strengths must be >= 0, got ", v));
  }
  one_of("lr-scheduler", c.lr_scheduler, {"cosine", "step", "multistep", "poly", "constant"});
  one_of("opt", c.opt, {"sgd", "sgd_nesterov", "lars", "lamb"});
  if (c.opt == "lamb" && c.nesterov) throw UsageError("--nesterov applies to --opt sgd and lars, not lamb");
  if (!(c.lars_eta > 0.0)) throw UsageError(concat("--lars-eta must be positive, got ", c.lars_eta));
  if (!(c.lamb_beta1 >= 0.0 && c.lamb_beta1 < 1.0))
    throw UsageError(concat("--lamb-beta1 must be in [0, 1), got ", c.lamb_beta1));
  if (!(c.lamb_beta2 >= 0.0 && c.lamb_beta2 < 1.0))
    throw UsageError(concat("--lamb-beta2 must be in [0, 1), got ", c.lamb_beta2));
  if (!(c.lamb_eps > 0.0)) throw UsageError(concat("--lamb-eps must be positive, got ", c.lamb_eps));
  if (!(c.lr_power > 0.0)) throw UsageError(concat("--lr-power must be positive, got ", c.lr_power));
  non_negative("global-batch", static_cast<double>(c.global_batch));
  one_of("adapt-stem", c.adapt_stem, {"sum", "mean", "none"});
  if (c.model_ema_steps < 0) throw UsageError(concat("--model-ema-steps must be 0 or more, got ", c.model_ema_steps));
  one_of("lr-warmup-method", c.lr_warmup_method, {"linear", "constant"});
  one_of("lr-scaling", c.lr_scaling, {"none", "linear"});
  one_of("dataset", c.dataset, {"shards", "fashion-mnist", "cifar10", "imagefolder"});
  one_of("crop", c.crop, {"pad-crop", "random-resized", "none"});
  if (c.lr_scheduler == "step") positive("lr-step-size", c.lr_step_size);
  if (c.lr_scheduler == "multistep" && c.lr_milestones.empty())
    throw UsageError("--lr-milestones is required with --lr-scheduler multistep");
  if (c.mean.size() != c.std.size()) {
    throw UsageError(concat("--mean has ", c.mean.size(), " values but --std has ", c.std.size()));
  }
  for (double s : c.std) {
    if (s <= 0.0) throw UsageError(concat("--std values must be positive, got ", s));
  }
  if (!c.resume.empty() && !c.weights.empty()) throw UsageError("--resume and --weights are exclusive");
  if (c.output_dir.empty()) throw UsageError("--output-dir must not be empty");
}

void resolve_global_batch(TrainConfig& c, int64_t world) {
  if (c.global_batch <= 0) return;
  const int64_t n = c.global_batch;
  if (c.accum_steps != 1) {
    throw UsageError(concat("--global-batch ", n, " and --accum-steps ", c.accum_steps,
                            " are exclusive: --global-batch derives the accumulation steps (and --batch-size is then "
                            "the largest per-rank micro-batch)"));
  }
  if (world <= 0 || n % world != 0) {
    throw UsageError(concat("--global-batch ", n, " is not a multiple of the ", world,
                            " ranks: every rank must take the same share; choose a --global-batch divisible by ", world,
                            " or another number of ranks"));
  }
  const int64_t per_rank = n / world;
  // The fewest micro-batches whose equal size fits --batch-size (accumulation fills what the ranks lack).
  int64_t accum = (per_rank + c.batch_size - 1) / c.batch_size;
  while (per_rank % accum != 0) ++accum;
  c.accum_steps = accum;
  c.batch_size = per_rank / accum;
}

namespace {

// A double in the shortest form that reads back as the same value ("0.1", not toml++'s 0.10000000000000001).
std::string toml_double(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  char buf[32];
  const auto r = std::to_chars(buf, buf + sizeof(buf), v);
  std::string s(buf, r.ptr);
  if (s.find_first_of(".e") == std::string::npos) s += ".0";
  return s;
}

std::string toml_string(const std::string& v) {
  std::ostringstream out;
  out << toml::value<std::string>(v);  // quoted and escaped by toml++
  return out.str();
}

template <typename T>
std::string toml_scalar(const T& v) {
  if constexpr (std::is_same_v<T, bool>) {
    return v ? "true" : "false";
  } else if constexpr (std::is_same_v<T, double>) {
    return toml_double(v);
  } else if constexpr (std::is_same_v<T, std::string>) {
    return toml_string(v);
  } else {
    return std::to_string(v);
  }
}

}  // namespace

std::string to_toml(TrainConfig config) {
  std::map<std::string, std::string> lines;  // sorted by key
  for (auto& spec : option_specs(config)) {
    std::visit(
        [&](auto* p) {
          using T = std::remove_pointer_t<decltype(p)>;
          if constexpr (std::is_same_v<T, std::vector<int64_t>> || std::is_same_v<T, std::vector<double>> ||
                        std::is_same_v<T, std::vector<std::string>>) {
            std::string a = "[";
            for (size_t i = 0; i < p->size(); ++i) a += (i ? ", " : " ") + toml_scalar((*p)[i]);
            lines[spec.name] = a + (p->empty() ? "]" : " ]");
          } else if constexpr (std::is_same_v<T, std::string>) {
            // bucket-cap-mb is "auto" or a number: written as a number, as before it could be "auto", so older
            // runs' config.toml compare equal on resume.
            lines[spec.name] = toml_scalar(*p);
            if (spec.name == "bucket-cap-mb" && !bucket_cap_auto(config)) {
              try {
                size_t used = 0;
                const double mb = std::stod(*p, &used);
                if (used == p->size()) lines[spec.name] = toml_double(mb);
              } catch (const std::exception&) {  // not validated yet: written as the string it is
              }
            }
          } else {
            lines[spec.name] = toml_scalar(*p);
          }
        },
        spec.target);
  }
  std::ostringstream out;
  out << "# Resolved configuration of this run (defaults < --config file < command line).\n";
  for (const auto& [key, value] : lines) out << key << " = " << value << "\n";
  return out.str();
}

}  // namespace stride::trainer
