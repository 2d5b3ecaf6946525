#include "trainer/checkpoint.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include "common/error.h"
#include "trainer/safetensors.h"

namespace stride::trainer {
namespace fs = std::filesystem;
std::vector<std::pair<std::string, const NamedTensors*>> checkpoint_parts(const CheckpointData& d) {
  std::vector<std::pair<std::string, const NamedTensors*>> parts = {{"model.safetensors", &d.model}};
  if (!d.optimizer.empty()) parts.emplace_back("optimizer.safetensors", &d.optimizer);
  if (!d.ema.empty()) parts.emplace_back("ema.safetensors", &d.ema);
  if (!d.state.empty()) parts.emplace_back("state.safetensors", &d.state);
  for (const auto& [name, tensors] : d.extra) parts.emplace_back(name, &tensors);
  return parts;
}

CheckpointStore::CheckpointStore(std::string run_dir, int64_t keep, std::shared_ptr<FileOps> ops)
    : dir_((fs::path(run_dir) / "checkpoints").string()), keep_(std::max<int64_t>(1, keep)), ops_(std::move(ops)) {}

namespace {
// Every file of `data` written into its step directory; the manifest lists them.
proto::Manifest write_parts(FileOps& ops, const std::string& root, CheckpointData& data) {
  auto& m = data.manifest;
  ops.make_dir(root);
  storage::prepare_step_dir(ops, root, m.step());
  const std::string path = storage::step_dir(root, m.step());
  m.clear_files();
  for (const auto& [file, tensors] : checkpoint_parts(data)) {
    *m.add_files() = storage::write_checkpoint_file(ops, path, file, encode_safetensors(*tensors));
  }
  return std::move(m);
}
}  // namespace

std::string CheckpointStore::commit(CheckpointData data) {
  return storage::commit_manifest(*ops_, dir_, write_parts(*ops_, dir_, data), keep_);
}

std::string CheckpointStore::publish(CheckpointData data) {
  return storage::publish_manifest(*ops_, dir_, write_parts(*ops_, dir_, data));
}

std::vector<CheckpointInfo> CheckpointStore::list(bool deep) const { return storage::list_checkpoints(dir_, deep); }

std::optional<CheckpointInfo> CheckpointStore::latest(std::vector<CheckpointInfo>* skipped) const {
  return storage::lineage_head(dir_, skipped);
}

CheckpointData load_checkpoint(const std::string& dir) {
  CheckpointData d;
  d.manifest = verify_checkpoint(dir);
  for (const auto& f : d.manifest.files()) {
    auto tensors = read_safetensors((fs::path(dir) / f.name()).string()).tensors;
    if (f.name() == "model.safetensors") d.model = std::move(tensors);
    if (f.name() == "optimizer.safetensors") d.optimizer = std::move(tensors);
    if (f.name() == "ema.safetensors") d.ema = std::move(tensors);
    if (f.name() == "state.safetensors") d.state = std::move(tensors);
  }
  return d;
}

std::string powersgd_state_file(uint64_t rank) { return concat("powersgd-rank-", rank, ".safetensors"); }

}  // namespace stride::trainer
