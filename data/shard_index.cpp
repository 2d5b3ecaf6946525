#include "data/shard_index.h"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include "common/error.h"
#include "common/file_io.h"
#include "data/crc32c.h"
#include "data/framing.h"
#include "data/tar.h"

namespace stride::data {
namespace fs = std::filesystem;
namespace {

constexpr char kMagic[8] = {'S', 'T', 'R', 'I', 'D', 'X', '1', '\n'};

}  // namespace

void write_index(const std::string& dir, const proto::DatasetIndex& index) {
  std::string payload;
  if (!index.SerializeToString(&payload)) throw Error("cannot serialize the dataset index");
  write_file_atomic((fs::path(dir) / kIndexFile).string(), frame_payload(kMagic, payload));
}

proto::DatasetIndex read_index(const std::string& dir) {
  const std::string path = (fs::path(dir) / kIndexFile).string();
  if (!fs::exists(dir)) throw Error(concat("dataset directory ", dir, " does not exist"));
  if (!fs::exists(path)) {
    throw Error(concat(path, " does not exist: make it with `stride shard` (or `stride shard --index-only ", dir,
                       "` for existing WebDataset tars)"));
  }
  const std::string payload = unframe_payload(kMagic, read_file(path), path, "Stride dataset index");
  proto::DatasetIndex index;
  if (!index.ParseFromString(payload)) throw Error(concat(path, ": cannot parse"));
  if (index.version() > kIndexVersion) {
    throw Error(concat(path, ": index version ", index.version(), " is newer than this build understands (",
                       kIndexVersion, ")"));
  }
  return index;
}

void verify_shard_files(const std::string& dir, const proto::DatasetIndex& index) {
  for (const auto& shard : index.shards()) {
    const std::string path = (fs::path(dir) / shard.file()).string();
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) {
      throw Error(concat("shard ", path, " listed in ", dir, "/", kIndexFile, " is missing: ", std::strerror(errno)));
    }
    if (static_cast<uint64_t>(st.st_size) != shard.size()) {
      throw Error(concat("shard ", path, " is ", st.st_size, " bytes but the index records ", shard.size(),
                         (static_cast<uint64_t>(st.st_size) < shard.size() ? " (truncated)" : " (modified)")));
    }
  }
}

proto::DatasetIndex index_webdataset_dir(const std::string& dir, const std::string& name) {
  if (!fs::is_directory(dir)) throw Error(concat("dataset directory ", dir, " does not exist"));
  std::vector<std::string> tars;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (e.is_regular_file() && e.path().extension() == ".tar") tars.push_back(e.path().filename().string());
  }
  std::sort(tars.begin(), tars.end());
  if (tars.empty()) throw Error(concat("no .tar files in ", dir));
  proto::DatasetIndex index;
  index.set_version(kIndexVersion);
  index.set_name(name);
  int64_t max_label = -1;
  for (const auto& file : tars) {
    const std::string path = (fs::path(dir) / file).string();
    const std::string bytes = read_file(path);
    auto* shard = index.add_shards();
    shard->set_file(file);
    shard->set_size(bytes.size());
    proto::SampleEntry* sample = nullptr;
    for (const auto& m : scan_tar(path)) {
      std::string key, ext;
      split_key(m.name, &key, &ext);
      if (!sample || sample->key() != key) {
        sample = shard->add_samples();
        sample->set_key(key);
        sample->set_label(-1);
      }
      auto* member = sample->add_members();
      member->set_ext(ext);
      member->set_offset(m.data_offset);
      member->set_size(m.size);
      member->set_crc32c(crc32c(bytes.data() + m.data_offset, m.size));
      if (ext == "cls") {
        const std::string text = bytes.substr(m.data_offset, m.size);
        char* end = nullptr;
        const long long label = std::strtoll(text.c_str(), &end, 10);
        if (end == text.c_str() || label < 0) {
          throw Error(concat(path, ": sample '", key, "' has a .cls that is not a class number: '", text, "'"));
        }
        sample->set_label(label);
        max_label = std::max<int64_t>(max_label, label);
      }
    }
    index.set_num_samples(index.num_samples() + shard->samples_size());
  }
  index.set_num_classes(static_cast<int32_t>(max_label + 1));
  return index;
}

}  // namespace stride::data
