#include "cluster/coordinator.h"

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <nlohmann/json.hpp>

#include <pthread.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cctype>
#include <chrono>
#include <deque>
#include <filesystem>
#include <functional>
#include <future>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "cluster/auth.h"
#include "cluster/dashboard_html.h"
#include "cluster/wire.h"
#include "common/error.h"
#include "storage/file_io.h"

namespace stride::cluster {
namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

namespace {

double steady_now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
double wall_now() { return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count(); }

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// The host of a Host header value ("name", "name:port", "[::1]:port"), lower case, without a trailing dot.
std::string host_of(const std::string& value) {
  std::string h = value;
  if (!h.empty() && h.front() == '[') {
    const auto close = h.find(']');
    h = close == std::string::npos ? h : h.substr(1, close - 1);
  } else if (const auto colon = h.find(':');
             colon != std::string::npos && h.find(':', colon + 1) == std::string::npos) {
    h = h.substr(0, colon);
  }
  while (!h.empty() && h.back() == '.') h.pop_back();
  return lower(h);
}

}  // namespace

struct Coordinator::Impl : std::enable_shared_from_this<Coordinator::Impl> {
  CoordinatorOptions o;
  asio::io_context ioc;
  tcp::acceptor ranks_acceptor{ioc};
  tcp::acceptor http_acceptor{ioc};
  asio::steady_timer tick_timer{ioc};
  asio::steady_timer ranks_accept_retry{ioc}, http_accept_retry{ioc};  // back-off after a failed accept
  std::thread thread;
  mutable std::mutex mu;  // guards core (the io thread and callers of the public methods)
  std::unique_ptr<CoordinatorCore> core;
  int http_port = -1;
  bool failure_reported = false;
  // Io thread only: stop() ran. A timer or accept completion already queued when stop() cancelled it still runs
  // with success; it must not arm itself again, or the io thread never runs out of work and stop() never returns.
  bool stopping = false;
  bool accept_failing = false;  // io thread only: an accept failed, not yet one succeeded since
  static constexpr int kAcceptRetryMs = 100;

  struct RankSession;
  std::map<uint32_t, std::shared_ptr<RankSession>> by_rank;  // io thread only
  std::set<std::shared_ptr<RankSession>> sessions;           // io thread only
  size_t http_sessions = 0;                                  // io thread only
  struct HttpSession;
  std::set<HttpSession*> http_open;  // io thread only
  struct CachedDoc {
    double at = 0;
    std::string body;
  };
  std::map<std::string, CachedDoc> http_cache;  // io thread only
  // Note [HTTP control requests] in cluster/auth.h: outstanding nonces (hex) and when each expires.
  std::map<std::string, double> http_nonces;  // io thread only
  static constexpr size_t kMaxHttpNonces = 256;
  static constexpr double kHttpNonceSeconds = 60.0;

  std::string issue_http_nonce(double now) {
    for (auto it = http_nonces.begin(); it != http_nonces.end();) {
      it = it->second < now ? http_nonces.erase(it) : std::next(it);
    }
    if (http_nonces.size() >= kMaxHttpNonces) {  // the oldest gives way: a flood cannot grow the map
      http_nonces.erase(std::min_element(http_nonces.begin(), http_nonces.end(),
                                         [](const auto& a, const auto& b) { return a.second < b.second; }));
    }
    std::string nonce = auth::to_hex(auth::random_bytes(auth::kNonceBytes));
    http_nonces[nonce] = now + kHttpNonceSeconds;
    return nonce;
  }

  // True once per issued, unexpired nonce.
  bool take_http_nonce(const std::string& nonce, double now) {
    const auto it = http_nonces.find(nonce);
    if (it == http_nonces.end()) return false;
    const bool fresh = it->second >= now;
    http_nonces.erase(it);
    return fresh;
  }

  explicit Impl(CoordinatorOptions options) : o(std::move(options)) {}

  // ---------------------------------------------------------------------------------------------------------
  struct RankSession : std::enable_shared_from_this<RankSession> {
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

  // ---------------------------------------------------------------------------------------------------------
  struct HttpSession : std::enable_shared_from_this<HttpSession> {
    Impl* impl;
    beast::tcp_stream stream;
    beast::flat_buffer buffer;
    std::optional<http::request_parser<http::string_body>> parser;
    http::response<http::string_body> res;

    HttpSession(Impl* i, tcp::socket s) : impl(i), stream(std::move(s)) {
      ++impl->http_sessions;
      impl->http_open.insert(this);
    }
    ~HttpSession() {
      --impl->http_sessions;
      impl->http_open.erase(this);
    }

    void read() {
      parser.emplace();
      parser->header_limit(8 * 1024);
      parser->body_limit(64 * 1024);
      stream.expires_after(std::chrono::milliseconds(static_cast<int64_t>(impl->o.http_timeout_s * 1000)));
      auto self = shared_from_this();
      http::async_read(stream, buffer, *parser, [self](beast::error_code ec, size_t) {
        if (ec == http::error::end_of_stream || ec == asio::error::eof || ec == asio::error::connection_reset) {
          return self->close();
        }
        if (ec == beast::error::timeout) return self->close();
        if (ec) {
          {
            std::lock_guard<std::mutex> lock(self->impl->mu);
            ++self->impl->core->http_bad_requests;
          }
          return self->reply_error(http::status::bad_request, concat("bad request: ", ec.message(), "\n"));
        }
        self->handle(self->parser->release());
      });
    }

    void reply_error(http::status st, const std::string& text) {
      res = {};
      res.result(st);
      res.version(11);
      res.set(http::field::content_type, "text/plain; charset=utf-8");
      res.keep_alive(false);
      res.body() = text;
      res.prepare_payload();
      write(false);
    }

    void handle(http::request<http::string_body> req) {
      const double now = steady_now();
      std::string target(req.target());
      const auto q = target.find('?');
      const std::string path = q == std::string::npos ? target : target.substr(0, q);
      res = {};
      res.version(req.version());
      res.set(http::field::server, "stride");
      res.set(http::field::cache_control, "no-store");
      auto set = [&](http::status st, const char* type, std::string body) {
        res.result(st);
        res.set(http::field::content_type, type);
        res.body() = std::move(body);
      };
      bool bad = false;
      if (!host_allowed(req)) {
        bad = true;
        set(http::status::misdirected_request, "text/plain; charset=utf-8",
            concat("misdirected request: this endpoint does not serve the host '", std::string(req[http::field::host]),
                   "'\n"));
      } else if (req.method() == http::verb::get || req.method() == http::verb::head) {
        std::lock_guard<std::mutex> lock(impl->mu);
        auto& core = *impl->core;
        // Rendered documents are reused for a quarter of a second: a dashboard or a scraper polling hard costs
        // the training process a few renders per second, not one per request.
        auto cached = [&](const std::string& key, const std::function<std::string()>& render) -> std::string {
          auto& c = impl->http_cache[key];
          if (c.body.empty() || now - c.at > 0.25) {
            c.body = render();
            c.at = now;
          }
          return c.body;
        };
        if (path == "/status") {
          set(http::status::ok, "application/json", cached(path, [&] { return core.status_json(now); }));
        } else if (path == "/history") {
          set(http::status::ok, "application/json", cached(path, [&] { return core.history_json(); }));
        } else if (path == "/metrics") {
          set(http::status::ok, "text/plain; version=0.0.4; charset=utf-8",
              cached(path, [&] { return core.metrics_text(now); }));
        } else if (path == "/healthz") {
          if (core.failure()) {
            set(http::status::service_unavailable, "text/plain; charset=utf-8", "failed: " + *core.failure() + "\n");
          } else {
            set(http::status::ok, "text/plain; charset=utf-8", "ok\n");
          }
        } else if (path == "/" || path == "/index.html") {
          set(http::status::ok, "text/html; charset=utf-8", kDashboardHtml);
        } else {
          set(http::status::not_found, "text/plain; charset=utf-8", "not found\n");
        }
      } else if (req.method() == http::verb::post) {
        // Note [HTTP control requests] in cluster/auth.h.
        const std::string authorization(req[http::field::authorization]);
        const bool loopback = remote_is_loopback();
        std::string nonce, mac;
        bool authorized = false, asks_nonce = false;
        if (auth::parse_hmac_authorization(authorization, &nonce, &mac)) {
          asks_nonce = nonce.empty() && mac.empty();
          authorized = !asks_nonce && impl->take_http_nonce(nonce, now) &&
                       auth::digest_equal(mac, auth::http_request_mac(impl->o.core.token, "POST", path, nonce));
        } else if (loopback) {
          authorized = token_equal(authorization, "Bearer " + impl->o.core.token);
        }
        if (path != "/checkpoint" && path != "/stop") {
          set(http::status::not_found, "text/plain; charset=utf-8", "not found\n");
        } else if (!authorized) {
          bad = !asks_nonce;  // asking for a nonce is the first half of a signed request
          res.set(http::field::www_authenticate, concat("Stride-HMAC nonce=\"", impl->issue_http_nonce(now), "\""));
          set(http::status::unauthorized, "text/plain; charset=utf-8",
              loopback ? "unauthorized: prove the job token with Stride-HMAC (stride status --checkpoint|--stop does), "
                         "or send it as 'Authorization: Bearer TOKEN' from this machine\n"
                       : "unauthorized: prove the job token with Stride-HMAC (stride status --checkpoint|--stop does); "
                         "a bearer token is accepted from this machine only, so that it never crosses the network\n");
        } else {
          const bool stop = path == "/stop";
          {
            std::lock_guard<std::mutex> lock(impl->mu);
            impl->core->request(stop ? proto::Command::STOP : proto::Command::CHECKPOINT,
                                concat("HTTP POST ", path, " from ", remote()), now);
          }
          impl->flush();
          impl->http_cache.clear();
          set(http::status::accepted, "application/json",
              stop ? R"({"accepted":"stop"})" : R"({"accepted":"checkpoint"})");
        }
      } else {
        bad = true;
        set(http::status::method_not_allowed, "text/plain; charset=utf-8", "method not allowed\n");
      }
      if (bad) {
        std::lock_guard<std::mutex> lock(impl->mu);
        ++impl->core->http_bad_requests;
      }
      const bool head = req.method() == http::verb::head;
      res.keep_alive(req.keep_alive());
      res.prepare_payload();
      if (head) res.body().clear();
      write(res.keep_alive());
    }

    // DNS rebinding: a page on evil.example whose name now resolves to this address sends Host: evil.example.
    // Allowed: no Host (HTTP/1.0), the names of this machine and the ones configured, the status_bind address
    // (status_url uses it) and the IP address the request arrived on. The port is not checked, so SSH tunnels
    // and port forwarding keep working.
    bool host_allowed(const http::request<http::string_body>& req) {
      const auto it = req.find(http::field::host);
      if (it == req.end()) return true;
      const std::string h = host_of(std::string(it->value()));
      if (h == "localhost" || h == "127.0.0.1" || h == "::1" || h == lower(local_hostname()) ||
          h == host_of(impl->o.status_bind)) {
        return true;
      }
      for (const auto& allowed : impl->o.status_hosts) {
        if (h == host_of(allowed)) return true;
      }
      boost::system::error_code ec;
      const auto local = stream.socket().local_endpoint(ec);
      boost::system::error_code parse_ec;
      const auto addr = asio::ip::make_address(h, parse_ec);
      if (ec || parse_ec) return false;
      auto here = local.address();
      if (here.is_v6() && here.to_v6().is_v4_mapped()) {
        here = asio::ip::make_address_v4(asio::ip::v4_mapped, here.to_v6());
      }
      return addr == here;
    }

    bool remote_is_loopback() {
      boost::system::error_code ec;
      const auto ep = stream.socket().remote_endpoint(ec);
      if (ec) return false;
      auto addr = ep.address();
      if (addr.is_v6() && addr.to_v6().is_v4_mapped())
        addr = asio::ip::make_address_v4(asio::ip::v4_mapped, addr.to_v6());
      return addr.is_loopback();
    }

    std::string remote() {
      boost::system::error_code ec;
      auto ep = stream.socket().remote_endpoint(ec);
      return ec ? "?" : ep.address().to_string();
    }

    void write(bool keep_alive) {
      auto self = shared_from_this();
      http::async_write(stream, res, [self, keep_alive](beast::error_code ec, size_t) {
        if (ec || !keep_alive) return self->close();
        self->read();
      });
    }

    void close() {
      beast::error_code ec;
      stream.socket().shutdown(tcp::socket::shutdown_both, ec);
      stream.socket().close(ec);
    }
  };

  // ---------------------------------------------------------------------------------------------------------
  void listen(tcp::acceptor& acc, const std::string& host, uint16_t port) {
    boost::system::error_code ec;
    auto addr = asio::ip::make_address(host, ec);
    if (ec) throw UsageError(concat("cannot listen on '", host, "': not an IP address"));
    tcp::endpoint ep(addr, port);
    acc.open(ep.protocol(), ec);
    if (!ec) acc.set_option(tcp::acceptor::reuse_address(true), ec);
    if (!ec) acc.bind(ep, ec);
    if (!ec) acc.listen(asio::socket_base::max_listen_connections, ec);
    if (ec) {
      boost::system::error_code ignored;
      acc.close(ignored);
      throw Error(concat("cannot listen on ", host, ":", port, ": ", ec.message()));
    }
  }

  void start() {
    core = std::make_unique<CoordinatorCore>(o.core, steady_now(), wall_now());
    listen(ranks_acceptor, o.bind, o.port);
    if (o.status_port >= 0) {
      try {
        listen(http_acceptor, o.status_bind, static_cast<uint16_t>(o.status_port));
      } catch (const Error& e) {
        if (!o.status_port_fallback || o.status_port == 0) throw;
        listen(http_acceptor, o.status_bind, 0);
        core->note(
            "warning",
            concat(e.what(), "; the status endpoint uses port ", http_acceptor.local_endpoint().port(), " instead"),
            steady_now());
      }
      http_port = http_acceptor.local_endpoint().port();
      accept_http();
    }
    accept_ranks();
    tick();
    thread = std::thread([self = shared_from_this()] {
      ::pthread_setname_np(::pthread_self(), "stride-coord");
      // Serving people and scrapers must not take cores from training (bench/status_load.sh): run at a lower
      // priority. Ranks' heartbeats are sent from their own normal-priority threads, and this thread's share
      // under full load (~10% of a core at nice 10) is far more than its work needs.
      ::setpriority(PRIO_PROCESS, static_cast<id_t>(::syscall(SYS_gettid)), 10);
      for (;;) {
        try {
          self->ioc.run();
          break;
        } catch (const std::exception& e) {  // a handler threw: log it and keep serving
          std::fprintf(stderr, "stride: coordinator: internal error: %s\n", e.what());
        }
      }
    });
  }

  void stop() {
    asio::post(ioc, [this] {
      stopping = true;
      boost::system::error_code ec;
      ranks_acceptor.close(ec);
      http_acceptor.close(ec);
      tick_timer.cancel();
      ranks_accept_retry.cancel();
      http_accept_retry.cancel();
      for (auto& s : sessions) s->close();
      for (auto* h : http_open) h->close();
    });
    if (thread.joinable()) thread.join();
  }

  void accept_ranks() {
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

  void accept_http() {
    http_acceptor.async_accept([self = shared_from_this()](const boost::system::error_code& ec, tcp::socket s) {
      if (ec == asio::error::operation_aborted || self->stopping) return;  // `s` closes as it goes
      if (!ec) {
        self->accept_failing = false;
        if (self->http_sessions >= self->o.max_http_connections) {
          boost::system::error_code ignored;
          s.close(ignored);
          std::lock_guard<std::mutex> lock(self->mu);
          ++self->core->http_bad_requests;
        } else {
          std::make_shared<HttpSession>(self.get(), std::move(s))->read();
        }
      }
      if (ec) return self->accept_later(self->http_accept_retry, ec, [self] { self->accept_http(); });
      self->accept_http();
    });
  }

  // An accept failed (EMFILE, ENFILE, ENOBUFS: out of descriptors or memory). Accepting again at once would fail
  // again at once and spin the io thread; wait a little, and say so once per episode.
  void accept_later(asio::steady_timer& timer, const boost::system::error_code& ec, std::function<void()> again) {
    if (!accept_failing) {
      accept_failing = true;
      std::lock_guard<std::mutex> lock(mu);
      core->note("warning",
                 concat("accepting a connection failed: ", ec.message(), "; retrying every ", kAcceptRetryMs, " ms"),
                 steady_now());
    }
    timer.expires_after(std::chrono::milliseconds(kAcceptRetryMs));
    timer.async_wait([this, again = std::move(again)](const boost::system::error_code& e) {
      if (!e && !stopping) again();
    });
  }

  void tick() {
    {
      std::lock_guard<std::mutex> lock(mu);
      core->tick(steady_now());
    }
    flush();
    tick_timer.expires_after(std::chrono::milliseconds(200));
    tick_timer.async_wait([self = shared_from_this()](const boost::system::error_code& ec) {
      if (!ec && !self->stopping) self->tick();
    });
  }

  // Sends what the core queued. Io thread only.
  void flush() {
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
};

Coordinator::Coordinator(CoordinatorOptions options) : impl_(std::make_shared<Impl>(std::move(options))) {
  if (impl_->o.core.token.empty()) impl_->o.core.token = random_token();
  impl_->start();
}

Coordinator::~Coordinator() { impl_->stop(); }

std::string Coordinator::address() const { return concat(impl_->o.bind, ":", port()); }
uint16_t Coordinator::port() const { return impl_->ranks_acceptor.local_endpoint().port(); }
int Coordinator::status_port() const { return impl_->http_port; }
std::string Coordinator::status_url() const {
  if (impl_->http_port < 0) return "";
  return concat("http://", impl_->o.status_bind, ":", impl_->http_port, "/");
}
const std::string& Coordinator::token() const { return impl_->o.core.token; }

void Coordinator::request(proto::Command::Kind kind, const std::string& reason) {
  asio::post(impl_->ioc, [impl = impl_, kind, reason] {
    {
      std::lock_guard<std::mutex> lock(impl->mu);
      impl->core->request(kind, reason, steady_now());
    }
    impl->flush();
  });
}

std::optional<std::string> Coordinator::failure() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->core->failure();
}

bool Coordinator::finished() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->core->finished();
}

uint64_t Coordinator::last_committed_step() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->core->last_committed_step();
}

std::string Coordinator::status_json() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->core->status_json(steady_now());
}

void Coordinator::set_restarts(int restarts) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  impl_->core->set_restarts(restarts);
}

void Coordinator::restart(uint32_t world_size, uint32_t attempt, const std::string& reason) {
  std::promise<void> done;
  asio::post(impl_->ioc, [impl = impl_, world_size, attempt, reason, &done] {
    for (auto& [r, s] : impl->by_rank) s->close();
    impl->by_rank.clear();
    {
      std::lock_guard<std::mutex> lock(impl->mu);
      impl->core->restart(world_size, attempt, reason, steady_now());
    }
    impl->http_cache.clear();
    impl->failure_reported = false;
    done.set_value();
  });
  done.get_future().wait();
}

void Coordinator::with_core(const std::function<void(CoordinatorCore&)>& fn) {
  std::lock_guard<std::mutex> lock(impl_->mu);
  fn(*impl_->core);
}

std::string local_hostname() {
  char buf[256] = {0};
  ::gethostname(buf, sizeof(buf) - 1);
  return buf;
}

void write_endpoint_files(const Coordinator& coordinator, const std::string& run_dir, const std::string& rank_address,
                          bool launcher) {
  nlohmann::json info = {{"status_url", coordinator.status_url()},
                         {"coordinator", rank_address},
                         {"pid", ::getpid()},
                         {"host", local_hostname()}};
  if (launcher) info["launcher"] = true;
  std::error_code ec;
  std::filesystem::remove(std::filesystem::path(run_dir) / "status.json", ec);  // an earlier start's final state
  storage::write_file_atomic((std::filesystem::path(run_dir) / "coordinator.json").string(), info.dump(2) + "\n");
  const std::string token_path = (std::filesystem::path(run_dir) / "job_token").string();
  // Created 0600: the token authorises control, and run directories often live on shared file systems.
  storage::write_file_atomic(token_path, coordinator.token() + "\n", 0600);
}

void write_final_status(const Coordinator& coordinator, const std::string& run_dir) {
  try {
    storage::write_file_atomic((std::filesystem::path(run_dir) / "status.json").string(),
                               coordinator.status_json() + "\n");
  } catch (const Error& e) {
    std::fprintf(stderr, "stride: warning: cannot write the final status: %s\n", e.what());
  }
}

void remove_endpoint_file(const std::string& run_dir) {
  std::error_code ec;
  std::filesystem::remove(std::filesystem::path(run_dir) / "coordinator.json", ec);
}

}  // namespace stride::cluster
