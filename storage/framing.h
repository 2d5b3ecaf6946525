// The small-file framing Stride's own binary files share (dataset index, checkpoint MANIFEST): an 8-byte
// magic, the CRC32C of the payload (4 bytes, little endian), the payload length (8 bytes, little endian), then
// the payload. The checksum turns a damaged or truncated file into a clear error instead of a wrong parse.
// Thread-safe (pure functions).
#pragma once

#include <string>

namespace stride::storage {

std::string frame_payload(const char (&magic)[8], const std::string& payload);
// The payload of `bytes` read from `path`. Throws stride::Error "PATH: not a WHAT", "PATH: truncated (...)" or
// "PATH: checksum mismatch (damaged WHAT)".
std::string unframe_payload(const char (&magic)[8], const std::string& bytes, const std::string& path,
                            const std::string& what);

}  // namespace stride::storage
