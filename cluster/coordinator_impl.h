// Internal to the coordinator, not a public header: the state that its three parts share.
//   coordinator.cpp    the public API, the io thread and its tick, the MANIFEST writer thread;
//   rank_server.cpp    the ranks' connections: handshake, frames in, commands out;
//   status_server.cpp  the HTTP endpoint: routes, Host check, signed control requests.
// Everything marked "io thread only" is touched by the io thread alone; `mu` guards the core.
#pragma once

#include <boost/asio.hpp>

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>

#include "cluster/coordinator.h"

namespace stride::cluster {
namespace asio = boost::asio;
using tcp = asio::ip::tcp;

inline double steady_now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
inline double wall_now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

struct Coordinator::Impl : std::enable_shared_from_this<Coordinator::Impl> {
  CoordinatorOptions o;
  asio::io_context ioc;
  tcp::acceptor ranks_acceptor{ioc};
  tcp::acceptor http_acceptor{ioc};
  asio::steady_timer tick_timer{ioc};
  asio::steady_timer ranks_accept_retry{ioc}, http_accept_retry{ioc};  // back-off after a failed accept
  std::thread thread;
  // Writes MANIFESTs (Note [Coordinated checkpoints], point 4 in cluster/coordinator_core.h): one thread, so commits
  // land in the order their reports completed, and neither the io thread nor `mu` waits for a disk.
  asio::thread_pool writer{1};
  mutable std::mutex mu;  // guards core (the io thread, the writer and callers of the public methods)
  std::unique_ptr<CoordinatorCore> core;
  int http_port = -1;
  bool failure_reported = false;
  // Io thread only: stop() ran. A timer or accept completion already queued when stop() cancelled it still runs
  // with success; it must not arm itself again, or the io thread never runs out of work and stop() never returns.
  bool stopping = false;
  bool accept_failing = false;  // io thread only: an accept failed, not yet one succeeded since
  static constexpr int kAcceptRetryMs = 100;

  struct RankSession;                                        // rank_server.cpp
  std::map<uint32_t, std::shared_ptr<RankSession>> by_rank;  // io thread only
  std::set<std::shared_ptr<RankSession>> sessions;           // io thread only
  size_t http_sessions = 0;                                  // io thread only
  struct HttpSession;                                        // status_server.cpp
  std::set<HttpSession*> http_open;                          // io thread only
  struct CachedDoc {
    double at = 0;
    std::string body;
  };
  std::map<std::string, CachedDoc> http_cache;  // io thread only
  // Note [HTTP control requests] in cluster/auth.h: outstanding nonces (hex) and when each expires.
  std::map<std::string, double> http_nonces;  // io thread only
  static constexpr size_t kMaxHttpNonces = 256;
  static constexpr double kHttpNonceSeconds = 60.0;

  explicit Impl(CoordinatorOptions options) : o(std::move(options)) {}

  // coordinator.cpp: the io thread, the writer, the tick.
  void listen(tcp::acceptor& acc, const std::string& host, uint16_t port);
  void start();
  void stop();
  // Runs on the io thread under `mu` (from CoordinatorCore::report); the writer gives the result back under `mu`
  // and the io thread sends what it queued.
  void publish_on_writer(PublishJob job);
  // An accept failed (EMFILE, ENFILE, ENOBUFS: out of descriptors or memory). Accepting again at once would fail
  // again at once and spin the io thread; wait a little, and say so once per episode.
  void accept_later(asio::steady_timer& timer, const boost::system::error_code& ec, std::function<void()> again);
  void tick();

  // rank_server.cpp: the ranks' connections. Io thread only.
  void accept_ranks();
  void flush();                   // sends what the core queued
  void close_rank_connections();  // every connection, authenticated or not (stop)
  void drop_ranks();              // the ranks' connections (a new start)

  // status_server.cpp: the HTTP endpoint. Io thread only.
  void accept_http();
  void close_http_connections();
  std::string issue_http_nonce(double now);
  bool take_http_nonce(const std::string& nonce, double now);  // true once per issued, unexpired nonce
};

}  // namespace stride::cluster
