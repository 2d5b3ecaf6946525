// `stride bench step`: training images per second of one replica on a fixed synthetic batch (forward,
// cross-entropy, backward, SGD with momentum), the number `bench/train_compare.sh` (CPU) and
// `bench/gpu_check.sh` (GPU) compare with PyTorch eager (`bench/torch_train_step.py`, same flags).
#include <dlfcn.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "comm/bucket_tuner.h"
#include "comm/communicator.h"
#ifdef STRIDE_WITH_MPI
#include "comm/mpi/mpi_communicator.h"
#endif
#include "comm/recording_communicator.h"
#include "comm/reducer.h"
#include "comm/sync_batch_norm.h"
#include "common/error.h"
#include "models/flops.h"
#include "models/registry.h"
#include "trainer/amp.h"
#include "trainer/config.h"
#include "trainer/coordination.h"
#include "trainer/loss.h"
#include "trainer/precision.h"
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
  std::string device = "cpu";
  bool amp = false;
  std::string amp_dtype = "auto";
  bool amp_force = false;
  // Data parallel (run under mpirun): the communicator, and measurement switches.
  std::string comm_backend = "auto";
  bool no_comm = false;     // gradients are not communicated (the communication-free reference)
  bool no_overlap = false;  // buckets are reduced after backward, not during it
  bool sync_bn = false;
  std::string bucket_cap_mb = "25";  // or auto: tuned after --warmup as `stride train` does, then measured
  int64_t bucket_tune_steps = 5;
  std::string grad_compression = "none";
  int64_t powersgd_rank = 1;
  int64_t powersgd_warmup_steps = 0;  // the bench's --warmup steps come first anyway
  // Comma-separated variants measured in alternating blocks of --steps steps within this one run (so that the
  // machine's drift hits them alike): default, no-comm, no-overlap, mpi (collectives over MPI instead of shared
  // memory), sync-bn.
  std::string interleave;
  int64_t rounds = 5;
};

double median(std::vector<double> v) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// The GPU's marketing name from the CUDA driver, looked up at run time so that the CPU LibTorch build needs
// no CUDA headers. "unknown" when the driver library is not there.
std::string cuda_device_name(int index) {
  void* lib = ::dlopen("libcuda.so.1", RTLD_LAZY | RTLD_LOCAL);
  if (!lib) return "unknown";
  using InitFn = int (*)(unsigned int);
  using GetFn = int (*)(int*, int);
  using NameFn = int (*)(char*, int, int);
  auto init = reinterpret_cast<InitFn>(::dlsym(lib, "cuInit"));
  auto get = reinterpret_cast<GetFn>(::dlsym(lib, "cuDeviceGet"));
  auto name_of = reinterpret_cast<NameFn>(::dlsym(lib, "cuDeviceGetName"));
  char name[256] = "unknown";
  int dev = 0;
  if (!init || !get || !name_of || init(0) != 0 || get(&dev, index) != 0 || name_of(name, sizeof name, dev) != 0) {
    std::snprintf(name, sizeof name, "unknown");
  }
  ::dlclose(lib);
  return name;
}

void synchronize(const torch::Device& device) {
  if (device.is_cuda()) torch::cuda::synchronize(device.index());
}

// --interleave's list, checked.
std::vector<std::string> interleave_variants(const std::string& text) {
  std::vector<std::string> variants;
  std::stringstream list(text);
  for (std::string v; std::getline(list, v, ',');) {
    if (v != "default" && v != "no-comm" && v != "sync-only" && v != "no-overlap" && v != "mpi" && v != "sync-bn" &&
        v != "shm-spin" && v != "shm-sleep" && v != "diagnosis") {
      throw UsageError(concat("--interleave: unknown variant '", v,
                              "' (default, no-comm, sync-only, no-overlap, mpi, sync-bn, shm-spin, shm-sleep, "
                              "diagnosis)"));
    }
    variants.push_back(v);
  }
  return variants;
}

// The variants that switch the transport or the wait need collectives over shared memory; checked as soon as the
// communicator exists, before the model is built and warmed up.
void check_transport_variants(const StepArgs& a, const std::vector<std::string>& variants,
                              const std::shared_ptr<comm::Communicator>& comm) {
  const bool shm_variants = std::any_of(variants.begin(), variants.end(), [](const std::string& v) {
    return v == "mpi" || v == "shm-spin" || v == "shm-sleep";
  });
  if (!shm_variants) return;
#ifdef STRIDE_WITH_MPI
  auto* mpi = dynamic_cast<comm::MpiCommunicator*>(comm.get());
  if (!mpi || !mpi->set_shm_enabled(true)) {
    throw UsageError(concat("--interleave ", a.interleave,
                            ": collectives do not use shared memory here (needs one host and STRIDE_SHM unset)"));
  }
#else
  (void)comm;
  throw UsageError(concat("--interleave ", a.interleave, ": the mpi and shm-* variants need a build with MPI"));
#endif
}

// Variants in alternating blocks of a.steps steps, a.rounds rounds; images/s per block, and each ratio as the
// median over rounds of the ratio within the round (paired, so slow drift of the machine cancels).
// `diagnose(on)` switches the flight recorder and the per-step heartbeat bookkeeping (variant "diagnosis").
template <typename Step, typename Diagnose>
void run_interleaved(const StepArgs& a, const std::vector<std::string>& variants,
                     const std::shared_ptr<comm::Communicator>& comm, torch::nn::Module& model,
                     comm::GradientReducer& reducer, Step& step, Diagnose& diagnose) {
  const std::string default_wait = comm::shm_wait_name(comm->layout().shm_wait);
#ifdef STRIDE_WITH_MPI
  // Under the "diagnosis" variant the communicator is the flight recorder's wrapper around MPI's.
  comm::Communicator* base = comm.get();
  if (auto* recording = dynamic_cast<comm::RecordingCommunicator*>(base)) base = recording->inner().get();
  auto* mpi = dynamic_cast<comm::MpiCommunicator*>(base);
#endif
  const int world = comm->size();
  std::map<std::string, std::vector<double>> ips, comm_ms, exposed_ms;
  for (int64_t r = 0; r < a.rounds; ++r) {
    for (const auto& v : variants) {
      reducer.set_overlap(v != "no-overlap");
      // sync-only: no gradient communication, but the ranks meet once per step (a barrier), as any synchronous
      // data-parallel step makes them: what the lock-step alone costs when ranks jitter.
      const bool sync_only = v == "sync-only";
      reducer.set_skip_communication(v == "no-comm" || sync_only);
      comm::convert_sync_batchnorm(model, v == "sync-bn" ? comm : nullptr);
      diagnose(v == "diagnosis");
#ifdef STRIDE_WITH_MPI
      if (mpi) {
        mpi->set_shm_enabled(v != "mpi");
        mpi->set_shm_wait(v == "shm-spin" || (v != "shm-sleep" && default_wait == "spin"));
      }
#endif
      step();  // one untimed step in the new mode
      reducer.reset_stats();
      comm->barrier()->wait();
      const auto t0 = std::chrono::steady_clock::now();
      for (int64_t i = 0; i < a.steps; ++i) {
        step();
        if (sync_only) comm->barrier()->wait();
      }
      auto t =
          torch::tensor({std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count()}, torch::kDouble);
      comm->allreduce(t, comm::ReduceOp::kMax)->wait();
      ips[v].push_back(static_cast<double>(a.batch * a.steps * world) / t.item<double>());
      const auto st = reducer.stats();
      const double n = static_cast<double>(std::max<int64_t>(st.steps, 1));
      comm_ms[v].push_back(1e3 * st.comm_seconds / n);
      exposed_ms[v].push_back(1e3 * st.exposed_seconds / n);
    }
  }
#ifdef STRIDE_WITH_MPI
  if (mpi) {  // back to the defaults, which the JSON reports
    mpi->set_shm_enabled(true);
    mpi->set_shm_wait(default_wait == "spin");
  }
#endif
  nlohmann::json out = {{"impl", "stride"},
                        {"bench", "step-interleaved"},
                        {"model", a.model},
                        {"batch", a.batch},
                        {"image_size", a.image_size},
                        {"threads", torch::get_num_threads()},
                        {"ranks", world},
                        {"block_steps", a.steps},
                        {"rounds", a.rounds},
                        {"transport", comm->layout().transport_name()}};
  if (!default_wait.empty()) out["shm_wait"] = default_wait;
  for (const auto& v : variants) {
    out["variants"][v] = {{"images_per_s", median(ips[v])},
                          {"blocks", ips[v]},
                          {"comm_ms_per_step", median(comm_ms[v])},
                          {"exposed_comm_ms_per_step", median(exposed_ms[v])}};
  }
  auto paired = [&](const std::string& num, const std::string& den) {
    std::vector<double> q;
    for (size_t i = 0; i < ips[num].size(); ++i) q.push_back(ips[num][i] / ips[den][i]);
    return median(q);
  };
  auto has = [&](const char* v) { return ips.count(v) > 0; };
  if (has("default") && has("no-comm")) out["ratios"]["communication_efficiency"] = paired("default", "no-comm");
  if (has("sync-only") && has("no-comm")) out["ratios"]["lock_step_efficiency"] = paired("sync-only", "no-comm");
  if (has("default") && has("sync-only")) out["ratios"]["efficiency_beyond_lock_step"] = paired("default", "sync-only");
  if (has("default") && has("no-overlap")) out["ratios"]["overlap_on_over_off"] = paired("default", "no-overlap");
  if (has("default") && has("mpi")) out["ratios"]["shm_over_mpi"] = paired("default", "mpi");
  // Spinning against sleeping waiters: shm-spin, or default where the host made default spin.
  const char* spin_variant = has("shm-spin")                            ? "shm-spin"
                             : default_wait == "spin" && has("default") ? "default"
                                                                        : nullptr;
  if (spin_variant && has("shm-sleep")) out["ratios"]["shm_spin_over_sleep"] = paired(spin_variant, "shm-sleep");
  if (has("default") && has("sync-bn")) out["ratios"]["sync_bn_step_time_cost"] = paired("default", "sync-bn") - 1.0;
  if (has("default") && has("diagnosis")) {
    out["ratios"]["diagnosis_step_time_cost"] = paired("default", "diagnosis") - 1.0;
    std::vector<double> q;
    for (size_t i = 0; i < ips["default"].size(); ++i) q.push_back(ips["default"][i] / ips["diagnosis"][i] - 1.0);
    std::sort(q.begin(), q.end());
    out["ratios"]["diagnosis_step_time_cost_min_max"] = {q.front(), q.back()};
  }
  if (has("default")) {
    const double c = median(comm_ms["default"]), e = median(exposed_ms["default"]);
    out["ratios"]["hidden_fraction"] = c > 0 ? std::max(0.0, 1.0 - e / c) : 0.0;
  }
  if (comm->rank() == 0) std::printf("%s\n", out.dump().c_str());
}

void run_step_bench(const StepArgs& a) {
  if (a.device != "cpu" && a.device != "cuda") throw UsageError(concat("--device must be cpu or cuda, not ", a.device));
  const std::vector<std::string> variants = interleave_variants(a.interleave);  // bad names fail before any work
  const int64_t cap = trainer::parse_bucket_cap_mb(a.bucket_cap_mb);            // 0: auto, tuned after --warmup
  comm::CommOptions co;
  co.backend = comm::parse_backend(a.comm_backend);
  // Before the communicator: it reads the thread count to decide how its ranks wait (comm/shm/host_cpus.h).
  if (a.threads > 0) torch::set_num_threads(static_cast<int>(a.threads));
  std::shared_ptr<comm::Communicator> comm = comm::create_communicator(co);
  const int world = comm->size();
  if (!variants.empty() && world < 2) {
    throw UsageError("--interleave compares data-parallel variants: run it under mpirun with 2+ ranks");
  }
  check_transport_variants(a, variants, comm);
  // Variant "diagnosis": the trainer's flight recorder (comm/recording_communicator.h, default ring size) and its
  // per-step heartbeat bookkeeping, against the same communicator passing collectives through unrecorded.
  std::shared_ptr<comm::RecordingCommunicator> recording;
  if (std::find(variants.begin(), variants.end(), "diagnosis") != variants.end()) {
    recording = std::make_shared<comm::RecordingCommunicator>(comm, std::make_shared<comm::FlightRecorder>(2000));
    recording->set_recording(false);
    comm = recording;
  }
  const torch::Device device = a.device == "cuda"
                                   ? torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(comm->local_rank()))
                                   : torch::Device(torch::kCPU);
  if (device.is_cuda() && !torch::cuda::is_available()) throw Error("--device cuda: no CUDA device is available");
  // The trainer's rule (trainer/precision.h): bf16 on a CPU with bf16 instructions, else float32 unless forced.
  const trainer::AmpPlan amp = trainer::plan_amp(device, a.amp, a.amp_dtype, a.amp_force,
                                                 device.is_cuda() ? trainer::CpuBf16{} : trainer::detect_cpu_bf16());
  if (!amp.warning.empty() && comm->rank() == 0) std::fprintf(stderr, "stride: warning: %s\n", amp.warning.c_str());
  // torchvision's reference train.py turns cuDNN's autotuner on; torch_train_step.py does the same.
  if (device.is_cuda()) at::globalContext().setBenchmarkCuDNN(true);

  torch::manual_seed(0);
  models::ModelOptions mo;
  mo.num_classes = a.num_classes;
  mo.in_channels = a.in_channels;
  auto model = models::make_model(a.model, mo);
  model->to(device);
  torch::manual_seed(static_cast<uint64_t>(comm->rank()));  // each rank its own batch
  auto x = torch::randn({a.batch, a.in_channels, a.image_size, a.image_size}).to(device);
  auto y = torch::randint(a.num_classes, {a.batch}, torch::kLong).to(device);
  if (a.channels_last) {
    trainer::to_channels_last(*model);
    x = x.contiguous(torch::MemoryFormat::ChannelsLast);
  }
  // Compute efficiency: the forward pass's FLOPs as this step runs it (same precision), counted once in eval mode
  // so that BatchNorm's running statistics are untouched.
  model->eval();
  int64_t forward_flops = 0;
  {
    torch::NoGradGuard no_grad;
    trainer::AutocastGuard autocast(device, amp.dtype, amp.autocast);
    forward_flops = models::count_flops([&] { (void)model->forward(x); });
  }
  model->train();
  std::unique_ptr<comm::GradientReducer> reducer;
  // With one rank, --sync-bn measures the SyncBatchNorm arithmetic alone (its collectives are local no-ops).
  if (a.sync_bn) comm::convert_sync_batchnorm(*model, comm);
  if (world > 1) {
    comm::broadcast_module_state(*model, *comm);
    comm::ReducerOptions ro;
    ro.bucket_cap_bytes = cap > 0 ? cap : int64_t{25} << 20;
    ro.overlap = !a.no_overlap;
    ro.skip_communication = a.no_comm;
    ro.compression = comm::parse_compression(a.grad_compression);
    ro.powersgd_rank = a.powersgd_rank;
    ro.powersgd_warmup_steps = a.powersgd_warmup_steps;
    reducer = std::make_unique<comm::GradientReducer>(model->named_parameters().pairs(), comm, ro);
  }
  trainer::Sgd sgd(trainer::weight_decay_groups(model->named_parameters().pairs(), 1e-4, 0.0), 0.9, false);
  // Loss scaling guards fp16's narrow range; bf16 has float32's, so it trains unscaled (as PyTorch recommends).
  trainer::GradScalerOptions so;
  so.enabled = amp.scale_loss;
  trainer::GradScaler scaler(so);

  int64_t skipped = 0, step_count = 0;
  torch::Tensor loss;
  bool diagnosing = false;
  proto::Heartbeat hb;
  double breakdown_total = 0;
  // What the trainer adds per step with diagnosis on (trainer/trainer.cpp): the recorder's step, the breakdown
  // totals and the overlap timeline into the heartbeat. The client thread's read of the recorder (once per
  // heartbeat in training) happens here every step, so this errs on the expensive side.
  auto diagnose_step = [&] {
    recording->recorder()->set_step(++step_count);
    const auto st = reducer->stats();
    hb.set_breakdown_steps(static_cast<uint64_t>(step_count));
    hb.set_compute_total_s(breakdown_total += 1e-3);
    hb.set_comm_exposed_total_s(st.exposed_seconds);
    hb.set_data_wait_total_s(0.0);
    hb.set_optimizer_total_s(0.0);
    trainer::set_heartbeat_timeline(hb, reducer->timeline());
    for (int s = 0; s < comm::kCollectiveStreams; ++s) (void)recording->recorder()->progress(comm::CollectiveStream(s));
  };
  auto diagnose = [&](bool on) {
    diagnosing = on;
    if (recording) recording->set_recording(on);
  };
  auto step = [&] {
    {
      trainer::AutocastGuard autocast(device, amp.dtype, amp.autocast);
      loss = trainer::cross_entropy(model->forward(x), y, 0.0);
    }
    if (reducer) reducer->prepare();
    scaler.scale(loss).backward();
    if (reducer) reducer->finish();
    if (!scaler.step(sgd, 0.01)) ++skipped;
    sgd.zero_grad();
    if (diagnosing) diagnose_step();
  };
  for (int64_t i = 0; i < a.warmup; ++i) step();
  synchronize(device);
  nlohmann::json tuned;
  if (reducer && a.bucket_cap_mb == "auto") {
    // --bucket-cap-mb auto (Note [Bucket cap tuning]): the trainer's schedule and decision, then the measurement
    // at the chosen cap.
    const auto t0 = std::chrono::steady_clock::now();
    const auto caps =
        comm::distinct_bucket_caps(model->named_parameters().pairs(), comm::default_bucket_cap_candidates());
    tuned["candidates_mb"] = nlohmann::json::array();
    for (int64_t c : caps) tuned["candidates_mb"].push_back(static_cast<double>(c) / (1 << 20));
    int64_t chosen = caps.front(), steps = 0;
    if (caps.size() > 1) {
      comm::BucketTunerOptions o;
      o.candidates = caps;
      o.steps_per_candidate = a.bucket_tune_steps;
      comm::BucketCapTuner tuner(o);
      reducer->rebuild(tuner.initial_cap());
      while (!tuner.done()) {
        step();
        ++steps;
        const int64_t next = tuner.after_step(reducer->timeline().finished_s, *comm);
        if (next != reducer->bucket_cap_bytes()) reducer->rebuild(next);
      }
      chosen = tuner.chosen_cap();
      tuned["median_ms"] = nlohmann::json::array();
      for (const auto& r : tuner.results()) tuned["median_ms"].push_back(r.median_s * 1e3);
      if (comm->rank() == 0) std::fprintf(stderr, "bucket cap auto: %s\n", tuner.describe().c_str());
    } else {
      reducer->rebuild(chosen);
    }
    tuned["chosen_mb"] = static_cast<double>(chosen) / (1 << 20);
    tuned["tuning_steps"] = steps;
    tuned["tuning_seconds"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  if (!variants.empty()) {
    return run_interleaved(a, variants, comm, *model, *reducer, step, diagnose);
  }
  if (reducer) reducer->reset_stats();
  comm->barrier()->wait();
  const auto t0 = std::chrono::steady_clock::now();
  for (int64_t i = 0; i < a.steps; ++i) step();
  synchronize(device);
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (world > 1) {  // the slowest rank's time is the job's
    auto t = torch::tensor({secs}, torch::kDouble);
    comm->allreduce(t, comm::ReduceOp::kMax)->wait();
    secs = t.item<double>();
  }
  nlohmann::json out = {{"impl", "stride"},
                        {"model", a.model},
                        {"batch", a.batch},
                        {"image_size", a.image_size},
                        {"device", a.device},
                        {"device_name", device.is_cuda() ? cuda_device_name(0) : std::string("cpu")},
                        {"threads", torch::get_num_threads()},
                        {"channels_last", a.channels_last},
                        {"amp", a.amp},
                        {"amp_dtype", trainer::compute_dtype_name(amp)},
                        {"cpu_bf16", device.is_cuda() ? std::string() : amp.cpu.source},
                        {"amp_emulated", amp.emulated},
                        {"steps", a.steps},
                        {"skipped_steps", skipped},
                        {"last_loss", loss.item<double>()},
                        {"seconds", secs},
                        {"ranks", world},
                        {"images_per_s", static_cast<double>(a.batch * a.steps * world) / secs},
                        {"forward_gflop_per_image", static_cast<double>(forward_flops) / 1e9 / a.batch},
                        // Whole job's training arithmetic per second (3x the forward FLOPs per image, models/flops.h).
                        {"train_gflops_per_s", static_cast<double>(models::training_step_flops(forward_flops)) *
                                                   static_cast<double>(a.steps * world) / secs / 1e9}};
  if (reducer) {
    const auto st = reducer->stats();
    const double n = static_cast<double>(std::max<int64_t>(st.steps, 1));
    out["comm"] = a.no_comm ? "skipped" : (a.no_overlap ? "after-backward" : "overlapped");
    out["comm_backend"] = comm->backend();
    const comm::Layout layout = comm->layout();
    out["comm_transport"] = layout.transport_name();
    if (layout.shm_wait != comm::ShmWait::kNone) out["shm_wait"] = comm::shm_wait_name(layout.shm_wait);
    if (layout.hosts > 0) out["hosts"] = layout.hosts;
    out["sync_bn"] = a.sync_bn;
    out["grad_compression"] = a.grad_compression;
    if (a.grad_compression == "powersgd") out["powersgd_rank"] = a.powersgd_rank;
    out["buckets"] = st.buckets;
    out["bytes_per_step"] = st.bytes;
    out["comm_ms_per_step"] = 1e3 * st.comm_seconds / n;
    out["exposed_comm_ms_per_step"] = 1e3 * st.exposed_seconds / n;
    out["hidden_fraction"] = st.hidden_fraction();
    out["bucket_cap_mb"] = static_cast<double>(reducer->bucket_cap_bytes()) / (1 << 20);
    if (!tuned.is_null()) out["bucket_cap_auto"] = tuned;
  }
  if (comm->rank() == 0) std::printf("%s\n", out.dump().c_str());
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
  cmd->add_flag("--channels-last", a->channels_last, "NHWC activations and 4-D weights");
  cmd->add_option("--device", a->device, "cpu or cuda (GPU 0)")->capture_default_str();
  cmd->add_flag("--amp", a->amp,
                "Autocast the forward pass (CUDA: float16 with dynamic loss scaling; CPU: bfloat16 where the CPU "
                "has bf16 instructions, else float32)");
  cmd->add_option("--amp-dtype", a->amp_dtype, "auto (CUDA: float16, CPU: bfloat16), float16 or bfloat16")
      ->capture_default_str();
  cmd->add_flag("--amp-force", a->amp_force, "CPU: bf16 autocast even without bf16 instructions (emulated)");
  cmd->add_option("--comm-backend", a->comm_backend, "auto | single | mpi | nccl (auto: mpi under mpirun)")
      ->capture_default_str();
  cmd->add_flag("--no-comm", a->no_comm, "Measurement only: skip gradient communication");
  cmd->add_flag("--no-overlap", a->no_overlap, "Reduce buckets after backward instead of during it");
  cmd->add_flag("--sync-bn", a->sync_bn, "Synchronised BatchNorm");
  cmd->add_option("--bucket-cap-mb", a->bucket_cap_mb,
                  "Gradient bucket cap in MiB, or auto: tuned after --warmup as stride train does, then measured")
      ->capture_default_str();
  cmd->add_option("--bucket-tune-steps", a->bucket_tune_steps, "--bucket-cap-mb auto: timed steps per candidate")
      ->capture_default_str();
  cmd->add_option("--grad-compression", a->grad_compression, "none | fp16 | bf16 | powersgd")->capture_default_str();
  cmd->add_option("--powersgd-rank", a->powersgd_rank, "PowerSGD's approximation rank")->capture_default_str();
  cmd->add_option("--powersgd-warmup-steps", a->powersgd_warmup_steps,
                  "Reducing steps of plain all-reduce before PowerSGD starts (counted from the first --warmup step)")
      ->capture_default_str();
  cmd->add_option(
      "--interleave", a->interleave,
      "Measure variants in alternating blocks of --steps steps within this run: a comma-separated "
      "subset of default,no-comm,sync-only,no-overlap,mpi,sync-bn,shm-spin,shm-sleep,diagnosis (needs several "
      "ranks)");
  cmd->add_option("--rounds", a->rounds, "Rounds of blocks for --interleave")->capture_default_str();
  cmd->callback([a] { run_step_bench(*a); });
}

}  // namespace stride::bench
