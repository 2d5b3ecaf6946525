#include "cluster/wire.h"

#include "cluster/auth.h"

namespace stride::cluster {

namespace {
std::string be64(uint64_t v) {
  std::string s(8, '\0');
  for (int i = 7; i >= 0; --i, v >>= 8) s[static_cast<size_t>(i)] = static_cast<char>(v & 0xff);
  return s;
}
}  // namespace

FrameAuth::FrameAuth(const std::string& session_key, const std::string& server_nonce, const std::string& client_nonce,
                     Side side)
    : key_(auth::hmac_sha256(
          session_key, "frames" + be64(server_nonce.size()) + server_nonce + be64(client_nonce.size()) + client_nonce)),
      side_(side) {}

std::string FrameAuth::tag(bool from_rank, uint64_t seq, const char* data, size_t n) const {
  std::string m = from_rank ? "rank>coordinator" : "coordinator>rank";
  m += be64(seq);
  m.append(data, n);
  return auth::hmac_sha256(key_, m);
}

std::string FrameAuth::seal(const std::string& payload) {
  return payload + tag(side_ == Side::kRank, ++sent_, payload.data(), payload.size());
}

std::string FrameAuth::open(const char* body, size_t n) {
  if (n < kTagBytes) throw WireError(concat("sealed frame of ", n, " bytes is shorter than its MAC"));
  const size_t len = n - kTagBytes;
  const std::string want = tag(side_ != Side::kRank, received_ + 1, body, len);
  if (!auth::digest_equal(want, std::string(body + len, kTagBytes))) {
    throw WireError(concat("frame ", received_ + 1, " failed its MAC (altered, replayed, out of order or from ",
                           "another connection)"));
  }
  ++received_;
  return std::string(body, len);
}

std::string encode_frame(proto::Envelope e, FrameAuth* auth) {
  e.set_version(kProtocolVersion);
  std::string payload = e.SerializeAsString();
  if (auth) payload = auth->seal(payload);
  if (payload.size() > kMaxFrameBytes) {
    throw WireError(concat("message of ", payload.size(), " bytes exceeds the frame limit ", kMaxFrameBytes));
  }
  const auto n = static_cast<uint32_t>(payload.size());
  std::string frame(4, '\0');
  frame[0] = static_cast<char>((n >> 24) & 0xff);
  frame[1] = static_cast<char>((n >> 16) & 0xff);
  frame[2] = static_cast<char>((n >> 8) & 0xff);
  frame[3] = static_cast<char>(n & 0xff);
  return frame + payload;
}

uint32_t frame_length(const unsigned char h[4], size_t max) {
  const uint32_t n = (uint32_t{h[0]} << 24) | (uint32_t{h[1]} << 16) | (uint32_t{h[2]} << 8) | uint32_t{h[3]};
  if (n > max) throw WireError(concat("frame of ", n, " bytes exceeds the limit of ", max));
  return n;
}

proto::Envelope parse_envelope(const char* data, size_t n) {
  proto::Envelope e;
  if (!e.ParseFromArray(data, static_cast<int>(n))) throw WireError(concat("malformed frame (", n, " bytes)"));
  if (e.version() != kProtocolVersion) {
    throw ProtocolVersionError(concat("protocol version ", e.version(), ", this build speaks ", kProtocolVersion,
                                      ": rank and coordinator come from different Stride builds"));
  }
  if (e.body_case() == proto::Envelope::BODY_NOT_SET) throw WireError("frame without a message");
  return e;
}

std::optional<proto::Envelope> FrameDecoder::next() {
  if (buf_.size() - pos_ < 4) return std::nullopt;
  const uint32_t n = frame_length(reinterpret_cast<const unsigned char*>(buf_.data() + pos_), max_);
  if (buf_.size() - pos_ - 4 < n) return std::nullopt;
  proto::Envelope e;
  if (auth_) {
    const std::string payload = auth_->open(buf_.data() + pos_ + 4, n);
    pos_ += 4 + n;  // a frame that failed its MAC was not consumed: the connection closes anyway
    e = parse_envelope(payload.data(), payload.size());
  } else {
    e = parse_envelope(buf_.data() + pos_ + 4, n);
    pos_ += 4 + n;
  }
  if (pos_ > 65536 && pos_ * 2 > buf_.size()) {  // compact now and then
    buf_.erase(0, pos_);
    pos_ = 0;
  }
  return e;
}

bool token_equal(const std::string& a, const std::string& b) {
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

std::string random_token() {
  const std::string bytes = auth::random_bytes(16);
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (const char c : bytes) {
    const auto b = static_cast<unsigned char>(c);
    out += hex[b >> 4];
    out += hex[b & 15];
  }
  return out;
}

}  // namespace stride::cluster
