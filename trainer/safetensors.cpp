#include "trainer/safetensors.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <tuple>
#include <vector>

#include "common/error.h"
#include "storage/file_io.h"

namespace stride::trainer {
namespace {

// A header larger than this is not a weights file; refuse before allocating for it.
constexpr uint64_t kMaxHeaderBytes = 100u << 20;

struct DtypeName {
  torch::ScalarType type;
  const char* name;
};
constexpr DtypeName kDtypes[] = {
    {torch::kFloat32, "F32"}, {torch::kFloat64, "F64"}, {torch::kFloat16, "F16"}, {torch::kBFloat16, "BF16"},
    {torch::kInt64, "I64"},   {torch::kInt32, "I32"},   {torch::kInt16, "I16"},   {torch::kInt8, "I8"},
    {torch::kUInt8, "U8"},    {torch::kBool, "BOOL"},
};

const char* dtype_name(torch::ScalarType t, const std::string& tensor) {
  for (const auto& d : kDtypes) {
    if (d.type == t) return d.name;
  }
  throw Error(concat("safetensors: tensor '", tensor, "' has unsupported dtype ", t));
}

torch::ScalarType dtype_from(const std::string& name, const std::string& source, const std::string& tensor) {
  for (const auto& d : kDtypes) {
    if (name == d.name) return d.type;
  }
  throw Error(concat(source, ": tensor '", tensor, "' has unsupported dtype '", name, "'"));
}

std::string shape_string(const std::vector<int64_t>& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + "]";
}

}  // namespace

std::string encode_safetensors(const NamedTensors& tensors, const Metadata& metadata) {
  nlohmann::json header = nlohmann::json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::vector<torch::Tensor> data;
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    STRIDE_CHECK(name != "__metadata__", "a tensor may not be named __metadata__");
    auto cpu = t.detach().to(torch::kCPU).contiguous();
    const uint64_t bytes = cpu.numel() * cpu.element_size();
    header[name] = {{"dtype", dtype_name(cpu.scalar_type(), name)},
                    {"shape", cpu.sizes().vec()},
                    {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
    data.push_back(cpu);
  }
  std::string json = header.dump();
  json.append((8 - json.size() % 8) % 8, ' ');  // align the data section to 8 bytes, as the reference writer
  std::string out(8, '\0');
  const uint64_t n = json.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  out += json;
  out.reserve(out.size() + offset);
  for (const auto& t : data) out.append(static_cast<const char*>(t.data_ptr()), t.numel() * t.element_size());
  return out;
}

SafetensorsFile decode_safetensors(const std::string& bytes, const std::string& source) {
  if (bytes.size() < 8) throw Error(concat(source, ": not a safetensors file (", bytes.size(), " bytes)"));
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<uint64_t>(static_cast<unsigned char>(bytes[i])) << (8 * i);
  if (n > kMaxHeaderBytes || n > bytes.size() - 8) {
    throw Error(concat(source, ": safetensors header length ", n, " exceeds the file (", bytes.size(),
                       " bytes): truncated or not a safetensors file"));
  }
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(bytes.begin() + 8, bytes.begin() + 8 + n);
  } catch (const nlohmann::json::exception& e) {
    throw Error(concat(source, ": safetensors header is not valid JSON: ", e.what()));
  }
  if (!header.is_object()) throw Error(concat(source, ": safetensors header is not a JSON object"));
  const uint64_t data_size = bytes.size() - 8 - n;
  const char* data = bytes.data() + 8 + n;
  SafetensorsFile file;
  std::vector<std::tuple<uint64_t, uint64_t, std::string>> ranges;  // [begin, end) of each non-empty tensor
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      for (const auto& [k, v] : entry.items()) {
        if (!v.is_string()) throw Error(concat(source, ": metadata '", k, "' is not a string"));
        file.metadata[k] = v.get<std::string>();
      }
      continue;
    }
    try {
      const auto dtype = dtype_from(entry.at("dtype").get<std::string>(), source, name);
      const auto shape = entry.at("shape").get<std::vector<int64_t>>();
      const auto offsets = entry.at("data_offsets").get<std::vector<uint64_t>>();
      if (offsets.size() != 2 || offsets[0] > offsets[1] || offsets[1] > data_size) {
        throw Error(concat(source, ": tensor '", name, "' has data offsets outside the file (data section is ",
                           data_size, " bytes): truncated?"));
      }
      // Check the shape against the bytes the header claims before allocating anything: a crafted header can
      // name any shape, and numel * element size can overflow.
      const uint64_t element_size = c10::elementSize(dtype);
      uint64_t numel = 1;
      for (int64_t d : shape) {
        if (d < 0) throw Error(concat(source, ": tensor '", name, "' has a negative dimension"));
        if (d != 0 && numel > std::numeric_limits<uint64_t>::max() / static_cast<uint64_t>(d)) {
          throw Error(concat(source, ": tensor '", name, "' has shape ", shape_string(shape),
                             " whose element count overflows 64 bits"));
        }
        numel *= static_cast<uint64_t>(d);
      }
      if (numel > std::numeric_limits<uint64_t>::max() / element_size) {
        throw Error(concat(source, ": tensor '", name, "' has shape ", shape_string(shape), " whose size in bytes",
                           " overflows 64 bits"));
      }
      const uint64_t expect = numel * element_size;
      if (offsets[1] - offsets[0] != expect) {
        throw Error(concat(source, ": tensor '", name, "' holds ", offsets[1] - offsets[0], " bytes but shape ",
                           shape_string(shape), " of ", entry.at("dtype").get<std::string>(), " needs ", expect));
      }
      if (expect > 0) ranges.emplace_back(offsets[0], offsets[1], name);
      auto t = torch::empty(shape, torch::TensorOptions().dtype(dtype));
      if (expect > 0) std::memcpy(t.data_ptr(), data + offsets[0], expect);
      file.tensors[name] = t;
    } catch (const nlohmann::json::exception& e) {
      throw Error(concat(source, ": tensor '", name, "' has a malformed header entry: ", e.what()));
    }
  }
  // Two tensors sharing bytes are not what any writer produces: the file is corrupt or crafted.
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i) {
    const auto& [prev_begin, prev_end, prev_name] = ranges[i - 1];
    const auto& [begin, end, name] = ranges[i];
    if (begin < prev_end) {
      throw Error(concat(source, ": tensors '", prev_name, "' [", prev_begin, ", ", prev_end, ") and '", name, "' [",
                         begin, ", ", end,
                         ") overlap in the data section: corrupt or not written by a safetensors writer"));
    }
  }
  return file;
}

void write_safetensors(const std::string& path, const NamedTensors& tensors, const Metadata& metadata) {
  storage::write_file_fsync(path, encode_safetensors(tensors, metadata));
}

SafetensorsFile read_safetensors(const std::string& path) { return decode_safetensors(storage::read_file(path), path); }

}  // namespace stride::trainer
