// Checkpoints on disk: RUN/checkpoints/step-XXXXXXXX/{model,optimizer,ema,state}.safetensors + MANIFEST.
//
// Note [Checkpoint commit]
// Files are written and fsynced first; MANIFEST (every file's name, size and CRC32C plus the training state)
// is written last to a temporary name, fsynced, renamed, and the directory fsynced. A directory without a valid
// MANIFEST, or whose files do not match it, is not a checkpoint: readers skip it and fall back to the newest
// one that verifies. LATEST names the newest commit for people and scripts; readers do not trust it. Only after
// a commit are checkpoints beyond the newest `keep` deleted, so the newest committed one always survives.
//
// All file operations go through FileOps so tests can fail any single operation (a crash at that instant).
// CheckpointStore is not thread-safe; use one per run directory.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "proto/checkpoint.pb.h"

namespace stride::trainer {

using NamedTensors = std::map<std::string, torch::Tensor>;

// The seam for fault injection. The real implementation fsyncs every file it writes.
class FileOps {
 public:
  virtual ~FileOps() = default;
  virtual void write_file(const std::string& path, const std::string& bytes);  // create/truncate, write, fsync
  virtual void rename(const std::string& from, const std::string& to);
  virtual void fsync_dir(const std::string& dir);
  virtual void make_dir(const std::string& dir);
  virtual void remove_all(const std::string& path);
};
std::shared_ptr<FileOps> real_file_ops();

struct CheckpointData {
  NamedTensors model;        // torchvision-named weights and buffers
  NamedTensors optimizer;    // momentum buffers by parameter name
  NamedTensors ema;          // EMA weights (empty when off)
  NamedTensors state;        // RNG state and other small tensors
  proto::Manifest manifest;  // training state; `files` is filled in by commit()
};

struct CheckpointInfo {
  std::string path;
  uint64_t step = 0;
  bool valid = false;
  std::string problem;  // why it is not valid
  proto::Manifest manifest;
};

class CheckpointStore {
 public:
  explicit CheckpointStore(std::string run_dir, int64_t keep = 3, std::shared_ptr<FileOps> ops = real_file_ops());

  // Writes and commits a checkpoint for manifest.step(); returns its directory. Throws on I/O failure, leaving
  // the previous commits untouched.
  std::string commit(CheckpointData data);
  // Every step-* directory, newest first. `deep` verifies every file's size and checksum; otherwise only the
  // MANIFEST is read (cheap, for garbage collection).
  std::vector<CheckpointInfo> list(bool deep = true) const;
  // The newest checkpoint that verifies; `skipped` receives the newer ones that did not, with the reason.
  std::optional<CheckpointInfo> latest(std::vector<CheckpointInfo>* skipped = nullptr) const;
  const std::string& dir() const { return dir_; }

 private:
  void garbage_collect();
  std::string dir_;
  int64_t keep_;
  std::shared_ptr<FileOps> ops_;
};

// Checks MANIFEST and (deep) every file it lists. Throws stride::Error naming the file on any mismatch.
proto::Manifest verify_checkpoint(const std::string& dir, bool deep = true);
// Verifies, then reads every tensor file.
CheckpointData load_checkpoint(const std::string& dir);

}  // namespace stride::trainer
