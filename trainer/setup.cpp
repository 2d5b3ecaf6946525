#include <ATen/core/Generator.h>
#include <sys/statvfs.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <set>

#include "comm/recording_communicator.h"
#include "comm/sync_batch_norm.h"
#include "common/error.h"
#include "models/registry.h"
#include "models/state_dict.h"
#include "storage/crc32c.h"
#include "storage/file_io.h"
#include "trainer/config_diff.h"
#include "trainer/data_setup.h"
#include "trainer/run_state.h"
#include "trainer/safetensors.h"

namespace stride::trainer {
namespace fs = std::filesystem;

torch::Tensor cpu_rng_state() {
  auto gen = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(gen.mutex());
  return gen.get_state();
}

void set_cpu_rng_state(const torch::Tensor& state) {
  auto gen = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(gen.mutex());
  gen.set_state(state);
}

void Trainer::State::setup() {
  validate(c);
  const bool cuda = c.device == "cuda" || (c.device == "auto" && torch::cuda::is_available());
  if (cuda && !torch::cuda::is_available()) {
    throw UsageError("--device cuda: no CUDA device is visible (or this LibTorch build has no CUDA)");
  }
  comm::CommOptions co;
  co.backend = comm::parse_backend(c.comm_backend);
  co.prefer_gpu = cuda;
  co.timeout = std::chrono::milliseconds(static_cast<int64_t>(c.comm_timeout * 1000.0));
  if (c.threads > 0) torch::set_num_threads(static_cast<int>(c.threads));
  if (c.use_deterministic_algorithms) at::globalContext().setDeterministicAlgorithms(true, /*warn_only=*/false);
  // Compute threads plus loader workers: whether the ranks leave cores idle decides how their collectives wait.
  co.busy_threads = torch::get_num_threads() + static_cast<int>(c.workers);
  comm = comm::create_communicator(co);
  if (c.flight_recorder > 0) {
    flight = std::make_shared<comm::FlightRecorder>(static_cast<size_t>(c.flight_recorder));
    comm = std::make_shared<comm::RecordingCommunicator>(comm, flight);
  }
  rank = static_cast<uint64_t>(comm->rank());
  world = static_cast<uint64_t>(comm->size());
  // --global-batch: this start's share of it per rank (a restart on another number of ranks keeps it).
  const int64_t batch_given = c.batch_size;
  resolve_global_batch(c, static_cast<int64_t>(world));
  if (cuda) {
    device = torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(comm->local_rank() %
                                                                       static_cast<int>(torch::cuda::device_count())));
    at::globalContext().setBenchmarkCuDNN(true);
  }
  amp = plan_amp(device, c.amp, c.amp_dtype, c.amp_force, cuda ? CpuBf16{} : detect_cpu_bf16());
  if (!amp.warning.empty() && rank == 0) std::fprintf(stderr, "stride: warning: %s\n", amp.warning.c_str());
  if (c.sync_bn && world == 1) {
    std::fprintf(stderr, "stride: note: --sync-bn with one rank is plain BatchNorm\n");
  }
  if (c.grad_compression == "powersgd" && world == 1 && !c.test_only) {
    std::fprintf(stderr, "stride: note: --grad-compression powersgd with one rank compresses nothing\n");
  }
  if (bucket_cap_auto(c) && world == 1 && !c.test_only) {
    std::fprintf(stderr, "stride: note: --bucket-cap-mb auto with one rank has no gradients to reduce\n");
  }
  if (world > 1 && rank == 0) {
    // "4 ranks over mpi, 2 hosts x 2 ranks: shared memory within each host, ..." (docs/distributed.md)
    const comm::Layout layout = comm->layout();
    const std::string how = layout.transport == comm::Transport::kOwn ? "" : concat(", ", layout.summary());
    std::fprintf(stderr, "stride: %llu ranks over %s%s\n", static_cast<unsigned long long>(world),
                 comm->backend().c_str(), how.c_str());
  }
  // The dataset and its transforms first: a problem there stops the run before it writes anything.
  ensure_dataset(c);
  DataPlan plan = plan_data(c, rank);
  apply_resolved(plan, c);
  preprocess = preprocess_record(plan);
  if (c.num_classes <= 0 && plan.num_classes <= 0) {
    throw UsageError("the dataset does not record its classes: pass --num-classes");
  }
  store = std::make_unique<CheckpointStore>(c.output_dir, c.keep_checkpoints);
  start_id = random_id();
  if (world > 1) {
    // Rank 0's id on every rank, so that every rank knows the ids of the checkpoints it takes part in.
    auto id = torch::tensor({static_cast<int64_t>(std::stoull(start_id, nullptr, 16))}, torch::kInt64);
    const comm::OriginScope origin(comm::OriginKind::kOther, -1, "start id broadcast");
    comm->broadcast(id, 0)->wait();
    char buf[17];
    std::snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(id.item<int64_t>()));
    start_id = buf;
  }
  if (c.snapshot_every > 0 && !c.test_only) {
    snapshots = std::make_unique<SnapshotStore>(
        c.snapshot_dir.empty() ? default_snapshot_dir(c.output_dir) : c.snapshot_dir, rank);
    snapshot_every = c.snapshot_every;
    plan_snapshot_buddies();
  }
  choose_checkpoint();  // before anything is written: a refused resume leaves the run directory as it was
  fs::create_directories(c.output_dir);
  config_text = concat("# train transform: ", plan.train_transform, "\n# eval transform: ", plan.eval_transform,
                       "\n# input: ", plan.in_channels, " channel", plan.in_channels == 1 ? "" : "s", ", ",
                       plan.normalisation, "\n", to_toml(c));
  config_digest = concat(std::hex, storage::crc32c(config_text.data(), config_text.size()));
  if (rank == 0) {
    // config.toml is this start's configuration; config.<N>.toml keeps every start's (N = 1, 2, ...).
    int start = 1;
    while (fs::exists(fs::path(c.output_dir) / concat("config.", start, ".toml"))) ++start;
    storage::write_file_atomic((fs::path(c.output_dir) / concat("config.", start, ".toml")).string(), config_text);
    storage::write_file_atomic((fs::path(c.output_dir) / "config.toml").string(), config_text);
  }
  out = std::make_unique<RunOutput>(c.output_dir, rank != 0);
  out->print(concat("precision: ", amp.summary, c.channels_last ? "; channels-last" : ""));
  out->print(concat("data: train ", plan.train_transform, "; eval ", plan.eval_transform, "; ", plan.in_channels,
                    plan.in_channels == 1 ? " channel, " : " channels, ", plan.normalisation));
  coordination = c.test_only ? no_coordination() : start_job_coordination(c, *comm, *out, flight);
  if (c.global_batch > 0) {
    out->print(concat("batch: --global-batch ", c.global_batch, " = ", c.batch_size, " per rank x ", world,
                      " rank(s) x ", c.accum_steps, " accumulation step(s) (--batch-size ", batch_given,
                      " is the largest micro-batch)"));
  }

  auto make_loader = [&](data::LoaderOptions o) {
    o.rank = rank;
    o.world_size = world;
    // Repeated augmentation lays copies out per optimizer step, which --global-batch keeps across world sizes.
    o.ra_group = static_cast<uint64_t>(c.batch_size * static_cast<int64_t>(world) * c.accum_steps);
    o.channels_last = c.channels_last;  // collated NHWC: device_images() then copies nothing
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
  gso.enabled = amp.scale_loss;  // float16 only: bfloat16 has float32's range
  scaler = std::make_unique<GradScaler>(gso);

  // Linear scaling by the images per optimizer step, accumulation included.
  const int64_t global_batch = c.batch_size * static_cast<int64_t>(world) * c.accum_steps;
  const double lr = c.lr_scaling == "linear" ? c.lr * static_cast<double>(global_batch) / 256.0 : c.lr;
  optimizer = make_optimizer(c, model->named_parameters().pairs());
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
  step_limit = c.max_steps > 0 ? std::min(c.max_steps, total_steps) : total_steps;
  schedule = std::make_unique<LrSchedule>(schedule_options(c, lr, steps_per_epoch, total_steps));
  cursor = {0, 0, static_cast<uint64_t>(c.seed)};
  if (!resume_from.empty()) resume();
  if (snapshot_every > 0) check_snapshot_room();
  if (snapshots && snapshots->has_buddies()) {
    // Note [Buddy copies]: every rank takes part in every exchange, so snapshots are on everywhere or nowhere.
    auto on = torch::tensor({snapshot_every > 0 ? int64_t{1} : int64_t{0}}, torch::kInt64);
    const comm::OriginScope origin(comm::OriginKind::kOther, -1, "snapshot agreement");
    comm->allreduce(on, comm::ReduceOp::kMin)->wait();
    if (on.item<int64_t>() == 0 && snapshot_every > 0) {
      std::fprintf(stderr,
                   "stride: warning: --snapshot-every %lld turned off on rank %llu as well: another rank cannot keep "
                   "snapshots, and buddy copies need every rank (--snapshot-buddy off keeps them on the others)\n",
                   static_cast<long long>(snapshot_every), static_cast<unsigned long long>(rank));
      snapshot_every = 0;
    }
  }
  for (size_t at = 0; at < resume_note.size();) {
    const size_t end = std::min(resume_note.find('\n', at), resume_note.size());
    out->print(resume_note.substr(at, end - at));
    at = end + 1;
  }
  if (!resume_from.empty() && step > 0 && !resumed_from_snapshot) last_checkpoint_step = step;
  // The status shows where the run stands and where it stops from the first heartbeat on.
  hb.set_step(static_cast<uint64_t>(step));
  hb.set_start_step(static_cast<uint64_t>(step));
  hb.set_start_source(resume_from.empty() ? "scratch" : resumed_from_snapshot ? "memory" : "disk");
  hb.set_total_steps(static_cast<uint64_t>(step_limit));
  hb.set_epoch(cursor.epoch);
  coordination->update(hb);
  if (world > 1) {
    // Every replica starts from rank 0's weights and buffers (after --weights / --resume, which all ranks read);
    // from a snapshot every rank holds its own state as it was (BatchNorm's running statistics are per rank
    // between checkpoints), and keeping it is what makes the continuation the uninterrupted run.
    if (!resumed_from_snapshot) {
      const comm::OriginScope origin(comm::OriginKind::kOther, -1, "initial weights broadcast");
      comm::broadcast_module_state(*model, *comm);
      if (ema) comm::broadcast_module_state(*ema, *comm);
    }
    if (c.sync_bn) comm::convert_sync_batchnorm(*model, comm);
    if (!c.test_only) {
      comm::ReducerOptions ro;
      ro.bucket_cap_bytes = initial_bucket_cap();
      ro.compression = comm::parse_compression(c.grad_compression);
      ro.powersgd_rank = c.powersgd_rank;
      ro.powersgd_warmup_steps = c.powersgd_warmup_steps;
      ro.powersgd_seed = static_cast<uint64_t>(c.seed);
      reducer = std::make_unique<comm::GradientReducer>(model->named_parameters().pairs(), comm, ro);
      if (!reducer_state.empty()) {
        reducer->load_compression_state(reducer_state);
        reducer_state.clear();
      }
    }
  }
}

void Trainer::State::plan_snapshot_buddies() {
  // Note [Buddy copies] in trainer/snapshot.h. A collective: every rank has a SnapshotStore or none (same flags).
  if (c.snapshot_buddy == "off") return;
  std::string why;
  std::vector<int> buddy;
  if (world == 1) {
    why = "the job has one rank";
  } else if (comm->backend() == "nccl") {
    why = "the nccl back-end moves CUDA tensors only";
  } else {
    const std::string name = comm->host();
    auto mine = torch::tensor({static_cast<int64_t>(storage::crc32c(name.data(), name.size()))}, torch::kInt64);
    auto all = torch::empty({static_cast<int64_t>(world)}, torch::kInt64);
    const comm::OriginScope origin(comm::OriginKind::kOther, -1, "snapshot buddy plan");
    comm->allgather(mine, all)->wait();
    buddy = plan_buddies(std::vector<int64_t>(all.data_ptr<int64_t>(), all.data_ptr<int64_t>() + world), &why);
  }
  if (buddy.empty()) {
    if (c.snapshot_buddy == "on") throw UsageError(concat("--snapshot-buddy on: ", why, "; no host to keep a copy on"));
    return;
  }
  if (rank == 0) {
    std::fprintf(stderr, "stride: snapshots: each rank's also kept by a rank on another host (rank 0's by rank %d)\n",
                 buddy[0]);
  }
  snapshots->set_buddies(std::move(buddy));
}

void Trainer::State::check_snapshot_room() {
  // Two snapshots kept and one being written, each about the weights, the optimizer's state (up to two buffers per
  // weight) and the EMA. Too little room turns snapshots off with a warning; it never stops the run.
  uint64_t weights = 0;
  for (const auto& [k, t] : models::state_dict(*model)) weights += static_cast<uint64_t>(t.nbytes());
  // A buddy's copies (Note [Buddy copies]) take as much again.
  const uint64_t need = 3 * weights * (3 + (ema ? 1 : 0)) * (snapshots->has_buddies() ? 2 : 1);
  std::error_code ec;
  fs::create_directories(snapshots->dir(), ec);
  struct statvfs v {};
  std::string problem;
  if (ec) {
    problem = concat("cannot create ", snapshots->dir(), ": ", ec.message());
  } else if (::statvfs(snapshots->dir().c_str(), &v) == 0) {
    const uint64_t avail = static_cast<uint64_t>(v.f_bavail) * v.f_frsize;
    if (avail < need) {
      problem = concat(snapshots->dir(), " has ", avail >> 20, " MiB free; snapshots need about ", need >> 20, " MiB");
    }
  }
  if (problem.empty()) return;
  std::fprintf(stderr, "stride: warning: --snapshot-every %lld turned off on rank %llu: %s (--snapshot-dir)\n",
               static_cast<long long>(snapshot_every), static_cast<unsigned long long>(rank), problem.c_str());
  snapshot_every = 0;
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
  // An RGB stem on data of another channel count (ImageNet weights on Fashion-MNIST): adapt it as timm does.
  if (auto conv1 = tensors.find("conv1.weight");
      conv1 != tensors.end() && conv1->second.dim() == 4 && conv1->second.size(1) != model->options().in_channels) {
    const int64_t had = conv1->second.size(1);
    conv1->second = models::adapt_input_conv(conv1->second, model->options().in_channels, c.adapt_stem,
                                             concat("--weights ", path, ": conv1.weight"));
    out->print(concat("weights: conv1 adapted from ", had, " to ", model->options().in_channels, " input channels (",
                      c.adapt_stem, " over RGB, --adapt-stem)"));
  }
  auto report = models::load_state_dict(*model, tensors, lo);
  out->print(concat("weights: loaded ", report.loaded.size(), " tensors from ", path));
}

void Trainer::State::choose_checkpoint() {
  if (c.resume.empty()) {
    if (c.test_only) return;
    // Starting from scratch would checkpoint over the steps of an earlier run: make the user choose.
    for (const auto& info : store->list(/*deep=*/false)) {
      if (!info.valid) continue;
      throw UsageError(concat(c.output_dir, " already holds checkpoints of a run (newest: step ", info.step,
                              "): continue it with --resume auto, or train into another --output-dir"));
    }
    if (snapshots) snapshots->discard_after(0);  // an earlier start's snapshots are not this run's past
    return;
  }
  if (c.resume == "auto") {
    std::vector<CheckpointInfo> skipped;
    auto head = store->latest(&skipped);
    for (const auto& s : skipped) {
      std::fprintf(stderr, "stride: warning: skipping checkpoint %s: %s\n", s.path.c_str(), s.problem.c_str());
    }
    if (snapshots) {
      // Note [In-memory snapshots]: every rank takes part, whatever it holds.
      std::optional<std::pair<uint64_t, std::string>> disk;
      if (head) disk = std::make_pair(head->step, head->manifest.lineage().id());
      std::string why;
      const auto pick = snapshots->choose(disk, world, *comm, &why);
      if (pick) {
        resume_from = pick->path;
        resumed_from_snapshot = true;
        snapshot_parent = pick->parent;
        resume_note = concat("resume: from memory: the snapshot of step ", pick->step, " is newer than ",
                             head ? concat("the newest checkpoint (step ", head->step, ")") : "any checkpoint");
        for (const auto& [owner, holder] : pick->from_buddies) {
          resume_note += concat("\nresume: rank ", owner, "'s snapshot of step ", pick->step,
                                " came from its buddy copy on rank ", holder);
        }
      } else {
        resume_note = concat("resume: snapshots: ", why, "; ", head ? "from the checkpoint" : "from scratch");
      }
      // Newer snapshots (held by only some ranks) belong to an abandoned future.
      snapshots->discard_after(pick ? pick->step : head ? head->step : 0);
    }
    if (!head && !resumed_from_snapshot) {
      resume_note = concat(resume_note.empty() ? "" : resume_note + "\n", "resume: no checkpoint in ", store->dir(),
                           "; starting from scratch");
      return;
    }
    if (!resumed_from_snapshot) resume_from = head->path;
  } else {
    if (!fs::is_directory(c.resume)) throw UsageError(concat("--resume ", c.resume, ": no such checkpoint directory"));
    resume_from = c.resume;
  }
  const proto::Manifest m = verify_checkpoint(resume_from, /*deep=*/false);
  if (snapshots && c.resume != "auto") snapshots->discard_after(m.step());  // their future is abandoned
  if (m.model() != c.model) {
    throw UsageError(concat("checkpoint ", resume_from, " is of model ", m.model(), ", not ", c.model));
  }
  if (c.test_only) return;  // evaluating a checkpoint: its training settings do not matter
  // The configuration the checkpoint's run had: recorded in its MANIFEST, or (older checkpoints) the run's
  // config.toml when its digest still matches.
  std::string before = m.config();
  if (before.empty()) {
    const auto run_config = fs::path(resume_from).parent_path().parent_path() / "config.toml";
    std::error_code ec;
    if (fs::exists(run_config, ec)) {
      const std::string text = storage::read_file(run_config.string());
      if (concat(std::hex, storage::crc32c(text.data(), text.size())) == m.config_digest()) before = text;
    }
  }
  if (before.empty()) {
    std::fprintf(stderr, "stride: warning: %s records no configuration: changed settings cannot be checked\n",
                 resume_from.c_str());
    return;
  }
  std::vector<ConfigChange> result, operational;
  for (auto& ch : config_changes(before, m.world_size(), c, world)) {
    (ch.changes_result ? result : operational).push_back(std::move(ch));
  }
  if (!result.empty() && !c.allow_config_change) {
    throw UsageError(concat("resuming ", resume_from, " with settings that change the result: ", describe(result),
                            " (pass --allow-config-change to continue anyway)"));
  }
  if (!result.empty()) {
    std::fprintf(stderr, "stride: warning: resuming with settings that change the result (--allow-config-change): %s\n",
                 describe(result).c_str());
  }
  if (!operational.empty()) {
    std::fprintf(stderr, "stride: note: settings changed since the checkpoint: %s\n", describe(operational).c_str());
  }
}

void Trainer::State::resume() {
  const std::string& path = resume_from;
  auto ckpt = load_checkpoint(path);
  const auto& m = ckpt.manifest;
  models::load_state_dict(*model, ckpt.model, {true, {}, path + "/model.safetensors"});
  optimizer->load_state(ckpt.optimizer);
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
      models::load_state_dict(*ema, ckpt.ema, {true, {}, path + "/ema.safetensors"});
    }
  }
  if (ckpt.state.count("rng")) set_cpu_rng_state(ckpt.state.at("rng"));
  if (c.grad_compression == "powersgd" && world > 1) {
    // Error feedback is per rank, so it only carries over to the same world; another --powersgd-rank gets here
    // only with --allow-config-change (choose_checkpoint() names the key otherwise).
    const std::string file = powersgd_state_file(rank);
    bool found = false;
    for (const auto& f : m.files()) found = found || f.name() == file;
    if (m.world_size() != world) {
      out->print(concat("resume: the checkpoint ran on ", m.world_size(),
                        " ranks: PowerSGD's per-rank state (error feedback, Q) starts afresh, warm-up included"));
    } else if (!found) {
      out->print("resume: the checkpoint holds no PowerSGD state: PowerSGD starts afresh, warm-up included");
    } else {
      auto tensors = read_safetensors((fs::path(path) / file).string()).tensors;
      const auto saved = tensors.find("powersgd.rank");
      if (saved != tensors.end() && saved->second.item<int64_t>() != c.powersgd_rank) {
        out->print(concat("resume: --powersgd-rank ", c.powersgd_rank, " differs from the checkpoint's ",
                          saved->second.item<int64_t>(), ": PowerSGD's state starts afresh, warm-up included"));
      } else {
        reducer_state = std::move(tensors);
      }
    }
  }
  if (m.has_bucket_cap()) bucket_choice = m.bucket_cap();  // initial_bucket_cap() decides whether it applies
  step = static_cast<int64_t>(m.step());
  cursor = {m.cursor().epoch(), m.cursor().consumed(), m.cursor().seed()};
  // A snapshot is no checkpoint: the next commit continues the checkpoint the snapshot continued.
  lineage_parent =
      resumed_from_snapshot ? snapshot_parent : std::make_optional(std::make_pair(m.step(), m.lineage().id()));
  // The checkpoint's score belongs to its step only (it is not carried into later checkpoints).
  for (const auto& [k, v] : m.metrics()) last_eval[k] = v;
  if (!last_eval.empty()) last_eval_step = step;
  if (m.has_precision() && m.precision().compute_dtype() != compute_dtype_name(amp)) {
    // Allowed (a run may switch precision), but the continuation is not the run the checkpoint came from.
    out->print(concat("resume: note: the checkpoint was trained in ", m.precision().compute_dtype(),
                      ", this run computes in ", compute_dtype_name(amp)));
  }
  if (c.resume != "auto") {
    for (const auto& info : store->list(/*deep=*/false)) {
      if (info.valid && info.step > m.step()) {
        std::fprintf(stderr,
                     "stride: warning: %s holds newer checkpoints (up to step %llu) of another branch; once this run "
                     "commits, --resume auto follows its branch (from step %llu), and they are replaced as training "
                     "passes their steps\n",
                     store->dir().c_str(), static_cast<unsigned long long>(info.step),
                     static_cast<unsigned long long>(m.step()));
        break;
      }
    }
  }
  out->print(
      concat("resume: ", path, " (step ", step, ", epoch ", cursor.epoch, ", ", cursor.consumed, " samples into it)"));
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

}  // namespace stride::trainer
