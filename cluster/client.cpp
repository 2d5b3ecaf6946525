#include "cluster/client.h"

#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>

#include "cluster/auth.h"
#include "cluster/wire.h"
#include "common/error.h"

namespace stride::cluster {
namespace {

double now_s() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

// Splits "host:port" (the port after the last colon).
std::pair<std::string, std::string> split_address(const std::string& address) {
  const auto colon = address.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == address.size()) {
    throw UsageError(concat("coordinator address '", address, "' is not HOST:PORT"));
  }
  return {address.substr(0, colon), address.substr(colon + 1)};
}

// A connected TCP socket to host:port within timeout_s, or -1 with `why` set.
int tcp_connect(const std::string& host, const std::string& port, double timeout_s, std::string* why) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  const int rc = ::getaddrinfo(host.c_str(), port.c_str(), &hints, &res);
  if (rc != 0) {
    *why = concat("cannot resolve ", host, ": ", gai_strerror(rc));
    return -1;
  }
  int fd = -1;
  for (addrinfo* ai = res; ai; ai = ai->ai_next) {
    fd = ::socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, ai->ai_protocol);
    if (fd < 0) continue;
    int r = ::connect(fd, ai->ai_addr, ai->ai_addrlen);
    if (r != 0 && errno == EINPROGRESS) {
      pollfd p{fd, POLLOUT, 0};
      r = ::poll(&p, 1, static_cast<int>(timeout_s * 1000));
      int err = 0;
      socklen_t len = sizeof(err);
      if (r == 1 && ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err == 0) {
        r = 0;
      } else {
        errno = r == 0 ? ETIMEDOUT : (err ? err : errno);
        r = -1;
      }
    }
    if (r == 0) break;
    *why = concat("cannot connect to ", host, ":", port, ": ", std::strerror(errno));
    ::close(fd);
    fd = -1;
  }
  ::freeaddrinfo(res);
  if (fd >= 0) {
    const int flags = ::fcntl(fd, F_GETFL);
    ::fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
    int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    timeval tv{5, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  }
  return fd;
}

bool write_all(int fd, const char* p, size_t n) {
  while (n > 0) {
    const ssize_t w = ::send(fd, p, n, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

}  // namespace

CoordinatorClient::CoordinatorClient(ClientOptions options, AbortFn on_abort)
    : o_(std::move(options)), on_abort_(std::move(on_abort)) {
  split_address(o_.address);  // a bad address is a usage error now, not a retry loop later
  if (::pipe2(wake_fd_, O_CLOEXEC | O_NONBLOCK) != 0) throw Error(concat("pipe: ", std::strerror(errno)));
  thread_ = std::thread([this] {
    ::pthread_setname_np(::pthread_self(), "stride-client");
    run();
  });
}

CoordinatorClient::~CoordinatorClient() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  wake();
  if (thread_.joinable()) thread_.join();
  ::close(wake_fd_[0]);
  ::close(wake_fd_[1]);
}

void CoordinatorClient::wake() {
  const char c = 1;
  [[maybe_unused]] auto r = ::write(wake_fd_[1], &c, 1);
}

void CoordinatorClient::update(const proto::Heartbeat& hb, bool new_interval) {
  std::lock_guard<std::mutex> lock(mu_);
  hb_ = hb;
  hb_fresh_ = hb_fresh_ || new_interval;
}

void CoordinatorClient::report(proto::CheckpointReport report) {
  proto::Envelope e;
  *e.mutable_checkpoint_report() = std::move(report);
  {
    std::lock_guard<std::mutex> lock(mu_);
    outbox_.push_back(std::move(e));
  }
  wake();
}

void CoordinatorClient::goodbye(bool finished, const std::string& reason, double timeout_s) {
  proto::Envelope e;
  e.mutable_goodbye()->set_finished(finished);
  e.mutable_goodbye()->set_reason(reason);
  std::unique_lock<std::mutex> lock(mu_);
  if (bye_queued_) return;
  // The last state first (the final step and evaluation), so the job's final status shows it.
  proto::Envelope last;
  *last.mutable_heartbeat() = hb_;
  last.mutable_heartbeat()->set_has_loss(hb_.has_loss() && hb_fresh_);
  hb_fresh_ = false;
  outbox_.push_back(std::move(last));
  outbox_.push_back(std::move(e));
  bye_queued_ = true;
  lock.unlock();
  wake();
  lock.lock();
  cv_.wait_for(lock, std::chrono::duration<double>(timeout_s), [&] { return bye_sent_ || aborted_; });
  stop_ = true;
  lock.unlock();
  wake();
  if (thread_.joinable()) thread_.join();
}

bool CoordinatorClient::wait_connected(double timeout_s) {
  std::unique_lock<std::mutex> lock(mu_);
  return cv_.wait_for(lock, std::chrono::duration<double>(timeout_s), [&] { return connected_; });
}

bool CoordinatorClient::connected() const {
  std::lock_guard<std::mutex> lock(mu_);
  return connected_;
}

bool CoordinatorClient::take_checkpoint_request() {
  std::lock_guard<std::mutex> lock(mu_);
  const bool f = checkpoint_flag_;
  checkpoint_flag_ = false;
  return f;
}

bool CoordinatorClient::stop_requested() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stop_flag_;
}

CoordinatorClient::Commit CoordinatorClient::wait_commit(uint64_t step, double timeout_s, std::string* detail) {
  std::unique_lock<std::mutex> lock(mu_);
  const bool got =
      cv_.wait_for(lock, std::chrono::duration<double>(timeout_s), [&] { return verdicts_.count(step) > 0; });
  if (!got) {
    if (detail) *detail = concat("no word from the coordinator within ", timeout_s, " s");
    return Commit::kTimeout;
  }
  if (detail) *detail = verdicts_[step].second;
  return verdicts_[step].first;
}

void CoordinatorClient::handle(const proto::Envelope& e) {
  if (e.body_case() != proto::Envelope::kCommand) return;
  const auto& c = e.command();
  std::string abort_reason;
  if (c.kind() == proto::Command::DUMP_TRACE) {
    if (o_.on_dump_trace) o_.on_dump_trace(c.reason());
    return;
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    switch (c.kind()) {
      case proto::Command::CHECKPOINT:
        checkpoint_flag_ = true;
        break;
      case proto::Command::STOP:
        stop_flag_ = true;
        break;
      case proto::Command::COMMITTED:
        verdicts_[c.step()] = {Commit::kCommitted, c.reason()};
        break;
      case proto::Command::DISCARDED:
        verdicts_[c.step()] = {Commit::kDiscarded, c.reason()};
        break;
      case proto::Command::ABORT:
        aborted_ = true;
        abort_reason = c.reason();
        break;
      default:
        break;
    }
  }
  cv_.notify_all();
  if (!abort_reason.empty() && on_abort_) on_abort_(concat("the coordinator stopped the job: ", abort_reason));
}

// The next frame on `fd` within `deadline` (steady seconds), or nullopt with `why` set. Throws Error when the
// coordinator speaks another protocol version: retrying cannot help.
std::optional<proto::Envelope> CoordinatorClient::read_frame(int fd, FrameDecoder& dec, double deadline,
                                                             const char* waiting_for, std::string* why) {
  for (;;) {
    std::optional<proto::Envelope> e;
    try {
      e = dec.next();
    } catch (const ProtocolVersionError& err) {
      throw Error(concat("the coordinator at ", o_.address, " speaks another protocol: ", err.what()));
    } catch (const WireError& err) {
      *why = concat("bad ", waiting_for, " from ", o_.address, ": ", err.what());
      return std::nullopt;
    }
    if (e) return e;
    pollfd p{fd, POLLIN, 0};
    const int r = ::poll(&p, 1, static_cast<int>(std::max(0.0, deadline - now_s()) * 1000));
    if (r <= 0) {
      *why = concat("no ", waiting_for, " from ", o_.address, " within 10 s");
      return std::nullopt;
    }
    char buf[4096];
    const ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
    if (n <= 0) {
      *why = concat("the coordinator at ", o_.address, " closed the connection");
      return std::nullopt;
    }
    dec.feed(buf, static_cast<size_t>(n));
  }
}

int CoordinatorClient::connect_once(FrameDecoder& dec, std::string* why) {
  auto [host, port] = split_address(o_.address);
  const int fd = tcp_connect(host, port, 5.0, why);
  if (fd < 0) return -1;
  auto fail = [&](std::string reason) {
    *why = std::move(reason);
    ::close(fd);
    return -1;
  };
  // Until the coordinator has proved itself, it may not make this rank buffer large frames either.
  dec = FrameDecoder(kMaxHelloFrameBytes);
  frame_auth_.reset();
  const double deadline = now_s() + 10.0;
  // The coordinator's next frame; a Reject is final (an Error), a failed read leaves nullopt and `why` set.
  auto read_answer = [&](const char* what) {
    std::optional<proto::Envelope> answer;
    try {
      answer = read_frame(fd, dec, deadline, what, why);
    } catch (...) {
      ::close(fd);
      throw;
    }
    if (answer && answer->body_case() == proto::Envelope::kReject) {
      ::close(fd);
      throw Error(
          concat("the coordinator at ", o_.address, " rejected rank ", o_.rank, ": ", answer->reject().reason()));
    }
    return answer;
  };
  std::optional<proto::Envelope> e = read_answer("Challenge");
  if (!e) return fail(*why);
  if (e->body_case() != proto::Envelope::kChallenge || e->challenge().nonce().size() < 16) {
    return fail(concat("the coordinator at ", o_.address, " did not open with a Challenge"));
  }
  const std::string server_nonce = e->challenge().nonce();
  proto::Envelope hello;
  auto* h = hello.mutable_hello();
  h->set_rank(o_.rank);
  h->set_world_size(o_.world_size);
  h->set_host(o_.host);
  h->set_pid(o_.pid);
  h->set_attempt(o_.attempt);
  {
    std::lock_guard<std::mutex> lock(mu_);
    h->set_step(hb_.step() ? hb_.step() : o_.step);
  }
  // Note [Challenge-response] in cluster/auth.h. Until a Welcome says which key the coordinator holds, keep the
  // key this Hello would fix: if the connection drops after the coordinator accepted it, the next Hello must
  // prove exactly that session.
  const std::string prior_key = session_key_;
  const std::string t = auth::sign_hello(h, o_.token, e->challenge().nonce(), prior_key);
  const std::string fresh_key = auth::session_key(o_.token, t);
  if (session_key_.empty()) session_key_ = fresh_key;
  const std::string hello_frame = encode_frame(hello);
  if (!write_all(fd, hello_frame.data(), hello_frame.size())) {
    return fail(concat("sending Hello to ", o_.address, " failed: ", std::strerror(errno)));
  }
  e = read_answer("answer to Hello");
  if (!e) return fail(*why);
  if (e->body_case() != proto::Envelope::kWelcome) return fail("unexpected answer to Hello");
  const auto& w = e->welcome();
  if (!auth::digest_equal(w.proof(), auth::welcome_proof(o_.token, t, w.resumed()))) {
    return fail(concat("the coordinator at ", o_.address,
                       " did not prove that it knows the job token (another job's coordinator on that port?)"));
  }
  if (!w.resumed() || prior_key.empty()) session_key_ = fresh_key;
  {
    std::lock_guard<std::mutex> lock(mu_);
    interval_s_ = std::clamp(w.heartbeat_interval_s(), 0.05, 60.0);
  }
  dec.set_max_frame_bytes(kMaxFrameBytes);
  // Every frame from here on, both ways, is sealed under this connection's key (Note [Frame MACs]).
  frame_auth_ = std::make_unique<FrameAuth>(session_key_, server_nonce, h->client_nonce(), FrameAuth::Side::kRank);
  dec.set_auth(frame_auth_.get());
  try {
    while (auto more = dec.next()) handle(*more);  // commands sent right after Welcome
  } catch (const WireError& err) {
    return fail(concat("bad frame from ", o_.address, ": ", err.what()));
  }
  return fd;
}

void CoordinatorClient::run() {
  int fd = -1;
  FrameDecoder dec;
  double backoff = 0.1, last_contact = now_s(), next_hb = 0;
  std::string why;
  for (;;) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stop_ || aborted_) break;
    }
    if (fd < 0) {
      try {
        fd = connect_once(dec, &why);
      } catch (const Error& e) {  // rejected: retrying cannot help
        {
          std::lock_guard<std::mutex> lock(mu_);
          aborted_ = true;
        }
        cv_.notify_all();
        if (on_abort_) on_abort_(e.what());
        break;
      }
      if (fd < 0) {
        if (now_s() - last_contact > o_.give_up_s) {
          {
            std::lock_guard<std::mutex> lock(mu_);
            aborted_ = true;
          }
          cv_.notify_all();
          if (on_abort_)
            on_abort_(concat("lost the coordinator for ", static_cast<int>(now_s() - last_contact), " s: ", why));
          break;
        }
        pollfd p{wake_fd_[0], POLLIN, 0};
        // Never sleep past the moment this rank must give up.
        const double left = last_contact + o_.give_up_s - now_s();
        ::poll(&p, 1, static_cast<int>(std::max(0.0, std::min(backoff, left + 0.01)) * 1000));
        char drain[64];
        while (::read(wake_fd_[0], drain, sizeof(drain)) > 0) {
        }
        backoff = std::min(backoff * 2, 2.0);
        continue;
      }
      backoff = 0.1;
      last_contact = now_s();
      next_hb = 0;
      {
        std::lock_guard<std::mutex> lock(mu_);
        connected_ = true;
      }
      cv_.notify_all();
    }
    // Send what is queued, then a heartbeat when due.
    bool ok = true;
    for (;;) {
      proto::Envelope next;
      bool is_bye = false;
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (outbox_.empty()) break;
        next = outbox_.front();
        is_bye = bye_queued_ && outbox_.size() == 1;
      }
      const std::string frame = encode_frame(next, frame_auth_.get());
      if (!write_all(fd, frame.data(), frame.size())) {
        ok = false;
        break;
      }
      {
        std::lock_guard<std::mutex> lock(mu_);
        outbox_.pop_front();
        if (is_bye) bye_sent_ = true;
      }
      if (is_bye) cv_.notify_all();
    }
    double interval;
    {
      std::lock_guard<std::mutex> lock(mu_);
      interval = interval_s_;
    }
    if (ok && now_s() >= next_hb) {
      proto::Envelope e;
      {
        std::lock_guard<std::mutex> lock(mu_);
        *e.mutable_heartbeat() = hb_;
        e.mutable_heartbeat()->set_has_loss(hb_.has_loss() && hb_fresh_);
        hb_fresh_ = false;
      }
      if (o_.annotate) o_.annotate(*e.mutable_heartbeat());
      const std::string frame = encode_frame(e, frame_auth_.get());
      ok = write_all(fd, frame.data(), frame.size());
      next_hb = now_s() + interval;
    }
    if (ok) {
      pollfd p[2] = {{fd, POLLIN, 0}, {wake_fd_[0], POLLIN, 0}};
      const int wait_ms = static_cast<int>(std::max(0.0, next_hb - now_s()) * 1000) + 1;
      const int r = ::poll(p, 2, wait_ms);
      if (r > 0 && (p[1].revents & POLLIN)) {
        char drain[64];
        while (::read(wake_fd_[0], drain, sizeof(drain)) > 0) {
        }
      }
      if (r > 0 && (p[0].revents & (POLLIN | POLLHUP | POLLERR))) {
        char buf[8192];
        const ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
        if (n <= 0) {
          ok = false;
        } else {
          last_contact = now_s();
          dec.feed(buf, static_cast<size_t>(n));
          try {
            while (auto e = dec.next()) handle(*e);
          } catch (const WireError&) {
            ok = false;
          }
        }
      }
    }
    if (!ok) {
      ::close(fd);
      fd = -1;
      {
        std::lock_guard<std::mutex> lock(mu_);
        connected_ = false;
      }
      why = "connection lost";
      last_contact = now_s();
    }
  }
  if (fd >= 0) ::close(fd);
  std::lock_guard<std::mutex> lock(mu_);
  connected_ = false;
}

}  // namespace stride::cluster
