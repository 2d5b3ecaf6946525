// The coordinator's logic without sockets or threads: which ranks joined and are alive, the checkpoint commit
// protocol, and what /status and /metrics show. Time is passed in (seconds on a steady clock), so tests drive
// it with a fake clock. The network side (cluster/coordinator.h) calls it from one thread; it is not
// thread-safe.
//
// Note [Coordinated checkpoints]
// 1. A checkpoint step is chosen by the ranks themselves: every K steps (deterministic), at epoch ends, or at the
//    first control point (every `control_every` steps, a tiny collective on the training thread) after any rank
//    saw a CHECKPOINT/STOP command or a signal. Every rank takes its in-memory snapshot at that same step and
//    trains on; its background writer writes and fsyncs its share of the files and sends a CheckpointReport.
// 2. When every rank of the world has reported the step, the core writes the MANIFEST (rank 0's report carries
//    the training state; the files of all reports are listed) via publish_manifest(), then tells every rank
//    COMMITTED. A failed report, a dead rank or a failed MANIFEST write discards the step instead (DISCARDED):
//    its directory has no MANIFEST and stays invisible; the previous commit stays the newest.
// 3. LATEST and garbage collection run only after a commit (storage::after_commit). Their failure is logged as a
//    warning and the step stays committed: the checkpoint on disk is valid and a resume uses it.
// 4. The MANIFEST's writes and fsyncs may run elsewhere (CoreOptions::publish_elsewhere; the Coordinator runs them
//    on a writer thread, so a slow disk holds up neither heartbeats nor /status). From the last report on, the
//    step is *publishing*: every file it lists is written and fsynced, so a rank dying now no longer discards it,
//    and a second report of it is refused. published() applies the outcome as point 2 and 3 say.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "cluster/hang_verdict.h"
#include "cluster/straggler_detector.h"
#include "proto/cluster.pb.h"
#include "storage/checkpoint_files.h"

namespace stride::cluster {

// A step whose reports are all in, for publishing (Note [Coordinated checkpoints], point 4).
struct PublishJob {
  uint64_t step = 0;
  uint64_t generation = 0;  // the core's start (CoordinatorCore::restart) that asked for it
  proto::Manifest manifest;
  uint64_t bytes = 0;        // of the files listed
  double write_seconds = 0;  // the slowest rank's writes
};

struct PublishResult {
  std::string path;           // the committed step directory; empty when publishing failed
  std::string error;          // why publishing failed (the step is discarded)
  std::string after_warning;  // LATEST or garbage collection failed (the step is still committed)
};

struct CoreOptions {
  std::string job = "stride";
  std::string token;
  uint32_t world_size = 1;
  double heartbeat_interval_s = 1.0;
  double heartbeat_timeout_s = 30.0;  // a joined rank silent this long is dead
  double reconnect_grace_s = 10.0;    // a rank whose connection dropped must reconnect within this
  std::string checkpoint_root;        // RUN/checkpoints
  int64_t keep = 3;
  std::shared_ptr<storage::FileOps> ops = storage::real_file_ops();
  int restarts = 0;            // how often the job was restarted (shown in /status)
  StragglerOptions straggler;  // Note [Straggler detection] in cluster/straggler_detector.h
  // A collective open this long on some rank: name the rank(s) the others wait for (Note [Hang verdict] in
  // cluster/hang_verdict.h) in the log, /status and the dashboard, and ask every rank to dump its flight recorder.
  // 0: only when a rank is declared dead.
  double hang_report_after_s = 30.0;
  // Set: a step ready to commit is handed here (on the thread calling report()), and whoever runs
  // CoordinatorCore::publish() gives the result back through published(). Unset: report() publishes inline.
  std::function<void(PublishJob)> publish_elsewhere;
};

// A message for one rank (rank >= 0) or for every connected rank (rank == -1).
struct Outbound {
  int rank = -1;
  proto::Command command;
};

struct Event {
  double wall_time = 0;  // unix seconds
  std::string level;     // info | warning | error
  std::string message;
};

// One failure of the job and how it was recovered (measured by the launcher, launcher/launch.cpp): from the
// failure to the launcher knowing it (detection), to every process of that start gone (stop), the back-off, the
// new start to every rank joined (process start, model build, state load), and to the first step past the step
// it continued from (warm-up).
struct Recovery {
  int restart = 0;     // 1 for the first restart
  std::string reason;  // the failure
  double detection_s = 0, stop_s = 0, backoff_s = 0, start_s = 0, warmup_s = 0, total_s = 0;
  uint64_t failed_step = 0;  // rank 0's last step seen before the failure
  uint64_t start_step = 0;   // the step the new start continued from
  uint64_t redone = 0;       // steps computed again
  std::string source;        // where the state came from: memory | disk | scratch
  double wall_time = 0;      // unix seconds, set by recovered()
};

class CoordinatorCore {
 public:
  // `now` is the steady-clock time in seconds at construction; `wall` the matching unix time.
  CoordinatorCore(CoreOptions options, double now, double wall);

  // A connection's Hello, answering the Challenge that carried `server_nonce` (Note [Challenge-response] in
  // cluster/auth.h). Returns the reason to reject it, or empty to accept it (the rank is then live).
  // `resumed`: the Hello proved the session of a rank that is still live (a reconnect), which keeps its key.
  std::string admit(const proto::Hello& hello, const std::string& server_nonce, double now, bool* resumed = nullptr);
  void heartbeat(uint32_t rank, const proto::Heartbeat& hb, double now);
  void report(uint32_t rank, const proto::CheckpointReport& report, double now);
  void goodbye(uint32_t rank, const proto::Goodbye& bye, double now);
  void disconnected(uint32_t rank, double now);
  // Declares silent ranks dead. Call a few times per second.
  void tick(double now);
  // A new start of the job (the launcher restarts every rank): forgets the ranks, the failure and checkpoints
  // in flight, keeps the commits, history and events, counts the restart. Ranks of older attempts are refused.
  void restart(uint32_t world_size, uint32_t attempt, const std::string& reason, double now);
  uint32_t attempt() const { return attempt_; }
  // From HTTP or a signal: ask every rank to checkpoint (stop = then stop).
  void request(proto::Command::Kind kind, const std::string& reason, double now);
  void note(const std::string& level, const std::string& message, double now);
  // A failure recovered (the launcher saw the new start pass its resume step): kept for /status (the newest
  // kMaxRecoveries) and counted in /metrics.
  void recovered(Recovery r, double now);
  static constexpr size_t kMaxRecoveries = 50;

  // Writes the MANIFEST of `job` and then LATEST and garbage collection (storage::publish_manifest, after_commit).
  // Touches no core state: any thread may run it, without the core's lock.
  static PublishResult publish(storage::FileOps& ops, const std::string& checkpoint_root, int64_t keep,
                               const PublishJob& job);
  // The outcome of a job handed to CoreOptions::publish_elsewhere: COMMITTED or DISCARDED to every rank. A job of an
  // earlier start is recorded (a commit is valid on disk) but told to no one.
  void published(const PublishJob& job, const PublishResult& result, double now);

  std::vector<Outbound> take_outbound();
  // Set once: why the job failed ("rank 1 on vm (pid 42) silent for 30.0 s at step 120").
  const std::optional<std::string>& failure() const { return failure_; }
  bool finished() const;
  // Ranks of the current start that have not joined yet.
  std::vector<uint32_t> missing_ranks() const;
  // {host, pid} of every rank of the current start that joined.
  std::vector<std::pair<std::string, uint32_t>> rank_processes() const;
  // Hosts of the ranks declared dead in the current start.
  const std::vector<std::string>& dead_hosts() const { return dead_hosts_; }
  // The current hang verdict (kept after the job failed, for the final status), if any.
  const std::optional<HangVerdict>& hang() const { return hang_; }
  uint64_t last_committed_step() const { return last_committed_step_; }
  int64_t commits() const { return commits_; }
  bool rank_alive(uint32_t rank) const;
  // The session key an admitted rank proved (Note [Challenge-response]); its frames are sealed under it.
  std::string session_key_of(uint32_t rank) const;
  const CoreOptions& options() const { return o_; }
  void set_restarts(int restarts) { o_.restarts = restarts; }

  std::string status_json(double now) const;
  std::string history_json() const;
  std::string metrics_text(double now) const;
  std::vector<Event> events() const { return {events_.begin(), events_.end()}; }
  const StragglerDetector& stragglers() const { return stragglers_; }
  int64_t http_bad_requests = 0;  // counted by the HTTP server, shown in /metrics
  int64_t rejected_connections = 0;

 private:
  struct RankState {
    bool joined = false, alive = false, connected = false, finished = false;
    std::string host;
    uint32_t pid = 0;
    std::string session_key;  // fixed by the first accepted Hello of this start (cluster/auth.h)
    std::string dead_why;     // why it was declared dead
    double joined_at = 0, last_seen = 0, disconnected_at = 0;
    proto::Heartbeat hb;
  };
  struct Pending {
    std::map<uint32_t, proto::CheckpointReport> reports;
    double started = 0;
    bool publishing = false;  // every report is in and the MANIFEST is being written (point 4)
  };
  struct Series {  // a bounded plot series: halves its resolution when full
    std::vector<double> x, y;
    void add(double xv, double yv);
  };
  void declare_dead(uint32_t rank, const std::string& why, double now);
  // Compares the ranks' flight recorders; `report_after_s` as hang_verdict().
  void check_hang(double report_after_s, double now);
  void discard(uint64_t step, const std::string& reason, double now);
  void try_commit(uint64_t step, double now);
  void add_event(const std::string& level, const std::string& message, double now);
  double wall(double now) const { return now - t0_ + wall0_; }
  std::string rank_name(uint32_t rank) const;
  std::string state(double now) const;

  CoreOptions o_;
  double t0_, wall0_;
  std::vector<RankState> ranks_;
  std::map<uint64_t, Pending> pending_;
  std::set<uint64_t> committed_;  // steps this coordinator committed
  std::vector<Outbound> outbound_;
  std::deque<Event> events_;
  std::deque<Recovery> recovery_log_;              // the newest kMaxRecoveries
  std::map<std::string, int64_t> recovered_from_;  // counts by source, over the job's life
  int64_t recoveries_ = 0, steps_redone_ = 0;
  double recovery_seconds_ = 0, last_recovery_seconds_ = 0;
  std::optional<std::string> failure_;
  std::optional<HangVerdict> hang_;
  double hang_since_ = 0;  // wall time of the current verdict's first report
  std::string hang_key_;   // the verdict last logged (each is logged once)
  bool stopping_ = false;
  uint32_t attempt_ = 0;
  uint64_t generation_ = 0;  // counts restart()s
  std::vector<std::string> dead_hosts_;
  bool stopped_ = false;  // a rank said goodbye before the end (a stop on request)
  uint64_t last_committed_step_ = 0;
  bool has_commit_ = false;
  std::string last_committed_path_;
  double last_commit_seconds_ = 0;
  int64_t commits_ = 0, discards_ = 0;
  uint64_t last_recorded_step_ = 0, last_eval_step_ = 0;
  Series loss_, ips_, acc_;
  std::map<uint32_t, Series> step_time_;
  StragglerDetector stragglers_;
};

}  // namespace stride::cluster
