// safetensors (https://github.com/huggingface/safetensors) reading and writing: an 8-byte little-endian header
// length, a JSON header {name: {dtype, shape, data_offsets}, "__metadata__": {str: str}}, then raw
// little-endian tensor bytes. Python reads these files with `safetensors.torch.load_file` or a dozen lines of
// numpy. Functions are thread-safe for distinct files.
#pragma once

#include <torch/torch.h>

#include <map>
#include <string>

namespace stride::trainer {

using NamedTensors = std::map<std::string, torch::Tensor>;
using Metadata = std::map<std::string, std::string>;

struct SafetensorsFile {
  NamedTensors tensors;  // CPU, contiguous, owning their memory
  Metadata metadata;
};

// Serialises tensors (moved to CPU, made contiguous) into safetensors bytes.
std::string encode_safetensors(const NamedTensors& tensors, const Metadata& metadata = {});
// Parses safetensors bytes. `source` names the origin (a path) in error messages. Rejects truncated data,
// overlapping or out-of-bounds offsets, unknown dtypes and shape/size mismatches.
SafetensorsFile decode_safetensors(const std::string& bytes, const std::string& source);

// Whole-file helpers. write_safetensors writes to `path` directly and fsyncs it; callers that need atomic
// replacement write to a temporary name and rename.
void write_safetensors(const std::string& path, const NamedTensors& tensors, const Metadata& metadata = {});
SafetensorsFile read_safetensors(const std::string& path);

}  // namespace stride::trainer
