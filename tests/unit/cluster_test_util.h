// Helpers for the coordinator's tests on loopback: Hellos signed as a rank signs them, a rank's handshake done by
// hand on a raw socket, and a coordinator with test options. Test code only.
#pragma once

#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <memory>
#include <optional>
#include <string>

#include "cluster/auth.h"
#include "cluster/coordinator.h"
#include "cluster/wire.h"

namespace stride::cluster::testutil {

// The Challenge nonce the core tests answer (the real server makes a fresh one per connection).
inline const std::string kNonce(auth::kNonceBytes, 'n');

// A Hello of `rank` signed with `token` for the Challenge `nonce` (Note [Challenge-response] in cluster/auth.h),
// with a session proof when `session_key` is given.
inline proto::Envelope hello(const std::string& token, uint32_t rank, uint32_t world, const std::string& nonce = kNonce,
                             const std::string& session_key = "", uint32_t attempt = 0) {
  proto::Envelope e;
  auto* h = e.mutable_hello();
  h->set_rank(rank);
  h->set_world_size(world);
  h->set_host("testhost");
  h->set_pid(1000 + rank);
  h->set_attempt(attempt);
  auth::sign_hello(h, token, nonce, session_key);
  return e;
}

inline CoreOptions core_options(const std::string& root, uint32_t world) {
  CoreOptions o;
  o.job = "test";
  o.token = "secret";
  o.world_size = world;
  o.heartbeat_timeout_s = 5.0;
  o.reconnect_grace_s = 2.0;
  o.checkpoint_root = root;
  o.keep = 2;
  return o;
}

inline int raw_connect(uint16_t port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
    ::close(fd);
    return -1;
  }
  timeval tv{5, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  return fd;
}

// Everything the server sends until it closes the connection (or 5 s pass).
inline std::string read_until_closed(int fd) {
  std::string all;
  char buf[4096];
  for (;;) {
    const ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
    if (n <= 0) break;
    all.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  return all;
}

// The first frame in `bytes` that is not the coordinator's opening Challenge.
inline std::optional<proto::Envelope> answer(const std::string& bytes) {
  FrameDecoder dec;
  dec.feed(bytes.data(), bytes.size());
  while (auto e = dec.next()) {
    if (e->body_case() != proto::Envelope::kChallenge) return e;
  }
  return std::nullopt;
}

// One whole frame from `fd` (blocking; the socket's 5 s receive timeout), or nullopt when it closed.
inline std::optional<proto::Envelope> read_one_frame(int fd) {
  unsigned char header[4];
  if (::recv(fd, header, 4, MSG_WAITALL) != 4) return std::nullopt;
  std::string body(frame_length(header), '\0');
  if (!body.empty() && ::recv(fd, body.data(), body.size(), MSG_WAITALL) != static_cast<ssize_t>(body.size())) {
    return std::nullopt;
  }
  return parse_envelope(body.data(), body.size());
}

// What a rank does by hand: connect, read the Challenge, send `h` signed with `token` (with a session proof when
// `session_key` is given), and return the answer (Welcome or Reject). The connection stays open in `*keep` if
// asked, else it is closed.
inline proto::Envelope handshake(uint16_t port, proto::Envelope h, const std::string& token,
                                 const std::string& session_key = "", int* keep = nullptr) {
  const int fd = raw_connect(port);
  EXPECT_GE(fd, 0);
  auto challenge = read_one_frame(fd);
  EXPECT_TRUE(challenge && challenge->body_case() == proto::Envelope::kChallenge);
  EXPECT_EQ(challenge->challenge().nonce().size(), auth::kNonceBytes);
  auth::sign_hello(h.mutable_hello(), token, challenge->challenge().nonce(), session_key);
  const std::string frame = encode_frame(h);
  EXPECT_EQ(::send(fd, frame.data(), frame.size(), MSG_NOSIGNAL), static_cast<ssize_t>(frame.size()));
  auto reply = read_one_frame(fd);
  EXPECT_TRUE(reply.has_value());
  if (keep) {
    *keep = fd;
  } else {
    ::close(fd);
  }
  return reply.value_or(proto::Envelope());
}

inline std::unique_ptr<Coordinator> start(const std::string& root, uint32_t world, double hello_timeout = 10.0) {
  CoordinatorOptions o;
  o.core = core_options(root, world);
  o.core.heartbeat_interval_s = 0.05;
  o.status_port = 0;
  o.hello_timeout_s = hello_timeout;
  return std::make_unique<Coordinator>(o);
}

}  // namespace stride::cluster::testutil
