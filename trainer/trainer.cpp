#include "trainer/trainer.h"

#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <sstream>
#include <thread>

#include "comm/communicator.h"
#include "common/env.h"
#include "common/error.h"
#include "models/registry.h"
#include "models/state_dict.h"
#include "trainer/checkpoint_writer.h"
#include "trainer/loss.h"
#include "trainer/run_state.h"
#include "trainer/step_sums.h"

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

}  // namespace

// 64 random bits in hex: a start's identity (its checkpoints' ids in their lineage), a snapshot's.
std::string random_id() {
  std::random_device rd;
  char buf[17];
  std::snprintf(buf, sizeof(buf), "%08x%08x", rd(), rd());
  return buf;
}

namespace {

// Test hook STRIDE_TEST_SLOW_RANK=RANK:MS[:FROM:TO]: rank RANK sleeps MS milliseconds inside the compute part of
// each optimizer step in [FROM, TO) (default: every step), so tests can make a straggler (Note [Straggler
// detection] in cluster/straggler_detector.h).
struct SlowRank {
  int64_t rank = -1, ms = 0, from = 0, to = std::numeric_limits<int64_t>::max();
  bool applies(uint64_t r, int64_t step) const { return static_cast<int64_t>(r) == rank && step >= from && step < to; }
};

SlowRank slow_rank_from_env() {
  SlowRank s;
  const char* v = std::getenv("STRIDE_TEST_SLOW_RANK");
  if (!v || !*v) return s;
  std::vector<int64_t> parts;
  bool ok = true;
  std::stringstream in(v);
  std::string item;
  while (std::getline(in, item, ':')) {
    char* end = nullptr;
    const long long n = std::strtoll(item.c_str(), &end, 10);
    ok = ok && !item.empty() && *end == '\0' && n >= 0;
    parts.push_back(n);
  }
  if (!ok || (parts.size() != 2 && parts.size() != 4)) {
    throw UsageError(concat("STRIDE_TEST_SLOW_RANK='", v, "': expected RANK:MS or RANK:MS:FROM_STEP:TO_STEP"));
  }
  s.rank = parts[0];
  s.ms = parts[1];
  if (parts.size() == 4) {
    s.from = parts[2];
    s.to = parts[3];
  }
  return s;
}

}  // namespace

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
    if (s_->flight)
      dump_flight_recorder(*s_->flight, s_->c.output_dir, s_->rank, concat("communication failure: ", e.what()));
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
  s_->coordination->finish(s_->stopped, s_->step);
  // Ended (done, or stopped with its checkpoint committed): the run's snapshots are older than its last checkpoint.
  if (s_->snapshots) s_->snapshots->remove_all();
  if (s_->flight) dump_flight_recorder(*s_->flight, s_->c.output_dir, s_->rank, "exit");
  return 0;
}

bool Trainer::State::control_point() {
  int64_t proposal = 0;
  if (interval && rank == 0) {
    // Note [Checkpoint interval] in trainer/checkpoint_interval.h: rank 0 decides, the collective tells the rest.
    const auto now = Clock::now();
    interval->record_steps(step - interval_mark_step, std::chrono::duration<double>(now - interval_mark).count());
    interval->record_write(coordination->last_write_seconds());
    interval_mark = now;
    interval_mark_step = step;
    bool changed = false;
    proposal = interval->decide(seconds_since(interval_origin), &changed);
    if (changed) {
      const auto& f = interval->figures();
      out->print(concat("checkpoint interval: ", interval->describe()));
      out->record("checkpoint_interval", step,
                  {{"steps", f.steps},
                   {"seconds", f.interval_s},
                   {"cost_s", f.cost_s},
                   {"write_s", f.write_s},
                   {"mtbf_s", f.mtbf_s},
                   {"step_s", f.step_s},
                   {"clamped", f.clamped}});
    }
  }
  const auto d = coordination->control_point(proposal);
  if (interval && d.checkpoint_every > 0) {
    checkpoint_every = d.checkpoint_every;
    hb.set_checkpoint_every(static_cast<uint64_t>(checkpoint_every));
  }
  if (d.stop) {
    out->print(concat("stop requested", d.signal ? concat(" (signal ", d.signal, ")") : std::string(),
                      ": checkpointing at step ", step));
    checkpoint();
    return true;
  }
  if (d.checkpoint) checkpoint();
  return false;
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
  const comm::OriginScope origin(comm::OriginKind::kOther, -1, "BatchNorm buffer average");
  comm::average_buffers(*model, *comm);
}

void Trainer::State::update_ema() {
  double d = c.model_ema_decay;
  if (c.model_ema_steps > 0) {
    // torchvision's train.py: update every model_ema_steps iterations, with the decay rescaled so a recipe's value
    // means the same at any batch and length; during lr warm-up the average restarts from the weights.
    if (step % c.model_ema_steps != 0) return;
    const double adjust = static_cast<double>(world) * static_cast<double>(c.batch_size) *
                          static_cast<double>(c.model_ema_steps) / static_cast<double>(c.epochs);
    d = 1.0 - std::min(1.0, (1.0 - d) * adjust);
    if (static_cast<double>(step) / static_cast<double>(std::max<int64_t>(1, steps_per_epoch)) < c.lr_warmup_epochs)
      d = 0.0;
  }
  torch::NoGradGuard no_grad;
  auto src = model->named_parameters();
  for (auto& p : ema->named_parameters()) p.value().mul_(d).add_(src[p.key()], 1.0 - d);
  auto bufs = model->named_buffers();
  for (auto& b : ema->named_buffers()) b.value().copy_(bufs[b.key()]);
}

void Trainer::State::train() {
  const int64_t limit = step_limit;
  out->print(concat("train: ", c.model, " (", models::count_parameters(*model), " parameters), ",
                    train_data->num_samples(), " training images, ", steps_per_epoch, " steps/epoch x ", c.epochs,
                    " epochs, global batch ", c.batch_size * static_cast<int64_t>(world) * c.accum_steps));
  const auto run_start = Clock::now();
  const int64_t first_step = step;
  {
    const auto p = precision_record();
    out->record("precision", step,
                {{"compute_dtype", p.compute_dtype()},
                 {"device", p.device()},
                 {"cpu_bf16", p.cpu_bf16()},
                 {"emulated", p.emulated()},
                 {"amp_requested", p.amp_requested()},
                 {"channels_last", p.channels_last()}});
  }
  std::ofstream trace;  // --trace-samples: "epoch batch id id ..." per micro-batch, valid samples only
  if (c.trace_samples) {
    fs::create_directories(fs::path(c.output_dir) / "samples");
    trace.open(fs::path(c.output_dir) / "samples" / concat("rank-", rank, ".txt"), std::ios::app);
  }
  double data_wait_mark = 0.0, comm_wait_mark = 0.0;
  int64_t interval_first_step = step;
  checkpoint_every = checkpoint_every_steps(c);
  if (checkpoint_every_auto(c)) {
    // The launcher counts the job's starts; every start after the first follows a failure (or a requeue).
    const int64_t restarts = env_integer("STRIDE_RESTART_COUNT", 0, INT32_MAX)
                                 .value_or(env_integer("SLURM_RESTART_COUNT", 0, INT32_MAX).value_or(0));
    interval =
        std::make_unique<CheckpointInterval>(parse_duration_seconds(c.mtbf, "mtbf"), static_cast<int>(restarts), 0.0);
    interval_origin = interval_mark = Clock::now();
    interval_mark_step = step;
  }
  hb.set_checkpoint_auto(static_cast<bool>(interval));
  hb.set_checkpoint_every(static_cast<uint64_t>(checkpoint_every));
  // The step breakdown in the heartbeats (Note [Straggler detection] in cluster/straggler_detector.h): running
  // totals; compute is the forward + backward segment less the exposed gradient communication inside it.
  const SlowRank slow = slow_rank_from_env();
  double compute_segments = 0.0, optimizer_total = 0.0, data_wait_total = 0.0;
  const double exposed_base = reducer ? reducer->stats().exposed_seconds : 0.0;
  double loader_wait_mark = train_data->wait_seconds();
  uint64_t breakdown_steps = 0;
  while (!stopped && step < limit && cursor.epoch < static_cast<uint64_t>(c.epochs)) {
    train_data->start(cursor);
    model->train();
    apply_freeze();
    optimizer->zero_grad();
    int64_t micro = 0, images = 0, skipped_steps = 0;
    StepSums interval_sums, epoch_sums;  // this rank's, until reduced over ranks for printing
    auto interval_start = Clock::now(), heartbeat_mark = interval_start;
    DeviceSums device_sums(device);
    const auto over_ranks = [this](std::vector<double> v) {
      const comm::OriginScope origin(comm::OriginKind::kOther, -1, "progress sums");
      return sum_over_ranks(std::move(v));
    };
    while (auto batch = train_data->next()) {
      if (flight) flight->set_step(step + 1);  // the step this micro-batch belongs to, as the logs number it
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
      const auto compute_start = Clock::now();
      if (micro % c.accum_steps == 0 && slow.applies(rank, step)) {
        std::this_thread::sleep_for(std::chrono::milliseconds(slow.ms));
      }
      auto x = device_images(*batch);
      auto labels = to_device(batch->labels), valid = to_device(batch->valid);
      auto target = batch->targets.defined() ? to_device(batch->targets) : labels;
      torch::Tensor logits, loss;
      {
        AutocastGuard autocast(device, amp.dtype, amp.autocast);
        logits = model->forward(x);
        loss = cross_entropy(logits, target, c.label_smoothing, valid);
      }
      const bool last_micro = (micro + 1) % c.accum_steps == 0;
      if (reducer) reducer->prepare(/*reduce=*/last_micro);
      scaler->scale(c.accum_steps > 1 ? loss / static_cast<double>(c.accum_steps) : loss).backward();
      if (reducer && last_micro) reducer->finish();
      compute_segments += seconds_since(compute_start);
      device_sums.add(loss, logits, labels, valid, /*soft_targets=*/batch->targets.defined());
      images += batch->images.size(0);
      cursor = batch->cursor;
      if (++micro % c.accum_steps != 0) continue;
      const auto optimizer_start = Clock::now();
      if (c.clip_grad_norm > 0.0) {
        if (scaler->enabled()) scaler->unscale(model->parameters());
        torch::nn::utils::clip_grad_norm_(model->parameters(), c.clip_grad_norm);
      }
      const double lr = schedule->at(step);
      if (!scaler->step(*optimizer, lr)) ++skipped_steps;
      optimizer->zero_grad();
      ++step;
      if (ema) update_ema();
      optimizer_total += seconds_since(optimizer_start);
      if (bucket_tuner) tune_bucket_cap();
      {
        const double exposed = reducer ? reducer->stats().exposed_seconds - exposed_base : 0.0;
        const double loader_wait = train_data->wait_seconds();
        data_wait_total += loader_wait >= loader_wait_mark ? loader_wait - loader_wait_mark : loader_wait;
        loader_wait_mark = loader_wait;
        hb.set_breakdown_steps(++breakdown_steps);
        hb.set_compute_total_s(std::max(0.0, compute_segments - exposed));
        hb.set_comm_exposed_total_s(exposed);
        hb.set_data_wait_total_s(data_wait_total);
        hb.set_optimizer_total_s(optimizer_total);
        if (reducer) set_heartbeat_timeline(hb, reducer->timeline());
        const data::SourceStats src = train_data->source_stats();
        hb.set_data_bytes_fetched(src.bytes_fetched);
        hb.set_data_shards_fetched(src.shards_fetched);
        hb.set_data_cache_hits(src.cache_hits);
        hb.set_data_refetches(src.refetches);
        hb.set_data_evictions(src.evictions);
        hb.set_data_stall_total_s(src.stall_seconds);
      }
      hb.set_step(static_cast<uint64_t>(step));
      hb.set_epoch(cursor.epoch);
      const auto interval_figures = [&] {  // seconds, images/s of the job as this rank sees it, ETA to `limit`
        const double secs = seconds_since(interval_start);
        const double done_frac = static_cast<double>(step - first_step) / static_cast<double>(limit - first_step);
        return std::array<double, 3>{secs,
                                     static_cast<double>(images) * static_cast<double>(world) / std::max(secs, 1e-9),
                                     seconds_since(run_start) * (1.0 - done_frac) / std::max(done_frac, 1e-9)};
      };
      if (step % c.print_freq == 0 || step == limit) {
        const StepSums taken = device_sums.take();
        interval_sums += taken;
        epoch_sums += taken;
        // Loss and training error over all ranks' samples (every rank reaches the same steps).
        const StepSums all = interval_sums.over_ranks(over_ranks);
        const auto [secs, ips, eta] = interval_figures();
        const double mean_loss = all.mean_loss();
        char line[160];
        std::snprintf(line, sizeof(line), "epoch %llu/%lld step %lld/%lld loss %.4f lr %.4g %.0f img/s eta %s",
                      static_cast<unsigned long long>(cursor.epoch + 1), static_cast<long long>(c.epochs),
                      static_cast<long long>(step), static_cast<long long>(limit), mean_loss, lr, ips,
                      format_eta(eta).c_str());
        out->progress(line);
        nlohmann::json fields = {{"epoch", cursor.epoch + 1},
                                 {"epoch_progress", static_cast<double>(step) / static_cast<double>(steps_per_epoch)},
                                 {"loss", mean_loss},
                                 {"lr", lr},
                                 {"img_per_s", ips}};
        if (all.error_percent() >= 0) fields["train_err"] = all.error_percent();
        if (scaler->enabled()) {
          fields["loss_scale"] = scaler->current_scale();
          fields["skipped_steps"] = skipped_steps;
        }
        out->record("train", step, fields);
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
        coordination->update(hb, /*new_interval=*/true);
        interval_sums = {};
        images = 0;
        interval_start = heartbeat_mark = Clock::now();
      } else if (seconds_since(heartbeat_mark) >= c.heartbeat_interval) {
        // Between progress lines the status shows this rank's own figures, from the first steps on.
        const StepSums taken = device_sums.take();
        interval_sums += taken;
        epoch_sums += taken;
        const auto [secs, ips, eta] = interval_figures();
        hb.set_loss(interval_sums.mean_loss());
        hb.set_img_per_s(ips);
        hb.set_step_time_s(secs / static_cast<double>(std::max<int64_t>(1, step - interval_first_step)));
        hb.set_eta_seconds(eta);
        coordination->update(hb);
        heartbeat_mark = Clock::now();
      } else {
        coordination->update(hb);
      }
      // The epoch's last step is checkpointed at the epoch end (with the cursor past the epoch).
      const bool epoch_has_more =
          cursor.consumed < train_data->num_samples() && train_data->plan().steps(cursor.consumed) > 0;
      // The run's last step is checkpointed after its evaluation (below), so the checkpoint carries the score.
      // A fixed interval checkpoints at multiples of it; an automatic one counts from the newest checkpoint (the
      // same step on every rank) since its length changes.
      const bool due =
          checkpoint_every > 0 && (interval ? step - std::max(last_checkpoint_step, first_step) >= checkpoint_every
                                            : step % checkpoint_every == 0);
      if (due && epoch_has_more && step < limit) checkpoint();
      if (snapshots && snapshots->has_buddies()) {
        // Note [Buddy copies]: the snapshot of the step before goes to this rank's buddy, behind training.
        const comm::OriginScope origin(comm::OriginKind::kOther, -1, "snapshot buddy copy");
        if (step == buddy_exchange_at) {
          snapshots->exchange(*comm, std::max<int64_t>(1, snapshot_every - 1));
        } else {
          snapshots->exchange_step(*comm);
        }
      }
      // A snapshot where no checkpoint was just taken, mid-epoch (epoch ends and the run's end are checkpointed).
      if (snapshot_every > 0 && step % snapshot_every == 0 && step != last_checkpoint_step && epoch_has_more &&
          step < limit) {
        snapshot();
      }
      if (step % c.control_every == 0 && control_point()) {
        stopped = true;
        break;
      }
      if (step >= limit) break;
    }
    if (stopped) break;
    if (step >= limit && cursor.consumed < train_data->num_samples() && train_data->plan().steps(cursor.consumed) > 0) {
      // Stopped mid-epoch by --max-steps: the run ends here, so it is evaluated here (the cursor points into
      // this epoch).
      evaluate_and_record();
      checkpoint();
      break;
    }
    epoch_sums += device_sums.take();
    const StepSums epoch_all = epoch_sums.over_ranks(over_ranks);
    nlohmann::json summary = {
        {"epoch", cursor.epoch + 1}, {"train_loss", epoch_all.mean_loss()}, {"seconds", seconds_since(run_start)}};
    if (epoch_all.error_percent() >= 0) summary["train_err"] = epoch_all.error_percent();
    out->record("epoch", step, summary);
    cursor = {cursor.epoch + 1, 0, cursor.seed};
    const bool last_epoch = cursor.epoch == static_cast<uint64_t>(c.epochs) || step >= limit;
    if (last_epoch || (c.eval_freq > 0 && cursor.epoch % static_cast<uint64_t>(c.eval_freq) == 0)) {
      evaluate_and_record();
    }
    checkpoint();  // every epoch end (replacing a same-step mid-epoch one: its cursor now points past the epoch)
  }
  end_bucket_tuning();
  // A score is reported only for the step that produced it.
  const bool scored = last_eval_step == step && last_eval.count("acc1");
  out->print(concat("done: ", step - first_step, " steps",
                    first_step > 0 ? concat(" (", first_step, " -> ", step, ")") : std::string(), " in ",
                    format_eta(seconds_since(run_start)),
                    scored ? concat(", test acc1 ", std::round(last_eval["acc1"] * 100) / 100, "%") : std::string()));
}

proto::Precision Trainer::State::precision_record() const {
  proto::Precision p;
  p.set_compute_dtype(compute_dtype_name(amp));
  p.set_device(device.is_cuda() ? "cuda" : "cpu");
  if (!device.is_cuda()) p.set_cpu_bf16(amp.cpu.source);
  p.set_emulated(amp.emulated);
  p.set_amp_requested(c.amp);
  p.set_channels_last(c.channels_last);
  return p;
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
  const comm::OriginScope origin(comm::OriginKind::kEval);
  m->eval();
  torch::NoGradGuard no_grad;
  eval_data->start({0, 0, static_cast<uint64_t>(c.seed)});
  TopK total;
  while (auto b = eval_data->next()) {
    torch::Tensor logits;
    {
      AutocastGuard autocast(device, amp.dtype, amp.autocast);
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
  last_eval_step = step;
  // At an epoch's end the cursor already points at the next epoch: `epoch` counts the epochs done.
  const bool epoch_end = cursor.consumed == 0;
  const double epochs_done = static_cast<double>(cursor.epoch) +
                             (train_data ? static_cast<double>(cursor.consumed) / train_data->num_samples() : 0.0);
  nlohmann::json fields = {{"acc1", r.acc1}, {"acc5", r.acc5}, {"loss", r.loss}};
  fields["epoch"] = epoch_end ? nlohmann::json(cursor.epoch) : nlohmann::json(epochs_done);
  char buf[200];
  const std::string where = epoch_end ? concat("epoch ", cursor.epoch)
                                      : concat("at step ", step, " (epoch ", std::round(epochs_done * 100) / 100, ")");
  std::snprintf(buf, sizeof(buf), "eval %s: acc1 %.2f%% acc5 %.2f%% loss %.4f (%lld images)", where.c_str(), r.acc1,
                r.acc5, r.loss, static_cast<long long>(r.count));
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
  coordination->update(hb);
  out->print(line);
  out->record("eval", step, fields);
}

void Trainer::State::checkpoint() {
  if (step == last_checkpoint_step) return;  // already checkpointed (or resumed from): never rewrite a commit
  const auto t0 = Clock::now();
  // The same on every rank (the start's id from rank 0): snapshots name it as their parent.
  const std::string checkpoint_id = concat(start_id, "-", step);
  sync_buffers();
  // Replicas are identical after the step, so the files are shared out: rank r writes the parts with
  // index % world == r (model on rank 0, optimizer on rank 1, ...); rank 0 also sends the training state.
  const int64_t w = static_cast<int64_t>(world), me = static_cast<int64_t>(rank);
  CheckpointJob job;
  job.step = static_cast<uint64_t>(step);
  auto snapshot = [](const models::NamedTensors& tensors) { return snapshot_to_host(tensors); };
  if (0 % w == me) job.files.emplace_back("model.safetensors", snapshot(models::state_dict(*model)));
  if (1 % w == me) job.files.emplace_back("optimizer.safetensors", snapshot(optimizer->state()));
  if (ema && 2 % w == me) job.files.emplace_back("ema.safetensors", snapshot(models::state_dict(*ema)));
  if (reducer) {
    // PowerSGD's error feedback differs between ranks: every rank writes its own.
    auto compression = reducer->compression_state();
    if (!compression.empty()) job.files.emplace_back(powersgd_state_file(rank), snapshot(compression));
  }
  if (rank == 0) {
    job.files.emplace_back("state.safetensors", state_tensors());
    job.manifest = manifest_now(checkpoint_id);
  }
  coordination->submit(std::move(job));
  last_checkpoint_step = step;
  lineage_parent = std::make_pair(static_cast<uint64_t>(step), checkpoint_id);
  const double stall = seconds_since(t0);
  if (interval) interval->record_stall(stall);
  out->record("checkpoint", step, {{"stall_seconds", stall}});
}

NamedTensors Trainer::State::state_tensors() {
  NamedTensors state;
  state["rng"] = cpu_rng_state();
  if (scaler->enabled()) {
    for (auto& [k, v] : snapshot_to_host(scaler->state())) state[k] = v;
  }
  return state;
}

proto::Manifest Trainer::State::manifest_now(const std::string& id) const {
  proto::Manifest m;
  m.set_step(static_cast<uint64_t>(step));
  m.set_epoch(cursor.epoch);
  m.mutable_cursor()->set_epoch(cursor.epoch);
  m.mutable_cursor()->set_consumed(cursor.consumed);
  m.mutable_cursor()->set_seed(cursor.seed);
  m.set_world_size(static_cast<uint32_t>(world));
  m.set_global_batch(static_cast<uint64_t>(c.batch_size * c.accum_steps) * world);
  m.set_model(c.model);
  m.set_config_digest(config_digest);
  m.set_config(config_text);
  auto& lineage = *m.mutable_lineage();
  lineage.set_id(id);
  lineage.set_has_parent(lineage_parent.has_value());
  if (lineage_parent) {
    lineage.set_parent_step(lineage_parent->first);
    lineage.set_parent_id(lineage_parent->second);
  }
  m.set_created_unix(std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count());
  m.set_stride_version(STRIDE_VERSION);
  if (last_eval_step == step) {
    for (const auto& [k, v] : last_eval) (*m.mutable_metrics())[k] = v;
  }
  *m.mutable_precision() = precision_record();
  *m.mutable_preprocess() = preprocess;
  if (bucket_choice) *m.mutable_bucket_cap() = *bucket_choice;
  return m;
}

void Trainer::State::snapshot() {
  // Note [In-memory snapshots] in trainer/snapshot.h: this rank's own state, as it is (no buffer averaging, which
  // would make a run with snapshots differ from one without), handed to the writer thread.
  const auto t0 = Clock::now();
  CheckpointData d;
  d.model = snapshot_to_host(models::state_dict(*model));
  d.optimizer = snapshot_to_host(optimizer->state());
  if (ema) d.ema = snapshot_to_host(models::state_dict(*ema));
  d.state = state_tensors();
  if (reducer) {
    auto compression = reducer->compression_state();
    if (!compression.empty()) d.extra.emplace_back(powersgd_state_file(rank), snapshot_to_host(compression));
  }
  d.manifest = manifest_now(random_id());
  const bool taken = snapshots->submit(std::move(d));
  buddy_exchange_at = step + 1;
  // The writer's figures are those of the previous snapshot (this one is being written).
  out->record("snapshot", step,
              {{"stall_seconds", seconds_since(t0)},
               {"taken", taken},
               {"write_seconds", snapshots->last_seconds()},
               {"bytes", snapshots->last_bytes()},
               {"buddy_sent_bytes", snapshots->buddy_sent_bytes()},
               {"buddy_copies_written", snapshots->buddy_copies()}});
}

}  // namespace stride::trainer
