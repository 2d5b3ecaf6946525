#include "data/http_fetch.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
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
  if (url.rfind("https://", 0) == 0) {
    throw UsageError(concat(url, ": https is not built in; use --data-path 'pipe:curl -sf ", url,
                            "/{split}/{shard}' or a plain-HTTP proxy on the host"));
  }
  const std::string scheme = "http://";
  if (url.rfind(scheme, 0) != 0) throw UsageError(concat(url, " is not an http:// URL"));
  const std::string rest = url.substr(scheme.size());
  const size_t slash = rest.find('/');
  const std::string authority = rest.substr(0, slash);
  HttpUrl u;
  u.target = slash == std::string::npos ? "/" : rest.substr(slash);
  const size_t colon = authority.rfind(':');
  if (colon != std::string::npos && authority.find(']') == std::string::npos) {
    u.host = authority.substr(0, colon);
    u.port = authority.substr(colon + 1);
  } else {
    u.host = authority;
    u.port = "80";
  }
  if (u.host.empty() || u.port.empty() || u.port.find_first_not_of("0123456789") != std::string::npos) {
    throw UsageError(concat(url, ": cannot parse host and port"));
  }
  return u;
}

struct HttpFetcher::Impl {
  asio::io_context ioc;
  beast::tcp_stream stream{ioc};
  beast::flat_buffer buffer;
  bool connected = false;
  std::string host, port;

  void close() {
    beast::error_code ignored;
    stream.socket().shutdown(tcp::socket::shutdown_both, ignored);
    stream.socket().close(ignored);
    connected = false;
    buffer.clear();
  }

  // Runs the initiated asynchronous operation to completion; the stream's expiry turns a hang into
  // error::timeout (synchronous Beast calls ignore expiry, hence the asynchronous form).
  void run() {
    ioc.restart();
    ioc.run();
  }

  Attempt once(const HttpUrl& u, uint64_t max_size, double timeout_s, bool* reused) {
    const auto timeout = std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000));
    beast::error_code ec;
    *reused = connected && host == u.host && port == u.port;
    if (!*reused) {
      close();
      tcp::resolver resolver(ioc);
      auto results = resolver.resolve(u.host, u.port, ec);
      if (ec) return {std::nullopt, true, concat("cannot resolve ", u.host, ": ", ec.message())};
      stream.expires_after(timeout);
      stream.async_connect(results, [&](beast::error_code e, const tcp::endpoint&) { ec = e; });
      run();
      if (ec) return {std::nullopt, true, concat("cannot connect: ", ec.message())};
      connected = true;
      host = u.host;
      port = u.port;
    }
    http::request<http::empty_body> req{http::verb::get, u.target, 11};
    req.set(http::field::host, u.host + ":" + u.port);
    req.set(http::field::user_agent, "stride");
    req.keep_alive(true);
    stream.expires_after(timeout);
    http::async_write(stream, req, [&](beast::error_code e, size_t) { ec = e; });
    run();
    if (ec) {
      close();
      return {std::nullopt, true, concat("sending the request failed: ", ec.message())};
    }
    http::response_parser<http::string_body> parser;
    parser.body_limit(max_size);
    stream.expires_after(timeout);
    http::async_read(stream, buffer, parser, [&](beast::error_code e, size_t) { ec = e; });
    run();
    if (ec == http::error::body_limit) {
      close();
      return {std::nullopt, false, concat("the response is larger than the expected ", max_size, " bytes")};
    }
    if (ec) {
      close();
      // partial_message: the connection ended before Content-Length bytes arrived (a short read).
      return {std::nullopt, true,
              ec == http::error::partial_message ? std::string("short read: the body ended before its Content-Length")
                                                 : concat("reading the response failed: ", ec.message())};
    }
    auto res = parser.release();
    if (!res.keep_alive()) close();
    const unsigned status = res.result_int();
    if (status == 200) return {std::move(res.body()), false, ""};
    const auto reason = res.reason();
    const std::string what = concat("HTTP ", status, " ", std::string(reason.data(), reason.size()));
    return {std::nullopt, status >= 500 || status == 429, what};
  }
};

HttpFetcher::HttpFetcher(FetchOptions options) : impl_(std::make_unique<Impl>()), options_(std::move(options)) {}
HttpFetcher::~HttpFetcher() = default;

std::string HttpFetcher::get(const std::string& url, uint64_t max_size) {
  const HttpUrl u = parse_http_url(url);
  thread_local std::mt19937_64 jitter{std::random_device{}()};
  std::uniform_real_distribution<double> factor(0.5, 1.5);
  std::string last;
  int failures = 0;
  bool stale_retry_used = false;
  while (true) {
    bool reused = false;
    Attempt a = impl_->once(u, max_size, options_.timeout_s, &reused);
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
    std::fprintf(stderr, "stride: warning: %sfetching %s failed (%s); retry %d of %d in %.2f s\n",
                 prefix(options_.who).c_str(), url.c_str(), last.c_str(), failures + 1, options_.retries, delay);
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
