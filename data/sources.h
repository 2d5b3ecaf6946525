// Converters from the formats datasets ship in to Stride shards. Single-threaded; each writes one dataset
// directory per split (DIR/train, DIR/test, ...).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "data/shard_writer.h"

namespace stride::data {

struct ShardJob {
  std::string input;
  std::string output;
  uint64_t samples_per_shard = 10000;
  ShardWriter::Progress progress;
};

// Fashion-MNIST / MNIST IDX files (gzip or plain): train-images-idx3-ubyte[.gz] + labels, t10k-*.
// Writes OUTPUT/train and OUTPUT/test, images as 28x28 .npy. Returns the split directories written.
std::vector<std::string> shard_fashion_mnist(const ShardJob& job);
// CIFAR-10 binary batches (data_batch_1..5.bin, test_batch.bin; INPUT or INPUT/cifar-10-batches-bin).
// Writes OUTPUT/train and OUTPUT/test, images as 32x32x3 .npy.
std::vector<std::string> shard_cifar10(const ShardJob& job);
// A torchvision ImageFolder tree (INPUT/<class>/<image>.jpg|png). When INPUT has split folders (train, val,
// test) each becomes OUTPUT/<split>; otherwise INPUT is one split written to OUTPUT/train. Bytes are stored as
// they are (no re-encoding); classes are numbered in sorted name order as ImageFolder does.
std::vector<std::string> shard_image_folder(const ShardJob& job);

}  // namespace stride::data
