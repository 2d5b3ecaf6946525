// Fetching whole objects (shards, dataset indexes) from remote storage: HTTP GET over Boost.Beast and `pipe:`
// commands (WebDataset's convention: the command writes the object to stdout).
//
// HttpFetcher keeps one keep-alive connection and is not thread-safe: use one per thread. run_pipe is
// thread-safe (posix_spawn, no fork of a threaded process).
//
// Retry rule: connection failures (refused, reset, EOF), timeouts, HTTP 5xx / 429 and short bodies (fewer bytes
// than Content-Length) are transient: retried with jittered exponential back-off up to `retries` times, then an
// error naming the URL and the last failure. Any other HTTP status (404, 403, ...) is an error at once.
// No TLS: https:// URLs are refused with a hint to use `pipe:curl -sf URL` or a local plain-HTTP proxy.
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
};

struct HttpUrl {
  std::string host, port, target;  // target: "/path?query"
};
// Parses "http://host[:port][/path]". Throws UsageError naming the URL otherwise (https: see the header note).
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

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  FetchOptions options_;
  uint64_t retried_ = 0;
};

// Runs `/bin/sh -c command` and returns its stdout (at most max_size bytes). A non-zero exit, a signal or too
// much output throws stride::Error naming the command and carrying the end of its stderr.
std::string run_pipe(const std::string& command, uint64_t max_size, const std::string& who = "");

}  // namespace stride::data
