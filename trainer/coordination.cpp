#include "trainer/coordination.h"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <thread>

#include "cluster/client.h"
#include "cluster/coordinator.h"
#include "common/env.h"
#include "common/error.h"
#include "storage/file_io.h"
#include "trainer/stop_signals.h"

namespace stride::trainer {
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

// STRIDE_RESTART_COUNT (set by `stride launch`) and SLURM_RESTART_COUNT, parsed strictly.
int env_int(const char* name, int fallback) {
  return static_cast<int>(env_integer(name, 0, INT32_MAX).value_or(fallback));
}

class JobCoordination : public Coordination {
 public:
  JobCoordination(const TrainConfig& c, comm::Communicator& comm, RunOutput& out,
                  std::shared_ptr<comm::FlightRecorder> flight);
  Decision control_point(int64_t checkpoint_every) override;
  double last_write_seconds() const override { return last_write_seconds_.load(); }
  void update(const proto::Heartbeat& hb, bool new_interval) override { client_->update(hb, new_interval); }
  void submit(CheckpointJob job) override;
  void finish(bool stopped, int64_t step) override;

 private:
  const TrainConfig& c_;
  comm::Communicator& comm_;
  RunOutput& out_;
  const uint64_t rank_, world_;
  std::shared_ptr<comm::FlightRecorder> flight_;
  std::unique_ptr<cluster::Coordinator> coordinator_;  // rank 0 hosts one unless a launcher provides it
  std::unique_ptr<cluster::CoordinatorClient> client_;
  std::unique_ptr<CheckpointWriter> writer_;
  int64_t submitted_step_ = -1;                  // the newest checkpoint this run handed to the writer
  std::atomic<double> last_write_seconds_{0.0};  // set by the writer's thread
};

JobCoordination::JobCoordination(const TrainConfig& c, comm::Communicator& comm, RunOutput& out,
                                 std::shared_ptr<comm::FlightRecorder> flight)
    : c_(c),
      comm_(comm),
      out_(out),
      rank_(static_cast<uint64_t>(comm.rank())),
      world_(static_cast<uint64_t>(comm.size())),
      flight_(std::move(flight)) {
  const char* env_addr = std::getenv("STRIDE_COORDINATOR");
  const char* env_token = std::getenv("STRIDE_JOB_TOKEN");
  std::string address = env_addr ? env_addr : "", token = env_token ? env_token : "";
  const std::string ckpt_root = (fs::path(c.output_dir) / "checkpoints").string();
  if (address.empty()) {
    // Started by a bare mpirun/srun (or one process): rank 0 hosts the coordinator and tells the others where it
    // is over the communicator (the job's ranks already trust each other).
    std::string blob;
    if (rank_ == 0) {
      cluster::CoordinatorOptions co;
      co.core.job = !c.job.empty() ? c.job : fs::path(c.output_dir).filename().string();
      co.core.world_size = static_cast<uint32_t>(world_);
      co.core.heartbeat_interval_s = c.heartbeat_interval;
      co.core.heartbeat_timeout_s = c.heartbeat_timeout;
      co.core.hang_report_after_s = c.hang_report_after;
      co.core.reconnect_grace_s = std::min(10.0, c.heartbeat_timeout);
      co.core.checkpoint_root = ckpt_root;
      co.core.keep = c.keep_checkpoints;
      co.core.straggler = {c.straggler_threshold, c.straggler_window};
      co.core.restarts = env_int("STRIDE_RESTART_COUNT", env_int("SLURM_RESTART_COUNT", 0));
      co.bind = c.coordinator_bind;
      co.status_bind = c.status_bind;
      co.status_port = static_cast<int>(c.status_port);
      coordinator_ = std::make_unique<cluster::Coordinator>(co);
      const std::string host = c.coordinator_bind == "0.0.0.0" || c.coordinator_bind == "::" ? cluster::local_hostname()
                                                                                             : c.coordinator_bind;
      blob = concat(host, ":", coordinator_->port(), "\n", coordinator_->token());
      if (coordinator_->status_port() >= 0) {
        out.print(
            concat("status: ", coordinator_->status_url(), " (stride status --url ", coordinator_->status_url(), ")"));
      }
      cluster::write_endpoint_files(*coordinator_, c.output_dir, concat(host, ":", coordinator_->port()),
                                    /*launcher=*/false);
    }
    if (world_ > 1) {
      const comm::OriginScope origin(comm::OriginKind::kOther, -1, "coordinator address broadcast");
      auto t = torch::zeros({512}, torch::kByte);
      if (rank_ == 0) std::memcpy(t.data_ptr(), blob.data(), std::min<size_t>(blob.size(), 511));
      comm.broadcast(t, 0)->wait();
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
  o.rank = static_cast<uint32_t>(rank_);
  o.world_size = static_cast<uint32_t>(world_);
  o.host = cluster::local_hostname();
  o.pid = static_cast<uint32_t>(::getpid());
  o.give_up_s = c.heartbeat_timeout;
  // A launcher's coordinator counts the job's starts; one hosted here is always at its first.
  o.attempt = env_addr ? static_cast<uint32_t>(env_int("STRIDE_RESTART_COUNT", 0)) : 0;
  const uint64_t r = rank_;
  if (flight_) {
    // The client thread sends heartbeats, so they carry current progress while the training thread is blocked.
    o.annotate = [flight = flight_](proto::Heartbeat& hb) {
      for (int s = 0; s < comm::kCollectiveStreams; ++s) {
        const auto p = flight->progress(static_cast<comm::CollectiveStream>(s));
        auto* cp = hb.add_collectives();
        cp->set_stream(static_cast<uint32_t>(s));
        cp->set_started(p.started);
        cp->set_completed(p.completed);
        if (p.has_last) {
          cp->set_last_kind(comm::collective_kind_name(p.last.kind));
          cp->set_last_origin(comm::describe_origin(p.last));
        }
        if (p.has_open) {
          cp->set_open_seq(p.open.seq);
          cp->set_open_kind(comm::collective_kind_name(p.open.kind));
          cp->set_open_origin(comm::describe_origin(p.open));
          cp->set_open_seconds(p.open_seconds);
        }
      }
    };
    o.on_dump_trace = [flight = flight_, dir = c.output_dir, r](const std::string& reason) {
      dump_flight_recorder(*flight, dir, r, reason);
    };
  }
  client_ = std::make_unique<cluster::CoordinatorClient>(
      o, [r, flight = flight_, dir = c.output_dir](const std::string& why) {
        // A peer is dead or the coordinator is gone: the last committed checkpoint is intact; exit with the code
        // supervisors restart on, without unwinding through a collective that will never complete.
        std::fprintf(stderr, "stride: error: rank %llu: %s\n", static_cast<unsigned long long>(r), why.c_str());
        if (flight) dump_flight_recorder(*flight, dir, r, concat("abort: ", why));
        std::fflush(stderr);
        std::fflush(stdout);
        std::_Exit(comm::kCommFailureExitCode);
      });
  writer_ = std::make_unique<CheckpointWriter>(ckpt_root, [this](proto::CheckpointReport rep) {
    if (rep.ok()) last_write_seconds_ = rep.write_seconds();
    if (!rep.ok()) {
      std::fprintf(stderr, "stride: error: rank %llu: checkpoint at step %llu failed: %s\n",
                   static_cast<unsigned long long>(rank_), static_cast<unsigned long long>(rep.step()),
                   rep.error().c_str());
    }
    client_->report(std::move(rep));
  });
}

Coordination::Decision JobCoordination::control_point(int64_t checkpoint_every) {
  const comm::OriginScope origin(comm::OriginKind::kControl);
  Decision d;
  d.signal = stop_signal();
  double ckpt = client_->take_checkpoint_request() ? 1.0 : 0.0;
  double stop = client_->stop_requested() || d.signal != 0 ? 1.0 : 0.0;
  // Only rank 0 proposes an interval, so the sum is its value on every rank (a double holds any step count
  // exactly up to 2^53).
  double every = rank_ == 0 ? static_cast<double>(checkpoint_every) : 0.0;
  if (world_ > 1) {
    auto t = torch::tensor({ckpt, stop, every}, torch::kDouble);
    comm_.allreduce(t, comm::ReduceOp::kSum)->wait();
    ckpt = t[0].item<double>();
    stop = t[1].item<double>();
    every = t[2].item<double>();
  }
  d.checkpoint = ckpt > 0;
  d.stop = stop > 0;
  d.checkpoint_every = static_cast<int64_t>(every);
  return d;
}

void JobCoordination::submit(CheckpointJob job) {
  // Bound the memory held by snapshots: at most one checkpoint queued behind the one being written.
  while (writer_->queued() >= 2) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  submitted_step_ = static_cast<int64_t>(job.step);
  writer_->submit(std::move(job));
}

void JobCoordination::finish(bool stopped, int64_t step) {
  if (submitted_step_ >= 0) {
    writer_->drain();
    std::string detail;
    const auto verdict = client_->wait_commit(static_cast<uint64_t>(submitted_step_), 300.0, &detail);
    if (verdict != cluster::CoordinatorClient::Commit::kCommitted) {
      throw Error(concat("rank ", rank_, ": the checkpoint at step ", submitted_step_, " was not committed: ", detail));
    }
    if (stopped) {
      out_.print(concat("stopped at step ", step, ": checkpoint ", detail, " committed; continue with --resume auto"));
    }
  }
  client_->goodbye(!stopped, stopped ? "stopped on request" : "training finished");
  if (coordinator_) {
    // Stay up (rank 0 hosts the coordinator) until every rank said goodbye, so none loses its connection early.
    const auto deadline = Clock::now() + std::chrono::seconds(10);
    while (!coordinator_->finished() && Clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    cluster::write_final_status(*coordinator_, c_.output_dir);
    cluster::remove_endpoint_file(c_.output_dir);
  }
}

class NoCoordination : public Coordination {
 public:
  Decision control_point(int64_t checkpoint_every) override {
    Decision d;
    d.checkpoint_every = checkpoint_every;
    d.signal = stop_signal();
    d.stop = d.signal != 0;
    return d;
  }
  double last_write_seconds() const override { return 0; }
  void update(const proto::Heartbeat&, bool) override {}
  void submit(CheckpointJob) override { throw Error("internal: a checkpoint without job coordination"); }
  void finish(bool, int64_t) override {}
};

}  // namespace

std::unique_ptr<Coordination> start_job_coordination(const TrainConfig& config, comm::Communicator& comm,
                                                     RunOutput& out, std::shared_ptr<comm::FlightRecorder> flight) {
  return std::make_unique<JobCoordination>(config, comm, out, std::move(flight));
}

void dump_flight_recorder(comm::FlightRecorder& flight, const std::string& run_dir, uint64_t rank,
                          const std::string& reason) {
  // The client thread (a DUMP_TRACE, an abort) and the training thread (a failed collective) may both dump.
  static std::mutex mu;
  std::lock_guard<std::mutex> lock(mu);
  try {
    const fs::path dir = fs::path(run_dir) / "trace";
    fs::create_directories(dir);
    const fs::path path = dir / concat("rank-", rank, ".json");
    storage::write_file_atomic(path.string(),
                               flight.to_json(static_cast<int>(rank), cluster::local_hostname(), reason));
    std::fprintf(stderr, "stride: rank %llu: flight recorder written to %s (%s)\n",
                 static_cast<unsigned long long>(rank), path.c_str(), reason.substr(0, 120).c_str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "stride: warning: rank %llu: cannot write the flight recorder: %s\n",
                 static_cast<unsigned long long>(rank), e.what());
  }
}

std::unique_ptr<Coordination> no_coordination() { return std::make_unique<NoCoordination>(); }

void set_heartbeat_timeline(proto::Heartbeat& hb, const comm::StepTimeline& timeline) {
  if (timeline.step == 0 || hb.timeline_step() == static_cast<uint64_t>(timeline.step)) return;
  hb.set_timeline_step(static_cast<uint64_t>(timeline.step));
  hb.set_timeline_backward_s(timeline.backward_s);
  hb.clear_timeline();
  for (const auto& b : timeline.buckets) {
    auto* t = hb.add_timeline();
    t->set_bytes(static_cast<uint64_t>(b.bytes));
    t->set_parameters(static_cast<uint32_t>(b.parameters));
    t->set_ready_s(b.ready_s);
    t->set_launched_s(b.launched_s);
    t->set_started_s(b.started_s);
    t->set_done_s(b.done_s);
    t->set_communicated(b.communicated);
  }
}

}  // namespace stride::trainer
