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

// 3: every frame after the handshake carries a MAC (Note [Frame MACs]). 2: challenge-response authentication
// (cluster/auth.h); version 1 sent the job token in clear text.
constexpr uint32_t kProtocolVersion = 3;
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

// Note [Frame MACs]
// The handshake (Note [Challenge-response] in cluster/auth.h) proves who is at each end; the frames after it are
// authenticated too, so that whoever can rewrite the TCP stream cannot inject, alter, replay, reorder or reflect
// heartbeats, reports or commands. After the Welcome (both sides know the rank's session key K, this
// connection's nonces Ns and Nc), every frame's body is payload || tag, the length header counting both, with
//   F   = HMAC(K, "frames" || Ns || Nc)                         this connection's frame key
//   tag = HMAC(F, direction || seq || payload)                  32 bytes
// direction "rank>coordinator" or "coordinator>rank", seq the frame's number in that direction on this
// connection (1, 2, ...; 8 bytes big-endian). A frame whose tag does not verify closes the connection (the rank
// reconnects with a new handshake). The payloads are not encrypted: heartbeats carry no secret. Both sides keep
// their own counters, so a frame is sealed when it is written, not when it is queued.
class FrameAuth {
 public:
  enum class Side { kRank, kCoordinator };
  static constexpr size_t kTagBytes = 32;
  FrameAuth(const std::string& session_key, const std::string& server_nonce, const std::string& client_nonce,
            Side side);
  // The body of the next frame this side sends: payload || tag.
  std::string seal(const std::string& payload);
  // The payload of the next frame from the peer; throws WireError when its tag does not verify.
  std::string open(const char* body, size_t n);

 private:
  std::string tag(bool from_rank, uint64_t seq, const char* data, size_t n) const;
  std::string key_;
  Side side_;
  uint64_t sent_ = 0, received_ = 0;
};

// The frame of `e`, with the protocol version filled in; sealed by `auth` when given (Note [Frame MACs]).
std::string encode_frame(proto::Envelope e, FrameAuth* auth = nullptr);

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
  // Frames from now on are sealed (Note [Frame MACs]); `auth` outlives the decoder's use of it.
  void set_auth(FrameAuth* auth) { auth_ = auth; }

 private:
  size_t max_;
  FrameAuth* auth_ = nullptr;
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
