#include "data/http_fetch.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <optional>
#include <random>
#include <thread>

extern char** environ;

namespace stride::data {
namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace ssl = asio::ssl;
using tcp = asio::ip::tcp;

namespace {

std::string prefix(const std::string& who) { return who.empty() ? std::string() : who + ": "; }

// One attempt's outcome: a body, or a failure that is transient (retry) or final.
struct Attempt {
  std::optional<std::string> body;
  bool transient = false;
  std::string failure;
};

}  // namespace

HttpUrl parse_http_url(const std::string& url) {
  HttpUrl u;
  std::string rest;
  if (url.rfind("https://", 0) == 0) {
    u.tls = true;
    rest = url.substr(8);
  } else if (url.rfind("http://", 0) == 0) {
    rest = url.substr(7);
  } else {
    throw UsageError(concat(url, " is not an http:// or https:// URL"));
  }
  const size_t slash = rest.find('/');
  const std::string authority = rest.substr(0, slash);
  u.target = slash == std::string::npos ? "/" : rest.substr(slash);
  const size_t colon = authority.rfind(':');
  if (colon != std::string::npos && authority.find(']') == std::string::npos) {
    u.host = authority.substr(0, colon);
    u.port = authority.substr(colon + 1);
  } else {
    u.host = authority;
    u.port = u.tls ? "443" : "80";
  }
  if (u.host.empty() || u.port.empty() || u.port.find_first_not_of("0123456789") != std::string::npos) {
    throw UsageError(concat(url, ": cannot parse host and port"));
  }
  return u;
}

struct HttpFetcher::Impl {
  explicit Impl(const FetchOptions& o) : options(o) {}
  const FetchOptions& options;
  asio::io_context ioc;
  beast::tcp_stream stream{ioc};
  std::unique_ptr<ssl::context> tls_context;                  // made on the first https:// URL
  std::unique_ptr<beast::ssl_stream<beast::tcp_stream>> tls;  // the connection, when it is https://
  beast::flat_buffer buffer;
  bool connected = false;
  bool connected_tls = false;
  bool name_mismatch = false;  // the last handshake's chain verified but its certificate names another host
  std::string host, port;

  void close() {
    beast::error_code ignored;
    auto& socket = tls ? beast::get_lowest_layer(*tls).socket() : stream.socket();
    socket.shutdown(tcp::socket::shutdown_both, ignored);
    socket.close(ignored);
    tls.reset();
    connected = false;
    buffer.clear();
  }

  // Runs the initiated asynchronous operation to completion; the stream's expiry turns a hang into
  // error::timeout (synchronous Beast calls ignore expiry, hence the asynchronous form).
  void run() {
    ioc.restart();
    ioc.run();
  }

  ssl::context& context() {
    if (!tls_context) {
      auto c = std::make_unique<ssl::context>(ssl::context::tls_client);
      beast::error_code ec;
      if (options.ca_file.empty()) {
        c->set_default_verify_paths(ec);
      } else {
        c->load_verify_file(options.ca_file, ec);
      }
      if (ec) {
        throw Error(concat(prefix(options.who), "cannot load the trusted certificates ",
                           options.ca_file.empty() ? std::string("(OpenSSL's default store)") : options.ca_file, ": ",
                           ec.message()));
      }
      c->set_verify_mode(ssl::verify_peer);
      tls_context = std::move(c);
    }
    return *tls_context;
  }

  // Connects (and for https:// shakes hands) unless the kept-alive connection goes to the same place.
  std::optional<Attempt> connect(const HttpUrl& u, std::chrono::milliseconds timeout, bool* reused) {
    beast::error_code ec;
    *reused = connected && host == u.host && port == u.port && connected_tls == u.tls;
    if (*reused) return std::nullopt;
    close();
    tcp::resolver resolver(ioc);
    auto results = resolver.resolve(u.host, u.port, ec);
    if (ec) return Attempt{std::nullopt, true, concat("cannot resolve ", u.host, ": ", ec.message())};
    if (u.tls) {
      tls = std::make_unique<beast::ssl_stream<beast::tcp_stream>>(ioc, context());
      // SNI, and the certificate must name this host (RFC 6125 rules, OpenSSL's X509_check_host).
      if (!SSL_set_tlsext_host_name(tls->native_handle(), u.host.c_str())) {
        return Attempt{std::nullopt, false, "cannot set the TLS server name"};
      }
      name_mismatch = false;
      tls->set_verify_callback(
          [this, check = ssl::host_name_verification(u.host)](bool preverified, ssl::verify_context& ctx) mutable {
            if (!preverified) return false;
            const bool ok = check(preverified, ctx);
            if (!ok) name_mismatch = true;
            return ok;
          });
    }
    auto& lowest = tls ? beast::get_lowest_layer(*tls) : stream;
    lowest.expires_after(timeout);
    lowest.async_connect(results, [&](beast::error_code e, const tcp::endpoint&) { ec = e; });
    run();
    if (ec) {
      close();
      return Attempt{std::nullopt, true, concat("cannot connect: ", ec.message())};
    }
    if (tls) {
      lowest.expires_after(timeout);
      tls->async_handshake(ssl::stream_base::client, [&](beast::error_code e) { ec = e; });
      run();
      if (ec) {
        // A certificate that does not verify stays so: not worth retrying.
        const bool verify = ec.category() == asio::error::get_ssl_category() &&
                            ERR_GET_REASON(static_cast<unsigned long>(ec.value())) == SSL_R_CERTIFICATE_VERIFY_FAILED;
        std::string why = ec.message();
        if (verify) {
          const long result = SSL_get_verify_result(tls->native_handle());
          why = concat("the server's certificate ",
                       name_mismatch ? concat("does not name ", u.host)
                                     : concat("does not verify (", X509_verify_cert_error_string(result), ")"),
                       "; a private CA is trusted through SSL_CERT_FILE");
        }
        close();
        return Attempt{std::nullopt, !verify, concat("TLS handshake failed: ", why)};
      }
    }
    connected = true;
    connected_tls = u.tls;
    host = u.host;
    port = u.port;
    return std::nullopt;
  }

  // One GET. `partial` holds bytes of the body kept from an earlier attempt, with its validator (Note [Range
  // resume]); it is extended (or replaced) by what this attempt receives, even when the attempt fails.
  template <class Stream>
  Attempt exchange(Stream& s, const HttpUrl& u, uint64_t max_size, std::chrono::milliseconds timeout,
                   std::string* partial, std::string* validator, uint64_t* resumed) {
    beast::error_code ec;
    auto& lowest = beast::get_lowest_layer(s);
    http::request<http::empty_body> req{http::verb::get, u.target, 11};
    req.set(http::field::host, u.host + ":" + u.port);
    req.set(http::field::user_agent, "stride");
    req.keep_alive(true);
    const uint64_t have = validator->empty() ? 0 : partial->size();
    if (have > 0) {
      req.set(http::field::range, concat("bytes=", have, "-"));
      req.set(http::field::if_range, *validator);
    }
    lowest.expires_after(timeout);
    http::async_write(s, req, [&](beast::error_code e, size_t) { ec = e; });
    run();
    if (ec) {
      close();
      return {std::nullopt, true, concat("sending the request failed: ", ec.message())};
    }
    http::response_parser<http::string_body> parser;
    parser.body_limit(max_size);
    lowest.expires_after(timeout);
    http::async_read(s, buffer, parser, [&](beast::error_code e, size_t) { ec = e; });
    run();
    const unsigned status = parser.is_header_done() ? parser.get().result_int() : 0;
    if (ec == http::error::body_limit) {
      close();
      return {std::nullopt, false, concat("the response is larger than the expected ", max_size, " bytes")};
    }
    // What this response carries of the object: the whole (200) or the rest after `have` bytes (206).
    if (status == 206) {
      const std::string range(parser.get()[http::field::content_range]);
      if (have == 0 || range.rfind(concat("bytes ", have, "-"), 0) != 0) {
        close();
        partial->clear();
        validator->clear();
        return {std::nullopt, true, concat("unexpected Content-Range '", range, "'")};
      }
    }
    if (status == 200 || status == 206) {
      auto& body = parser.get().body();
      if (status == 200) {
        partial->clear();
        const auto etag = parser.get()[http::field::etag];
        const auto modified = parser.get()[http::field::last_modified];
        // A weak ETag cannot validate a range (RFC 9110 13.1.5).
        *validator = !etag.empty() && etag.substr(0, 2) != "W/" ? std::string(etag) : std::string(modified);
      } else {
        *resumed += have;
      }
      if (partial->size() + body.size() > max_size) {
        close();
        return {std::nullopt, false, concat("the response is larger than the expected ", max_size, " bytes")};
      }
      if (!ec) {  // complete: a whole body goes out as it is (no copy), a rest after the kept part
        if (!parser.get().keep_alive()) close();
        validator->clear();
        if (status == 200) return {std::move(body), false, ""};
        partial->append(body);
        std::string whole;
        whole.swap(*partial);
        return {std::move(whole), false, ""};
      }
      partial->append(body);  // cut short: kept for the next attempt's Range
    }
    if (ec) {
      close();
      // partial_message: the connection ended before Content-Length bytes arrived (a short read).
      return {std::nullopt, true,
              ec == http::error::partial_message ? std::string("short read: the body ended before its Content-Length")
                                                 : concat("reading the response failed: ", ec.message())};
    }
    if (!parser.get().keep_alive()) close();
    const auto reason = parser.get().reason();
    const std::string what = concat("HTTP ", status, " ", std::string(reason.data(), reason.size()));
    if (status == 416) {  // the kept part no longer fits the object: start again
      partial->clear();
      validator->clear();
      return {std::nullopt, true, what};
    }
    return {std::nullopt, status >= 500 || status == 429, what};
  }

  Attempt once(const HttpUrl& u, uint64_t max_size, double timeout_s, bool* reused, std::string* partial,
               std::string* validator, uint64_t* resumed) {
    const auto timeout = std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000));
    if (auto failed = connect(u, timeout, reused)) return std::move(*failed);
    return tls ? exchange(*tls, u, max_size, timeout, partial, validator, resumed)
               : exchange(stream, u, max_size, timeout, partial, validator, resumed);
  }
};

HttpFetcher::HttpFetcher(FetchOptions options) : options_(std::move(options)) {
  impl_ = std::make_unique<Impl>(options_);
}
HttpFetcher::~HttpFetcher() = default;

std::string HttpFetcher::get(const std::string& url, uint64_t max_size) {
  const HttpUrl u = parse_http_url(url);
  thread_local std::mt19937_64 jitter{std::random_device{}()};
  std::uniform_real_distribution<double> factor(0.5, 1.5);
  std::string last, partial, validator;
  int failures = 0;
  bool stale_retry_used = false;
  while (true) {
    bool reused = false;
    Attempt a = impl_->once(u, max_size, options_.timeout_s, &reused, &partial, &validator, &resumed_bytes_);
    if (a.body) return std::move(*a.body);
    last = a.failure;
    if (!a.transient) throw Error(concat(prefix(options_.who), "cannot fetch ", url, ": ", last));
    // A kept-alive connection the server closed while idle fails on first use: retry at once, once.
    if (reused && !stale_retry_used) {
      stale_retry_used = true;
      continue;
    }
    if (failures >= options_.retries) break;
    if (options_.cancel && options_.cancel->load()) break;
    const double delay = options_.backoff_s * std::pow(2.0, failures) * factor(jitter);
    const std::string kept =
        validator.empty() || partial.empty() ? std::string() : concat(", ", partial.size(), " bytes kept");
    std::fprintf(stderr, "stride: warning: %sfetching %s failed (%s%s); retry %d of %d in %.2f s\n",
                 prefix(options_.who).c_str(), url.c_str(), last.c_str(), kept.c_str(), failures + 1, options_.retries,
                 delay);
    ++failures;
    ++retried_;
    // Sleep in short slices so a cancelled fetch (the loader shutting down) returns promptly.
    const auto until = std::chrono::steady_clock::now() + std::chrono::duration<double>(delay);
    while (std::chrono::steady_clock::now() < until && !(options_.cancel && options_.cancel->load())) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
  throw Error(concat(prefix(options_.who), "cannot fetch ", url, " after ", failures + 1, " attempts: ", last));
}

std::string run_pipe(const std::string& command, uint64_t max_size, const std::string& who) {
  int out[2], err[2];
  if (::pipe2(out, O_CLOEXEC) != 0 || ::pipe2(err, O_CLOEXEC) != 0) {
    throw Error(concat(prefix(who), "pipe() failed: ", std::strerror(errno)));
  }
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, out[1], 1);
  posix_spawn_file_actions_adddup2(&actions, err[1], 2);
  const char* argv[] = {"sh", "-c", command.c_str(), nullptr};
  pid_t pid = 0;
  const int rc = ::posix_spawn(&pid, "/bin/sh", &actions, nullptr, const_cast<char**>(argv), environ);
  posix_spawn_file_actions_destroy(&actions);
  ::close(out[1]);
  ::close(err[1]);
  if (rc != 0) {
    ::close(out[0]);
    ::close(err[0]);
    throw Error(concat(prefix(who), "cannot start `", command, "`: ", std::strerror(rc)));
  }
  std::string body, errors;
  bool too_big = false;
  pollfd fds[2] = {{out[0], POLLIN, 0}, {err[0], POLLIN, 0}};
  int open_fds = 2;
  char buf[1 << 16];
  while (open_fds > 0) {
    if (::poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      break;
    }
    for (auto& p : fds) {
      if (p.fd < 0 || !(p.revents & (POLLIN | POLLHUP | POLLERR))) continue;
      const ssize_t n = ::read(p.fd, buf, sizeof(buf));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        ::close(p.fd);
        p.fd = -1;
        --open_fds;
        continue;
      }
      if (p.fd == out[0]) {
        if (body.size() + static_cast<size_t>(n) > max_size) {
          too_big = true;
          ::kill(pid, SIGTERM);
        } else {
          body.append(buf, static_cast<size_t>(n));
        }
      } else {
        errors.append(buf, static_cast<size_t>(n));
        if (errors.size() > 8192) errors.erase(0, errors.size() - 4096);  // keep the end: where the cause is
      }
    }
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  while (!errors.empty() && (errors.back() == '\n' || errors.back() == '\r')) errors.pop_back();
  const std::string tail = errors.empty() ? std::string() : concat("; stderr: ", errors);
  if (too_big) throw Error(concat(prefix(who), "`", command, "` wrote more than the expected ", max_size, " bytes"));
  if (WIFSIGNALED(status)) {
    throw Error(concat(prefix(who), "`", command, "` was killed by signal ", WTERMSIG(status), tail));
  }
  if (WEXITSTATUS(status) != 0) {
    throw Error(concat(prefix(who), "`", command, "` failed with exit code ", WEXITSTATUS(status), tail));
  }
  return body;
}

}  // namespace stride::data
