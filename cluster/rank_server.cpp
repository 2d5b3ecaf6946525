// The ranks' side of the coordinator (cluster/coordinator_impl.h): one RankSession per connection. It sends the
// Challenge, admits a Hello through the core (Note [Challenge-response] in cluster/auth.h), then reads sealed frames
// (Note [Frame MACs] in cluster/wire.h) and hands them to the core; flush() sends what the core queued.
#include <boost/asio.hpp>

#include <deque>

#include "cluster/auth.h"
#include "cluster/coordinator_impl.h"
#include "cluster/wire.h"
#include "common/error.h"

namespace stride::cluster {

struct Coordinator::Impl::RankSession : std::enable_shared_from_this<RankSession> {
  Impl* impl;
  tcp::socket socket;
  asio::steady_timer hello_timer;
  std::string peer;
  int rank = -1;
  std::string nonce;  // this connection's Challenge (Note [Challenge-response] in cluster/auth.h)
  unsigned char header[4];
  std::string body;
  std::deque<std::string> queue;
  bool writing = false, closing = false;
  std::unique_ptr<FrameAuth> auth;  // after the Welcome: this connection's frame MACs (cluster/wire.h)

  RankSession(Impl* i, tcp::socket s) : impl(i), socket(std::move(s)), hello_timer(i->ioc) {
    boost::system::error_code ec;
    auto ep = socket.remote_endpoint(ec);
    peer = ec ? "?" : ep.address().to_string() + ":" + std::to_string(ep.port());
    socket.set_option(tcp::no_delay(true), ec);
  }

  void start() {
    auto self = shared_from_this();
    hello_timer.expires_after(std::chrono::milliseconds(static_cast<int64_t>(impl->o.hello_timeout_s * 1000)));
    hello_timer.async_wait([self](const boost::system::error_code& ec) {
      if (!ec && self->rank < 0) self->reject("no Hello within the timeout");
    });
    nonce = auth::random_bytes(auth::kNonceBytes);
    proto::Envelope c;
    c.mutable_challenge()->set_nonce(nonce);
    send(encode_frame(c));
    read_header();
  }

  void read_header() {
    auto self = shared_from_this();
    asio::async_read(socket, asio::buffer(header, 4), [self](const boost::system::error_code& ec, size_t) {
      if (ec) return self->closed();
      uint32_t n = 0;
      try {
        n = frame_length(self->header, self->rank < 0 ? kMaxHelloFrameBytes : kMaxFrameBytes);
      } catch (const WireError& e) {
        return self->reject(e.what());
      }
      self->body.resize(n);
      asio::async_read(self->socket, asio::buffer(self->body), [self](const boost::system::error_code& ec2, size_t) {
        if (ec2) return self->closed();
        proto::Envelope e;
        try {
          if (self->auth) {
            const std::string payload = self->auth->open(self->body.data(), self->body.size());
            e = parse_envelope(payload.data(), payload.size());
          } else {
            e = parse_envelope(self->body.data(), self->body.size());
          }
        } catch (const WireError& err) {
          return self->reject(self->rank >= 0 ? concat("rank ", self->rank, ": ", err.what()) : err.what());
        }
        self->handle(e);
        if (!self->closing) self->read_header();
      });
    });
  }

  void handle(const proto::Envelope& e) {
    const double now = steady_now();
    if (rank < 0) {
      if (e.body_case() != proto::Envelope::kHello) return reject("the first message must be Hello");
      std::string why;
      bool resumed = false;
      {
        std::lock_guard<std::mutex> lock(impl->mu);
        why = impl->core->admit(e.hello(), nonce, now, &resumed);
      }
      if (!why.empty()) return reject(why);
      hello_timer.cancel();
      rank = static_cast<int>(e.hello().rank());
      auto old = impl->by_rank[e.hello().rank()];
      if (old && old.get() != this) old->close();  // a reconnect replaces the stale connection
      impl->by_rank[e.hello().rank()] = shared_from_this();
      proto::Envelope w;
      {
        std::lock_guard<std::mutex> lock(impl->mu);
        w.mutable_welcome()->set_job(impl->o.core.job);
        w.mutable_welcome()->set_heartbeat_interval_s(impl->o.core.heartbeat_interval_s);
        w.mutable_welcome()->set_last_committed_step(impl->core->last_committed_step());
      }
      w.mutable_welcome()->set_resumed(resumed);
      w.mutable_welcome()->set_proof(
          auth::welcome_proof(impl->o.core.token, auth::transcript(nonce, e.hello()), resumed));
      send(encode_frame(w));
      {
        std::lock_guard<std::mutex> lock(impl->mu);
        auth = std::make_unique<FrameAuth>(impl->core->session_key_of(e.hello().rank()), nonce,
                                           e.hello().client_nonce(), FrameAuth::Side::kCoordinator);
      }
      impl->flush();
      return;
    }
    {
      std::lock_guard<std::mutex> lock(impl->mu);
      const auto r = static_cast<uint32_t>(rank);
      switch (e.body_case()) {
        case proto::Envelope::kHeartbeat:
          impl->core->heartbeat(r, e.heartbeat(), now);
          break;
        case proto::Envelope::kCheckpointReport:
          impl->core->report(r, e.checkpoint_report(), now);
          break;
        case proto::Envelope::kGoodbye:
          impl->core->goodbye(r, e.goodbye(), now);
          break;
        default:
          break;  // messages only the coordinator sends: ignore
      }
    }
    impl->flush();
  }

  void reject(const std::string& why) {
    {
      std::lock_guard<std::mutex> lock(impl->mu);
      ++impl->core->rejected_connections;
      impl->core->note("warning", concat("rejected connection from ", peer, ": ", why), steady_now());
    }
    proto::Envelope e;
    e.mutable_reject()->set_reason(why);
    send_envelope(e);
    closing = true;  // close once the Reject is out
  }

  // Sealed once the handshake is done (in queue order, which is the order of the writes).
  void send_envelope(const proto::Envelope& e) { send(encode_frame(e, auth.get())); }

  void send(std::string frame) {
    queue.push_back(std::move(frame));
    if (!writing) write_next();
  }

  void write_next() {
    if (queue.empty()) {
      writing = false;
      if (closing) closed();  // a rejected connection leaves `sessions`: it must not count against the cap
      return;
    }
    writing = true;
    auto self = shared_from_this();
    asio::async_write(socket, asio::buffer(queue.front()), [self](const boost::system::error_code& ec, size_t) {
      if (ec) return self->closed();
      self->queue.pop_front();
      self->write_next();
    });
  }

  void close() {
    boost::system::error_code ec;
    socket.shutdown(tcp::socket::shutdown_both, ec);
    socket.close(ec);
    hello_timer.cancel();
  }

  void closed() {
    close();
    auto self = shared_from_this();
    if (rank >= 0) {
      auto it = impl->by_rank.find(static_cast<uint32_t>(rank));
      if (it != impl->by_rank.end() && it->second == self) {
        impl->by_rank.erase(it);
        std::lock_guard<std::mutex> lock(impl->mu);
        impl->core->disconnected(static_cast<uint32_t>(rank), steady_now());
      }
    }
    impl->sessions.erase(self);
  }
};

void Coordinator::Impl::accept_ranks() {
  ranks_acceptor.async_accept([self = shared_from_this()](const boost::system::error_code& ec, tcp::socket s) {
    if (ec == asio::error::operation_aborted || self->stopping) return;  // `s` closes as it goes
    if (!ec) {
      self->accept_failing = false;
      const size_t cap = 4 * static_cast<size_t>(self->o.core.world_size) + 16;
      if (self->sessions.size() >= cap) {
        boost::system::error_code ignored;
        s.close(ignored);
        std::lock_guard<std::mutex> lock(self->mu);
        ++self->core->rejected_connections;
      } else {
        auto session = std::make_shared<RankSession>(self.get(), std::move(s));
        self->sessions.insert(session);
        session->start();
      }
    }
    if (ec) return self->accept_later(self->ranks_accept_retry, ec, [self] { self->accept_ranks(); });
    self->accept_ranks();
  });
}

void Coordinator::Impl::flush() {
  std::vector<Outbound> out;
  std::optional<std::string> failed;
  {
    std::lock_guard<std::mutex> lock(mu);
    out = core->take_outbound();
    if (core->failure() && !failure_reported) {
      failure_reported = true;
      failed = core->failure();
    }
  }
  for (const auto& m : out) {
    proto::Envelope e;
    *e.mutable_command() = m.command;
    if (m.rank >= 0) {
      auto it = by_rank.find(static_cast<uint32_t>(m.rank));
      if (it != by_rank.end()) it->second->send_envelope(e);
    } else {
      for (auto& [r, s] : by_rank) s->send_envelope(e);
      if (o.on_broadcast) o.on_broadcast(m.command);
    }
  }
  if (failed && o.on_failure) o.on_failure(*failed);
}

void Coordinator::Impl::close_rank_connections() {
  for (auto& s : sessions) s->close();
}

void Coordinator::Impl::drop_ranks() {
  for (auto& [r, s] : by_rank) s->close();
  by_rank.clear();
}

}  // namespace stride::cluster
