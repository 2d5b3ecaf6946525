#include "storage/checkpoint_files.h"

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "common/error.h"
#include "storage/crc32c.h"
#include "storage/file_io.h"
#include "storage/framing.h"

namespace stride::storage {
namespace fs = std::filesystem;
namespace {

constexpr char kMagic[8] = {'S', 'T', 'R', 'C', 'K', 'P', '1', '\n'};

proto::Manifest read_manifest(const std::string& path) {
  const std::string payload = unframe_payload(kMagic, read_file(path), path, "MANIFEST");
  proto::Manifest m;
  if (!m.ParseFromString(payload)) throw Error(concat(path, ": cannot parse"));
  if (m.version() > kManifestVersion) throw Error(concat(path, ": version ", m.version(), " is newer than this build"));
  return m;
}

}  // namespace

std::string checkpoint_file_name_problem(const std::string& name) {
  if (name.empty()) return "an empty name";
  if (name.size() > 255) return concat("a name of ", name.size(), " bytes (at most 255)");
  for (const char c : name) {
    if (c == '/') return "a path, not a plain file name";
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) return "a control character or NUL in the name";
  }
  if (name.front() == '.') return "a name starting with '.' (\".\", \"..\" and temporaries are not checkpoint files)";
  if (name == "MANIFEST") return "the name MANIFEST, which the commit writes itself";
  return "";
}

std::string step_name(uint64_t step) {
  char name[32];
  std::snprintf(name, sizeof(name), "step-%08llu", static_cast<unsigned long long>(step));
  return name;
}

std::string step_dir(const std::string& root, uint64_t step) { return (fs::path(root) / step_name(step)).string(); }

proto::FileEntry write_checkpoint_file(FileOps& ops, const std::string& dir, const std::string& name,
                                       const std::string& bytes) {
  ops.write_file((fs::path(dir) / name).string(), bytes);
  proto::FileEntry e;
  e.set_name(name);
  e.set_size(bytes.size());
  e.set_crc32c(crc32c(bytes.data(), bytes.size()));
  return e;
}

void prepare_step_dir(FileOps& ops, const std::string& root, uint64_t step) {
  const std::string dir = step_dir(root, step);
  ops.make_dir(dir);
  const std::string manifest = (fs::path(dir) / "MANIFEST").string();
  std::error_code ec;
  if (fs::exists(manifest, ec)) {
    // An earlier attempt at this step (a run that crashed after committing it and resumed from an older one):
    // the directory stops being a checkpoint before any of its files change.
    ops.remove_all(manifest);
    ops.fsync_dir(dir);
  }
}

std::string publish_manifest(FileOps& ops, const std::string& root, proto::Manifest m) {
  const std::string name = step_name(m.step());
  const std::string dir = (fs::path(root) / name).string();
  m.set_version(kManifestVersion);
  const std::string tmp = (fs::path(dir) / ".MANIFEST.tmp").string();
  const std::string manifest = (fs::path(dir) / "MANIFEST").string();
  ops.write_file(tmp, frame_payload(kMagic, m.SerializeAsString()));
  ops.rename(tmp, manifest);
  try {
    ops.fsync_dir(dir);
    ops.fsync_dir(root);
  } catch (const Error&) {
    // The rename may not survive a crash: this is not a commit, so it must not be visible as one either.
    try {
      ops.remove_all(manifest);
    } catch (const Error& e) {
      std::fprintf(stderr, "stride: warning: cannot remove %s after a failed commit: %s\n", manifest.c_str(), e.what());
    }
    throw;
  }
  return dir;
}

void after_commit(FileOps& ops, const std::string& root, uint64_t step, int64_t keep) {
  // LATEST is a convenience for people; readers scan for the newest valid MANIFEST instead.
  ops.write_file((fs::path(root) / ".LATEST.tmp").string(), step_name(step) + "\n");
  ops.rename((fs::path(root) / ".LATEST.tmp").string(), (fs::path(root) / "LATEST").string());
  ops.fsync_dir(root);
  garbage_collect(ops, root, keep, step);
}

std::string commit_manifest(FileOps& ops, const std::string& root, proto::Manifest m, int64_t keep) {
  const uint64_t step = m.step();
  const std::string dir = publish_manifest(ops, root, std::move(m));
  // Committed from here on: a failure to update LATEST or collect garbage is reported, never a failed save.
  try {
    after_commit(ops, root, step, keep);
  } catch (const Error& e) {
    std::fprintf(stderr,
                 "stride: warning: checkpoint %s is committed, but updating LATEST or removing old ones failed: %s\n",
                 dir.c_str(), e.what());
  }
  return dir;
}

std::vector<CheckpointInfo> list_checkpoints(const std::string& root, bool deep) {
  std::vector<CheckpointInfo> out;
  std::error_code ec;
  if (!fs::is_directory(root, ec)) return out;
  for (const auto& e : fs::directory_iterator(root, ec)) {
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

namespace {

const CheckpointInfo* find_step(const std::vector<CheckpointInfo>& all, uint64_t step) {
  for (const auto& c : all) {
    if (c.step == step) return &c;
  }
  return nullptr;
}

bool has_lineage(const CheckpointInfo& c) { return c.valid && c.manifest.has_lineage(); }

// The parent of `c` as its MANIFEST names it, when that directory exists.
const CheckpointInfo* parent_of(const std::vector<CheckpointInfo>& all, const CheckpointInfo& c) {
  if (!has_lineage(c) || !c.manifest.lineage().has_parent()) return nullptr;
  const uint64_t p = c.manifest.lineage().parent_step();
  if (p >= c.step) return nullptr;  // parents are older: a cycle cannot form
  const CheckpointInfo* parent = find_step(all, p);
  // The directory may hold another branch's checkpoint at that step now: then the link is broken.
  if (!parent || !parent->valid || parent->manifest.lineage().id() != c.manifest.lineage().parent_id()) return nullptr;
  return parent;
}

// `c` and its ancestors, newest first, as far as the MANIFESTs link them.
std::vector<const CheckpointInfo*> ancestry(const std::vector<CheckpointInfo>& all, const CheckpointInfo& c) {
  std::vector<const CheckpointInfo*> chain{&c};
  for (auto* p = parent_of(all, c); p; p = parent_of(all, *p)) chain.push_back(p);
  return chain;
}

std::optional<uint64_t> read_latest(const std::string& root) {
  std::error_code ec;
  const auto path = fs::path(root) / "LATEST";
  if (!fs::exists(path, ec)) return std::nullopt;
  std::string name;
  try {
    name = read_file(path.string());
  } catch (const Error&) {
    return std::nullopt;
  }
  while (!name.empty() && (name.back() == '\n' || name.back() == ' ')) name.pop_back();
  if (name.rfind("step-", 0) != 0) return std::nullopt;
  char* end = nullptr;
  const uint64_t step = std::strtoull(name.c_str() + 5, &end, 10);
  if (end == name.c_str() + 5 || *end != '\0') return std::nullopt;
  return step;
}

}  // namespace

void garbage_collect(FileOps& ops, const std::string& root, int64_t keep, uint64_t head_step) {
  keep = std::max<int64_t>(1, keep);
  const auto all = list_checkpoints(root, /*deep=*/false);
  const CheckpointInfo* head = find_step(all, head_step);
  if (!head || !has_lineage(*head)) {
    // Step order (checkpoints without lineage): keep the newest `keep` valid ones.
    int64_t kept = 0;
    bool seen_valid = false;
    for (const auto& info : all) {
      if (info.valid && kept < keep) {
        ++kept;
        seen_valid = true;
        continue;
      }
      // Invalid and newer than every commit: possibly being written right now.
      if (!info.valid && !seen_valid) continue;
      ops.remove_all(info.path);
    }
    return;
  }
  const auto branch = ancestry(all, *head);
  for (const auto& info : all) {
    const auto at = std::find(branch.begin(), branch.end(), &info);
    if (at != branch.end()) {
      if (at - branch.begin() >= keep) ops.remove_all(info.path);
      continue;
    }
    // Newer than the commit: possibly being written right now, or an abandoned branch's checkpoint that the
    // new branch has not reached yet.
    if (info.step > head_step) continue;
    ops.remove_all(info.path);
  }
}

std::optional<CheckpointInfo> lineage_head(const std::string& root, std::vector<CheckpointInfo>* skipped) {
  const auto all = list_checkpoints(root, /*deep=*/false);
  auto deep_valid = [&](const CheckpointInfo& c) {
    CheckpointInfo v = c;
    try {
      v.manifest = verify_checkpoint(c.path, /*deep=*/true);
      v.valid = true;
      v.problem.clear();
    } catch (const Error& e) {
      v.valid = false;
      v.problem = e.what();
    }
    if (!v.valid && skipped) skipped->push_back(v);
    return v;
  };
  auto newest_valid_below = [&](uint64_t bound) -> std::optional<CheckpointInfo> {
    for (const auto& c : all) {
      if (c.step >= bound) continue;
      auto v = deep_valid(c);
      if (v.valid) return v;
    }
    return std::nullopt;
  };
  const auto latest = read_latest(root);
  const CheckpointInfo* head = latest ? find_step(all, *latest) : nullptr;
  // No LATEST, or checkpoints from before lineages were recorded: the newest checkpoint that verifies.
  if (!head || (head->valid && !has_lineage(*head))) return newest_valid_below(UINT64_MAX);
  if (!head->valid) {  // LATEST's MANIFEST is damaged, so is its parent link
    deep_valid(*head);
    return newest_valid_below(head->step);
  }
  // LATEST, or a newer commit descending from it.
  for (const auto& c : all) {
    if (c.step < head->step) break;
    const auto chain = ancestry(all, c);
    if (std::find(chain.begin(), chain.end(), head) == chain.end()) continue;
    auto v = deep_valid(c);
    if (v.valid) return v;
  }
  // Then LATEST's ancestors; past a broken link, the newest checkpoint older than it.
  const CheckpointInfo* cur = head;
  while (cur) {
    const CheckpointInfo* next = parent_of(all, *cur);
    if (!next) {
      if (cur->manifest.lineage().has_parent()) return newest_valid_below(cur->step);  // a missing link
      return std::nullopt;  // the first checkpoint of the branch's run
    }
    auto v = deep_valid(*next);
    if (v.valid) return v;
    cur = next;
  }
  return std::nullopt;
}

proto::Manifest verify_checkpoint(const std::string& dir, bool deep) {
  const std::string manifest_path = (fs::path(dir) / "MANIFEST").string();
  if (!fs::exists(manifest_path)) throw Error(concat(dir, ": no MANIFEST (an interrupted checkpoint)"));
  auto m = read_manifest(manifest_path);
  for (const auto& f : m.files()) {
    if (const auto problem = checkpoint_file_name_problem(f.name()); !problem.empty()) {
      throw Error(concat(manifest_path, ": lists '", f.name(), "': ", problem));
    }
    const std::string path = (fs::path(dir) / f.name()).string();
    std::error_code ec;
    const auto size = fs::file_size(path, ec);
    if (ec) throw Error(concat(path, ": listed in MANIFEST but missing"));
    if (size != f.size()) throw Error(concat(path, ": ", size, " bytes, MANIFEST says ", f.size()));
    if (!deep) continue;
    const std::string bytes = read_file(path);
    if (crc32c(bytes.data(), bytes.size()) != f.crc32c()) throw Error(concat(path, ": checksum mismatch"));
  }
  return m;
}

}  // namespace stride::storage
