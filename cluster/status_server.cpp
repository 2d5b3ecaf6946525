// The coordinator's HTTP endpoint (cluster/coordinator_impl.h): one HttpSession per connection, Boost.Beast.
// GET /status, /history, /metrics, /healthz and the dashboard; POST /checkpoint and /stop proving the job token
// (Note [HTTP control requests] in cluster/auth.h); requests whose Host names another machine get 421.
#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include <algorithm>
#include <cctype>
#include <optional>

#include "cluster/auth.h"
#include "cluster/coordinator_impl.h"
#include "cluster/dashboard_html.h"
#include "cluster/wire.h"
#include "common/error.h"

namespace stride::cluster {
namespace beast = boost::beast;
namespace http = beast::http;

namespace {

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

namespace {

constexpr const char* kText = "text/plain; charset=utf-8";

struct Page {
  http::status status = http::status::ok;
  std::string body;
};

// What GET (and HEAD) serve: each route renders from the core under the coordinator's lock.
struct GetRoute {
  const char* path;
  const char* type;
  // Rendered documents are reused for a quarter of a second: a dashboard or a scraper polling hard costs the
  // training process a few renders per second, not one per request.
  bool cache;
  Page (*render)(const CoordinatorCore& core, double now);
};

const GetRoute kGetRoutes[] = {
    {"/status", "application/json", true,
     [](const CoordinatorCore& c, double now) {
       return Page{http::status::ok, c.status_json(now)};
     }},
    {"/history", "application/json", true,
     [](const CoordinatorCore& c, double) {
       return Page{http::status::ok, c.history_json()};
     }},
    {"/metrics", "text/plain; version=0.0.4; charset=utf-8", true,
     [](const CoordinatorCore& c, double now) {
       return Page{http::status::ok, c.metrics_text(now)};
     }},
    {"/healthz", kText, false,
     [](const CoordinatorCore& c, double) {
       if (c.failure()) return Page{http::status::service_unavailable, "failed: " + *c.failure() + "\n"};
       return Page{http::status::ok, "ok\n"};
     }},
    {"/", "text/html; charset=utf-8", false,
     [](const CoordinatorCore&, double) {
       return Page{http::status::ok, kDashboardHtml};
     }},
    {"/index.html", "text/html; charset=utf-8", false,
     [](const CoordinatorCore&, double) {
       return Page{http::status::ok, kDashboardHtml};
     }},
};

const GetRoute* find_get_route(const std::string& path) {
  for (const auto& r : kGetRoutes) {
    if (path == r.path) return &r;
  }
  return nullptr;
}

}  // namespace

struct Coordinator::Impl::HttpSession : std::enable_shared_from_this<HttpSession> {
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

  // The route's page, rendered at most every quarter second (under the coordinator's lock).
  Page cached(const std::string& path, const GetRoute& route, double now) {
    auto& c = impl->http_cache[path];
    if (c.body.empty() || now - c.at > 0.25) {
      c.body = route.render(*impl->core, now).body;
      c.at = now;
    }
    return Page{http::status::ok, c.body};
  }

  void reply_error(http::status st, const std::string& text) {
    res = {};
    res.result(st);
    res.version(11);
    res.set(http::field::content_type, kText);
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
      set(http::status::misdirected_request, kText,
          concat("misdirected request: this endpoint does not serve the host '", std::string(req[http::field::host]),
                 "'\n"));
    } else if (req.method() == http::verb::get || req.method() == http::verb::head) {
      std::lock_guard<std::mutex> lock(impl->mu);
      const auto* route = find_get_route(path);
      if (!route) {
        set(http::status::not_found, kText, "not found\n");
      } else {
        const Page page = route->cache ? cached(path, *route, now) : route->render(*impl->core, now);
        set(page.status, route->type, page.body);
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
        set(http::status::not_found, kText, "not found\n");
      } else if (!authorized) {
        bad = !asks_nonce;  // asking for a nonce is the first half of a signed request
        res.set(http::field::www_authenticate, concat("Stride-HMAC nonce=\"", impl->issue_http_nonce(now), "\""));
        set(http::status::unauthorized, kText,
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
      set(http::status::method_not_allowed, kText, "method not allowed\n");
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

void Coordinator::Impl::accept_http() {
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

void Coordinator::Impl::close_http_connections() {
  for (auto* h : http_open) h->close();
}

std::string Coordinator::Impl::issue_http_nonce(double now) {
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

bool Coordinator::Impl::take_http_nonce(const std::string& nonce, double now) {
  const auto it = http_nonces.find(nonce);
  if (it == http_nonces.end()) return false;
  const bool fresh = it->second >= now;
  http_nonces.erase(it);
  return fresh;
}

}  // namespace stride::cluster
