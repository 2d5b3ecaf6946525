// `stride bench http`: a steady load of GET requests on a status endpoint (one connection per request, as
// simple scrapers do), cheap enough on the client side that bench/status_load.sh measures the endpoint's cost
// to training rather than the load generator's. Prints requests, failures and latency percentiles.
#include <signal.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <thread>

#include "cluster/client.h"
#include "common/error.h"

namespace stride::bench {
namespace {

struct HttpArgs {
  std::string url;
  double rate = 100.0;
  double seconds = 10.0;
  int64_t until_pid = 0;  // stop when this process is gone
};

void run(const HttpArgs& a) {
  std::string base = a.url;
  if (base.empty()) throw UsageError("--url is required");
  if (base.back() != '/') base += '/';
  const char* paths[] = {"status", "metrics", "history", "healthz", ""};
  std::vector<double> latency;
  int64_t failed = 0;
  const auto t0 = std::chrono::steady_clock::now();
  for (int64_t n = 0;; ++n) {
    const auto due = t0 + std::chrono::duration<double>(static_cast<double>(n) / a.rate);
    std::this_thread::sleep_until(due);
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (elapsed >= a.seconds) break;
    if (a.until_pid > 0 && ::kill(static_cast<pid_t>(a.until_pid), 0) != 0) break;
    const auto s = std::chrono::steady_clock::now();
    try {
      if (cluster::http_request("GET", base + paths[n % 5], "", "", 5.0).status != 200) ++failed;
    } catch (const Error&) {
      ++failed;
    }
    latency.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - s).count());
  }
  const double total = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::sort(latency.begin(), latency.end());
  auto pct = [&](double p) {
    return latency.empty() ? 0.0 : latency[std::min(latency.size() - 1, static_cast<size_t>(p * latency.size()))];
  };
  std::printf("%zu requests in %.1f s (%.1f/s), %lld failed; latency p50 %.2f ms, p99 %.2f ms\n", latency.size(), total,
              static_cast<double>(latency.size()) / total, static_cast<long long>(failed), pct(0.5) * 1e3,
              pct(0.99) * 1e3);
}

}  // namespace

void add_http_bench(CLI::App& bench) {
  auto a = std::make_shared<HttpArgs>();
  auto* cmd = bench.add_subcommand("http", "Steady GET load on a status endpoint (for bench/status_load.sh)");
  cmd->add_option("--url", a->url, "Status endpoint, e.g. http://127.0.0.1:8470/")->required();
  cmd->add_option("--rate", a->rate, "Requests per second")->capture_default_str();
  cmd->add_option("--seconds", a->seconds, "Duration")->capture_default_str();
  cmd->add_option("--until-pid", a->until_pid, "Stop when this process exits");
  cmd->callback([a] { run(*a); });
}

}  // namespace stride::bench
