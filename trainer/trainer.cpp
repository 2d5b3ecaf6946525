#include "trainer/trainer.h"

#include <ATen/core/Generator.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <set>
#include <thread>

#include "cluster/client.h"
#include "cluster/coordinator.h"
#include "comm/communicator.h"
#include "comm/reducer.h"
#include "comm/sync_batch_norm.h"
#include "common/error.h"
#include "common/file_io.h"
#include "data/crc32c.h"
#include "data/shard_index.h"
#include "models/registry.h"
#include "models/state_dict.h"
#include "trainer/amp.h"
#include "trainer/checkpoint.h"
#include "trainer/checkpoint_writer.h"
#include "trainer/data_setup.h"
#include "trainer/loss.h"
#include "trainer/run_output.h"
#include "trainer/safetensors.h"
#include "trainer/schedule.h"
#include "trainer/sgd.h"

#ifndef STRIDE_VERSION
#define STRIDE_VERSION "unknown"
#endif

namespace stride::trainer {
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

std::string format_eta(double seconds) {
  const int64_t s = static_cast<int64_t>(seconds);
  char buf[32];
  if (s >= 3600) {
    std::snprintf(buf, sizeof(buf), "%lldh%02lldm", static_cast<long long>(s / 3600),
                  static_cast<long long>(s / 60 % 60));
  } else {
    std::snprintf(buf, sizeof(buf), "%lldm%02llds", static_cast<long long>(s / 60), static_cast<long long>(s % 60));
  }
  return buf;
}

torch::Tensor rng_state() {
  auto gen = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(gen.mutex());
  return gen.get_state();
}

void set_rng_state(const torch::Tensor& state) {
  auto gen = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(gen.mutex());
  gen.set_state(state);
}

// SIGTERM, SIGINT and SIGUSR2 (Slurm's warning before the time limit) ask for a checkpoint and a clean stop; a
// second SIGINT exits at once.
std::atomic<int> g_stop_signal{0};
extern "C" void on_stop_signal(int sig) {
  if (sig == SIGINT && g_stop_signal.load() != 0) std::_Exit(130);
  g_stop_signal.store(sig);
}

int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::atoi(v) : fallback;
}

}  // namespace

struct Trainer::State {
  TrainConfig c;
  // Note [Rank identity]: from the communicator (MPI under mpirun/srun, else a single rank).
  std::shared_ptr<comm::Communicator> comm;
  std::unique_ptr<comm::GradientReducer> reducer;
  uint64_t rank = 0, world = 1;
  torch::Device device{torch::kCPU};
  torch::ScalarType amp_dtype = torch::kHalf;
  std::unique_ptr<GradScaler> scaler;
  torch::Tensor norm_scale, norm_shift;  // uint8 -> normalised float on the device: x * scale + shift
  std::unique_ptr<RunOutput> out;
  std::unique_ptr<data::ShardedLoader> train_data, eval_data;
  models::ResNet model{nullptr}, ema{nullptr};
  std::unique_ptr<Sgd> sgd;
  std::unique_ptr<LrSchedule> schedule;
  std::unique_ptr<CheckpointStore> store;
  std::string config_digest;
  int64_t step = 0;  // optimizer steps completed
  data::Cursor cursor;
  int64_t steps_per_epoch = 0;
  int64_t total_steps = 0;
  std::map<std::string, double> last_eval;
  // Coordination (Note [Coordinated checkpoints] in cluster/coordinator_core.h).
  std::unique_ptr<cluster::Coordinator> coordinator;  // rank 0 hosts one unless a launcher provides it
  std::unique_ptr<cluster::CoordinatorClient> client;
  std::unique_ptr<CheckpointWriter> writer;
  int64_t last_checkpoint_step = -1;  // the newest step checkpointed (or resumed from): never rewritten
  int64_t submitted_step = -1;        // the newest checkpoint this run handed to the writer
  proto::Heartbeat hb;
  bool stopped = false;

  void setup();
  void start_coordination();
  // Every `control_every` steps: do the ranks agree to checkpoint or stop now? Returns true to stop.
  bool control_point();
  // Waits for the newest checkpoint to be committed (end of run, stop). Throws when it was not.
  void finish_checkpoints();
  void load_weights(const std::string& path);
  void apply_freeze();
  void resume();
  void train();
  EvalResult evaluate(models::ResNet& m);
  void evaluate_and_record();
  void checkpoint();
  void update_ema();
  // Element-wise sum of `values` over all ranks (one small collective).
  std::vector<double> sum_over_ranks(std::vector<double> values);
  // Plain BN keeps per-rank running statistics; average them before they are evaluated or saved.
  void sync_buffers();
  // The batch's images on the training device, normalised and in the training memory format.
  torch::Tensor device_images(const data::Batch& batch);
  torch::Tensor to_device(const torch::Tensor& t) const;
};

Trainer::Trainer(TrainConfig config) : s_(std::make_unique<State>()) { s_->c = std::move(config); }
Trainer::~Trainer() = default;

int Trainer::run() {
  try {
    return run_unchecked();
  } catch (const comm::CommError& e) {
    // A collective failed or timed out: a peer is dead or unreachable. Exit at once with the code a supervisor
    // restarts on (the last committed checkpoint is intact); unwinding could block on the stuck collective.
    std::fprintf(stderr, "stride: error: communication failure on %s: %s\n",
                 s_->comm ? s_->comm->describe().c_str() : "this rank", e.what());
    std::fflush(stderr);
    std::fflush(stdout);
    std::_Exit(comm::kCommFailureExitCode);
  }
}

int Trainer::run_unchecked() {
  s_->setup();
  if (s_->c.test_only) {
    auto r = s_->evaluate(s_->model);
    s_->out->print(concat("test: acc1 ", r.acc1, "% acc5 ", r.acc5, "% loss ", r.loss, " (", r.count, " images)"));
    s_->out->record("eval", s_->step, {{"acc1", r.acc1}, {"acc5", r.acc5}, {"loss", r.loss}, {"test_only", true}});
    return 0;
  }
  s_->train();
  s_->finish_checkpoints();
  if (s_->client) s_->client->goodbye(!s_->stopped, s_->stopped ? "stopped on request" : "training finished");
  if (s_->coordinator) {
    // Stay up (rank 0 hosts the coordinator) until every rank said goodbye, so none loses its connection early.
    const auto deadline = Clock::now() + std::chrono::seconds(10);
    while (!s_->coordinator->finished() && Clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    cluster::remove_endpoint_file(s_->c.output_dir);
  }
  return 0;
}

// ---------------------------------------------------------------------------------------------------------
// Setup
// ---------------------------------------------------------------------------------------------------------
void Trainer::State::setup() {
  validate(c);
  const bool cuda = c.device == "cuda" || (c.device == "auto" && torch::cuda::is_available());
  if (cuda && !torch::cuda::is_available()) {
    throw UsageError("--device cuda: no CUDA device is visible (or this LibTorch build has no CUDA)");
  }
  comm::CommOptions co;
  co.backend = c.comm_backend;
  co.prefer_gpu = cuda;
  co.timeout = std::chrono::milliseconds(static_cast<int64_t>(c.comm_timeout * 1000.0));
  if (c.threads > 0) torch::set_num_threads(static_cast<int>(c.threads));
  // Compute threads plus loader workers: whether the ranks leave cores idle decides how their collectives wait.
  co.busy_threads = torch::get_num_threads() + static_cast<int>(c.workers);
  comm = comm::create_communicator(co);
  rank = static_cast<uint64_t>(comm->rank());
  world = static_cast<uint64_t>(comm->size());
  if (c.amp && !cuda) {
    throw UsageError("--amp needs a CUDA device; this machine has none (run without --amp on CPU)");
  }
  if (cuda) {
    device = torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(comm->local_rank() %
                                                                       static_cast<int>(torch::cuda::device_count())));
    at::globalContext().setBenchmarkCuDNN(true);
  }
  amp_dtype = parse_amp_dtype(c.amp_dtype);
  if (c.sync_bn && world == 1) {
    std::fprintf(stderr, "stride: note: --sync-bn with one rank is plain BatchNorm\n");
  }
  if (world > 1 && rank == 0) {
    const std::string transport = comm->transport();
    const std::string wait = comm->shm_wait();  // docs/distributed.md, STRIDE_SHM_WAIT
    const std::string note =
        transport == comm->backend()
            ? ""
            : concat(" (", transport, " within the host", wait.empty() ? "" : concat("; waiting ranks ", wait), ")");
    std::fprintf(stderr, "stride: %llu ranks over %s%s\n", static_cast<unsigned long long>(world),
                 comm->backend().c_str(), note.c_str());
  }
  // The dataset and its transforms first: a problem there stops the run before it writes anything.
  ensure_dataset(c);
  DataPlan plan = plan_data(c);
  apply_resolved(plan, c);
  if (c.num_classes <= 0 && plan.num_classes <= 0) {
    throw UsageError("the dataset does not record its classes: pass --num-classes");
  }
  fs::create_directories(c.output_dir);
  const std::string config_text =
      concat("# train transform: ", plan.train_transform, "\n# eval transform: ", plan.eval_transform,
             "\n# input: ", plan.in_channels, " channel", plan.in_channels == 1 ? "" : "s", ", ", plan.normalisation,
             "\n", to_toml(c));
  config_digest = concat(std::hex, data::crc32c(config_text.data(), config_text.size()));
  if (rank == 0) write_file_atomic((fs::path(c.output_dir) / "config.toml").string(), config_text);
  out = std::make_unique<RunOutput>(c.output_dir, rank != 0);
  out->print(concat("data: train ", plan.train_transform, "; eval ", plan.eval_transform, "; ", plan.in_channels,
                    plan.in_channels == 1 ? " channel, " : " channels, ", plan.normalisation));
  if (!c.test_only) start_coordination();

  auto make_loader = [&](data::LoaderOptions o) {
    o.rank = rank;
    o.world_size = world;
    // On a GPU the loader hands over uint8 (4x less to copy) and normalisation runs on the device; MixUp/CutMix
    // mix float images in the loader.
    if (device.is_cuda() && !o.mix.enabled()) {
      std::vector<double> scale, shift;
      for (size_t i = 0; i < std::max<size_t>(o.mean.size(), 1); ++i) {
        const double m = o.mean.empty() ? 0.0 : o.mean[i], sd = o.std.empty() ? 1.0 : o.std[i];
        scale.push_back(1.0 / (255.0 * sd));
        shift.push_back(-m / sd);
      }
      norm_scale = torch::tensor(scale, torch::kFloat).view({1, -1, 1, 1}).to(device);
      norm_shift = torch::tensor(shift, torch::kFloat).view({1, -1, 1, 1}).to(device);
      o.float_output = false;
    }
    return std::make_unique<data::ShardedLoader>(o);
  };
  eval_data = make_loader(plan.eval);
  if (!c.test_only) train_data = make_loader(plan.train);

  models::ModelOptions mo;
  mo.num_classes = c.num_classes > 0 ? c.num_classes : plan.num_classes;
  mo.in_channels = plan.in_channels;
  mo.drop_path = c.drop_path;
  mo.dropout = c.dropout;
  mo.zero_init_residual = c.zero_init_residual;
  torch::manual_seed(static_cast<uint64_t>(c.seed));
  model = models::make_model(c.model, mo);
  if (!c.weights.empty()) load_weights(c.weights);
  for (const auto& item : model->named_parameters()) {
    if (std::find(c.freeze.begin(), c.freeze.end(), models::stage_of(item.key())) != c.freeze.end()) {
      item.value().set_requires_grad(false);
    }
  }
  std::set<std::string> stages;
  for (const auto& g : model->stage_parameters()) stages.insert(g.stage);
  for (const auto& stage : c.freeze) {
    if (!stages.count(stage)) {
      throw UsageError(concat("--freeze: unknown stage '", stage, "' (", c.model, " has stem, layer1..layer",
                              model->stages().size(), ", head)"));
    }
  }
  model->to(device);
  if (c.channels_last) to_channels_last(*model);
  if (c.model_ema) {
    ema = models::make_model(c.model, mo);
    ema->to(device);
    if (c.channels_last) to_channels_last(*ema);
    models::load_state_dict(*ema, models::state_dict(*model));
    for (auto& p : ema->parameters()) p.set_requires_grad(false);
  }
  GradScalerOptions gso;
  gso.enabled = c.amp && amp_dtype == torch::kHalf;  // bfloat16 has float32's range: no scaling needed
  scaler = std::make_unique<GradScaler>(gso);

  const double lr =
      c.lr_scaling == "linear" ? c.lr * static_cast<double>(c.batch_size * static_cast<int64_t>(world)) / 256.0 : c.lr;
  sgd =
      std::make_unique<Sgd>(weight_decay_groups(model->named_parameters().pairs(), c.weight_decay, c.norm_weight_decay),
                            c.momentum, c.nesterov);
  if (train_data) {
    steps_per_epoch = static_cast<int64_t>(train_data->steps_per_epoch()) / c.accum_steps;
    if (steps_per_epoch <= 0) {
      throw UsageError(
          concat("an epoch has ", train_data->steps_per_epoch(), " batches, fewer than --accum-steps ", c.accum_steps));
    }
  } else {
    steps_per_epoch = 1;
  }
  total_steps = steps_per_epoch * c.epochs;
  ScheduleOptions so;
  so.base_lr = lr;
  so.kind = c.lr_scheduler;
  so.steps_per_epoch = steps_per_epoch;
  so.total_steps = total_steps;
  so.warmup_steps = static_cast<int64_t>(std::llround(c.lr_warmup_epochs * static_cast<double>(steps_per_epoch)));
  so.warmup_method = c.lr_warmup_method;
  so.warmup_decay = c.lr_warmup_decay;
  so.step_size_epochs = c.lr_step_size;
  so.milestones_epochs = c.lr_milestones;
  so.gamma = c.lr_gamma;
  so.lr_min = c.lr_min;
  schedule = std::make_unique<LrSchedule>(so);
  store = std::make_unique<CheckpointStore>(c.output_dir, c.keep_checkpoints);
  cursor = {0, 0, static_cast<uint64_t>(c.seed)};
  if (c.resume.empty() && !c.test_only) {
    // Starting from scratch would checkpoint over the steps of an earlier run: make the user choose.
    for (const auto& info : store->list(/*deep=*/false)) {
      if (!info.valid) continue;
      throw UsageError(concat(c.output_dir, " already holds checkpoints of a run (newest: step ", info.step,
                              "): continue it with --resume auto, or train into another --output-dir"));
    }
  }
  if (!c.resume.empty()) resume();
  if (!c.resume.empty() && step > 0) last_checkpoint_step = step;
  if (world > 1) {
    // Every replica starts from rank 0's weights and buffers (after --weights / --resume, which all ranks read).
    comm::broadcast_module_state(*model, *comm);
    if (ema) comm::broadcast_module_state(*ema, *comm);
    if (c.sync_bn) comm::convert_sync_batchnorm(*model, comm);
    if (!c.test_only) {
      comm::ReducerOptions ro;
      ro.bucket_cap_bytes = static_cast<int64_t>(c.bucket_cap_mb * 1024.0 * 1024.0);
      ro.compression = c.grad_compression;
      reducer = std::make_unique<comm::GradientReducer>(model->named_parameters().pairs(), comm, ro);
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// Coordination
// ---------------------------------------------------------------------------------------------------------
void Trainer::State::start_coordination() {
  const char* env_addr = std::getenv("STRIDE_COORDINATOR");
  const char* env_token = std::getenv("STRIDE_JOB_TOKEN");
  std::string address = env_addr ? env_addr : "", token = env_token ? env_token : "";
  const std::string ckpt_root = (fs::path(c.output_dir) / "checkpoints").string();
  if (address.empty()) {
    // Started by a bare mpirun/srun (or one process): rank 0 hosts the coordinator and tells the others where it
    // is over the communicator (the job's ranks already trust each other).
    std::string blob;
    if (rank == 0) {
      cluster::CoordinatorOptions co;
      co.core.job = !c.job.empty() ? c.job : fs::path(c.output_dir).filename().string();
      co.core.world_size = static_cast<uint32_t>(world);
      co.core.heartbeat_interval_s = c.heartbeat_interval;
      co.core.heartbeat_timeout_s = c.heartbeat_timeout;
      co.core.reconnect_grace_s = std::min(10.0, c.heartbeat_timeout);
      co.core.checkpoint_root = ckpt_root;
      co.core.keep = c.keep_checkpoints;
      co.core.restarts = env_int("STRIDE_RESTART_COUNT", env_int("SLURM_RESTART_COUNT", 0));
      co.bind = c.coordinator_bind;
      co.status_bind = c.status_bind;
      co.status_port = static_cast<int>(c.status_port);
      coordinator = std::make_unique<cluster::Coordinator>(co);
      const std::string host = c.coordinator_bind == "0.0.0.0" || c.coordinator_bind == "::" ? cluster::local_hostname()
                                                                                             : c.coordinator_bind;
      blob = concat(host, ":", coordinator->port(), "\n", coordinator->token());
      if (coordinator->status_port() >= 0) {
        out->print(
            concat("status: ", coordinator->status_url(), " (stride status --url ", coordinator->status_url(), ")"));
      }
      cluster::write_endpoint_files(*coordinator, c.output_dir, concat(host, ":", coordinator->port()),
                                    /*launcher=*/false);
    }
    if (world > 1) {
      auto t = torch::zeros({512}, torch::kByte);
      if (rank == 0) std::memcpy(t.data_ptr(), blob.data(), std::min<size_t>(blob.size(), 511));
      comm->broadcast(t, 0)->wait();
      blob = std::string(static_cast<const char*>(t.data_ptr()));
    }
    const auto nl = blob.find('\n');
    address = blob.substr(0, nl);
    token = nl == std::string::npos ? "" : blob.substr(nl + 1);
  } else if (token.empty()) {
    throw UsageError("STRIDE_COORDINATOR is set but STRIDE_JOB_TOKEN is not (both come from stride launch)");
  }
  cluster::ClientOptions o;
  o.address = address;
  o.token = token;
  o.rank = static_cast<uint32_t>(rank);
  o.world_size = static_cast<uint32_t>(world);
  o.host = cluster::local_hostname();
  o.pid = static_cast<uint32_t>(::getpid());
  o.give_up_s = c.heartbeat_timeout;
  // A launcher's coordinator counts the job's starts; one hosted here is always at its first.
  o.attempt = env_addr ? static_cast<uint32_t>(env_int("STRIDE_RESTART_COUNT", 0)) : 0;
  const uint64_t r = rank;
  client = std::make_unique<cluster::CoordinatorClient>(o, [r](const std::string& why) {
    // A peer is dead or the coordinator is gone: the last committed checkpoint is intact; exit with the code
    // supervisors restart on, without unwinding through a collective that will never complete.
    std::fprintf(stderr, "stride: error: rank %llu: %s\n", static_cast<unsigned long long>(r), why.c_str());
    std::fflush(stderr);
    std::fflush(stdout);
    std::_Exit(comm::kCommFailureExitCode);
  });
  writer = std::make_unique<CheckpointWriter>(ckpt_root, [this](proto::CheckpointReport rep) {
    if (!rep.ok()) {
      std::fprintf(stderr, "stride: error: rank %llu: checkpoint at step %llu failed: %s\n",
                   static_cast<unsigned long long>(rank), static_cast<unsigned long long>(rep.step()),
                   rep.error().c_str());
    }
    client->report(std::move(rep));
  });
  std::signal(SIGTERM, on_stop_signal);
  std::signal(SIGINT, on_stop_signal);
  std::signal(SIGUSR2, on_stop_signal);
}

bool Trainer::State::control_point() {
  if (!client) return false;
  const int sig = g_stop_signal.load();
  double ckpt = client->take_checkpoint_request() ? 1.0 : 0.0;
  double stop = client->stop_requested() || sig != 0 ? 1.0 : 0.0;
  if (world > 1) {
    auto sums = sum_over_ranks({ckpt, stop});
    ckpt = sums[0];
    stop = sums[1];
  }
  if (stop > 0) {
    out->print(concat("stop requested", sig ? concat(" (signal ", sig, ")") : std::string(), ": checkpointing at step ",
                      step));
    checkpoint();
    return true;
  }
  if (ckpt > 0) checkpoint();
  return false;
}

void Trainer::State::finish_checkpoints() {
  if (!writer || submitted_step < 0) return;
  writer->drain();
  std::string detail;
  const auto verdict = client->wait_commit(static_cast<uint64_t>(submitted_step), 300.0, &detail);
  if (verdict == cluster::CoordinatorClient::Commit::kCommitted) {
    if (stopped) {
      out->print(concat("stopped at step ", step, ": checkpoint ", detail, " committed; continue with --resume auto"));
    }
    return;
  }
  throw Error(concat("rank ", rank, ": the checkpoint at step ", submitted_step, " was not committed: ", detail));
}

std::vector<double> Trainer::State::sum_over_ranks(std::vector<double> values) {
  if (world == 1) return values;
  auto t = torch::tensor(values, torch::kDouble);
  comm->allreduce(t, comm::ReduceOp::kSum)->wait();
  auto a = t.accessor<double, 1>();
  for (size_t i = 0; i < values.size(); ++i) values[i] = a[static_cast<int64_t>(i)];
  return values;
}

void Trainer::State::sync_buffers() {
  if (world == 1 || c.sync_bn) return;  // SyncBN's running statistics are identical on every rank
  comm::average_buffers(*model, *comm);
}

void Trainer::State::load_weights(const std::string& path) {
  models::NamedTensors tensors;
  if (fs::is_directory(path)) {
    tensors = load_checkpoint(path).model;
  } else if (fs::exists(path)) {
    tensors = read_safetensors(path).tensors;
  } else {
    throw UsageError(concat("--weights ", path, " does not exist"));
  }
  models::LoadOptions lo;
  lo.source = path;
  auto fc = tensors.find("fc.weight");
  if (fc != tensors.end() && fc->second.size(0) != model->num_classes()) {
    lo.skip_prefixes = {"fc."};  // a new head for a different number of classes
    out->print(concat("weights: ", path, " has ", fc->second.size(0), " classes; the head is new (",
                      model->num_classes(), " classes)"));
  }
  auto report = models::load_state_dict(*model, tensors, lo);
  out->print(concat("weights: loaded ", report.loaded.size(), " tensors from ", path));
}

void Trainer::State::resume() {
  std::optional<std::string> path;
  if (c.resume == "auto") {
    std::vector<CheckpointInfo> skipped;
    auto latest = store->latest(&skipped);
    for (const auto& s : skipped) {
      std::fprintf(stderr, "stride: warning: skipping checkpoint %s: %s\n", s.path.c_str(), s.problem.c_str());
    }
    if (!latest) {
      out->print(concat("resume: no checkpoint in ", store->dir(), "; starting from scratch"));
      return;
    }
    path = latest->path;
  } else {
    path = c.resume;
  }
  auto ckpt = load_checkpoint(*path);
  const auto& m = ckpt.manifest;
  if (m.model() != c.model) {
    throw UsageError(concat("checkpoint ", *path, " is of model ", m.model(), ", not ", c.model));
  }
  models::load_state_dict(*model, ckpt.model, {true, {}, *path + "/model.safetensors"});
  for (auto& [name, buf] : ckpt.optimizer) sgd->momentum_buffers()[name] = buf.to(device);
  {
    std::map<std::string, torch::Tensor> amp_state;
    for (const auto& [k, v] : ckpt.state) {
      if (k.rfind("amp.", 0) == 0) amp_state[k] = v;
    }
    if (!amp_state.empty() && scaler->enabled()) scaler->load_state(amp_state);
  }
  if (ema) {
    if (ckpt.ema.empty()) {
      models::load_state_dict(*ema, models::state_dict(*model));
    } else {
      models::load_state_dict(*ema, ckpt.ema, {true, {}, *path + "/ema.safetensors"});
    }
  }
  if (ckpt.state.count("rng")) set_rng_state(ckpt.state.at("rng"));
  step = static_cast<int64_t>(m.step());
  cursor = {m.cursor().epoch(), m.cursor().consumed(), m.cursor().seed()};
  const uint64_t global_batch = static_cast<uint64_t>(c.batch_size) * world;
  if (m.global_batch() != global_batch) {
    std::fprintf(stderr, "stride: warning: global batch changes from %llu to %llu on resume\n",
                 static_cast<unsigned long long>(m.global_batch()), static_cast<unsigned long long>(global_batch));
  }
  for (const auto& [k, v] : m.metrics()) last_eval[k] = v;
  if (c.resume != "auto") {
    for (const auto& info : store->list(/*deep=*/false)) {
      if (info.valid && info.step > m.step()) {
        std::fprintf(stderr,
                     "stride: warning: %s holds newer checkpoints (up to step %llu); they are replaced as training "
                     "passes their steps\n",
                     store->dir().c_str(), static_cast<unsigned long long>(info.step));
        break;
      }
    }
  }
  out->print(
      concat("resume: ", *path, " (step ", step, ", epoch ", cursor.epoch, ", ", cursor.consumed, " samples into it)"));
}

void Trainer::State::apply_freeze() {
  if (c.freeze.empty()) return;
  for (const auto& item : model->named_modules("", /*include_self=*/false)) {
    if (item.value()->as<models::Norm2d>() &&
        std::find(c.freeze.begin(), c.freeze.end(), models::stage_of(item.key() + ".")) != c.freeze.end()) {
      item.value()->eval();  // frozen BN keeps its running statistics
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// Loop
// ---------------------------------------------------------------------------------------------------------
void Trainer::State::update_ema() {
  torch::NoGradGuard no_grad;
  const double d = c.model_ema_decay;
  auto src = model->named_parameters();
  for (auto& p : ema->named_parameters()) p.value().mul_(d).add_(src[p.key()], 1.0 - d);
  auto bufs = model->named_buffers();
  for (auto& b : ema->named_buffers()) b.value().copy_(bufs[b.key()]);
}

void Trainer::State::train() {
  const int64_t limit = c.max_steps > 0 ? std::min(c.max_steps, total_steps) : total_steps;
  out->print(concat("train: ", c.model, " (", models::count_parameters(*model), " parameters), ",
                    train_data->num_samples(), " training images, ", steps_per_epoch, " steps/epoch x ", c.epochs,
                    " epochs, global batch ", c.batch_size * static_cast<int64_t>(world) * c.accum_steps));
  const auto run_start = Clock::now();
  const int64_t first_step = step;
  hb.set_total_steps(static_cast<uint64_t>(limit));
  std::ofstream trace;  // --trace-samples: "epoch batch id id ..." per micro-batch, valid samples only
  if (c.trace_samples) {
    fs::create_directories(fs::path(c.output_dir) / "samples");
    trace.open(fs::path(c.output_dir) / "samples" / concat("rank-", rank, ".txt"), std::ios::app);
  }
  double data_wait_mark = 0.0, comm_wait_mark = 0.0;
  int64_t interval_first_step = step;
  while (!stopped && step < limit && cursor.epoch < static_cast<uint64_t>(c.epochs)) {
    train_data->start(cursor);
    model->train();
    apply_freeze();
    sgd->zero_grad();
    int64_t micro = 0, images = 0, skipped_steps = 0;
    double loss_sum = 0.0, epoch_loss_sum = 0.0;
    int64_t loss_count = 0, epoch_batches = 0, epoch_correct = 0, epoch_seen = 0, interval_correct = 0,
            interval_seen = 0;
    auto interval_start = Clock::now();
    // Running sums stay on the device and are read at print time: no host synchronisation per step on a GPU.
    auto dev_sums = torch::zeros({4}, torch::TensorOptions().dtype(torch::kDouble).device(device));
    auto take_sums = [&] {  // {loss sum, batches, correct, seen} since the last call
      auto host = dev_sums.to(torch::kCPU, /*non_blocking=*/false, /*copy=*/true);  // .cpu() would alias on CPU
      dev_sums.zero_();
      auto a = host.accessor<double, 1>();
      return std::array<double, 4>{a[0], a[1], a[2], a[3]};
    };
    while (auto batch = train_data->next()) {
      if (trace.is_open()) {
        trace << cursor.epoch << ' ' << batch->step;
        const auto valid_host = batch->valid.to(torch::kBool);
        auto ids = batch->sample_ids.accessor<int64_t, 1>();
        auto ok = valid_host.accessor<bool, 1>();
        for (int64_t i = 0; i < ids.size(0); ++i) {
          if (ok[i]) trace << ' ' << ids[i];
        }
        trace << '\n';
        trace.flush();
      }
      auto x = device_images(*batch);
      auto labels = to_device(batch->labels), valid = to_device(batch->valid);
      auto target = batch->targets.defined() ? to_device(batch->targets) : labels;
      torch::Tensor logits, loss;
      {
        AutocastGuard autocast(device, amp_dtype, c.amp);
        logits = model->forward(x);
        loss = cross_entropy(logits, target, c.label_smoothing, valid);
      }
      const bool last_micro = (micro + 1) % c.accum_steps == 0;
      if (reducer) reducer->prepare(/*reduce=*/last_micro);
      scaler->scale(c.accum_steps > 1 ? loss / static_cast<double>(c.accum_steps) : loss).backward();
      if (reducer && last_micro) reducer->finish();
      {
        torch::NoGradGuard no_grad;
        dev_sums[0] += loss.detach().to(torch::kDouble);
        dev_sums[1] += 1.0;
        if (!batch->targets.defined()) {  // training error is undefined under MixUp/CutMix
          dev_sums[2] += logits.argmax(1).eq(labels).logical_and(valid).sum().to(torch::kDouble);
          dev_sums[3] += valid.sum().to(torch::kDouble);
        }
      }
      images += batch->images.size(0);
      cursor = batch->cursor;
      if (++micro % c.accum_steps != 0) continue;
      if (c.clip_grad_norm > 0.0) {
        if (scaler->enabled()) scaler->unscale(model->parameters());
        torch::nn::utils::clip_grad_norm_(model->parameters(), c.clip_grad_norm);
      }
      const double lr = schedule->at(step);
      if (!scaler->step(*sgd, lr)) ++skipped_steps;
      sgd->zero_grad();
      ++step;
      if (ema) update_ema();
      if (client) {
        hb.set_step(static_cast<uint64_t>(step));
        hb.set_epoch(cursor.epoch);
        client->update(hb);
      }
      if (step % c.print_freq == 0 || step == limit) {
        const auto t = take_sums();
        loss_sum += t[0];
        epoch_loss_sum += t[0];
        loss_count += static_cast<int64_t>(t[1]);
        epoch_batches += static_cast<int64_t>(t[1]);
        interval_correct += static_cast<int64_t>(t[2]);
        epoch_correct += static_cast<int64_t>(t[2]);
        interval_seen += static_cast<int64_t>(t[3]);
        epoch_seen += static_cast<int64_t>(t[3]);
        // Loss and training error over all ranks' samples (every rank reaches the same steps).
        auto sums = sum_over_ranks({loss_sum, static_cast<double>(loss_count), static_cast<double>(interval_correct),
                                    static_cast<double>(interval_seen)});
        loss_sum = sums[0];
        loss_count = static_cast<int64_t>(sums[1]);
        interval_correct = static_cast<int64_t>(sums[2]);
        interval_seen = static_cast<int64_t>(sums[3]);
        const double secs = seconds_since(interval_start);
        const double ips = static_cast<double>(images) * static_cast<double>(world) / std::max(secs, 1e-9);
        const double done_frac = static_cast<double>(step - first_step) / static_cast<double>(limit - first_step);
        const double eta = seconds_since(run_start) * (1.0 - done_frac) / std::max(done_frac, 1e-9);
        const double mean_loss = loss_sum / static_cast<double>(std::max<int64_t>(loss_count, 1));
        char line[160];
        std::snprintf(line, sizeof(line), "epoch %llu/%lld step %lld/%lld loss %.4f lr %.4g %.0f img/s eta %s",
                      static_cast<unsigned long long>(cursor.epoch + 1), static_cast<long long>(c.epochs),
                      static_cast<long long>(step), static_cast<long long>(total_steps), mean_loss, lr, ips,
                      format_eta(eta).c_str());
        out->progress(line);
        nlohmann::json fields = {{"epoch", cursor.epoch},
                                 {"epoch_progress", static_cast<double>(step) / static_cast<double>(steps_per_epoch)},
                                 {"loss", mean_loss},
                                 {"lr", lr},
                                 {"img_per_s", ips}};
        if (interval_seen > 0) {
          fields["train_err"] =
              100.0 * (1.0 - static_cast<double>(interval_correct) / static_cast<double>(interval_seen));
        }
        if (scaler->enabled()) {
          fields["loss_scale"] = scaler->current_scale();
          fields["skipped_steps"] = skipped_steps;
        }
        out->record("train", step, fields);
        if (client) {
          const double data_wait = train_data->wait_seconds();
          const double comm_wait = reducer ? reducer->stats().exposed_seconds : 0.0;
          hb.set_loss(mean_loss);
          hb.set_has_loss(true);
          hb.set_img_per_s(ips);
          hb.set_step_time_s(secs / static_cast<double>(std::max<int64_t>(1, step - interval_first_step)));
          hb.set_data_wait_s(data_wait >= data_wait_mark ? data_wait - data_wait_mark : data_wait);
          hb.set_comm_wait_s(comm_wait - comm_wait_mark);
          hb.set_eta_seconds(eta);
          data_wait_mark = data_wait;
          comm_wait_mark = comm_wait;
          interval_first_step = step;
          client->update(hb, /*new_interval=*/true);
        }
        interval_correct = interval_seen = 0;
        loss_sum = 0.0;
        loss_count = 0;
        images = 0;
        interval_start = Clock::now();
      }
      // The epoch's last step is checkpointed at the epoch end (with the cursor past the epoch).
      const bool epoch_has_more =
          cursor.consumed < train_data->num_samples() && train_data->plan().steps(cursor.consumed) > 0;
      if (c.checkpoint_every > 0 && step % c.checkpoint_every == 0 && epoch_has_more) checkpoint();
      if (step % c.control_every == 0 && control_point()) {
        stopped = true;
        break;
      }
      if (step >= limit) break;
    }
    if (stopped) break;
    if (step >= limit && cursor.consumed < train_data->num_samples() && train_data->plan().steps(cursor.consumed) > 0) {
      // Stopped mid-epoch by --max-steps: the cursor points into this epoch.
      checkpoint();
      break;
    }
    {
      const auto t = take_sums();
      epoch_loss_sum += t[0];
      epoch_batches += static_cast<int64_t>(t[1]);
      epoch_correct += static_cast<int64_t>(t[2]);
      epoch_seen += static_cast<int64_t>(t[3]);
      auto sums = sum_over_ranks({epoch_loss_sum, static_cast<double>(epoch_batches),
                                  static_cast<double>(epoch_correct), static_cast<double>(epoch_seen)});
      epoch_loss_sum = sums[0];
      epoch_batches = static_cast<int64_t>(sums[1]);
      epoch_correct = static_cast<int64_t>(sums[2]);
      epoch_seen = static_cast<int64_t>(sums[3]);
    }
    nlohmann::json summary = {{"epoch", cursor.epoch + 1},
                              {"train_loss", epoch_loss_sum / static_cast<double>(std::max<int64_t>(epoch_batches, 1))},
                              {"seconds", seconds_since(run_start)}};
    if (epoch_seen > 0) {
      summary["train_err"] = 100.0 * (1.0 - static_cast<double>(epoch_correct) / static_cast<double>(epoch_seen));
    }
    out->record("epoch", step, summary);
    cursor = {cursor.epoch + 1, 0, cursor.seed};
    const bool last_epoch = cursor.epoch == static_cast<uint64_t>(c.epochs) || step >= limit;
    if (last_epoch || (c.eval_freq > 0 && cursor.epoch % static_cast<uint64_t>(c.eval_freq) == 0)) {
      evaluate_and_record();
    }
    checkpoint();  // every epoch end (replacing a same-step mid-epoch one: its cursor now points past the epoch)
  }
  out->print(concat("done: ", step, " steps in ", format_eta(seconds_since(run_start)),
                    last_eval.count("acc1") ? concat(", test acc1 ", std::round(last_eval["acc1"] * 100) / 100, "%")
                                            : std::string()));
}

torch::Tensor Trainer::State::to_device(const torch::Tensor& t) const {
  if (!t.defined() || t.device() == device) return t;
  return t.to(device, /*non_blocking=*/true);
}

torch::Tensor Trainer::State::device_images(const data::Batch& batch) {
  auto x = to_device(batch.images);
  if (x.scalar_type() == torch::kByte) {
    // uint8 from pinned host memory: normalise on the device, (x / 255 - mean) / std in one fused multiply-add.
    x = torch::addcmul(norm_shift, x.to(torch::kFloat), norm_scale);
  }
  if (c.channels_last) x = x.contiguous(torch::MemoryFormat::ChannelsLast);
  return x;
}

EvalResult Trainer::State::evaluate(models::ResNet& m) {
  m->eval();
  torch::NoGradGuard no_grad;
  eval_data->start({0, 0, static_cast<uint64_t>(c.seed)});
  TopK total;
  while (auto b = eval_data->next()) {
    torch::Tensor logits;
    {
      AutocastGuard autocast(device, amp_dtype, c.amp);
      const auto x = device_images(*b);
      logits = m->forward(x);
      // --eval-hflip: the mirror image is as likely as the image under the training distribution (hflip).
      if (c.eval_hflip) logits = (logits + m->forward(x.flip({3}))) * 0.5;
    }
    auto r = count_correct(logits.to(torch::kFloat), to_device(b->labels), to_device(b->valid));
    total.top1 += r.top1;
    total.top5 += r.top5;
    total.count += r.count;
    total.loss_sum += r.loss_sum;
  }
  // Each rank evaluated its slice (padding flagged invalid): summing the counts counts every sample once.
  auto sums = sum_over_ranks({static_cast<double>(total.top1), static_cast<double>(total.top5),
                              static_cast<double>(total.count), total.loss_sum});
  total.top1 = static_cast<int64_t>(sums[0]);
  total.top5 = static_cast<int64_t>(sums[1]);
  total.count = static_cast<int64_t>(sums[2]);
  total.loss_sum = sums[3];
  EvalResult e;
  e.count = total.count;
  const double n = static_cast<double>(std::max<int64_t>(total.count, 1));
  e.acc1 = 100.0 * static_cast<double>(total.top1) / n;
  e.acc5 = 100.0 * static_cast<double>(total.top5) / n;
  e.loss = total.loss_sum / n;
  return e;
}

void Trainer::State::evaluate_and_record() {
  const auto t0 = Clock::now();
  sync_buffers();
  auto r = evaluate(model);
  last_eval = {{"acc1", r.acc1}, {"acc5", r.acc5}, {"loss", r.loss}};
  nlohmann::json fields = {{"epoch", cursor.epoch}, {"acc1", r.acc1}, {"acc5", r.acc5}, {"loss", r.loss}};
  char buf[160];
  std::snprintf(buf, sizeof(buf), "eval epoch %llu: acc1 %.2f%% acc5 %.2f%% loss %.4f (%lld images)",
                static_cast<unsigned long long>(cursor.epoch), r.acc1, r.acc5, r.loss, static_cast<long long>(r.count));
  std::string line = buf;
  if (ema) {
    auto re = evaluate(ema);
    last_eval["ema_acc1"] = re.acc1;
    fields["ema_acc1"] = re.acc1;
    fields["ema_loss"] = re.loss;
    std::snprintf(buf, sizeof(buf), " | ema acc1 %.2f%%", re.acc1);
    line += buf;
  }
  fields["seconds"] = seconds_since(t0);
  hb.set_has_eval(true);
  hb.set_eval_acc1(r.acc1);
  hb.set_eval_step(static_cast<uint64_t>(step));
  if (client) client->update(hb);
  out->print(line);
  out->record("eval", step, fields);
}

void Trainer::State::checkpoint() {
  if (step == last_checkpoint_step) return;  // already checkpointed (or resumed from): never rewrite a commit
  const auto t0 = Clock::now();
  sync_buffers();
  // Replicas are identical after the step, so the files are shared out: rank r writes the parts with
  // index % world == r (model on rank 0, optimizer on rank 1, ...); rank 0 also sends the training state.
  const int64_t w = static_cast<int64_t>(world), me = static_cast<int64_t>(rank);
  CheckpointJob job;
  job.step = static_cast<uint64_t>(step);
  auto snapshot = [](const models::NamedTensors& tensors) { return snapshot_to_host(tensors); };
  if (0 % w == me) job.files.emplace_back("model.safetensors", snapshot(models::state_dict(*model)));
  if (1 % w == me) job.files.emplace_back("optimizer.safetensors", snapshot(sgd->momentum_buffers()));
  if (ema && 2 % w == me) job.files.emplace_back("ema.safetensors", snapshot(models::state_dict(*ema)));
  if (rank == 0) {
    NamedTensors state;
    state["rng"] = rng_state();
    if (scaler->enabled()) {
      for (auto& [k, v] : snapshot_to_host(scaler->state())) state[k] = v;
    }
    job.files.emplace_back("state.safetensors", std::move(state));
    proto::Manifest m;
    m.set_step(static_cast<uint64_t>(step));
    m.set_epoch(cursor.epoch);
    m.mutable_cursor()->set_epoch(cursor.epoch);
    m.mutable_cursor()->set_consumed(cursor.consumed);
    m.mutable_cursor()->set_seed(cursor.seed);
    m.set_world_size(static_cast<uint32_t>(world));
    m.set_global_batch(static_cast<uint64_t>(c.batch_size) * world);
    m.set_model(c.model);
    m.set_config_digest(config_digest);
    m.set_created_unix(std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count());
    m.set_stride_version(STRIDE_VERSION);
    for (const auto& [k, v] : last_eval) (*m.mutable_metrics())[k] = v;
    job.manifest = std::move(m);
  }
  // Bound the memory held by snapshots: at most one checkpoint queued behind the one being written.
  while (writer->queued() >= 2) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  writer->submit(std::move(job));
  last_checkpoint_step = submitted_step = step;
  out->record("checkpoint", step, {{"stall_seconds", seconds_since(t0)}});
}

}  // namespace stride::trainer
