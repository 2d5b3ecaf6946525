// The HTTP/1.1 client of `stride status` and the tests, on Boost.Beast: Beast's parser handles Content-Length,
// chunked transfer encoding and a body limit; one deadline covers the whole request (resolve, connect, send,
// read), so a server that trickles bytes cannot stretch it. One connection per request (Connection: close).
#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include <chrono>
#include <optional>

#include "cluster/auth.h"
#include "cluster/client.h"
#include "common/error.h"

namespace stride::cluster {
namespace {
namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

struct Url {
  std::string hostport, host, port, path;
};

Url parse_url(const std::string& url) {
  const std::string prefix = "http://";
  if (url.rfind(prefix, 0) != 0) throw UsageError(concat("'", url, "' is not an http:// URL"));
  const std::string rest = url.substr(prefix.size());
  const auto slash = rest.find('/');
  Url u;
  u.hostport = rest.substr(0, slash);
  u.path = slash == std::string::npos ? "/" : rest.substr(slash);
  if (u.hostport.empty()) throw UsageError(concat("'", url, "' has no host"));
  if (u.hostport.front() == '[') {  // [::1]:8080
    const auto close = u.hostport.find(']');
    if (close == std::string::npos) throw UsageError(concat("'", url, "': unterminated IPv6 address"));
    u.host = u.hostport.substr(1, close - 1);
    u.port = close + 1 < u.hostport.size() && u.hostport[close + 1] == ':' ? u.hostport.substr(close + 2) : "80";
  } else {
    const auto colon = u.hostport.rfind(':');
    u.host = colon == std::string::npos ? u.hostport : u.hostport.substr(0, colon);
    u.port = colon == std::string::npos ? "80" : u.hostport.substr(colon + 1);
  }
  if (u.port.empty() || u.port.find_first_not_of("0123456789") != std::string::npos) {
    throw UsageError(concat("'", url, "': the port is not a number"));
  }
  return u;
}

}  // namespace

HttpResponse http_request(const std::string& method, const std::string& url, const std::string& body,
                          const std::string& bearer_token, double timeout_s, size_t max_body_bytes) {
  return http_request_authorized(method, url, body, bearer_token.empty() ? "" : "Bearer " + bearer_token, timeout_s,
                                 max_body_bytes);
}

HttpResponse http_post_signed(const std::string& url, const std::string& token, double timeout_s) {
  const HttpResponse challenge = http_request_authorized("POST", url, "", "Stride-HMAC", timeout_s);
  if (challenge.status != 401) return challenge;
  std::string nonce, mac;
  if (!auth::parse_hmac_authorization(challenge.www_authenticate, &nonce, &mac) || nonce.empty()) {
    throw Error(concat(url, ": the server offers no Stride-HMAC challenge (WWW-Authenticate: '",
                       challenge.www_authenticate, "'): is it a Stride status endpoint of protocol version 2?"));
  }
  std::string path = parse_url(url).path;
  path = path.substr(0, path.find('?'));  // the server's MAC covers the path without the query
  const std::string header =
      concat("Stride-HMAC nonce=\"", nonce, "\", mac=\"", auth::http_request_mac(token, "POST", path, nonce), "\"");
  return http_request_authorized("POST", url, "", header, timeout_s);
}

HttpResponse http_request_authorized(const std::string& method, const std::string& url, const std::string& body,
                                     const std::string& authorization, double timeout_s, size_t max_body_bytes) {
  const Url u = parse_url(url);
  const http::verb verb = http::string_to_verb(method);
  if (verb == http::verb::unknown) throw UsageError(concat("'", method, "' is not an HTTP method"));

  http::request<http::string_body> req{verb, u.path, 11};
  req.set(http::field::host, u.hostport);
  req.set(http::field::user_agent, "stride");
  req.set(http::field::connection, "close");
  if (!authorization.empty()) req.set(http::field::authorization, authorization);
  req.body() = body;
  if (!body.empty() || verb == http::verb::post) req.prepare_payload();

  asio::io_context ioc;
  tcp::resolver resolver(ioc);
  beast::tcp_stream stream(ioc);
  beast::flat_buffer buffer;
  http::response_parser<http::string_body> parser;
  parser.header_limit(64 * 1024);
  parser.body_limit(max_body_bytes);

  // One deadline for the whole request, not per operation: when it passes, whatever is pending (resolve, connect,
  // write or read) is cancelled, however steadily a slow server trickles bytes.
  const auto timeout = std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000));
  asio::steady_timer deadline(ioc);
  deadline.expires_after(timeout);
  bool timed_out = false;
  deadline.async_wait([&](const boost::system::error_code& ec) {
    if (ec) return;
    timed_out = true;
    resolver.cancel();
    stream.cancel();
  });
  std::optional<beast::error_code> failure;
  const char* stage = "resolving the host";
  auto finish = [&](beast::error_code ec) {
    failure = ec;
    deadline.cancel();
  };
  resolver.async_resolve(u.host, u.port, [&](beast::error_code ec, tcp::resolver::results_type results) {
    if (ec) return finish(ec);
    stage = "connecting";
    stream.async_connect(results, [&](beast::error_code ec2, const tcp::endpoint&) {
      if (ec2) return finish(ec2);
      stage = "sending the request";
      http::async_write(stream, req, [&](beast::error_code ec3, size_t) {
        if (ec3) return finish(ec3);
        stage = "reading the answer";
        // The header alone first: Boost 1.74's parser, reading eagerly (as async_read does), goes on into a body
        // that arrived with the header without looking at the body_limit error its header check set, and reads
        // a Content-Length body of any size whole (boostorg/beast#2183). Read non-eagerly (async_read_header),
        // the header check stops there; the body then cannot outgrow the Content-Length it was checked against,
        // and chunked or to-EOF bodies are checked as they arrive.
        http::async_read_header(stream, buffer, parser, [&](beast::error_code ec4, size_t) {
          if (ec4) return finish(ec4);
          http::async_read(stream, buffer, parser, [&](beast::error_code ec5, size_t) { finish(ec5); });
        });
      });
    });
  });
  ioc.run();
  beast::error_code ignored;
  stream.socket().shutdown(tcp::socket::shutdown_both, ignored);

  const beast::error_code ec = failure.value_or(beast::error_code{});
  if (timed_out || ec == beast::error::timeout) {
    throw Error(concat(url, ": no complete answer within ", timeout_s, " s (", stage, ")"));
  }
  if (ec == http::error::body_limit) {
    throw Error(concat(url, ": the answer's body exceeds the limit of ", max_body_bytes, " bytes"));
  }
  if (ec == http::error::partial_message || ec == http::error::end_of_stream) {
    throw Error(concat(url, ": the server closed the connection before the whole answer (", stage, ")"));
  }
  if (ec) throw Error(concat(url, ": ", stage, " failed: ", ec.message()));

  auto res = parser.release();
  HttpResponse r;
  r.status = static_cast<int>(res.result_int());
  r.content_type = std::string(res[http::field::content_type]);
  r.www_authenticate = std::string(res[http::field::www_authenticate]);
  r.body = std::move(res.body());
  return r;
}

}  // namespace stride::cluster
