#include "trainer/checkpoint.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include "common/error.h"
#include "common/file_io.h"
#include "data/crc32c.h"
#include "data/framing.h"
#include "trainer/safetensors.h"

namespace stride::trainer {
namespace fs = std::filesystem;
namespace {

constexpr char kMagic[8] = {'S', 'T', 'R', 'C', 'K', 'P', '1', '\n'};
constexpr uint32_t kManifestVersion = 1;

std::string step_name(uint64_t step) {
  char name[32];
  std::snprintf(name, sizeof(name), "step-%08llu", static_cast<unsigned long long>(step));
  return name;
}

proto::Manifest read_manifest(const std::string& path) {
  const std::string payload = data::unframe_payload(kMagic, read_file(path), path, "MANIFEST");
  proto::Manifest m;
  if (!m.ParseFromString(payload)) throw Error(concat(path, ": cannot parse"));
  if (m.version() > kManifestVersion) throw Error(concat(path, ": version ", m.version(), " is newer than this build"));
  return m;
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------
// Real file operations
// ---------------------------------------------------------------------------------------------------------
void FileOps::write_file(const std::string& path, const std::string& bytes) { write_file_fsync(path, bytes); }

void FileOps::rename(const std::string& from, const std::string& to) {
  if (::rename(from.c_str(), to.c_str()) != 0) {
    throw Error(concat("rename ", from, " -> ", to, " failed: ", std::strerror(errno)));
  }
}

void FileOps::fsync_dir(const std::string& dir) { stride::fsync_dir(dir); }

void FileOps::make_dir(const std::string& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw Error(concat("cannot create ", dir, ": ", ec.message()));
}

void FileOps::remove_all(const std::string& path) {
  std::error_code ec;
  fs::remove_all(path, ec);
  if (ec) throw Error(concat("cannot remove ", path, ": ", ec.message()));
}

std::shared_ptr<FileOps> real_file_ops() {
  static auto ops = std::make_shared<FileOps>();
  return ops;
}

// ---------------------------------------------------------------------------------------------------------
// Store
// ---------------------------------------------------------------------------------------------------------
CheckpointStore::CheckpointStore(std::string run_dir, int64_t keep, std::shared_ptr<FileOps> ops)
    : dir_((fs::path(run_dir) / "checkpoints").string()), keep_(std::max<int64_t>(1, keep)), ops_(std::move(ops)) {}

std::string CheckpointStore::commit(CheckpointData data) {
  const std::string name = step_name(data.manifest.step());
  const std::string path = (fs::path(dir_) / name).string();
  ops_->make_dir(dir_);
  // A leftover directory of the same step (an interrupted earlier attempt) is not a checkpoint: replace it.
  if (fs::exists(path)) ops_->remove_all(path);
  ops_->make_dir(path);
  auto& m = data.manifest;
  m.set_version(kManifestVersion);
  m.clear_files();
  const std::pair<const char*, NamedTensors*> parts[] = {
      {"model.safetensors", &data.model},
      {"optimizer.safetensors", &data.optimizer},
      {"ema.safetensors", &data.ema},
      {"state.safetensors", &data.state},
  };
  for (const auto& [file, tensors] : parts) {
    if (tensors->empty() && std::string(file) != "model.safetensors") continue;
    const std::string bytes = encode_safetensors(*tensors);
    ops_->write_file((fs::path(path) / file).string(), bytes);
    auto* e = m.add_files();
    e->set_name(file);
    e->set_size(bytes.size());
    e->set_crc32c(data::crc32c(bytes.data(), bytes.size()));
  }
  const std::string tmp = (fs::path(path) / ".MANIFEST.tmp").string();
  ops_->write_file(tmp, data::frame_payload(kMagic, m.SerializeAsString()));
  ops_->rename(tmp, (fs::path(path) / "MANIFEST").string());
  ops_->fsync_dir(path);
  ops_->fsync_dir(dir_);
  // LATEST is a convenience for people; readers scan for the newest valid MANIFEST instead.
  ops_->write_file((fs::path(dir_) / ".LATEST.tmp").string(), name + "\n");
  ops_->rename((fs::path(dir_) / ".LATEST.tmp").string(), (fs::path(dir_) / "LATEST").string());
  ops_->fsync_dir(dir_);
  garbage_collect();
  return path;
}

std::vector<CheckpointInfo> CheckpointStore::list(bool deep) const {
  std::vector<CheckpointInfo> out;
  if (!fs::is_directory(dir_)) return out;
  for (const auto& e : fs::directory_iterator(dir_)) {
    const std::string name = e.path().filename().string();
    if (!e.is_directory() || name.rfind("step-", 0) != 0) continue;
    CheckpointInfo info;
    info.path = e.path().string();
    info.step = std::strtoull(name.c_str() + 5, nullptr, 10);
    try {
      info.manifest = verify_checkpoint(info.path, deep);
      info.valid = true;
    } catch (const Error& err) {
      info.problem = err.what();
    }
    out.push_back(std::move(info));
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.step > b.step; });
  return out;
}

std::optional<CheckpointInfo> CheckpointStore::latest(std::vector<CheckpointInfo>* skipped) const {
  for (auto& info : list()) {
    if (info.valid) return info;
    if (skipped) skipped->push_back(info);
  }
  return std::nullopt;
}

void CheckpointStore::garbage_collect() {
  int64_t kept = 0;
  for (const auto& info : list(/*deep=*/false)) {
    if (info.valid && kept < keep_) {
      ++kept;
      continue;
    }
    // Older than the newest `keep` valid ones, or invalid and older than a valid commit: remove. Invalid
    // directories newer than every valid one cannot exist here: we just committed the newest step.
    ops_->remove_all(info.path);
  }
}

proto::Manifest verify_checkpoint(const std::string& dir, bool deep) {
  const std::string manifest_path = (fs::path(dir) / "MANIFEST").string();
  if (!fs::exists(manifest_path)) throw Error(concat(dir, ": no MANIFEST (an interrupted checkpoint)"));
  auto m = read_manifest(manifest_path);
  for (const auto& f : m.files()) {
    const std::string path = (fs::path(dir) / f.name()).string();
    std::error_code ec;
    const auto size = fs::file_size(path, ec);
    if (ec) throw Error(concat(path, ": listed in MANIFEST but missing"));
    if (size != f.size()) throw Error(concat(path, ": ", size, " bytes, MANIFEST says ", f.size()));
    if (!deep) continue;
    const std::string bytes = read_file(path);
    if (data::crc32c(bytes.data(), bytes.size()) != f.crc32c()) throw Error(concat(path, ": checksum mismatch"));
  }
  return m;
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

}  // namespace stride::trainer
