// The coordinator's wire format: a 4-byte big-endian length, then one serialized proto::Envelope
// (proto/cluster.proto). Frames above the size limit, unparsable payloads and other protocol versions are
// errors (WireError) that close the connection; they never crash the server. Pure functions and a decoder
// object; a FrameDecoder is not thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

#include "common/error.h"
#include "proto/cluster.pb.h"

namespace stride::cluster {

// 2: challenge-response authentication (cluster/auth.h); version 1 sent the job token in clear text.
constexpr uint32_t kProtocolVersion = 2;
// No legitimate message comes near this: the largest is a checkpoint report listing a few files.
constexpr size_t kMaxFrameBytes = 1 << 20;
// Until a connection has said Hello (a few hundred bytes) it is nobody: its first frame may not be larger than
// this, so an unauthenticated peer cannot make the coordinator allocate kMaxFrameBytes.
constexpr size_t kMaxHelloFrameBytes = 4 << 10;

class WireError : public Error {
 public:
  using Error::Error;
};
// The peer speaks another protocol version: it runs a different Stride build. Retrying cannot help.
class ProtocolVersionError : public WireError {
 public:
  using WireError::WireError;
};

// The frame of `e`, with the protocol version filled in.
std::string encode_frame(proto::Envelope e);

// Splits a byte stream into envelopes; bytes may arrive in any pieces.
class FrameDecoder {
 public:
  explicit FrameDecoder(size_t max_frame_bytes = kMaxFrameBytes) : max_(max_frame_bytes) {}
  void feed(const char* data, size_t n) { buf_.append(data, n); }
  // The next complete envelope, or nullopt when more bytes are needed. Throws WireError for an oversized
  // frame (as soon as its length is known), an unparsable payload, or another protocol version.
  std::optional<proto::Envelope> next();
  size_t buffered() const { return buf_.size() - pos_; }
  // The limit for frames from now on (a connection that authenticated may send larger ones).
  void set_max_frame_bytes(size_t max) { max_ = max; }

 private:
  size_t max_;
  std::string buf_;
  size_t pos_ = 0;
};

// Length of a frame from its 4-byte header; throws WireError above `max`.
uint32_t frame_length(const unsigned char header[4], size_t max = kMaxFrameBytes);
// Parses one payload (without the header); throws WireError (ProtocolVersionError for another version).
proto::Envelope parse_envelope(const char* data, size_t n);

// Constant-time comparison for tokens.
bool token_equal(const std::string& a, const std::string& b);
// A fresh random job token (32 hex digits from getrandom).
std::string random_token();

}  // namespace stride::cluster
