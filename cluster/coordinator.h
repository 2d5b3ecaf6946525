// The job coordinator: a Boost.Asio server on its own thread and io_context that ranks connect to
// (length-prefixed protobuf frames, cluster/wire.h) and the HTTP status endpoint (Boost.Beast): GET /status,
// /history, /metrics (Prometheus), /healthz, / (dashboard); POST /checkpoint and /stop proving the job token
// (Note [HTTP control requests] in cluster/auth.h; a bearer token only from loopback). Both listen on 127.0.0.1 unless
// told otherwise; the status endpoint answers only requests whose Host header names this machine
// (CoordinatorOptions::status_hosts).
//
// The logic (liveness, checkpoint commit, what the endpoint shows) is CoordinatorCore; this class owns the
// sockets and feeds it (its parts: cluster/coordinator_impl.h). MANIFESTs are written on a thread of their own, so
// a slow disk delays neither heartbeats nor the endpoint. Bad peers (wrong token, oversized or malformed frames,
// unknown ranks, silent connections, too many connections) are rejected, counted and logged; they never stop the
// server. All public methods are thread-safe.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "cluster/coordinator_core.h"

namespace stride::cluster {

struct CoordinatorOptions {
  CoreOptions core;
  std::string bind = "127.0.0.1";  // rank listener
  uint16_t port = 0;               // 0: any free port
  std::string status_bind = "127.0.0.1";
  int status_port = 0;               // -1: no HTTP endpoint; 0: any free port
  bool status_port_fallback = true;  // the port is taken: use a free one (and say so) instead of failing
  // Host names the status endpoint answers to besides localhost, 127.0.0.1, ::1, this machine's name,
  // status_bind and the address a request arrived on (any port: SSH tunnels keep working). Any other Host header gets
  // 421 Misdirected Request, so a web page that rebinds its own name to this address cannot read or control the job.
  std::vector<std::string> status_hosts;
  size_t max_http_connections = 64;
  double hello_timeout_s = 10.0;  // a connection must authenticate within this
  double http_timeout_s = 10.0;
  // Called once, on the coordinator thread, when a rank is declared dead (the job failed).
  std::function<void(const std::string&)> on_failure;
  // Called on the coordinator thread for every command sent to all ranks (tests, the launcher).
  std::function<void(const proto::Command&)> on_broadcast;
};

class Coordinator {
 public:
  // Binds both listeners and starts the thread. Throws stride::Error when a port cannot be bound.
  explicit Coordinator(CoordinatorOptions options);
  ~Coordinator();
  Coordinator(const Coordinator&) = delete;
  Coordinator& operator=(const Coordinator&) = delete;

  std::string address() const;  // host:port for ranks
  uint16_t port() const;
  int status_port() const;         // -1 when off
  std::string status_url() const;  // http://host:port/ ("" when off)
  const std::string& token() const;

  void request(proto::Command::Kind kind, const std::string& reason);
  std::optional<std::string> failure() const;
  bool finished() const;
  uint64_t last_committed_step() const;
  std::string status_json() const;
  void set_restarts(int restarts);
  // A new start of the job: closes every rank connection and resets the core (CoordinatorCore::restart).
  void restart(uint32_t world_size, uint32_t attempt, const std::string& reason);
  // Runs `fn` with the core under the coordinator's lock (tests and the launcher inspect state this way).
  void with_core(const std::function<void(CoordinatorCore&)>& fn);

 private:
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

// This machine's host name.
std::string local_hostname();
// RUN/coordinator.json (status URL, the ranks' address `rank_address`, pid, host; `launcher`: written by stride
// launch) and RUN/job_token (mode 0600: it authorises POST /checkpoint and /stop), for `stride status`.
void write_endpoint_files(const Coordinator& coordinator, const std::string& run_dir, const std::string& rank_address,
                          bool launcher);
// Removes RUN/coordinator.json, which describes a live job, at the job's end.
void remove_endpoint_file(const std::string& run_dir);
// RUN/status.json: the /status JSON as the job ends (state finished, stopped or failed, the last metrics), which
// `stride status` shows once the endpoint is gone.
void write_final_status(const Coordinator& coordinator, const std::string& run_dir);

}  // namespace stride::cluster
