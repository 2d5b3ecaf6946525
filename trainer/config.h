// `stride train` configuration: every flag, its default, and the TOML file form (`--config run.toml`, keys are
// the flag names). Precedence: defaults < config file < command line. Not thread-safe; built once at start.
#pragma once

#include <cstdint>
#include <string>
#include <variant>
#include <vector>

namespace CLI {
class App;
}

namespace stride::trainer {

struct TrainConfig {
  // Model
  std::string model = "resnet20";
  int64_t num_classes = 0;  // 0: the dataset's
  double drop_path = 0.0;
  double dropout = 0.0;
  bool zero_init_residual = false;
  std::string weights;              // checkpoint directory or torchvision-named safetensors file
  std::string adapt_stem = "sum";   // sum | mean | none: RGB stem weights on a model of other channels
  std::vector<std::string> freeze;  // stages to freeze: stem, layer1, ...
  bool sync_bn = false;
  // Data
  std::string data_path = "datasets/fashion-mnist";
  std::string dataset =
      "shards";                // shards | fashion-mnist | cifar10 | imagefolder: shard from dataset-source if missing
  std::string dataset_source;  // "" = the format's usual location
  std::string train_split = "train";
  std::string val_split = "test";
  int64_t workers = 2;
  int64_t prefetch = 4;
  std::string crop = "pad-crop";
  int64_t pad = 4;
  int64_t image_size = 0;       // 0: the images' own size (pad-crop) / 224 (random-resized)
  int64_t val_crop_size = 0;    // evaluation side; 0: the training side (Note [One transform rule])
  int64_t val_resize_size = 0;  // evaluation resize before the centre crop (random-resized); 0: side x 256 / 224
  bool hflip = true;
  int64_t cutout = 0;
  double random_erase = 0.0;
  // torchvision's recipe augmentations (docs/data.md): --auto-augment ra | ta_wide | imagenet | cifar10 | svhn
  // ("": off), RandAugment's magnitude bin (0..30) and ops per image; repeated augmentation (--ra-sampler) with
  // ra_reps copies per sample; colour jitter strengths brightness[,contrast[,saturation]] (empty: off).
  std::string auto_augment;
  int64_t ra_magnitude = 9;
  int64_t ra_num_ops = 2;
  bool ra_sampler = false;
  int64_t ra_reps = 3;
  std::vector<double> color_jitter;
  std::vector<double> mean;  // per channel in [0, 1]; empty: the dataset's known statistics or none
  std::vector<double> std;
  int64_t max_corrupt = 100;
  // Remote data-path (http:// URL or pipe: command; docs/data.md): the local shard cache and fetch policy.
  std::string cache_dir;    // "" = $XDG_CACHE_HOME/stride or ~/.cache/stride
  int64_t cache_limit = 0;  // bytes; 0: unlimited
  int64_t prefetch_shards = 4;
  double fetch_timeout = 60.0;  // seconds per HTTP request attempt
  int64_t fetch_retries = 6;    // retries of a transient failure, with jittered exponential back-off
  // Optimisation
  int64_t batch_size = 128;  // per rank (with global_batch: the largest per-rank micro-batch)
  // > 0: the images per optimizer step over all ranks; batch_size and accum_steps are derived from it and the
  // world size at start-up (resolve_global_batch), so a restart on another number of ranks keeps it.
  int64_t global_batch = 0;
  int64_t epochs = 8;
  int64_t max_steps = 0;  // stop after this many optimizer steps in total (0: no limit)
  double lr = 0.1;
  std::string lr_scaling = "none";  // none | linear: lr x global batch / 256
  double momentum = 0.9;
  bool nesterov = false;
  std::string opt = "sgd";  // sgd | sgd_nesterov | lars | lamb (torchvision's --opt; sgd_nesterov sets nesterov)
  double lars_eta = 0.001;  // LARS trust coefficient
  double lamb_beta1 = 0.9;
  double lamb_beta2 = 0.999;
  double lamb_eps = 1e-6;
  double weight_decay = 1e-4;
  double norm_weight_decay = -1.0;  // weight decay for BN and bias parameters; < 0: same as weight-decay
  double label_smoothing = 0.0;
  double mixup_alpha = 0.0;
  double cutmix_alpha = 0.0;
  std::string lr_scheduler = "cosine";  // cosine | step | multistep | poly | constant
  double lr_warmup_epochs = 0.0;
  std::string lr_warmup_method = "linear";  // linear | constant
  double lr_warmup_decay = 0.01;
  int64_t lr_step_size = 30;
  std::vector<int64_t> lr_milestones;
  double lr_gamma = 0.1;
  double lr_min = 0.0;    // cosine and poly: the final learning rate
  double lr_power = 2.0;  // poly: the exponent
  double clip_grad_norm = 0.0;
  int64_t accum_steps = 1;
  bool model_ema = false;
  double model_ema_decay = 0.999;
  // torchvision's --model-ema-steps: 0 updates every step with model_ema_decay as given; N > 0 updates every N
  // steps with the decay rescaled as torchvision's train.py does (docs/training.md).
  int64_t model_ema_steps = 0;
  // Run
  std::string output_dir = "runs/default";
  std::string resume;                // "" | auto | PATH
  bool allow_config_change = false;  // resume even when settings that change the result differ from the checkpoint's
  // Steps between checkpoints ("0": at the end of each epoch only), or "auto": chosen from the measured cost and
  // failure rate (Note [Checkpoint interval] in trainer/checkpoint_interval.h). checkpoint_every_steps() reads it.
  std::string checkpoint_every = "0";
  std::string mtbf = "24h";  // --checkpoint-every auto: the prior mean time between failures of the job
  int64_t keep_checkpoints = 3;
  // Steps between in-memory snapshots (0: none), kept in snapshot_dir ("": default_snapshot_dir(output_dir));
  // Note [In-memory snapshots] in trainer/snapshot.h.
  int64_t snapshot_every = 0;
  std::string snapshot_dir;
  // auto | on | off: keep a copy of another rank's snapshots on another host (Note [Buddy copies]); auto: when
  // the job spans hosts with the same number of ranks on each.
  std::string snapshot_buddy = "auto";
  int64_t print_freq = 50;
  int64_t eval_freq = 1;  // epochs between evaluations; 0: only after the last epoch
  bool test_only = false;
  int64_t seed = 0;
  int64_t threads = 0;  // intra-op threads; 0: LibTorch's default
  bool amp = false;
  std::string amp_dtype = "auto";  // auto (CUDA: float16 with dynamic loss scaling; CPU: bfloat16) | float16 | bfloat16
  bool amp_force = false;          // CPU: bf16 autocast even without bf16 instructions (trainer/precision.h)
  std::string device = "auto";     // auto (CUDA when available) | cpu | cuda
  bool channels_last = false;
  // Data parallelism (docs/distributed.md)
  std::string comm_backend = "auto";  // auto | single | mpi | nccl
  double comm_timeout = 300.0;        // seconds a collective may take before the run fails (exit code 75)
  // Gradient bucket cap in MiB, or "auto": measured in the first steps (Note [Bucket cap tuning] in
  // comm/bucket_tuner.h); bucket_cap_bytes() reads it. bucket_tune_steps: timed steps per candidate cap.
  std::string bucket_cap_mb = "25";
  int64_t bucket_tune_steps = 5;
  std::string grad_compression = "none";  // none | fp16 | bf16 | powersgd
  int64_t powersgd_rank = 1;              // PowerSGD's matrix approximation rank (PyTorch's default)
  int64_t powersgd_warmup_steps = 1000;   // steps of plain all-reduce before PowerSGD starts (PyTorch 1.13's default)
  // Coordination (docs/cluster.md)
  std::string job;             // job name (default: the output directory's name)
  int64_t status_port = 8470;  // HTTP status endpoint of the coordinator rank 0 hosts; 0: any, -1: off
  std::string status_bind = "127.0.0.1";
  std::string coordinator_bind = "127.0.0.1";  // where rank 0's coordinator listens for the ranks
  double heartbeat_interval = 1.0;             // seconds between heartbeats
  double heartbeat_timeout = 30.0;             // a rank silent this long is declared dead
  int64_t control_every = 10;                  // steps between the ranks' agreement on checkpoint/stop requests
  bool trace_samples = false;                  // append each step's sample ids to RUN/samples/rank-R.txt
  int64_t flight_recorder = 2000;    // collectives each rank's flight recorder keeps (0: off; comm/flight_recorder.h)
  double hang_report_after = 30.0;   // seconds a collective may stay open before the coordinator names who is missing
  double straggler_threshold = 0.2;  // a rank computing this much slower than its peers' median is a straggler
  int64_t straggler_window = 5;      // ... for this many consecutive heartbeats (cluster/straggler_detector.h)
  bool use_deterministic_algorithms =
      false;                // torch's deterministic-algorithms switch (errors on CUDA ops without one)
  bool eval_hflip = false;  // evaluation averages the logits of each image and its mirror image
  std::string config_file;  // the --config file it came from (informational)
};

using OptionTarget = std::variant<int64_t*, double*, bool*, std::string*, std::vector<int64_t>*, std::vector<double>*,
                                  std::vector<std::string>*>;
struct OptionSpec {
  std::string name;  // flag name without dashes, also the TOML key
  std::string help;
  OptionTarget target;
};

// Every option of `stride train`, bound to the fields of `config`.
std::vector<OptionSpec> option_specs(TrainConfig& config);

// Registers the options on `cmd` (a CLI11 subcommand). Call parse, then apply_config_file, then validate.
void add_train_options(CLI::App& cmd, TrainConfig& config);
// Applies a TOML file: keys the command line did not set take the file's value. Unknown keys and wrong types
// are UsageErrors naming the file and key.
void apply_config_file(const std::string& path, CLI::App& cmd, TrainConfig& config);
// torchvision's spellings of values, rewritten to Stride's before validate(): --lr-scheduler steplr /
// cosineannealinglr / multisteplr / constantlr, --opt sgd_nesterov, --workers 0 (one loader thread).
void normalize_aliases(TrainConfig& config);
// Range and consistency checks; UsageError naming the key.
void validate(const TrainConfig& config);
// --checkpoint-every: auto, or the fixed step count (0 for auto and for epoch ends only). UsageError on others.
bool checkpoint_every_auto(const TrainConfig& config);
int64_t checkpoint_every_steps(const TrainConfig& config);
// --bucket-cap-mb: auto, or the cap in bytes (0 for auto). UsageError naming the flag on anything else.
bool bucket_cap_auto(const TrainConfig& config);
int64_t bucket_cap_bytes(const TrainConfig& config);
// A --bucket-cap-mb value in bytes: 0 for "auto"; UsageError naming the flag for anything but auto or a positive
// size in MiB (shared by `stride train` and `stride bench step`).
int64_t parse_bucket_cap_mb(const std::string& value);
// --global-batch N on `world` ranks (call once, after validate): sets accum_steps to the fewest micro-batches per
// rank whose size divides N / world and is at most --batch-size, and batch_size to that size, so that
// batch_size x world x accum_steps = N. No-op when global_batch is 0. UsageError naming the flags when N is not a
// multiple of the world size or --accum-steps is given too.
void resolve_global_batch(TrainConfig& config, int64_t world);
// The resolved configuration as TOML (what the run directory's config.toml holds).
std::string to_toml(TrainConfig config);
// Parses a TOML string into `config` (all keys; no command line). Used to read a run's config.toml back.
void parse_toml(const std::string& text, const std::string& source, TrainConfig& config);

}  // namespace stride::trainer
