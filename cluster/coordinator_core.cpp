#include "cluster/coordinator_core.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <set>

#include "cluster/auth.h"
#include "cluster/wire.h"
#include "comm/timeline.h"
#include "common/error.h"

namespace stride::cluster {
namespace {

constexpr size_t kMaxEvents = 200;
constexpr size_t kMaxSeriesPoints = 2000;

proto::Command command(proto::Command::Kind kind, uint64_t step = 0, const std::string& reason = "") {
  proto::Command c;
  c.set_kind(kind);
  c.set_step(step);
  c.set_reason(reason);
  return c;
}

std::string fixed(double v, int digits = 1) {
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.*f", digits, v);
  return buf;
}

// Sample values in the Prometheus text format: integers (counters, steps) exactly, other values with the
// fewest digits that read back as the same double (never 1.23457e+06 for 1234567).
std::string prom_value(int64_t v) { return std::to_string(v); }
std::string prom_value(uint64_t v) { return std::to_string(v); }
std::string prom_value(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  char buf[64];
  for (int digits = 15; digits <= 17; ++digits) {
    std::snprintf(buf, sizeof(buf), "%.*g", digits, v);
    if (std::strtod(buf, nullptr) == v) break;
  }
  return buf;
}

// Label values in the Prometheus text format escape backslash, quote and newline.
std::string prom_label(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '\\' || c == '"') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out;
}

// A name from the network as it may appear in a log line: quoted, control characters escaped, at most 80 bytes.
std::string printable(const std::string& s) {
  static const char* hex = "0123456789abcdef";
  std::string out = "'";
  for (size_t i = 0; i < s.size() && i < 80; ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x20 || c == 0x7f || c == '\\' || c == '\'') {
      out += "\\x";
      out += hex[c >> 4];
      out += hex[c & 15];
    } else {
      out += static_cast<char>(c);
    }
  }
  return out + (s.size() > 80 ? "'..." : "'");
}

// A rank's newest step breakdown for /status (seconds per step); null before its first sample.
nlohmann::json breakdown_json(const StragglerDetector::RankView& v) {
  if (!v.has_sample) return nullptr;
  return {{"steps", v.sample.steps},
          {"compute_s", v.sample.compute_s},
          {"data_wait_s", v.sample.data_wait_s},
          {"comm_exposed_s", v.sample.comm_exposed_s},
          {"optimizer_s", v.sample.optimizer_s},
          {"compute_vs_peers", v.ratio > 0 ? nlohmann::json(v.ratio) : nlohmann::json(nullptr)},
          {"straggler", v.flagged}};
}

// The overlap timeline a heartbeat carries (Note [Overlap timeline] in comm/timeline.h); step 0: none.
comm::StepTimeline heartbeat_timeline(const proto::Heartbeat& hb) {
  comm::StepTimeline tl;
  tl.step = static_cast<int64_t>(hb.timeline_step());
  tl.backward_s = hb.timeline_backward_s();
  for (const auto& p : hb.timeline()) {
    comm::BucketTiming b;
    b.bytes = static_cast<int64_t>(p.bytes());
    b.parameters = p.parameters();
    b.ready_s = p.ready_s();
    b.launched_s = p.launched_s();
    b.started_s = p.started_s();
    b.done_s = p.done_s();
    b.communicated = p.communicated();
    tl.buckets.push_back(b);
  }
  return tl;
}

// A rank's last per-bucket overlap timeline for /status; null before its first.
nlohmann::json overlap_json(const proto::Heartbeat& hb) {
  if (hb.timeline_step() == 0) return nullptr;
  const comm::StepTimeline tl = heartbeat_timeline(hb);
  nlohmann::json buckets = nlohmann::json::array();
  double comm = 0, last_done = 0;
  bool communicated = false;
  for (size_t i = 0; i < tl.buckets.size(); ++i) {
    const auto& b = tl.buckets[i];
    comm += b.comm_s();
    communicated = communicated || b.communicated;
    if (b.communicated) last_done = std::max(last_done, b.done_s);
    buckets.push_back({{"index", i},
                       {"bytes", b.bytes},
                       {"parameters", b.parameters},
                       {"ready_s", b.ready_s},
                       {"launched_s", b.launched_s},
                       {"started_s", b.started_s},
                       {"done_s", b.done_s},
                       {"communicated", b.communicated},
                       {"hidden_fraction", b.comm_s() > 0 ? nlohmann::json(b.hidden_s(tl.backward_s) / b.comm_s())
                                                          : nlohmann::json(nullptr)}});
  }
  return {{"step", hb.timeline_step()},
          {"backward_s", tl.backward_s},
          {"comm_s", comm},
          {"hidden_fraction", communicated ? nlohmann::json(tl.hidden_fraction()) : nlohmann::json(nullptr)},
          // Communication still running after backward ended: what the step waited for at most.
          {"after_backward_s", communicated ? std::max(0.0, last_done - tl.backward_s) : 0.0},
          {"buckets", buckets}};
}

// A rank's remote data source totals (heartbeat fields 40-45; zeros for a local directory).
nlohmann::json data_source_json(const proto::Heartbeat& hb) {
  return {{"bytes_fetched", hb.data_bytes_fetched()}, {"shards_fetched", hb.data_shards_fetched()},
          {"cache_hits", hb.data_cache_hits()},       {"refetches", hb.data_refetches()},
          {"evictions", hb.data_evictions()},         {"stall_s", hb.data_stall_total_s()}};
}

}  // namespace

void CoordinatorCore::Series::add(double xv, double yv) {
  if (!std::isfinite(yv)) return;
  x.push_back(xv);
  y.push_back(yv);
  if (x.size() >= kMaxSeriesPoints) {  // keep every other point: bounded memory, the whole run stays visible
    size_t j = 0;
    for (size_t i = 0; i < x.size(); i += 2, ++j) {
      x[j] = x[i];
      y[j] = y[i];
    }
    x.resize(j);
    y.resize(j);
  }
}

CoordinatorCore::CoordinatorCore(CoreOptions options, double now, double wall)
    : o_(std::move(options)), t0_(now), wall0_(wall), ranks_(o_.world_size), stragglers_(o_.straggler, o_.world_size) {
  STRIDE_CHECK_GT(o_.world_size, 0u, "world size");
  if (!o_.ops) o_.ops = storage::real_file_ops();
  // Resume: the head of the newest branch on disk is the starting point of "last committed".
  if (!o_.checkpoint_root.empty()) {
    if (const auto head = storage::lineage_head(o_.checkpoint_root)) {
      has_commit_ = true;
      last_committed_step_ = head->step;
      last_committed_path_ = head->path;
    }
  }
  add_event("info", concat("job ", o_.job, " started: waiting for ", o_.world_size, " rank(s)"), now);
}

std::string CoordinatorCore::rank_name(uint32_t rank) const {
  const auto& r = ranks_[rank];
  if (!r.joined) return concat("rank ", rank);
  return concat("rank ", rank, " on ", r.host, " (pid ", r.pid, ")");
}

void CoordinatorCore::add_event(const std::string& level, const std::string& message, double now) {
  events_.push_back({wall(now), level, message});
  while (events_.size() > kMaxEvents) events_.pop_front();
  std::fprintf(stderr, "stride: coordinator: %s%s\n", level == "info" ? "" : (level + ": ").c_str(), message.c_str());
  std::fflush(stderr);
}

void CoordinatorCore::note(const std::string& level, const std::string& message, double now) {
  add_event(level, message, now);
}

std::string CoordinatorCore::admit(const proto::Hello& h, const std::string& server_nonce, double now, bool* resumed) {
  if (resumed) *resumed = false;
  const std::string t = auth::transcript(server_nonce, h);
  if (!auth::digest_equal(h.proof(), auth::hello_proof(o_.token, t))) {
    return "authentication failed: the Hello's proof does not match the job token and this connection's "
           "challenge (a wrong token, or a Hello replayed from another connection)";
  }
  if (h.world_size() != o_.world_size) {
    return concat("world size ", h.world_size(), " does not match the job's ", o_.world_size);
  }
  if (h.rank() >= o_.world_size) return concat("rank ", h.rank(), " is outside the world of ", o_.world_size);
  if (h.attempt() != attempt_) {
    return concat("rank ", h.rank(), " belongs to start ", h.attempt(), " of the job; the job is at start ", attempt_);
  }
  if (failure_) return concat("the job has failed: ", *failure_);
  auto& r = ranks_[h.rank()];
  if (r.joined && !r.alive) return concat("rank ", h.rank(), " was declared dead");
  if (r.joined) {
    // Knowing the token is not enough to take over a live rank: only the process that joined holds its key.
    if (h.session_proof().empty() || !auth::digest_equal(h.session_proof(), auth::resume_proof(r.session_key, t))) {
      return concat(rank_name(h.rank()), " is live; a reconnect must prove the session of its first Hello",
                    h.session_proof().empty() ? " (this Hello has no session proof)" : " (the session proof is wrong)");
    }
    if (resumed) *resumed = true;
  } else {
    r.session_key = auth::session_key(o_.token, t);
  }
  const bool rejoin = r.joined;
  r.joined = r.alive = r.connected = true;
  r.finished = false;
  r.host = h.host();
  r.pid = h.pid();
  r.last_seen = now;
  if (!rejoin) r.joined_at = now;
  r.hb.set_step(h.step());
  add_event("info", concat(rejoin ? "reconnected: " : "joined: ", rank_name(h.rank()), " at step ", h.step()), now);
  if (stopping_) outbound_.push_back({static_cast<int>(h.rank()), command(proto::Command::STOP, 0, "stop requested")});
  return "";
}

void CoordinatorCore::heartbeat(uint32_t rank, const proto::Heartbeat& hb, double now) {
  auto& r = ranks_.at(rank);
  r.last_seen = now;
  r.hb = hb;
  if (r.alive && !r.finished) {
    if (const auto change =
            stragglers_.observe(rank, hb.breakdown_steps(), hb.compute_total_s(), hb.data_wait_total_s(),
                                hb.comm_exposed_total_s(), hb.optimizer_total_s(), now)) {
      const double pct = (change->compute_s / change->peer_median_s - 1) * 100;
      const std::string figures = concat(fixed(change->compute_s * 1e3), " ms vs ", fixed(change->peer_median_s * 1e3),
                                         " ms compute per step, peers' median");
      if (change->flagged) {
        add_event(
            "warning",
            concat("straggler: ", rank_name(rank), " computes ", fixed(pct, 0), "% slower than its peers (", figures,
                   "; over ", fixed(o_.straggler.threshold * 100, 0), "% for ", o_.straggler.window, " heartbeats)"),
            now);
      } else {
        add_event("info",
                  concat("straggler recovered: ", rank_name(rank), " is back within ",
                         fixed(o_.straggler.threshold * 100, 0), "% of its peers (", figures, ")"),
                  now);
      }
    }
  }
  if (hb.has_loss() && hb.step() > 0) {
    step_time_[rank].add(static_cast<double>(hb.step()), hb.step_time_s());
    if (rank == 0 && hb.step() != last_recorded_step_) {
      last_recorded_step_ = hb.step();
      loss_.add(static_cast<double>(hb.step()), hb.loss());
      ips_.add(static_cast<double>(hb.step()), hb.img_per_s());
    }
  }
  if (rank == 0 && hb.has_eval() && hb.eval_step() != last_eval_step_) {
    last_eval_step_ = hb.eval_step();
    acc_.add(static_cast<double>(hb.eval_step()), hb.eval_acc1());
  }
}

void CoordinatorCore::goodbye(uint32_t rank, const proto::Goodbye& bye, double now) {
  auto& r = ranks_.at(rank);
  r.finished = true;
  r.connected = false;
  stragglers_.forget(rank);
  if (!bye.finished()) stopped_ = true;  // stopped on request before the end (resumable)
  add_event(
      "info",
      concat(rank_name(rank), bye.finished() ? " finished" : " left", bye.reason().empty() ? "" : ": ", bye.reason()),
      now);
}

void CoordinatorCore::disconnected(uint32_t rank, double now) {
  auto& r = ranks_.at(rank);
  if (!r.connected) return;
  r.connected = false;
  r.disconnected_at = now;
  if (!r.finished && r.alive) add_event("warning", concat(rank_name(rank), ": connection lost"), now);
}

void CoordinatorCore::tick(double now) {
  // After the first death the job is going down: the others leaving is the consequence, not news.
  if (failure_) return;
  for (uint32_t i = 0; i < ranks_.size(); ++i) {
    const auto& r = ranks_[i];
    if (!r.joined || !r.alive || r.finished) continue;
    if (now - r.last_seen > o_.heartbeat_timeout_s) {
      declare_dead(i, concat("no heartbeat for ", fixed(now - r.last_seen), " s"), now);
    } else if (!r.connected && now - r.disconnected_at > o_.reconnect_grace_s) {
      declare_dead(i, concat("connection lost ", fixed(now - r.disconnected_at), " s ago"), now);
    }
  }
  if (!failure_ && o_.hang_report_after_s > 0) check_hang(o_.hang_report_after_s, now);
}

void CoordinatorCore::check_hang(double report_after_s, double now) {
  // A rank that misses a few heartbeats is not compared: its figures are stale (a stopped or partitioned rank).
  const double silent_after = std::max(2.0, 4 * o_.heartbeat_interval_s);
  std::vector<RankProgress> progress;
  for (uint32_t i = 0; i < ranks_.size(); ++i) {
    const auto& r = ranks_[i];
    if (!r.joined || r.finished) continue;
    RankProgress p;
    p.rank = i;
    p.host = r.host;
    p.heartbeat_age_s = now - r.last_seen;
    p.streams.assign(r.hb.collectives().begin(), r.hb.collectives().end());
    if (!r.alive) {
      p.reachable = false;
      p.unreachable_why = concat("dead (", r.dead_why, ")");
    } else if (!r.connected) {
      p.reachable = false;
      p.unreachable_why = concat("unreachable (connection lost ", fixed(now - r.disconnected_at), " s ago)");
    } else if (p.heartbeat_age_s > silent_after) {
      p.reachable = false;
      p.unreachable_why = concat("unreachable (no heartbeat for ", fixed(p.heartbeat_age_s), " s)");
    }
    progress.push_back(std::move(p));
  }
  auto v = hang_verdict(progress, report_after_s);
  if (!v) {
    if (hang_ && !failure_) {
      add_event("info", concat("the collectives move again (", hang_->message.substr(0, 60), "...)"), now);
      hang_.reset();
      hang_key_.clear();
    }
    return;
  }
  if (v->key() != hang_key_) {
    hang_key_ = v->key();
    hang_since_ = wall(now);
    add_event("error", concat("hang: ", v->message), now);
    // Every rank writes its ring now, while it is still alive (`stride trace RUN_DIR` merges them).
    outbound_.push_back({-1, command(proto::Command::DUMP_TRACE, 0, concat("hang: ", v->message))});
  }
  hang_ = std::move(v);
}

void CoordinatorCore::restart(uint32_t world_size, uint32_t attempt, const std::string& reason, double now) {
  STRIDE_CHECK_GT(world_size, 0u, "world size");
  o_.world_size = world_size;
  ranks_.assign(world_size, RankState{});
  pending_.clear();
  outbound_.clear();
  failure_.reset();
  hang_.reset();
  hang_key_.clear();
  dead_hosts_.clear();
  stopping_ = false;
  attempt_ = attempt;
  ++generation_;
  ++o_.restarts;
  step_time_.clear();
  stragglers_.reset(world_size);
  add_event("warning", concat("restart ", o_.restarts, " (", world_size, " ranks): ", reason), now);
}

void CoordinatorCore::declare_dead(uint32_t rank, const std::string& why, double now) {
  auto& r = ranks_[rank];
  r.alive = false;
  r.dead_why = why;
  stragglers_.forget(rank);
  dead_hosts_.push_back(r.host);
  const std::string what = concat(rank_name(rank), " is dead: ", why, " (last step ", r.hb.step(), ")");
  add_event("error", what, now);
  if (!failure_) failure_ = what;
  std::vector<uint64_t> steps;  // a step publishing has every file written: it stays (Note [Coordinated checkpoints])
  for (const auto& [step, p] : pending_) {
    if (!p.publishing) steps.push_back(step);
  }
  for (uint64_t s : steps) discard(s, concat("rank ", rank, " died"), now);
  // Where the survivors were waiting, if anywhere: the verdict of Note [Hang verdict] without its delay (a
  // collective open for a heartbeat interval is not one in passing).
  check_hang(o_.heartbeat_interval_s, now);
  outbound_.push_back({-1, command(proto::Command::ABORT, 0, what)});
}

void CoordinatorCore::request(proto::Command::Kind kind, const std::string& reason, double now) {
  if (kind == proto::Command::STOP) stopping_ = true;
  add_event("info", concat(kind == proto::Command::STOP ? "stop" : "checkpoint", " requested: ", reason), now);
  outbound_.push_back({-1, command(kind, 0, reason)});
}

void CoordinatorCore::report(uint32_t rank, const proto::CheckpointReport& rep, double now) {
  const uint64_t step = rep.step();
  if (!ranks_.at(rank).alive) return;  // declared dead: its work no longer counts
  if (committed_.count(step) && !pending_.count(step)) {
    // This job committed the step already: a second copy (a confused or stale rank) must not rewrite it.
    outbound_.push_back({static_cast<int>(rank),
                         command(proto::Command::DISCARDED, step, concat("step ", step, " is already committed"))});
    return;
  }
  auto& p = pending_[step];
  if (p.publishing) {  // a second copy while the MANIFEST is written: the files it names may be the listed ones
    outbound_.push_back({static_cast<int>(rank), command(proto::Command::DISCARDED, step,
                                                         concat("step ", step, " is being committed already"))});
    return;
  }
  if (p.reports.empty()) {
    p.started = now;
    add_event("info", concat("checkpoint at step ", step, " started"), now);
  }
  if (!rep.ok()) {
    discard(step, concat(rank_name(rank), ": ", rep.error()), now);
    return;
  }
  // The MANIFEST lists these names and resume opens them inside the step directory: a rank (or anyone holding the
  // token) must not point them elsewhere ("../x", "/etc/passwd") or at the MANIFEST itself.
  for (const auto& f : rep.files()) {
    if (const auto problem = storage::checkpoint_file_name_problem(f.name()); !problem.empty()) {
      discard(step, concat(rank_name(rank), " reported an invalid file name ", printable(f.name()), ": ", problem),
              now);
      return;
    }
  }
  p.reports[rank] = rep;
  try_commit(step, now);
}

void CoordinatorCore::try_commit(uint64_t step, double now) {
  auto it = pending_.find(step);
  if (it == pending_.end() || it->second.reports.size() < o_.world_size) return;
  const auto& reports = it->second.reports;
  const proto::CheckpointReport* main = nullptr;
  for (const auto& [r, rep] : reports) {
    if (rep.has_manifest()) main = &rep;
  }
  if (!main) {
    discard(step, "no rank sent the training state", now);
    return;
  }
  proto::Manifest m = main->manifest();
  m.set_step(step);
  m.clear_files();
  std::set<std::string> names;
  for (const auto& [r, rep] : reports) {
    for (const auto& f : rep.files()) {
      if (!names.insert(f.name()).second) {
        discard(step, concat("two ranks wrote ", f.name()), now);
        return;
      }
      *m.add_files() = f;
    }
  }
  PublishJob job;
  job.step = step;
  job.generation = generation_;
  for (const auto& f : m.files()) job.bytes += f.size();
  for (const auto& [r, rep] : reports) job.write_seconds = std::max(job.write_seconds, rep.write_seconds());
  job.manifest = std::move(m);
  it->second.publishing = true;
  if (o_.publish_elsewhere) {
    o_.publish_elsewhere(std::move(job));
    return;
  }
  published(job, publish(*o_.ops, o_.checkpoint_root, o_.keep, job), now);
}

PublishResult CoordinatorCore::publish(storage::FileOps& ops, const std::string& checkpoint_root, int64_t keep,
                                       const PublishJob& job) {
  PublishResult r;
  try {
    r.path = storage::publish_manifest(ops, checkpoint_root, job.manifest);
  } catch (const std::exception& e) {
    r.error = e.what();
    return r;
  }
  // Committed from here on: the checkpoint is valid on disk and `--resume auto` will use it, so what follows
  // failing is logged, never a discard.
  try {
    storage::after_commit(ops, checkpoint_root, job.step, keep);
  } catch (const std::exception& e) {
    r.after_warning = e.what();
  }
  return r;
}

void CoordinatorCore::published(const PublishJob& job, const PublishResult& result, double now) {
  const uint64_t step = job.step;
  const bool current = job.generation == generation_;
  auto it = current ? pending_.find(step) : pending_.end();
  if (!result.error.empty()) {
    const std::string why = concat("writing the MANIFEST failed: ", result.error);
    if (it != pending_.end()) {
      discard(step, why, now);
    } else {
      ++discards_;
      add_event("error", concat("checkpoint at step ", step, " (of an earlier start) discarded: ", why), now);
    }
    return;
  }
  if (!result.after_warning.empty()) {
    add_event("warning",
              concat("checkpoint at step ", step,
                     " is committed, but updating LATEST or removing old checkpoints failed: ", result.after_warning),
              now);
  }
  if (it != pending_.end()) {
    last_commit_seconds_ = now - it->second.started;
    pending_.erase(it);
  }
  has_commit_ = true;
  last_committed_step_ = std::max(last_committed_step_, step);
  last_committed_path_ = result.path;
  committed_.insert(step);
  ++commits_;
  add_event("info",
            concat("checkpoint at step ", step, current ? "" : " (of an earlier start)", " committed: ", result.path,
                   " (", fixed(job.bytes / 1e6), " MB, writes ", fixed(job.write_seconds, 2), " s, ",
                   fixed(job.bytes / 1e6 / std::max(job.write_seconds, 1e-6), 0), " MB/s)"),
            now);
  if (current) outbound_.push_back({-1, command(proto::Command::COMMITTED, step, result.path)});
}

void CoordinatorCore::discard(uint64_t step, const std::string& reason, double now) {
  pending_.erase(step);
  ++discards_;
  add_event("error", concat("checkpoint at step ", step, " discarded: ", reason), now);
  outbound_.push_back({-1, command(proto::Command::DISCARDED, step, reason)});
}

std::vector<Outbound> CoordinatorCore::take_outbound() {
  std::vector<Outbound> out;
  out.swap(outbound_);
  return out;
}

bool CoordinatorCore::finished() const {
  return std::all_of(ranks_.begin(), ranks_.end(), [](const RankState& r) { return r.finished; });
}

std::vector<std::pair<std::string, uint32_t>> CoordinatorCore::rank_processes() const {
  std::vector<std::pair<std::string, uint32_t>> out;
  for (const auto& r : ranks_) {
    if (r.joined) out.emplace_back(r.host, r.pid);
  }
  return out;
}

std::vector<uint32_t> CoordinatorCore::missing_ranks() const {
  std::vector<uint32_t> out;
  for (uint32_t i = 0; i < ranks_.size(); ++i) {
    if (!ranks_[i].joined) out.push_back(i);
  }
  return out;
}

std::string CoordinatorCore::session_key_of(uint32_t rank) const {
  return rank < ranks_.size() ? ranks_[rank].session_key : std::string();
}

bool CoordinatorCore::rank_alive(uint32_t rank) const { return rank < ranks_.size() && ranks_[rank].alive; }

std::string CoordinatorCore::state(double now) const {
  if (failure_) return "failed";
  if (finished()) return stopped_ ? "stopped" : "finished";
  if (stopping_) return "stopping";
  for (const auto& r : ranks_) {
    if (!r.joined) return "starting";
  }
  return pending_.empty() ? "running" : "checkpointing";
}

std::string CoordinatorCore::status_json(double now) const {
  using nlohmann::json;
  const auto& h0 = ranks_[0].hb;
  json j = {
      {"job", o_.job},
      {"state", state(now)},
      {"world_size", o_.world_size},
      {"step", h0.step()},
      {"total_steps", h0.total_steps()},
      {"epoch", h0.epoch()},
      {"loss", h0.has_loss() || h0.loss() != 0 ? json(h0.loss()) : json(nullptr)},
      {"accuracy", h0.has_eval() ? json(h0.eval_acc1()) : json(nullptr)},
      {"img_per_s", h0.img_per_s()},
      {"eta_seconds", h0.eta_seconds()},
      {"restarts", o_.restarts},
      {"run_dir", o_.checkpoint_root.empty() ? json(nullptr)
                                             : json(std::filesystem::path(o_.checkpoint_root).parent_path().string())},
      {"uptime_seconds", now - t0_}};
  json ck = {{"last_committed_step", has_commit_ ? json(last_committed_step_) : json(nullptr)},
             {"last_committed_path", has_commit_ ? json(last_committed_path_) : json(nullptr)},
             {"in_progress_step", pending_.empty() ? json(nullptr) : json(pending_.begin()->first)},
             {"commits", commits_},
             {"discarded", discards_},
             {"last_commit_seconds", last_commit_seconds_},
             {"every_steps", h0.checkpoint_every()},
             {"every_auto", h0.checkpoint_auto()}};
  j["checkpoint"] = ck;
  json ranks = json::array();
  for (uint32_t i = 0; i < ranks_.size(); ++i) {
    const auto& r = ranks_[i];
    ranks.push_back({{"rank", i},
                     {"host", r.host},
                     {"pid", r.pid},
                     {"joined", r.joined},
                     {"alive", r.alive},
                     {"connected", r.connected},
                     {"finished", r.finished},
                     {"step", r.hb.step()},
                     {"start_step", r.hb.start_step()},
                     {"start_source", r.hb.start_source()},
                     {"last_heartbeat_age_s", r.joined ? json(now - r.last_seen) : json(nullptr)},
                     {"step_time_s", r.hb.step_time_s()},
                     {"img_per_s", r.hb.img_per_s()},
                     {"data_wait_s", r.hb.data_wait_s()},
                     {"comm_wait_s", r.hb.comm_wait_s()},
                     {"breakdown", breakdown_json(stragglers_.rank(i))},
                     {"overlap", overlap_json(r.hb)},
                     {"data", data_source_json(r.hb)}});
  }
  j["ranks"] = ranks;
  // Note [Straggler detection] in cluster/straggler_detector.h.
  json stragglers = json::array();
  for (uint32_t i = 0; i < ranks_.size(); ++i) {
    const auto& v = stragglers_.rank(i);
    if (!v.flagged) continue;
    stragglers.push_back({{"rank", i},
                          {"host", ranks_[i].host},
                          {"slower_percent", (v.ratio - 1) * 100},
                          {"compute_s", v.sample.compute_s},
                          {"peer_median_compute_s", v.peer_median_s},
                          {"since", wall(v.flagged_since)}});
  }
  j["stragglers"] = stragglers;
  j["straggler_threshold"] = o_.straggler.threshold;
  j["straggler_window"] = o_.straggler.window;
  json ev = json::array();
  for (auto it = events_.rbegin(); it != events_.rend() && ev.size() < 50; ++it) {
    ev.push_back({{"time", it->wall_time}, {"level", it->level}, {"message", it->message}});
  }
  j["events"] = ev;
  json rec = json::array();
  for (const auto& r : recovery_log_) {
    rec.push_back({{"restart", r.restart},
                   {"time", r.wall_time},
                   {"reason", r.reason},
                   {"detection_seconds", r.detection_s},
                   {"stop_seconds", r.stop_s},
                   {"backoff_seconds", r.backoff_s},
                   {"start_seconds", r.start_s},
                   {"warmup_seconds", r.warmup_s},
                   {"recovery_seconds", r.total_s},
                   {"failed_step", r.failed_step},
                   {"start_step", r.start_step},
                   {"steps_redone", r.redone},
                   {"source", r.source}});
  }
  j["recoveries"] = rec;
  if (failure_) j["failure"] = *failure_;
  if (hang_) {
    const auto& h = *hang_;
    j["hang"] = {{"message", h.message},
                 {"stream", h.stream == 0 ? "async" : "blocking"},
                 {"seq", h.seq},
                 {"kind", h.kind},
                 {"origin", h.origin},
                 {"missing_ranks", h.missing},
                 {"waiting_ranks", h.waiting},
                 {"unreachable_ranks", h.unreachable},
                 {"wait_seconds", h.wait_seconds},
                 {"since", hang_since_}};
  } else {
    j["hang"] = nullptr;
  }
  return j.dump();
}

void CoordinatorCore::recovered(Recovery r, double now) {
  r.wall_time = wall(now);
  ++recoveries_;
  ++recovered_from_[r.source];
  steps_redone_ += static_cast<int64_t>(r.redone);
  recovery_seconds_ += r.total_s;
  last_recovery_seconds_ = r.total_s;
  recovery_log_.push_back(std::move(r));
  while (recovery_log_.size() > kMaxRecoveries) recovery_log_.pop_front();
}

std::string CoordinatorCore::history_json() const {
  using nlohmann::json;
  json rst = json::object();
  for (const auto& [rank, s] : step_time_) rst[std::to_string(rank)] = {{"step", s.x}, {"seconds", s.y}};
  json j = {{"step", loss_.x},     {"loss", loss_.y},    {"img_per_s", ips_.y},
            {"eval_step", acc_.x}, {"accuracy", acc_.y}, {"rank_step_time", rst}};
  return j.dump();
}

std::string CoordinatorCore::metrics_text(double now) const {
  std::string out;
  auto metric = [&](const char* name, const char* help, const std::string& v, const char* type) {
    out += concat("# HELP ", name, " ", help, "\n# TYPE ", name, " ", type, "\n", name, " ", v, "\n");
  };
  auto gauge = [&](const char* name, const char* help, auto v) { metric(name, help, prom_value(v), "gauge"); };
  auto counter = [&](const char* name, const char* help, int64_t v) { metric(name, help, prom_value(v), "counter"); };
  const auto& h0 = ranks_[0].hb;
  int64_t alive = 0;
  for (const auto& r : ranks_) alive += r.alive ? 1 : 0;
  gauge("stride_world_size", "Ranks in the job.", uint64_t{o_.world_size});
  gauge("stride_ranks_alive", "Ranks that joined and are not declared dead.", alive);
  gauge("stride_up", "1 while the job runs, 0 once it failed.", int64_t{failure_ ? 0 : 1});
  gauge("stride_step", "Optimizer steps completed (rank 0).", uint64_t{h0.step()});
  gauge("stride_total_steps", "Optimizer steps the run will take.", uint64_t{h0.total_steps()});
  gauge("stride_epoch", "Current epoch (0-based).", uint64_t{h0.epoch()});
  gauge("stride_loss", "Mean training loss of the last interval.", double{h0.loss()});
  gauge("stride_images_per_second", "Training throughput of the whole job.", double{h0.img_per_s()});
  gauge("stride_eta_seconds", "Estimated time to the end of the run.", double{h0.eta_seconds()});
  if (h0.has_eval()) {
    gauge("stride_eval_accuracy_percent", "Top-1 accuracy of the latest evaluation.", double{h0.eval_acc1()});
  }
  counter("stride_restarts_total", "Restarts of the job.", o_.restarts);
  {
    const char* name = "stride_recoveries_total";
    out += concat("# HELP ", name, " Failures recovered, by where the state came from (memory: an in-memory snapshot, ",
                  "disk: a committed checkpoint, scratch: no state).\n# TYPE ", name, " counter\n");
    for (const char* source : {"memory", "disk", "scratch"}) {
      const auto it = recovered_from_.find(source);
      out += concat(name, "{source=\"", source, "\"} ", it == recovered_from_.end() ? 0 : it->second, "\n");
    }
  }
  counter("stride_steps_redone_total", "Steps computed again after failures (since the state they resumed from).",
          steps_redone_);
  out += concat("# HELP stride_recovery_seconds Failure to the first step past the resume step, over recovered ",
                "failures.\n# TYPE stride_recovery_seconds summary\nstride_recovery_seconds_sum ",
                prom_value(recovery_seconds_), "\nstride_recovery_seconds_count ", recoveries_, "\n");
  gauge("stride_last_recovery_seconds", "Failure to the first step after it, for the newest recovery.",
        last_recovery_seconds_);
  counter("stride_checkpoints_committed_total", "Checkpoints committed by this coordinator.", commits_);
  counter("stride_checkpoints_discarded_total", "Checkpoints discarded (a rank failed before the commit).", discards_);
  gauge("stride_last_checkpoint_step", "Step of the newest committed checkpoint.", last_committed_step_);
  gauge("stride_checkpoint_commit_seconds", "Latency of the last commit (first report to MANIFEST).",
        last_commit_seconds_);
  gauge("stride_collective_hang_seconds",
        "How long ranks have waited in a collective that others never entered (0: no hang verdict).",
        hang_ ? hang_->wait_seconds : 0.0);
  counter("stride_http_bad_requests_total", "Malformed or rejected HTTP requests.", http_bad_requests);
  counter("stride_rejected_connections_total", "Rank connections rejected (token, size, format).",
          rejected_connections);
  gauge("stride_checkpoint_every_steps", "Steps between checkpoints now in force (0: epoch ends only).",
        uint64_t{h0.checkpoint_every()});
  int64_t flagged = 0;
  for (uint32_t i = 0; i < ranks_.size(); ++i) flagged += stragglers_.rank(i).flagged ? 1 : 0;
  gauge("stride_stragglers", "Ranks flagged as stragglers now.", flagged);
  struct PerRank {
    const char* name;
    const char* help;
    std::string (*get)(const RankState&, const StragglerDetector::RankView&, double);
  };
  const PerRank per_rank[] = {
      {"stride_rank_step", "Steps completed by the rank.",
       [](const RankState& r, const StragglerDetector::RankView&, double) {
         return prom_value(uint64_t{r.hb.step()});
       }},
      {"stride_rank_alive", "1 while the rank is alive.",
       [](const RankState& r, const StragglerDetector::RankView&, double) {
         return prom_value(int64_t{r.alive ? 1 : 0});
       }},
      {"stride_rank_heartbeat_age_seconds", "Seconds since the rank's last message.",
       [](const RankState& r, const StragglerDetector::RankView&, double t) { return prom_value(t - r.last_seen); }},
      {"stride_rank_step_seconds", "Mean step time over the last interval.",
       [](const RankState& r, const StragglerDetector::RankView&, double) {
         return prom_value(double{r.hb.step_time_s()});
       }},
      {"stride_rank_data_wait_seconds", "Time waiting for data over the last interval.",
       [](const RankState& r, const StragglerDetector::RankView&, double) {
         return prom_value(double{r.hb.data_wait_s()});
       }},
      {"stride_rank_comm_wait_seconds", "Time waiting for gradient collectives over the last interval.",
       [](const RankState& r, const StragglerDetector::RankView&, double) {
         return prom_value(double{r.hb.comm_wait_s()});
       }},
      {"stride_rank_compute_seconds", "Forward + backward time per step, without waits (newest heartbeat sample).",
       [](const RankState&, const StragglerDetector::RankView& v, double) { return prom_value(v.sample.compute_s); }},
      {"stride_rank_compute_ratio", "Compute time per step over the median of the other ranks' (0: no baseline yet).",
       [](const RankState&, const StragglerDetector::RankView& v, double) { return prom_value(v.ratio); }},
      {"stride_rank_straggler",
       "1 while the rank is flagged as a straggler (--straggler-threshold, --straggler-window).",
       [](const RankState&, const StragglerDetector::RankView& v, double) {
         return prom_value(int64_t{v.flagged ? 1 : 0});
       }},
      {"stride_rank_data_bytes_fetched_total",
       "Bytes of shards and index this rank's training loader downloaded (remote --data-path; a running total).",
       [](const RankState& r, const StragglerDetector::RankView&, double) {
         return prom_value(static_cast<int64_t>(r.hb.data_bytes_fetched()));
       }},
      {"stride_rank_data_shards_fetched_total", "Shard downloads of this rank's training loader (re-fetches included).",
       [](const RankState& r, const StragglerDetector::RankView&, double) {
         return prom_value(static_cast<int64_t>(r.hb.data_shards_fetched()));
       }},
      {"stride_rank_data_cache_hits_total",
       "Shards this rank's training loader found in its cache instead of downloading.",
       [](const RankState& r, const StragglerDetector::RankView&, double) {
         return prom_value(static_cast<int64_t>(r.hb.data_cache_hits()));
       }},
      {"stride_rank_data_stall_seconds_total",
       "Seconds this rank's loader waited for shards to arrive (a running total).",
       [](const RankState& r, const StragglerDetector::RankView&, double) {
         return prom_value(r.hb.data_stall_total_s());
       }},
      {"stride_rank_comm_hidden_fraction",
       "Share of the last step's gradient communication that ran during backward (0 before the first).",
       [](const RankState& r, const StragglerDetector::RankView&, double) {
         return prom_value(heartbeat_timeline(r.hb).hidden_fraction());
       }},
  };
  for (const auto& m : per_rank) {
    const std::string name = m.name;  // running totals are counters (Prometheus naming: *_total)
    const bool is_counter = name.size() > 6 && name.compare(name.size() - 6, 6, "_total") == 0;
    out += concat("# HELP ", m.name, " ", m.help, "\n# TYPE ", m.name, is_counter ? " counter\n" : " gauge\n");
    for (uint32_t i = 0; i < ranks_.size(); ++i) {
      const auto& r = ranks_[i];
      if (!r.joined) continue;
      out += concat(m.name, "{rank=\"", i, "\",host=\"", prom_label(r.host), "\"} ", m.get(r, stragglers_.rank(i), now),
                    "\n");
    }
  }
  return out;
}

}  // namespace stride::cluster
