// Writes a dataset directory: WebDataset tar shards (shard-000000.tar, ...) and, last, index.pb. Each shard
// is written to a hidden temporary name, fsynced and renamed, so a crash leaves no half shard under a real
// name, and a directory without index.pb is visibly incomplete. Single-threaded.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "data/shard_index.h"
#include "data/tar.h"
#include "proto/dataset_index.pb.h"

namespace stride::data {

class ShardWriter {
 public:
  using Progress = std::function<void(const std::string& line)>;
  // Creates `dir` if needed. `name` is recorded in the index ("fashion-mnist/train").
  ShardWriter(std::string dir, std::string name, uint64_t samples_per_shard, Progress progress = {});
  ~ShardWriter();

  // Appends one sample: members as (extension, bytes), e.g. {{"npy", ...}, {"cls", "3"}}. Keys must be unique
  // and free of dots in the file-name part.
  void add(const std::string& key, const std::vector<std::pair<std::string, std::string>>& members, int64_t label);
  // Closes the last shard and writes index.pb, with the images' shape and channels as their headers give them
  // (data/shard_index.h, ImageShapeTally). Returns the index.
  proto::DatasetIndex finish(int32_t num_classes, const std::vector<std::string>& class_names);

 private:
  void close_shard();

  std::string dir_;
  uint64_t samples_per_shard_;
  Progress progress_;
  proto::DatasetIndex index_;
  std::unique_ptr<TarWriter> tar_;
  std::string tmp_path_, final_path_;
  proto::ShardEntry* shard_ = nullptr;
  ImageShapeTally shapes_;
};

}  // namespace stride::data
