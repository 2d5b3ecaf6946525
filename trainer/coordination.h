// How one rank's run takes part in its job (Note [Coordinated checkpoints] in cluster/coordinator_core.h):
// the connection to the job's coordinator (hosted by rank 0 when no launcher provides one), heartbeats, the
// ranks' agreement on checkpoint and stop requests at control points, and the two phases of a checkpoint
// (this rank's files written in the background and reported; the coordinator's commit awaited at the end).
//
// Two forms: JobCoordination for training runs (any world size: with one rank the agreement needs no
// collective), and a do-nothing one for --test-only, which checkpoints nothing and joins no job.
//
// Threading: call from the training thread only. The client and the checkpoint writer run threads of their own.
// A dead peer or a lost coordinator ends the process with exit code 75 (comm::kCommFailureExitCode) from the
// client's thread, without unwinding through collectives that will never complete.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "comm/communicator.h"
#include "comm/flight_recorder.h"
#include "comm/reducer.h"
#include "proto/cluster.pb.h"
#include "trainer/checkpoint_writer.h"
#include "trainer/config.h"
#include "trainer/run_output.h"

namespace stride::trainer {

class Coordination {
 public:
  virtual ~Coordination() = default;

  struct Decision {
    bool checkpoint = false;       // some rank was asked to checkpoint now
    bool stop = false;             // some rank was asked to stop (checkpoint first)
    int signal = 0;                // the signal that asked this rank to stop, if any
    int64_t checkpoint_every = 0;  // rank 0's proposal (--checkpoint-every auto), the same on every rank
  };
  // Every rank calls it at the same steps; all get the same decision. `checkpoint_every`: rank 0's proposed
  // checkpoint interval in steps (other ranks pass 0), handed to all in the same collective.
  virtual Decision control_point(int64_t checkpoint_every) = 0;
  // The newest background checkpoint write's latency on this rank (seconds; 0 before the first).
  virtual double last_write_seconds() const = 0;
  // The newest heartbeat figures (sent by the client's thread); `new_interval` marks fresh interval figures.
  virtual void update(const proto::Heartbeat& hb, bool new_interval = false) = 0;
  // Hands this rank's part of a checkpoint to the background writer (after at most one queued job).
  virtual void submit(CheckpointJob job) = 0;
  // End of the run: waits for the newest submitted checkpoint to be committed (throws when it was not), says
  // goodbye, and on the rank hosting the coordinator waits until every rank has said it.
  virtual void finish(bool stopped, int64_t step) = 0;
};

// Connects to the launcher's coordinator (STRIDE_COORDINATOR, STRIDE_JOB_TOKEN) or hosts one on rank 0 and
// tells the other ranks where it is over `comm`. Prints the status URL on rank 0.
// With a flight recorder, heartbeats carry its progress and the rank dumps it (dump_flight_recorder) when the
// coordinator asks and when the job aborts.
std::unique_ptr<Coordination> start_job_coordination(const TrainConfig& config, comm::Communicator& comm,
                                                     RunOutput& out,
                                                     std::shared_ptr<comm::FlightRecorder> flight = nullptr);
// Writes the ring to RUN/trace/rank-R.json (atomically; `stride trace RUN_DIR` merges them). Runs on failure paths:
// a failure to write is printed, never thrown. Any thread.
void dump_flight_recorder(comm::FlightRecorder& flight, const std::string& run_dir, uint64_t rank,
                          const std::string& reason);
// For --test-only: no coordinator, no checkpoints, stop requests only by signal.
std::unique_ptr<Coordination> no_coordination();

// Puts the reducer's last overlap timeline into the heartbeat (fields 37-39), unless it already holds that step's.
void set_heartbeat_timeline(proto::Heartbeat& hb, const comm::StepTimeline& timeline);

}  // namespace stride::trainer
