// The ranks' authentication with the coordinator on real loopback TCP (Note [Challenge-response] in
// cluster/auth.h): HMAC-SHA256 against RFC 4231, wrong proofs, replayed Hellos, the token never on the wire
// (read through a relay between a real client and the coordinator), live ranks that cannot be taken over, a
// client that refuses a coordinator of another protocol version, and checkpoint reports naming files outside
// their step directory.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <mutex>
#include <thread>

#include <nlohmann/json.hpp>

#include "cluster/auth.h"
#include "cluster/client.h"
#include "cluster/coordinator.h"
#include "cluster/wire.h"
#include "storage/checkpoint_files.h"
#include "storage/crc32c.h"
#include "storage/file_io.h"
#include "tests/unit/cluster_test_util.h"
#include "tests/unit/test_util.h"

namespace stride::cluster {
namespace {

using testing::ScratchDir;
using namespace testutil;  // NOLINT(build/namespaces): the shared loopback helpers
namespace fs = std::filesystem;

std::string hex(const std::string& bytes) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (const char c : bytes) {
    const auto b = static_cast<unsigned char>(c);
    out += digits[b >> 4];
    out += digits[b & 15];
  }
  return out;
}

std::string unhex(const std::string& h) {
  std::string out;
  for (size_t i = 0; i + 1 < h.size(); i += 2) out += static_cast<char>(std::stoi(h.substr(i, 2), nullptr, 16));
  return out;
}

// A listening socket on 127.0.0.1, any port.
int listen_loopback(uint16_t* port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(a);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 || ::listen(fd, 8) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    ::close(fd);
    return -1;
  }
  *port = ntohs(a.sin_port);
  return fd;
}

// A TCP relay between ranks and the coordinator: forwards every byte, records what each side sent, and can cut
// the connection (both ends see it drop), one connection at a time.
class Relay {
 public:
  explicit Relay(uint16_t target) : target_(target) {
    listen_fd_ = listen_loopback(&port_);
    EXPECT_GE(listen_fd_, 0);
    thread_ = std::thread([this] { run(); });
  }
  ~Relay() {
    stop_ = true;
    thread_.join();
    ::close(listen_fd_);
  }
  std::string address() const { return concat("127.0.0.1:", port_); }
  std::string from_rank() const {
    std::lock_guard<std::mutex> lock(mu_);
    return from_rank_;
  }
  std::string from_coordinator() const {
    std::lock_guard<std::mutex> lock(mu_);
    return from_coordinator_;
  }
  void cut() { cut_ = true; }

 private:
  void run() {
    int c = -1, s = -1;
    auto drop = [&] {
      if (c >= 0) ::close(c);
      if (s >= 0) ::close(s);
      c = s = -1;
    };
    while (!stop_) {
      if (cut_.exchange(false)) drop();
      pollfd p[3] = {{listen_fd_, POLLIN, 0}, {c, POLLIN, 0}, {s, POLLIN, 0}};
      if (::poll(p, 3, 20) <= 0) continue;
      if (p[0].revents & POLLIN) {
        drop();
        c = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
        s = raw_connect(target_);
        if (c < 0 || s < 0) drop();
        continue;
      }
      for (int i = 1; i <= 2; ++i) {
        if (!(p[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
        char buf[16384];
        const ssize_t n = ::recv(p[i].fd, buf, sizeof(buf), 0);
        if (n <= 0) {
          drop();
          break;
        }
        {
          std::lock_guard<std::mutex> lock(mu_);
          (i == 1 ? from_rank_ : from_coordinator_).append(buf, static_cast<size_t>(n));
        }
        if (::send(i == 1 ? s : c, buf, static_cast<size_t>(n), MSG_NOSIGNAL) != n) {
          drop();
          break;
        }
      }
    }
    drop();
  }

  uint16_t target_, port_ = 0;
  int listen_fd_ = -1;
  std::atomic<bool> stop_{false}, cut_{false};
  mutable std::mutex mu_;
  std::string from_rank_, from_coordinator_;
  std::thread thread_;
};

// Waits (up to 10 s) for an event of the coordinator containing `what`.
bool wait_for_event(Coordinator& coord, const std::string& what) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (std::chrono::steady_clock::now() < deadline) {
    bool seen = false;
    coord.with_core([&](CoordinatorCore& c) {
      for (const auto& e : c.events()) seen |= e.message.find(what) != std::string::npos;
    });
    if (seen) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return false;
}

ClientOptions client_options(const std::string& address, const std::string& token) {
  ClientOptions co;
  co.address = address;
  co.token = token;
  co.host = "relayhost";
  co.pid = 4242;
  return co;
}

// The frames of `bytes` (a recorded stream of one or more connections). Frames after a handshake end with a
// 32-byte MAC (Note [Frame MACs]), which is dropped unchecked here. A handshake frame (Hello, Challenge, Welcome)
// ends with a 32-byte proof or nonce, so without its last 32 bytes it does not parse: that tells them apart.
std::vector<proto::Envelope> frames_of(const std::string& bytes) {
  std::vector<proto::Envelope> out;
  size_t pos = 0;
  while (bytes.size() - pos >= 4) {
    const uint32_t n = frame_length(reinterpret_cast<const unsigned char*>(bytes.data() + pos));
    if (bytes.size() - pos - 4 < n) break;
    const char* body = bytes.data() + pos + 4;
    try {
      if (n < FrameAuth::kTagBytes) throw WireError("short");
      out.push_back(parse_envelope(body, n - FrameAuth::kTagBytes));
    } catch (const WireError&) {
      out.push_back(parse_envelope(body, n));
    }
    pos += 4 + n;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------------
TEST(Auth, HmacSha256MatchesRfc4231) {
  // RFC 4231 test cases 1, 2 and 6 (a key longer than the block size).
  EXPECT_EQ(hex(auth::hmac_sha256(std::string(20, '\x0b'), "Hi There")),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");
  EXPECT_EQ(hex(auth::hmac_sha256("Jefe", "what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
  EXPECT_EQ(hex(auth::hmac_sha256(std::string(131, '\xaa'), "Test Using Larger Than Block-Size Key - Hash Key First")),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
  EXPECT_EQ(unhex(hex("ab\x01")), "ab\x01");
  EXPECT_TRUE(auth::digest_equal("abc", "abc"));
  EXPECT_FALSE(auth::digest_equal("abc", "abd"));
  EXPECT_FALSE(auth::digest_equal("abc", "abcd"));
  EXPECT_FALSE(auth::digest_equal("", ""));  // a missing proof never matches
  EXPECT_EQ(auth::random_bytes(32).size(), 32u);
  EXPECT_NE(auth::random_bytes(32), auth::random_bytes(32));
}

TEST(Auth, AHelloSignedWithAnotherTokenIsRejected) {
  ScratchDir dir("auth-wrong");
  auto coord = start(dir.file("ckpt"), 1);
  auto e = handshake(coord->port(), hello("", 0, 1), coord->token() + "x");
  ASSERT_EQ(e.body_case(), proto::Envelope::kReject);
  EXPECT_NE(e.reject().reason().find("authentication failed"), std::string::npos) << e.reject().reason();
  // No proof at all: refused the same way.
  proto::Envelope bare = hello("", 0, 1);
  const int fd = raw_connect(coord->port());
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(read_one_frame(fd).has_value());  // the Challenge
  bare.mutable_hello()->clear_proof();
  const std::string frame = encode_frame(bare);
  ::send(fd, frame.data(), frame.size(), MSG_NOSIGNAL);
  auto r = read_one_frame(fd);
  ::close(fd);
  ASSERT_TRUE(r.has_value());
  ASSERT_EQ(r->body_case(), proto::Envelope::kReject);
  EXPECT_NE(r->reject().reason().find("authentication failed"), std::string::npos);
  // The right token is welcomed, and the Welcome proves the coordinator knows it too.
  int keep = -1;
  proto::Envelope good = hello("", 0, 1);
  auto w = handshake(coord->port(), good, coord->token(), "", &keep);
  ::close(keep);
  ASSERT_EQ(w.body_case(), proto::Envelope::kWelcome);
  EXPECT_EQ(w.welcome().proof().size(), 32u);
  EXPECT_FALSE(w.welcome().resumed());
}

// A Hello recorded from a real rank and sent again on a new connection answers the wrong Challenge.
TEST(Auth, ACapturedHelloReplayedOnANewConnectionIsRejected) {
  ScratchDir dir("auth-replay");
  auto coord = start(dir.file("ckpt"), 1);
  Relay relay(coord->port());
  {
    CoordinatorClient client(client_options(relay.address(), coord->token()), nullptr);
    ASSERT_TRUE(client.wait_connected(5.0));
    client.goodbye(true, "done");
  }
  const auto sent = frames_of(relay.from_rank());
  ASSERT_FALSE(sent.empty());
  ASSERT_EQ(sent[0].body_case(), proto::Envelope::kHello);
  coord->restart(1, 0, "a fresh start, so only the proof can refuse the replay");
  const int fd = raw_connect(coord->port());
  ASSERT_GE(fd, 0);
  auto challenge = read_one_frame(fd);
  ASSERT_TRUE(challenge && challenge->body_case() == proto::Envelope::kChallenge);
  const std::string replay = encode_frame(sent[0]);
  ASSERT_EQ(::send(fd, replay.data(), replay.size(), MSG_NOSIGNAL), static_cast<ssize_t>(replay.size()));
  auto r = read_one_frame(fd);
  ::close(fd);
  ASSERT_TRUE(r.has_value());
  ASSERT_EQ(r->body_case(), proto::Envelope::kReject) << "a replayed Hello was welcomed";
  EXPECT_NE(r->reject().reason().find("authentication failed"), std::string::npos) << r->reject().reason();
}

// Everything a rank sends in a whole session (Hello, heartbeats, a report, Goodbye), read on the wire: the job
// token is not in it, and the coordinator does not send it either.
TEST(Auth, TheJobTokenNeverCrossesTheWire) {
  ScratchDir dir("auth-wire");
  auto coord = start(dir.file("ckpt"), 1);
  Relay relay(coord->port());
  {
    CoordinatorClient client(client_options(relay.address(), coord->token()), nullptr);
    ASSERT_TRUE(client.wait_connected(5.0));
    proto::Heartbeat hb;
    hb.set_step(3);
    client.update(hb, true);
    proto::CheckpointReport rep;
    rep.set_step(3);
    rep.set_ok(false);
    rep.set_error("no disk in this test");
    client.report(rep);
    std::string detail;
    EXPECT_EQ(client.wait_commit(3, 5.0, &detail), CoordinatorClient::Commit::kDiscarded);
    client.goodbye(true, "done");
  }
  const std::string up = relay.from_rank(), down = relay.from_coordinator();
  ASSERT_NE(up.find("relayhost"), std::string::npos) << "the relay did not see the rank's Hello";
  ASSERT_NE(up.find("no disk in this test"), std::string::npos) << "the relay did not see the report";
  EXPECT_EQ(up.find(coord->token()), std::string::npos) << "the job token crossed the wire";
  EXPECT_EQ(down.find(coord->token()), std::string::npos) << "the coordinator sent the job token";
  const auto sent = frames_of(up);
  ASSERT_FALSE(sent.empty());
  EXPECT_EQ(sent[0].hello().proof().size(), 32u);
  EXPECT_EQ(sent[0].hello().client_nonce().size(), auth::kNonceBytes);
}

// Note [Frame MACs]: a sealed frame opens once, on its own connection, in its own direction, unaltered.
TEST(Auth, SealedFramesOpenOnceUnalteredInOrderOnTheirOwnConnection) {
  const std::string k = auth::session_key("tok", "transcript"), ns(32, 's'), nc(32, 'c');
  FrameAuth rank(k, ns, nc, FrameAuth::Side::kRank), coord(k, ns, nc, FrameAuth::Side::kCoordinator);
  const std::string a = rank.seal("heartbeat 1"), b = rank.seal("heartbeat 2");
  EXPECT_EQ(a.size(), 11 + FrameAuth::kTagBytes);
  EXPECT_EQ(coord.open(a.data(), a.size()), "heartbeat 1");
  EXPECT_THROW(coord.open(a.data(), a.size()), WireError);  // replayed
  EXPECT_EQ(coord.open(b.data(), b.size()), "heartbeat 2");
  const std::string c = rank.seal("heartbeat 3"), d = rank.seal("heartbeat 4");
  EXPECT_THROW(coord.open(d.data(), d.size()), WireError);  // out of order (3 was dropped)
  std::string altered = c;
  altered[3] ^= 1;
  EXPECT_THROW(coord.open(altered.data(), altered.size()), WireError);
  EXPECT_EQ(coord.open(c.data(), c.size()), "heartbeat 3");
  // Reflected: the coordinator's own frame sent back to it, or the rank's to the rank.
  FrameAuth coord2(k, ns, nc, FrameAuth::Side::kCoordinator), rank2(k, ns, nc, FrameAuth::Side::kRank);
  const std::string cmd = coord2.seal("command");
  EXPECT_THROW(coord.open(cmd.data(), cmd.size()), WireError);
  EXPECT_EQ(rank2.open(cmd.data(), cmd.size()), "command");
  // Another connection of the same session (other nonces), or another session key.
  FrameAuth other_conn(k, std::string(32, 't'), nc, FrameAuth::Side::kCoordinator);
  FrameAuth other_key(auth::session_key("tok", "other"), ns, nc, FrameAuth::Side::kCoordinator);
  FrameAuth sender(k, ns, nc, FrameAuth::Side::kRank);
  const std::string first = sender.seal("heartbeat 1");
  EXPECT_THROW(other_conn.open(first.data(), first.size()), WireError);
  EXPECT_THROW(other_key.open(first.data(), first.size()), WireError);
  EXPECT_THROW(coord2.open(first.data(), 10), WireError);  // shorter than a tag
}

// On the wire: after the Welcome the coordinator accepts only frames sealed under the rank's session and this
// connection's nonces. An unsealed heartbeat (what an attacker who can write into the TCP stream, but does not
// hold the session key, could send) closes the connection and changes nothing; a sealed one is applied.
TEST(Auth, TheCoordinatorAppliesOnlySealedFramesAfterTheHandshake) {
  ScratchDir dir("auth-frames");
  auto coord = start(dir.file("ckpt"), 1);
  auto step_of_rank0 = [&] {
    uint64_t step = 0;
    coord->with_core([&](CoordinatorCore& c) {
      step = nlohmann::json::parse(c.status_json(0))["ranks"][0]["step"].get<uint64_t>();
    });
    return step;
  };
  // Done by hand so the test knows the nonces and the transcript (and so the session key).
  const int fd = raw_connect(coord->port());
  ASSERT_GE(fd, 0);
  auto challenge = read_one_frame(fd);
  ASSERT_TRUE(challenge && challenge->body_case() == proto::Envelope::kChallenge);
  proto::Envelope h = hello("", 0, 1);
  const std::string t = auth::sign_hello(h.mutable_hello(), coord->token(), challenge->challenge().nonce(), "");
  const std::string hf = encode_frame(h);
  ASSERT_EQ(::send(fd, hf.data(), hf.size(), MSG_NOSIGNAL), static_cast<ssize_t>(hf.size()));
  auto w = read_one_frame(fd);
  ASSERT_TRUE(w && w->body_case() == proto::Envelope::kWelcome);
  FrameAuth seal(auth::session_key(coord->token(), t), challenge->challenge().nonce(), h.hello().client_nonce(),
                 FrameAuth::Side::kRank);
  proto::Envelope hb;
  hb.mutable_heartbeat()->set_step(7);
  const std::string good = encode_frame(hb, &seal);
  ASSERT_EQ(::send(fd, good.data(), good.size(), MSG_NOSIGNAL), static_cast<ssize_t>(good.size()));
  ASSERT_TRUE(wait_for_event(*coord, "joined: rank 0"));
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (step_of_rank0() != 7 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(step_of_rank0(), 7u) << "a sealed heartbeat was not applied";
  hb.mutable_heartbeat()->set_step(999);
  hb.mutable_heartbeat()->set_loss(0.5);  // longer than a MAC, so only the MAC can refuse it
  hb.mutable_heartbeat()->set_img_per_s(100.5);
  hb.mutable_heartbeat()->set_step_time_s(0.25);
  hb.mutable_heartbeat()->set_eta_seconds(60.5);
  const std::string forged = encode_frame(hb);  // the right format, no valid MAC
  ASSERT_GT(forged.size(), 4 + FrameAuth::kTagBytes);
  ASSERT_EQ(::send(fd, forged.data(), forged.size(), MSG_NOSIGNAL), static_cast<ssize_t>(forged.size()));
  EXPECT_TRUE(wait_for_event(*coord, "rejected connection from"));
  EXPECT_TRUE(wait_for_event(*coord, "failed its MAC"));
  char buf[256];
  while (::recv(fd, buf, sizeof(buf), 0) > 0) {
  }
  ::close(fd);
  EXPECT_EQ(step_of_rank0(), 7u) << "an unsealed heartbeat was applied";
}

// A process that knows the token but not the session of a live rank cannot take its place; the rank itself
// reconnects after a cut, proving its session.
TEST(Auth, ALiveRankCannotBeTakenOverWithoutItsSessionProof) {
  ScratchDir dir("auth-takeover");
  auto coord = start(dir.file("ckpt"), 1);
  Relay relay(coord->port());
  CoordinatorClient client(client_options(relay.address(), coord->token()), nullptr);
  ASSERT_TRUE(client.wait_connected(5.0));
  proto::Envelope same = hello("", 0, 1);  // the same rank, host and pid as the live one
  same.mutable_hello()->set_host("relayhost");
  same.mutable_hello()->set_pid(4242);
  auto e = handshake(coord->port(), same, coord->token());
  ASSERT_EQ(e.body_case(), proto::Envelope::kReject) << "a Hello without the session proof took over rank 0";
  EXPECT_NE(e.reject().reason().find("is live"), std::string::npos) << e.reject().reason();
  e = handshake(coord->port(), same, coord->token(), auth::session_key(coord->token(), "a guessed transcript"));
  ASSERT_EQ(e.body_case(), proto::Envelope::kReject) << "a wrong session proof took over rank 0";
  EXPECT_NE(e.reject().reason().find("session proof is wrong"), std::string::npos) << e.reject().reason();
  bool reconnected = false;
  coord->with_core([&](CoordinatorCore& c) {
    for (const auto& ev : c.events()) reconnected |= ev.message.find("reconnected") != std::string::npos;
  });
  EXPECT_FALSE(reconnected);
  relay.cut();
  EXPECT_TRUE(wait_for_event(*coord, "reconnected: rank 0 on relayhost (pid 4242)"));
  EXPECT_TRUE(client.wait_connected(5.0));
  std::vector<proto::Hello> hellos;
  for (const auto& f : frames_of(relay.from_rank())) {
    if (f.body_case() == proto::Envelope::kHello) hellos.push_back(f.hello());
  }
  ASSERT_EQ(hellos.size(), 2u);
  EXPECT_TRUE(hellos[0].session_proof().empty());
  EXPECT_EQ(hellos[1].session_proof().size(), 32u);  // the reconnect proved its session
  EXPECT_FALSE(coord->failure());
}

// The coordinator of another build (protocol version 1) opens with a frame of its version: the rank stops at once
// with a message that says so, instead of retrying until it gives up.
TEST(Auth, ARankRefusesACoordinatorOfAnotherProtocolVersion) {
  uint16_t port = 0;
  const int lfd = listen_loopback(&port);
  ASSERT_GE(lfd, 0);
  std::thread fake([lfd] {
    const int c = ::accept(lfd, nullptr, nullptr);
    proto::Envelope e;
    e.mutable_challenge()->set_nonce(std::string(32, 'x'));
    e.set_version(1);
    const std::string payload = e.SerializeAsString();
    const std::string frame = std::string("\0\0\0", 3) + static_cast<char>(payload.size()) + payload;
    ::send(c, frame.data(), frame.size(), MSG_NOSIGNAL);
    char buf[256];
    while (::recv(c, buf, sizeof(buf), 0) > 0) {
    }
    ::close(c);
  });
  std::mutex mu;
  std::string why;
  {
    CoordinatorClient client(client_options(concat("127.0.0.1:", port), "tok"), [&](const std::string& reason) {
      std::lock_guard<std::mutex> lock(mu);
      why = reason;
    });
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    for (;;) {
      {
        std::lock_guard<std::mutex> lock(mu);
        if (!why.empty() || std::chrono::steady_clock::now() > deadline) break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }
  fake.join();
  ::close(lfd);
  EXPECT_NE(why.find("protocol version 1, this build speaks 3"), std::string::npos) << why;
  // And the coordinator tells a version-1 rank the same.
  ScratchDir dir("auth-version");
  auto coord = start(dir.file("ckpt"), 1);
  const int fd = raw_connect(coord->port());
  ASSERT_GE(fd, 0);
  proto::Envelope old = hello("", 0, 1);
  old.set_version(1);
  const std::string payload = old.SerializeAsString();
  ASSERT_LT(payload.size(), 256u);
  const std::string frame = std::string("\0\0\0", 3) + static_cast<char>(payload.size()) + payload;
  ::send(fd, frame.data(), frame.size(), MSG_NOSIGNAL);
  auto r = answer(read_until_closed(fd));
  ASSERT_TRUE(r.has_value());
  ASSERT_EQ(r->body_case(), proto::Envelope::kReject);
  EXPECT_NE(r->reject().reason().find("protocol version 1, this build speaks 3"), std::string::npos)
      << r->reject().reason();
}

// A report naming "../x" would put a file outside the step directory into the MANIFEST (and resume would read
// it): the step is discarded with the rank named, even though the file exists and its checksum matches.
TEST(Auth, ACheckpointReportNamingAFileOutsideItsStepIsDiscarded) {
  ScratchDir dir("auth-names");
  const std::string root = dir.file("ckpt");
  auto coord = start(root, 1);
  CoordinatorClient client(client_options(coord->address(), coord->token()), nullptr);
  ASSERT_TRUE(client.wait_connected(5.0));
  auto ops = storage::real_file_ops();
  storage::prepare_step_dir(*ops, root, 10);
  const std::string bytes = "outside the step";
  storage::write_file_atomic((fs::path(root) / "x").string(), bytes);
  proto::CheckpointReport rep;
  rep.set_step(10);
  rep.set_ok(true);
  rep.mutable_manifest()->set_step(10);
  auto* f = rep.add_files();
  f->set_name("../x");
  f->set_size(bytes.size());
  f->set_crc32c(storage::crc32c(bytes.data(), bytes.size()));
  client.report(rep);
  std::string detail;
  ASSERT_EQ(client.wait_commit(10, 5.0, &detail), CoordinatorClient::Commit::kDiscarded) << detail;
  EXPECT_NE(detail.find("rank 0 on relayhost (pid 4242) reported an invalid file name '../x'"), std::string::npos)
      << detail;
  EXPECT_FALSE(fs::exists(fs::path(storage::step_dir(root, 10)) / "MANIFEST"));
  EXPECT_TRUE(wait_for_event(*coord, "reported an invalid file name '../x'"));
}

// Note [HTTP control requests]: stride status's POST proves the token without sending it (read through a relay),
// a captured request cannot be replayed, a proof for one path does not open another, and outstanding nonces are
// bounded.
TEST(Auth, HttpControlRequestsProveTheTokenWithoutSendingIt) {
  ScratchDir dir("auth-http");
  auto coord = start(dir.file("ckpt"), 1);
  const uint16_t port = static_cast<uint16_t>(coord->status_port());
  const std::string direct = concat("http://127.0.0.1:", port, "/");
  Relay relay(port);
  const HttpResponse r = http_post_signed(concat("http://", relay.address(), "/checkpoint"), coord->token());
  ASSERT_EQ(r.status, 202) << r.body;
  EXPECT_TRUE(wait_for_event(*coord, "checkpoint requested: HTTP POST /checkpoint"));
  const std::string up = relay.from_rank();
  ASSERT_NE(up.find("Authorization: Stride-HMAC nonce=\""), std::string::npos) << up;
  EXPECT_EQ(up.find(coord->token()), std::string::npos) << "the token crossed the wire";
  EXPECT_EQ(up.find("Bearer"), std::string::npos);

  // The signed request, sent again byte for byte: its nonce is spent.
  const std::string signed_request = up.substr(up.rfind("POST /checkpoint"));
  const int fd = raw_connect(port);
  ASSERT_GE(fd, 0);
  ::send(fd, signed_request.data(), signed_request.size(), MSG_NOSIGNAL);
  ::shutdown(fd, SHUT_WR);
  const std::string replayed = read_until_closed(fd);
  EXPECT_EQ(replayed.substr(0, replayed.find("\r\n")), "HTTP/1.1 401 Unauthorized") << replayed;

  // A fresh nonce, and MACs that must not pass: for another path, with another token, malformed.
  auto nonce_for = [&](const std::string& path) {
    const HttpResponse c = http_request_authorized("POST", direct + path, "", "Stride-HMAC");
    EXPECT_EQ(c.status, 401);
    std::string nonce, mac;
    EXPECT_TRUE(auth::parse_hmac_authorization(c.www_authenticate, &nonce, &mac)) << c.www_authenticate;
    EXPECT_EQ(nonce.size(), 2 * auth::kNonceBytes);
    return nonce;
  };
  auto signed_header = [](const std::string& nonce, const std::string& mac) {
    return concat("Stride-HMAC nonce=\"", nonce, "\", mac=\"", mac, "\"");
  };
  std::string n = nonce_for("stop");
  EXPECT_EQ(http_request_authorized("POST", direct + "stop", "",
                                    signed_header(n, auth::http_request_mac(coord->token(), "POST", "/checkpoint", n)))
                .status,
            401)
      << "a proof for /checkpoint stopped the job";
  n = nonce_for("stop");
  EXPECT_EQ(http_request_authorized("POST", direct + "stop", "",
                                    signed_header(n, auth::http_request_mac("other-token", "POST", "/stop", n)))
                .status,
            401);
  EXPECT_EQ(http_request_authorized("POST", direct + "stop", "", "Stride-HMAC nonce=abc").status, 401);
  EXPECT_EQ(http_request_authorized("POST", direct + "stop", "", signed_header("ff", "00")).status, 401);
  // Bounded: after 300 more challenges the first of them is forgotten, the newest still works.
  const std::string oldest = nonce_for("stop");
  std::string newest;
  for (int i = 0; i < 300; ++i) newest = nonce_for("stop");
  EXPECT_EQ(
      http_request_authorized("POST", direct + "stop", "",
                              signed_header(oldest, auth::http_request_mac(coord->token(), "POST", "/stop", oldest)))
          .status,
      401);
  bool stopped = false;  // the refusals were answered synchronously: any stop would be an event by now
  coord->with_core([&](CoordinatorCore& c) {
    for (const auto& e : c.events()) stopped |= e.message.find("stop requested") != std::string::npos;
  });
  EXPECT_FALSE(stopped) << "a refused request stopped the job";
  EXPECT_EQ(
      http_request_authorized("POST", direct + "stop", "",
                              signed_header(newest, auth::http_request_mac(coord->token(), "POST", "/stop", newest)))
          .status,
      202);
  EXPECT_TRUE(wait_for_event(*coord, "stop requested: HTTP POST /stop"));
  // From this machine the bearer token still works (it never leaves the loopback interface).
  EXPECT_EQ(http_request("POST", direct + "checkpoint", "", coord->token()).status, 202);
}

}  // namespace
}  // namespace stride::cluster
