// In-memory snapshots: a recent copy of a rank's training state in RAM, that outlives the rank.
//
// Note [In-memory snapshots]
// With --snapshot-every N, every N steps each rank writes its whole state (what a checkpoint holds: model,
// optimizer, EMA, RNG and loss-scaler state, its own PowerSGD error feedback, and a MANIFEST with the cursor and
// CRC32C of every file) as a complete checkpoint of its own under --snapshot-dir/rank-R/checkpoints, by default on
// /dev/shm (RAM). The files belong to no process, so they survive the death of the rank that wrote them; a
// background thread encodes and writes them while training goes on (a snapshot still being written when the
// next is due is skipped, never waited for). Each rank keeps its newest two.
//
// A start with --resume auto (every restart by `stride launch`) picks its state like this:
//   1. every rank lists its snapshots that verify and continue the disk checkpoint the run would resume (their
//      MANIFEST's lineage parent is that checkpoint; the same world size);
//   2. the ranks agree (one small collective) on the newest step that every rank holds;
//   3. that snapshot is used when it is newer than the disk checkpoint; otherwise the disk checkpoint, with a
//      line saying why.
// A rank that died while writing a snapshot has no MANIFEST for it, so that step is held by fewer than all ranks
// and never used: complete on every rank, or not used (the two-phase rule of disk commits, decided at restart).
// Snapshots newer than the chosen state are removed at the start (they belong to a future that was abandoned),
// and a run that ends removes its own. A disk checkpoint resumed from a snapshot names the disk checkpoint the
// snapshot continued as its parent, so snapshots never appear in the disk lineage.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "comm/communicator.h"
#include "trainer/checkpoint.h"

namespace stride::trainer {

// The default --snapshot-dir of a run: /dev/shm/stride-snapshots/<name>-<hash of the absolute output dir>.
std::string default_snapshot_dir(const std::string& output_dir);

// The newest step every rank holds: `held[r]` lists rank r's steps. nullopt when there is none.
std::optional<uint64_t> newest_common_step(const std::vector<std::vector<uint64_t>>& held);

// Where a start continues from, as told to the user.
struct SnapshotChoice {
  std::string path;  // this rank's snapshot directory
  uint64_t step = 0;
  std::optional<std::pair<uint64_t, std::string>> parent;  // the disk checkpoint it continues (step, id)
};

class SnapshotStore {
 public:
  // `root`: the run's snapshot directory (all ranks); this rank's snapshots live in root/rank-R.
  SnapshotStore(std::string root, uint64_t rank);
  // Finishes the snapshot being written.
  ~SnapshotStore();

  // This rank's snapshots that verify deeply (every file's size and CRC32C), newest first; those that do not
  // are listed in `skipped` with the reason.
  std::vector<CheckpointInfo> valid(std::vector<CheckpointInfo>* skipped = nullptr) const;
  // Steps 1-3 of the Note, a collective over `comm`: the snapshot to resume, when one is newer than the disk
  // checkpoint `disk` ((step, lineage id); nullopt: none) and continues it. `why` says why none was taken.
  std::optional<SnapshotChoice> choose(const std::optional<std::pair<uint64_t, std::string>>& disk, uint64_t world,
                                       comm::Communicator& comm, std::string* why);
  // Removes this rank's snapshots newer than `step`.
  void discard_after(uint64_t step);
  // Removes this rank's snapshots (and the run's directory once no rank has any left).
  void remove_all();

  // Hands a snapshot to the writer thread; false (and nothing kept) while the previous one is still being
  // written, or after a write failed (snapshots are then off, with one warning on stderr).
  bool submit(CheckpointData data);
  // Waits for the snapshot being written.
  void drain();
  // The last write: bytes, seconds; and the number of snapshots written.
  uint64_t last_bytes() const;
  double last_seconds() const;
  uint64_t written() const;
  const std::string& dir() const { return rank_dir_; }

 private:
  void run();
  std::string root_, rank_dir_;
  CheckpointStore store_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::optional<CheckpointData> job_;
  bool busy_ = false, stop_ = false, failed_ = false;
  uint64_t last_bytes_ = 0, written_ = 0;
  double last_seconds_ = 0;
  std::thread thread_;
};

}  // namespace stride::trainer
