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
//
// Note [Buddy copies]
// A snapshot in RAM dies with its host. When the job spans hosts (--snapshot-buddy auto, the default), every rank
// also keeps a copy of one other rank's snapshots, that of the rank at the same place on the previous host: the
// ranks are ordered host by host (L per host) and rank P[i]'s buddy is P[(i + L) mod W]. The copy lives where
// the buddy's own snapshots do, under --snapshot-dir/rank-OWNER on the buddy's host, so it has the same layout
// and the same checks (MANIFEST, CRC32C).
//   - The copy travels over the communicator (Communicator::sendrecv, point to point over MPI), starting one step
//     after each snapshot step (by then the writer has the snapshot on disk, and the exchange waits if not):
//     every rank sends its newest snapshot to its buddy and receives its holdee's. The message goes in chunks of
//     at least 256 KiB spread over the steps up to the next snapshot, one chunk between two steps, so it shares
//     the link with the gradient buckets a little at a time and never holds up one step for the whole copy (a
//     ResNet-50 snapshot takes seconds on a 1 Gbit/s link). The schedule is the same on every rank: the ranks
//     agree on the largest message first. Once every chunk is in, the writer thread writes the copy. So a buddy
//     copy lands within one interval of the snapshot it copies; a job that ends or stops mid-transfer drops it.
//   - At a start, each rank lists its own snapshots and the copies it holds; a step counts as complete when every
//     rank's snapshot of it is held somewhere (its own, or its buddy's copy). A rank that lacks its own receives
//     it from its buddy (a broadcast at the start, before anything else) and resumes from it.
//   - Every rank takes part in every exchange, so ranks agree at the start on whether snapshots are on: when one
//     rank cannot keep them (too little room), none does.
// The buddies need at least two hosts with the same number of ranks on each; with one host they are off (a copy
// in the same RAM protects nothing), and an uneven layout turns them off with a note.
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

// Note [Buddy copies]: buddy[r] for ranks on the hosts `host_of` (an id per rank). Empty, with `why`, when the
// layout has no buddies (one host, or hosts with different numbers of ranks).
std::vector<int> plan_buddies(const std::vector<int64_t>& host_of, std::string* why);

// A snapshot directory as one message (a buddy copy): owner, step and every file. unpack_snapshot writes one
// under root/rank-OWNER (into a temporary directory renamed into place) and returns its directory; it refuses a
// message that is cut short or names a file outside the snapshot, naming `from`.
torch::Tensor pack_snapshot(const std::string& dir, uint64_t owner, uint64_t step);
std::string unpack_snapshot(const torch::Tensor& packed, const std::string& root, const std::string& from);

// Where a start continues from, as told to the user.
struct SnapshotChoice {
  std::string path;  // this rank's snapshot directory
  uint64_t step = 0;
  std::optional<std::pair<uint64_t, std::string>> parent;  // the disk checkpoint it continues (step, id)
  std::vector<std::pair<int, int>> from_buddies;  // (rank, holder): snapshots from buddy copies (Note [Buddy copies])
  bool mine_from_buddy = false;                   // this rank's among them
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
  // Note [Buddy copies]: buddy[r] keeps rank r's copies (plan_buddies, the same on every rank); empty: none.
  // Set before choose() and exchange().
  void set_buddies(std::vector<int> buddy);
  bool has_buddies() const { return !buddy_.empty(); }
  // One step after every snapshot step, on every rank: waits until the writer has this rank's newest snapshot
  // (normally done by then), agrees on the sizes, and starts sending it to its buddy and receiving its
  // holdee's in chunks spread over `steps` steps (this one included). exchange_step() (every other step) sends
  // the next chunk, and once all are in hands the copy to the writer; finish_exchange() waits for the chunks in
  // flight (before the communicator goes) and keeps the copy only when it is complete.
  void exchange(comm::Communicator& comm, int64_t steps);
  void exchange_step(comm::Communicator& comm);
  void finish_exchange();
  // The copies received and written; the bytes of the last one sent.
  uint64_t buddy_copies() const;
  uint64_t buddy_sent_bytes() const;

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
  void write_own(CheckpointData data);
  void write_foreign(const torch::Tensor& packed);
  // This rank's (or, for a buddy copy, its holdee's) snapshots that may continue `disk`, newest first.
  std::vector<CheckpointInfo> candidates(const std::string& rank_dir,
                                         const std::optional<std::pair<uint64_t, std::string>>& disk,
                                         uint64_t world) const;
  std::string rank_dir(int64_t r) const;
  std::string root_, rank_dir_;
  int64_t rank_;
  CheckpointStore store_;
  std::vector<int> buddy_;  // Note [Buddy copies]
  int holdee_ = -1;         // the rank whose copies this rank keeps
  void send_chunk(comm::Communicator& comm);
  void poll();
  std::vector<comm::WorkPtr> chunks_;  // the exchange in flight: its chunks, buffers and schedule
  torch::Tensor sent_, received_;
  int64_t chunk_bytes_ = 0, chunk_count_ = 0, next_chunk_ = 0;
  uint64_t last_sent_step_ = 0;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::optional<CheckpointData> job_;
  torch::Tensor foreign_;  // a buddy copy to write (the writer thread)
  bool busy_ = false, writing_own_ = false, stop_ = false, failed_ = false;
  torch::Tensor ready_;  // this rank's newest snapshot as a buddy message, not yet sent
  uint64_t ready_step_ = 0;
  uint64_t last_bytes_ = 0, written_ = 0, buddy_copies_ = 0, buddy_sent_bytes_ = 0;
  double last_seconds_ = 0;
  std::thread thread_;
};

}  // namespace stride::trainer
