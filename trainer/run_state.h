// The state of one rank's training run, shared by the files that implement Trainer: setup.cpp (device,
// communicator, data, model set, optimizer, schedule, resume) and trainer.cpp (the loop, evaluation and what a
// checkpoint holds). Internal to trainer/; used from the training thread only.
#pragma once

#include <torch/torch.h>

#include <chrono>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "comm/bucket_tuner.h"
#include "comm/communicator.h"
#include "comm/flight_recorder.h"
#include "comm/reducer.h"
#include "data/loader.h"
#include "models/resnet.h"
#include "proto/checkpoint.pb.h"
#include "proto/cluster.pb.h"
#include "trainer/amp.h"
#include "trainer/checkpoint.h"
#include "trainer/checkpoint_interval.h"
#include "trainer/config.h"
#include "trainer/coordination.h"
#include "trainer/optimizer.h"
#include "trainer/precision.h"
#include "trainer/run_output.h"
#include "trainer/schedule.h"
#include "trainer/snapshot.h"
#include "trainer/trainer.h"

namespace stride::trainer {

struct Trainer::State {
  TrainConfig c;
  // Note [Rank identity]: from the communicator (MPI under mpirun/srun, else a single rank).
  std::shared_ptr<comm::Communicator> comm;      // a RecordingCommunicator when the flight recorder is on
  std::shared_ptr<comm::FlightRecorder> flight;  // --flight-recorder; null when off
  std::unique_ptr<comm::GradientReducer> reducer;
  uint64_t rank = 0, world = 1;
  torch::Device device{torch::kCPU};
  AmpPlan amp;  // what --amp resolved to on this device and CPU (trainer/precision.h)
  std::unique_ptr<GradScaler> scaler;
  torch::Tensor norm_scale, norm_shift;  // uint8 -> normalised float on the device: x * scale + shift
  std::unique_ptr<RunOutput> out;
  std::unique_ptr<data::ShardedLoader> train_data, eval_data;
  models::ResNet model{nullptr}, ema{nullptr};
  std::unique_ptr<Optimizer> optimizer;  // --opt
  std::unique_ptr<LrSchedule> schedule;
  std::unique_ptr<CheckpointStore> store;
  // --snapshot-every (Note [In-memory snapshots] in trainer/snapshot.h): the store, and the interval in effect
  // (0 once snapshots are off: too little memory, or a write failed).
  std::unique_ptr<SnapshotStore> snapshots;
  int64_t snapshot_every = 0;
  int64_t buddy_exchange_at = -1;  // the step after the newest snapshot: Note [Buddy copies] in trainer/snapshot.h
  // Set when this start resumed from a snapshot: the disk checkpoint it continued (the next commit's parent).
  bool resumed_from_snapshot = false;
  std::optional<std::pair<uint64_t, std::string>> snapshot_parent;
  std::string config_text;       // the resolved config.toml (also recorded in every MANIFEST)
  std::string config_digest;     // its CRC32C
  proto::Preprocess preprocess;  // how evaluation prepares an image (recorded in every MANIFEST)
  std::string resume_from;       // the checkpoint directory this run continues ("" from scratch)
  std::string resume_note;       // what choose_checkpoint() has to say once output is set up
  // This rank's PowerSGD state from the checkpoint, loaded into the reducer once it exists (after resume()).
  std::map<std::string, torch::Tensor> reducer_state;
  // --bucket-cap-mb auto (trainer/bucket_cap.cpp): the tuner while it measures; the decision once made (or read
  // from the checkpoint resumed), recorded in every MANIFEST after it.
  std::unique_ptr<comm::BucketCapTuner> bucket_tuner;
  std::optional<proto::BucketCapChoice> bucket_choice;
  int64_t bucket_tuning_start = 0;  // the step tuning began at
  int64_t step = 0;                 // optimizer steps completed
  data::Cursor cursor;
  int64_t steps_per_epoch = 0;
  int64_t total_steps = 0;
  int64_t step_limit = 0;  // where this run stops: total_steps, or --max-steps when smaller
  std::map<std::string, double> last_eval;
  int64_t last_eval_step = -1;  // the step last_eval was measured at
  // Note [Checkpoint lineage] (storage/checkpoint_files.h): the checkpoint the next one continues.
  std::optional<std::pair<uint64_t, std::string>> lineage_parent;  // step, id
  std::string start_id;  // rank 0's random_id() for this start, on every rank: checkpoint ids are START-STEP
  std::unique_ptr<Coordination> coordination;
  int64_t last_checkpoint_step = -1;  // the newest step checkpointed (or resumed from): never rewritten
  proto::Heartbeat hb;
  bool stopped = false;
  // Checkpoints every this many steps (0: epoch ends only): --checkpoint-every N, or the interval rank 0 chose for
  // --checkpoint-every auto (`interval` set, Note [Checkpoint interval] in trainer/checkpoint_interval.h).
  int64_t checkpoint_every = 0;
  std::unique_ptr<CheckpointInterval> interval;
  std::chrono::steady_clock::time_point interval_origin, interval_mark;  // this start; the last control point
  int64_t interval_mark_step = 0;

  // setup.cpp
  void setup();
  void load_weights(const std::string& path);
  // --resume: picks the checkpoint (resume_from) and checks the configuration against its run's. Throws
  // UsageError before anything is written when the model differs or settings change the result.
  void choose_checkpoint();
  void resume();
  // --snapshot-every: turns snapshots off (a warning) when their directory lacks the room.
  void check_snapshot_room();
  void plan_snapshot_buddies();
  void apply_freeze();

  // bucket_cap.cpp
  // The cap the reducer starts with: the fixed --bucket-cap-mb, or for auto the checkpoint's choice or the first
  // candidate (bucket_tuner then set).
  int64_t initial_bucket_cap();
  // After every optimizer step while tuning: feeds the step's time, rebuilds the reducer at the next candidate,
  // records the decision.
  void tune_bucket_cap();
  // The end of the run: notes a tuning left unfinished.
  void end_bucket_tuning();

  // trainer.cpp
  void train();
  // At a control point: checkpoints when asked; returns true when the run must stop.
  bool control_point();
  EvalResult evaluate(models::ResNet& m);
  void evaluate_and_record();
  void checkpoint();
  // This rank's state handed to the snapshot writer (--snapshot-every).
  void snapshot();
  // What a checkpoint records: the training state (rank 0's MANIFEST), and the RNG and loss-scaler tensors.
  proto::Manifest manifest_now(const std::string& id) const;
  NamedTensors state_tensors();
  void update_ema();
  // What this run computes in, for metrics.jsonl's "precision" record and the checkpoint MANIFEST.
  proto::Precision precision_record() const;
  // Element-wise sum of `values` over all ranks (one small collective).
  std::vector<double> sum_over_ranks(std::vector<double> values);
  // Plain BN keeps per-rank running statistics; average them before they are evaluated or saved.
  void sync_buffers();
  // The batch's images on the training device, normalised and in the training memory format.
  torch::Tensor device_images(const data::Batch& batch);
  torch::Tensor to_device(const torch::Tensor& t) const;
};

// 64 random bits in hex.
std::string random_id();

// The default CPU generator's state (saved in checkpoints, restored on resume).
torch::Tensor cpu_rng_state();
void set_cpu_rng_state(const torch::Tensor& state);

}  // namespace stride::trainer
