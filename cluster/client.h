// A rank's connection to the coordinator: a background thread that connects (with back-off, reconnecting
// after a drop), authenticates with the job token by challenge-response (the token never leaves the process;
// the coordinator proves it knows the token too), sends heartbeats every interval with the latest state
// the training thread handed over, delivers checkpoint reports, and turns commands into flags the training
// thread polls. If the coordinator stays unreachable for `give_up_s`, or sends ABORT, or rejects this rank,
// `on_abort` runs on the client thread (the trainer exits with code 75 there). Thread-safe.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "cluster/wire.h"
#include "proto/cluster.pb.h"

namespace stride::cluster {

struct ClientOptions {
  std::string address;  // host:port
  std::string token;
  uint32_t rank = 0, world_size = 1;
  std::string host;
  uint32_t pid = 0;
  uint64_t step = 0;        // where this rank starts (a resume)
  uint32_t attempt = 0;     // the job's restart count (STRIDE_RESTART_COUNT from the launcher)
  double give_up_s = 30.0;  // coordinator unreachable this long: abort
  // Called on the client thread just before each heartbeat is sent: adds what must be current even while the
  // training thread is blocked (the flight recorder's progress). Must not block.
  std::function<void(proto::Heartbeat&)> annotate;
  // Called on the client thread for a DUMP_TRACE command, with its reason.
  std::function<void(const std::string&)> on_dump_trace;
};

class CoordinatorClient {
 public:
  using AbortFn = std::function<void(const std::string& reason)>;
  CoordinatorClient(ClientOptions options, AbortFn on_abort);
  ~CoordinatorClient();
  CoordinatorClient(const CoordinatorClient&) = delete;
  CoordinatorClient& operator=(const CoordinatorClient&) = delete;

  // The state the next heartbeat carries. `new_interval`: loss, throughput and timings describe a new
  // interval (the coordinator plots them once).
  void update(const proto::Heartbeat& hb, bool new_interval = false);
  // Queued; delivered in order, also across a reconnect.
  void report(proto::CheckpointReport report);
  // Sends Goodbye after everything queued, waits up to `timeout_s` for it to be written, and stops the thread.
  void goodbye(bool finished, const std::string& reason, double timeout_s = 5.0);

  bool wait_connected(double timeout_s);
  bool connected() const;
  // True once for every CHECKPOINT command received.
  bool take_checkpoint_request();
  bool stop_requested() const;

  enum class Commit { kCommitted, kDiscarded, kTimeout };
  // Waits for the coordinator's verdict on checkpoint `step`; `detail` gets the path or the reason.
  Commit wait_commit(uint64_t step, double timeout_s, std::string* detail = nullptr);

 private:
  void run();
  int connect_once(FrameDecoder& dec, std::string* why);
  std::optional<proto::Envelope> read_frame(int fd, FrameDecoder& dec, double deadline, const char* waiting_for,
                                            std::string* why);
  bool send_all(int fd, const std::string& bytes);
  void handle(const proto::Envelope& e);
  void wake();

  ClientOptions o_;
  AbortFn on_abort_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  proto::Heartbeat hb_;
  bool hb_fresh_ = false;
  std::deque<proto::Envelope> outbox_;  // sealed when written (Note [Frame MACs] in cluster/wire.h)
  bool bye_queued_ = false, bye_sent_ = false, stop_ = false, connected_ = false, aborted_ = false;
  bool checkpoint_flag_ = false, stop_flag_ = false;
  double interval_s_ = 1.0;
  std::map<uint64_t, std::pair<Commit, std::string>> verdicts_;
  int wake_fd_[2] = {-1, -1};
  std::unique_ptr<FrameAuth> frame_auth_;  // client thread only: this connection's frame MACs
  std::string session_key_;  // client thread only: the session this rank proves on a reconnect (cluster/auth.h)
  std::thread thread_;
};

// An HTTP/1.1 client (Boost.Beast) for the status endpoint: `stride status`, bench/http_bench and tests. Any
// thread; each call makes its own connection.
struct HttpResponse {
  int status = 0;
  std::string body;
  std::string content_type;
  std::string www_authenticate;  // the challenge of a 401
};
// `url` is http://host:port/path. Content-Length and chunked bodies are read whole. `timeout_s` bounds the whole
// request (connect, send, every byte of the answer), not each read. Throws stride::Error naming the URL when it
// cannot connect, when the deadline passes, when the body would exceed `max_body_bytes` (never truncated), or
// when the answer is not HTTP or ends early; UsageError for a URL that is not http://host[:port]/path.
HttpResponse http_request(const std::string& method, const std::string& url, const std::string& body = "",
                          const std::string& bearer_token = "", double timeout_s = 10.0,
                          size_t max_body_bytes = 64u << 20);
// The same with any Authorization header value (none when empty).
HttpResponse http_request_authorized(const std::string& method, const std::string& url, const std::string& body,
                                     const std::string& authorization, double timeout_s = 10.0,
                                     size_t max_body_bytes = 64u << 20);
// POST `url` (a control path: /checkpoint, /stop) proving `token` by Note [HTTP control requests] in
// cluster/auth.h: asks for a nonce, then sends the request's MAC; the token itself never travels. Returns the
// second answer (202 when accepted); throws stride::Error when the server offers no Stride-HMAC challenge.
HttpResponse http_post_signed(const std::string& url, const std::string& token, double timeout_s = 10.0);

}  // namespace stride::cluster
