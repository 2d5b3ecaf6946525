// Fetching whole objects (shards, dataset indexes) from remote storage: HTTP GET over Boost.Beast and `pipe:`
// commands (WebDataset's convention: the command writes the object to stdout).
//
// HttpFetcher keeps one keep-alive connection and is not thread-safe: use one per thread. run_pipe is
// thread-safe (posix_spawn, no fork of a threaded process).
//
// Retry rule: connection failures (refused, reset, EOF), timeouts, HTTP 5xx / 429 and short bodies (fewer bytes
// than Content-Length) are transient: retried with jittered exponential back-off up to `retries` times, then an
// error naming the URL and the last failure. Any other HTTP status (404, 403, ...) is an error at once, and so is
// a TLS certificate that does not verify.
//
// Note [Range resume]: an attempt that ends after part of a 200 body arrived (a reset, a timeout, a short read)
// keeps that part, and the retry asks only for the rest: `Range: bytes=N-` with `If-Range:` the first response's
// ETag (or Last-Modified). A 206 whose Content-Range starts at N is appended; a 200 (the object changed, or the
// server ignores ranges) replaces the part. Without a validator the retry asks for the whole object. The shard
// cache checks every object against the index's CRC anyway (data/shard_source.h).
//
// https:// verifies the server's certificate chain and host name (OpenSSL, through Boost.Asio), against
// FetchOptions::ca_file or else OpenSSL's default store, which honours SSL_CERT_FILE and SSL_CERT_DIR.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "common/error.h"

namespace stride::data {

struct FetchOptions {
  double timeout_s = 60.0;  // per request attempt: connect, send and the whole response
  int retries = 6;          // further attempts after the first, on transient failures
  double backoff_s = 0.25;  // the first back-off; doubles per retry, times a random factor in [0.5, 1.5)
  std::string who;          // "rank 3", prefixed to errors
  // Set by the owner to abandon retries early (shutdown); the fetch then fails with the last error.
  const std::atomic<bool>* cancel = nullptr;
  std::string ca_file;  // PEM certificates trusted for https://; empty: OpenSSL's default store
};

struct HttpUrl {
  bool tls = false;                // https://
  std::string host, port, target;  // target: "/path?query"
};
// Parses "http(s)://host[:port][/path]". Throws UsageError naming the URL otherwise.
HttpUrl parse_http_url(const std::string& url);

class HttpFetcher {
 public:
  explicit HttpFetcher(FetchOptions options);
  ~HttpFetcher();
  HttpFetcher(const HttpFetcher&) = delete;
  HttpFetcher& operator=(const HttpFetcher&) = delete;

  // The body of GET `url`, at most `max_size` bytes (a larger body is an error). Retries transient failures
  // (header note); throws stride::Error naming the URL.
  std::string get(const std::string& url, uint64_t max_size);
  // Attempts that failed transiently and were retried, since construction.
  uint64_t retried() const { return retried_; }
  // Bytes kept from failed attempts and not fetched again (Note [Range resume]), since construction.
  uint64_t resumed_bytes() const { return resumed_bytes_; }

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  FetchOptions options_;
  uint64_t retried_ = 0, resumed_bytes_ = 0;
};

// Runs `/bin/sh -c command` and returns its stdout (at most max_size bytes). A non-zero exit, a signal or too
// much output throws stride::Error naming the command and carrying the end of its stderr.
std::string run_pipe(const std::string& command, uint64_t max_size, const std::string& who = "");

}  // namespace stride::data
