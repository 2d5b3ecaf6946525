#include "data/shard_index.h"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include "common/error.h"
#include "data/tar.h"
#include "storage/crc32c.h"
#include "storage/file_io.h"
#include "storage/framing.h"

namespace stride::data {
namespace fs = std::filesystem;
namespace {

constexpr char kMagic[8] = {'S', 'T', 'R', 'I', 'D', 'X', '1', '\n'};

}  // namespace

void write_index(const std::string& dir, const proto::DatasetIndex& index) {
  std::string payload;
  if (!index.SerializeToString(&payload)) throw Error("cannot serialize the dataset index");
  storage::write_file_atomic((fs::path(dir) / kIndexFile).string(), storage::frame_payload(kMagic, payload));
}

proto::DatasetIndex read_index(const std::string& dir) {
  const std::string path = (fs::path(dir) / kIndexFile).string();
  if (!fs::exists(dir)) throw Error(concat("dataset directory ", dir, " does not exist"));
  if (!fs::exists(path)) {
    throw Error(concat(path, " does not exist: make it with `stride shard` (or `stride shard --index-only ", dir,
                       "` for existing WebDataset tars)"));
  }
  const std::string payload = storage::unframe_payload(kMagic, storage::read_file(path), path, "Stride dataset index");
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

bool ImageShapeTally::add(Codec codec, const uint8_t* data, size_t n) {
  try {
    add(peek_image(codec, data, n));
    return true;
  } catch (const Error&) {
    ++unreadable_;  // the loader meets it as a corrupt sample
    return false;
  }
}

void ImageShapeTally::add(const ImageInfo& info) {
  if (count_++ == 0) {
    first_ = info;
    return;
  }
  same_shape_ =
      same_shape_ && info.height == first_.height && info.width == first_.width && info.channels == first_.channels;
  same_channels_ = same_channels_ && info.channels == first_.channels;
}

void ImageShapeTally::record(proto::DatasetIndex* index) const {
  index->clear_image_shape();
  index->set_channels(0);
  if (count_ == 0) return;
  if (same_channels_) index->set_channels(first_.channels);
  if (same_shape_) {
    for (int64_t d : {first_.height, first_.width, first_.channels}) index->add_image_shape(d);
  }
}

int index_channels(const proto::DatasetIndex& index) {
  if (index.channels() > 0) return index.channels();
  return index.image_shape_size() == 3 ? static_cast<int>(index.image_shape(2)) : 0;
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
  ImageShapeTally shapes;
  for (const auto& file : tars) {
    const std::string path = (fs::path(dir) / file).string();
    const std::string bytes = storage::read_file(path);
    auto* shard = index.add_shards();
    shard->set_file(file);
    shard->set_size(bytes.size());
    proto::SampleEntry* sample = nullptr;
    bool has_image = false;
    for (const auto& m : scan_tar(path)) {
      std::string key, ext;
      split_key(m.name, &key, &ext);
      if (!sample || sample->key() != key) {
        sample = shard->add_samples();
        sample->set_key(key);
        sample->set_label(-1);
        has_image = false;
      }
      const Codec codec = codec_for(ext);
      if (codec != Codec::kUnknown && !has_image) {  // the member the loader decodes: the sample's first image
        has_image = true;
        shapes.add(codec, reinterpret_cast<const uint8_t*>(bytes.data()) + m.data_offset, m.size);
      }
      auto* member = sample->add_members();
      member->set_ext(ext);
      member->set_offset(m.data_offset);
      member->set_size(m.size);
      member->set_crc32c(storage::crc32c(bytes.data() + m.data_offset, m.size));
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
  shapes.record(&index);
  return index;
}

}  // namespace stride::data
