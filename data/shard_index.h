// Reading, writing and building the dataset index (`index.pb`, schema in proto/dataset_index.proto).
//
// File layout: "STRIDX1\n", CRC32C of the payload (4 bytes, little endian), payload length (8 bytes, little
// endian), serialized DatasetIndex. The checksum makes a damaged index a clear error rather than a silently
// wrong one. Writes are atomic (temp file, fsync, rename, fsync the directory). Thread-safe.
#pragma once

#include <string>

#include "proto/dataset_index.pb.h"

namespace stride::data {

constexpr uint32_t kIndexVersion = 1;
constexpr const char* kIndexFile = "index.pb";

// Reads DIR/index.pb. Throws stride::Error naming the file when it is missing, truncated, damaged or of a
// newer version.
proto::DatasetIndex read_index(const std::string& dir);
void write_index(const std::string& dir, const proto::DatasetIndex& index);

// Builds an index for a directory of existing WebDataset tars (every *.tar, in name order): groups consecutive
// members by key, checksums each member, parses .cls labels. Reads every byte once.
proto::DatasetIndex index_webdataset_dir(const std::string& dir, const std::string& name);

// Checks that every shard the index names exists with the recorded size. Throws naming the first bad file.
void verify_shard_files(const std::string& dir, const proto::DatasetIndex& index);

}  // namespace stride::data
