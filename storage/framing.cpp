#include "storage/framing.h"

#include <cstdint>
#include <cstring>

#include "common/error.h"
#include "storage/crc32c.h"

namespace stride::storage {
namespace {

constexpr size_t kHeader = 20;

void put_le(std::string* out, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
uint64_t get_le(const std::string& s, size_t at, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v |= static_cast<uint64_t>(static_cast<unsigned char>(s[at + i])) << (8 * i);
  return v;
}

}  // namespace

std::string frame_payload(const char (&magic)[8], const std::string& payload) {
  std::string out(magic, 8);
  put_le(&out, crc32c(payload.data(), payload.size()), 4);
  put_le(&out, payload.size(), 8);
  return out + payload;
}

std::string unframe_payload(const char (&magic)[8], const std::string& bytes, const std::string& path,
                            const std::string& what) {
  if (bytes.size() < kHeader || std::memcmp(bytes.data(), magic, 8) != 0) throw Error(concat(path, ": not a ", what));
  const uint32_t crc = static_cast<uint32_t>(get_le(bytes, 8, 4));
  const uint64_t n = get_le(bytes, 12, 8);
  if (n != bytes.size() - kHeader) {
    throw Error(concat(path, ": truncated (", bytes.size() - kHeader, " of ", n, " bytes)"));
  }
  std::string payload = bytes.substr(kHeader);
  if (crc32c(payload.data(), payload.size()) != crc)
    throw Error(concat(path, ": checksum mismatch (damaged ", what, ")"));
  return payload;
}

}  // namespace stride::storage
