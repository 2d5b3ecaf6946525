// Checkpoints on disk: RUN/checkpoints/step-XXXXXXXX/{model,optimizer,ema,state}.safetensors + MANIFEST, and with
// --grad-compression powersgd one powersgd-rank-R.safetensors per rank (each rank's error feedback). What a
// checkpoint contains lives here; how it is committed (Note [Checkpoint commit]) lives in
// storage/checkpoint_files.h, shared with the coordinator, which commits the checkpoints of a multi-rank job.
// CheckpointStore is the synchronous one-process path (tests, tools); it is not thread-safe.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "proto/checkpoint.pb.h"
#include "storage/checkpoint_files.h"

namespace stride::trainer {

using NamedTensors = std::map<std::string, torch::Tensor>;

using storage::CheckpointInfo;
using storage::FileOps;
using storage::real_file_ops;
using storage::verify_checkpoint;

struct CheckpointData {
  NamedTensors model;      // torchvision-named weights and buffers
  NamedTensors optimizer;  // momentum buffers by parameter name
  NamedTensors ema;        // EMA weights (empty when off)
  NamedTensors state;      // RNG state and other small tensors
  // Further files by name (a snapshot's powersgd-rank-R.safetensors)
  std::vector<std::pair<std::string, NamedTensors>> extra;
  proto::Manifest manifest;  // training state; `files` is filled in by commit()
};

class CheckpointStore {
 public:
  explicit CheckpointStore(std::string run_dir, int64_t keep = 3, std::shared_ptr<FileOps> ops = real_file_ops());

  // Writes and commits a checkpoint for manifest.step(); returns its directory. Throws on I/O failure, leaving
  // the previous commits untouched.
  std::string commit(CheckpointData data);
  // Writes the checkpoint and its MANIFEST without LATEST or garbage collection (in-memory snapshots, which form
  // no lineage: trainer/snapshot.h). Returns its directory.
  std::string publish(CheckpointData data);
  // Every step-* directory, newest first. `deep` verifies every file's size and checksum; otherwise only the
  // MANIFEST is read (cheap, for garbage collection).
  std::vector<CheckpointInfo> list(bool deep = true) const;
  // The checkpoint to continue from: the newest that verifies on the newest branch (Note [Checkpoint lineage]
  // in storage/checkpoint_files.h); `skipped` receives the candidates that did not verify, with the reason.
  std::optional<CheckpointInfo> latest(std::vector<CheckpointInfo>* skipped = nullptr) const;
  const std::string& dir() const { return dir_; }

 private:
  std::string dir_;
  int64_t keep_;
  std::shared_ptr<FileOps> ops_;
};

// The tensor files of a checkpoint: {file name, tensors}, empty parts (other than the model) left out.
std::vector<std::pair<std::string, const NamedTensors*>> checkpoint_parts(const CheckpointData& d);
// Verifies, then reads every tensor file.
CheckpointData load_checkpoint(const std::string& dir);
// The file holding rank `rank`'s PowerSGD state (GradientReducer::compression_state()).
std::string powersgd_state_file(uint64_t rank);

}  // namespace stride::trainer
