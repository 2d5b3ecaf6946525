#include "data/shard_writer.h"

#include <cstdio>
#include <filesystem>

#include "common/error.h"
#include "data/shard_index.h"
#include "storage/crc32c.h"

namespace stride::data {
namespace fs = std::filesystem;

ShardWriter::ShardWriter(std::string dir, std::string name, uint64_t samples_per_shard, Progress progress)
    : dir_(std::move(dir)), samples_per_shard_(samples_per_shard), progress_(std::move(progress)) {
  if (samples_per_shard_ == 0) throw UsageError("samples-per-shard must be positive");
  std::error_code ec;
  fs::create_directories(dir_, ec);
  if (ec) throw Error(concat("cannot create ", dir_, ": ", ec.message()));
  index_.set_version(kIndexVersion);
  index_.set_name(name);
}

ShardWriter::~ShardWriter() {
  if (tar_) {  // abandoned mid-way (exception): leave no temporary behind
    tar_.reset();
    std::error_code ec;
    fs::remove(tmp_path_, ec);
  }
}

void ShardWriter::add(const std::string& key, const std::vector<std::pair<std::string, std::string>>& members,
                      int64_t label) {
  if (!tar_) {
    char name[32];
    std::snprintf(name, sizeof(name), "shard-%06d.tar", index_.shards_size());
    final_path_ = (fs::path(dir_) / name).string();
    tmp_path_ = (fs::path(dir_) / (std::string(".") + name + ".tmp")).string();
    tar_ = std::make_unique<TarWriter>(tmp_path_);
    shard_ = index_.add_shards();
    shard_->set_file(name);
  }
  auto* sample = shard_->add_samples();
  sample->set_key(key);
  sample->set_label(label);
  bool has_image = false;
  for (const auto& [ext, bytes] : members) {
    const Codec codec = codec_for(ext);
    if (codec != Codec::kUnknown && !has_image) {
      has_image = true;
      shapes_.add(codec, reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
    }
    const uint64_t at = tar_->add(key + "." + ext, bytes.data(), bytes.size());
    auto* m = sample->add_members();
    m->set_ext(ext);
    m->set_offset(at);
    m->set_size(bytes.size());
    m->set_crc32c(storage::crc32c(bytes.data(), bytes.size()));
  }
  index_.set_num_samples(index_.num_samples() + 1);
  if (static_cast<uint64_t>(shard_->samples_size()) >= samples_per_shard_) close_shard();
}

void ShardWriter::close_shard() {
  if (!tar_) return;
  shard_->set_size(tar_->finish());
  tar_.reset();
  if (std::rename(tmp_path_.c_str(), final_path_.c_str()) != 0) {
    throw Error(concat("rename ", tmp_path_, " -> ", final_path_, " failed"));
  }
  if (progress_) {
    progress_(concat(index_.name(), ": ", final_path_, " (", shard_->samples_size(), " samples, ", index_.num_samples(),
                     " so far)"));
  }
}

proto::DatasetIndex ShardWriter::finish(int32_t num_classes, const std::vector<std::string>& class_names) {
  close_shard();
  index_.set_num_classes(num_classes);
  for (const auto& c : class_names) index_.add_class_names(c);
  shapes_.record(&index_);
  write_index(dir_, index_);  // last: its presence marks the directory complete
  return index_;
}

}  // namespace stride::data
