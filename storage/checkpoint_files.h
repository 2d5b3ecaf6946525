// The on-disk checkpoint commit, without LibTorch: RUN/checkpoints/step-XXXXXXXX/ holds the tensor files
// written by the ranks and, once every file is durable, a MANIFEST listing them. Used by the coordinator (a
// multi-rank job's commit), the trainer (one-process commits, resume) and `stride ckpt`.
//
// Note [Checkpoint commit]
// Files are written and fsynced first (by each rank's background writer, or by CheckpointStore in one
// process). MANIFEST (every file's name, size and CRC32C plus the training state) is written last to a
// temporary name, fsynced, renamed, and the directory fsynced; only then is the checkpoint committed. A
// directory without a valid MANIFEST, or whose files do not match it, is not a checkpoint: readers skip it and
// fall back to the newest one that verifies. LATEST names the newest commit for people and scripts; readers do
// not trust it. Garbage collection runs only after a commit and removes valid checkpoints beyond the newest
// `keep`, and invalid directories *older* than the newest commit (crashed attempts); directories newer than it
// may be checkpoints still being written and are left alone. So the newest committed checkpoint always survives.
//
// Note [Checkpoint lineage]
// A run resumed from an older checkpoint (`--resume RUN/checkpoints/step-23`) starts a new branch: its commits
// name their parent (Manifest.lineage: the checkpoint the run resumed from, then its previous checkpoint), and
// LATEST names the newest commit of the newest branch. The checkpoint to continue from (lineage_head) is the
// newest valid checkpoint that is LATEST's or descends from it (a commit whose LATEST update was cut short),
// else the newest valid ancestor of LATEST; newer checkpoints of an abandoned branch are never picked. Garbage
// collection keeps the newest `keep` checkpoints of the committing branch, keeps an abandoned branch's
// checkpoints at steps the new branch has not reached (they are replaced as training passes them), and removes
// the rest. Checkpoints written before lineages were recorded (no Manifest.lineage) fall back to step order.
//
// All file operations go through FileOps (storage/file_ops.h) so tests can fail any single operation (a crash at
// that instant).
//
// Thread-safety: free functions without state; concurrent calls on the same checkpoint root must be serialised
// by the caller (one committer per run directory).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "proto/checkpoint.pb.h"
#include "storage/file_ops.h"

namespace stride::storage {

constexpr uint32_t kManifestVersion = 1;

// "step-00000042".
std::string step_name(uint64_t step);
// RUN/checkpoints/step-XXXXXXXX.
std::string step_dir(const std::string& checkpoint_root, uint64_t step);

// Why `name` cannot be a file of a checkpoint ("" when it can): it must be a plain name inside the step directory,
// 1-255 bytes, without '/', NUL or other control characters, not starting with '.' (".", "..", and the
// temporaries) and not MANIFEST. Names come from ranks over the network and from MANIFESTs on disk.
std::string checkpoint_file_name_problem(const std::string& name);
// Writes (fsynced) one file of a checkpoint and returns its MANIFEST entry.
proto::FileEntry write_checkpoint_file(FileOps& ops, const std::string& dir, const std::string& name,
                                       const std::string& bytes);
// Creates the step directory and removes a MANIFEST left there by an earlier attempt at the same step, so the
// directory is invisible while files are (re)written.
void prepare_step_dir(FileOps& ops, const std::string& checkpoint_root, uint64_t step);
// Phase two, the commit itself: writes `manifest` (its files already durable) as MANIFEST, atomically, and makes
// the rename durable. Returns the checkpoint directory. Throws stride::Error on I/O failure; the checkpoint is
// then not committed (a MANIFEST renamed into place whose directory fsync failed is removed again) and the
// previous ones are untouched.
std::string publish_manifest(FileOps& ops, const std::string& checkpoint_root, proto::Manifest manifest);
// After a commit of `step` (publish_manifest returned): LATEST, then garbage collection beyond the newest `keep`.
// Throws stride::Error on I/O failure, but the checkpoint stays committed: readers do not trust LATEST, and
// garbage left behind is collected after a later commit. Callers log such a failure; it is never a discard.
void after_commit(FileOps& ops, const std::string& checkpoint_root, uint64_t step, int64_t keep);
// publish_manifest, then after_commit (one process that commits its own checkpoints). Throws stride::Error when
// publishing fails; an after_commit failure is printed as a warning, since the checkpoint is committed.
std::string commit_manifest(FileOps& ops, const std::string& checkpoint_root, proto::Manifest manifest, int64_t keep);

struct CheckpointInfo {
  std::string path;
  uint64_t step = 0;
  bool valid = false;
  std::string problem;  // why it is not valid
  proto::Manifest manifest;
};

// Every step-* directory under checkpoint_root, newest first. `deep` verifies every file's size and checksum;
// otherwise only the MANIFEST and file sizes are checked.
std::vector<CheckpointInfo> list_checkpoints(const std::string& checkpoint_root, bool deep = true);
// Removes what Notes [Checkpoint commit] and [Checkpoint lineage] say may go, after the commit of `head_step`.
// Never removes the newest valid checkpoint of the committing branch.
void garbage_collect(FileOps& ops, const std::string& checkpoint_root, int64_t keep, uint64_t head_step);
// The checkpoint a run continues from (Note [Checkpoint lineage]), verified deeply; `skipped` receives the
// candidates that did not verify, with the reason. nullopt when there is none.
std::optional<CheckpointInfo> lineage_head(const std::string& checkpoint_root,
                                           std::vector<CheckpointInfo>* skipped = nullptr);
// Checks MANIFEST and (deep) every file it lists. Throws stride::Error naming the file on any mismatch.
proto::Manifest verify_checkpoint(const std::string& dir, bool deep = true);

}  // namespace stride::storage
