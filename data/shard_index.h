// Reading, writing and building the dataset index (`index.pb`, schema in proto/dataset_index.proto).
//
// File layout: "STRIDX1\n", CRC32C of the payload (4 bytes, little endian), payload length (8 bytes, little
// endian), serialized DatasetIndex. The checksum makes a damaged index a clear error rather than a silently
// wrong one. Writes are atomic (temp file, fsync, rename, fsync the directory). Thread-safe.
#pragma once

#include <cstdint>
#include <string>

#include "data/codec.h"
#include "proto/dataset_index.pb.h"

namespace stride::data {

constexpr uint32_t kIndexVersion = 1;
constexpr const char* kIndexFile = "index.pb";

// Reads DIR/index.pb. Throws stride::Error naming the file when it is missing, truncated, damaged or of a
// newer version.
proto::DatasetIndex read_index(const std::string& dir);
void write_index(const std::string& dir, const proto::DatasetIndex& index);

// What the images of a dataset look like, from their headers only (npy, PNG and JPEG headers; no decoding).
// Feed it every sample's image member, then record() writes into the index: image_shape [H, W, C] when every
// image has the same shape, channels when every image has the same channel count as decoded (gray stays 1).
class ImageShapeTally {
 public:
  // Peeks at one encoded image. Returns false (and counts it) when the header cannot be read.
  bool add(Codec codec, const uint8_t* data, size_t n);
  void add(const ImageInfo& info);
  void record(proto::DatasetIndex* index) const;
  uint64_t unreadable() const { return unreadable_; }

 private:
  uint64_t count_ = 0, unreadable_ = 0;
  bool same_shape_ = true, same_channels_ = true;
  ImageInfo first_;
};

// Builds an index for a directory of existing WebDataset tars (every *.tar, in name order): groups consecutive
// members by key, checksums each member, parses .cls labels and reads each image's header (shape and
// channels). Reads every byte once.
proto::DatasetIndex index_webdataset_dir(const std::string& dir, const std::string& name);

// The channels every image of the index decodes to (1 or 3), or 0 when they differ or the index predates the
// field and records no fixed shape.
int index_channels(const proto::DatasetIndex& index);

// Checks that every shard the index names exists with the recorded size. Throws naming the first bad file.
void verify_shard_files(const std::string& dir, const proto::DatasetIndex& index);

}  // namespace stride::data
