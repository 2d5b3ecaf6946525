// The hang verdict: which rank(s) the others wait for, from the flight recorders' progress in the ranks'
// heartbeats. Pure function, no clock: the coordinator (cluster/coordinator_core.h) calls it on every tick.
//
// Note [Hang verdict]
// Each rank numbers its collectives per stream 1, 2, 3, ... (Note [Collective streams] in comm/flight_recorder.h),
// so #k is the same collective on every rank. Per stream, among the ranks still reachable:
// 1. Nothing is reported until some rank has had a collective open for `report_after_s` (--hang-report-after).
// 2. k = 1 + the smallest newest-entered number. Ranks that entered #k wait in it (they cannot complete it
//    without the others); ranks whose newest is below k never entered it: they are the ones named. #k's kind and
//    origin come from a rank waiting in it ("allreduce #183, bucket 4 of step 91").
// 3. When every reachable rank entered the same collectives and one stays open, the collective itself does not
//    complete (a transport problem, or a peer that is unreachable): said so, naming the unreachable ranks.
// A rank that is dead, disconnected or silent is reported as such with the last collective it was seen entering;
// it is never waited on (its progress is stale). The asynchronous stream is examined first.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "proto/cluster.pb.h"

namespace stride::cluster {

struct RankProgress {
  uint32_t rank = 0;
  std::string host;
  bool reachable = true;
  std::string unreachable_why;  // "dead: no heartbeat for 31.0 s", "no heartbeat for 4.2 s"
  double heartbeat_age_s = 0;   // seconds since its last heartbeat (open_seconds grew by this much since)
  std::vector<proto::CollectiveProgress> streams;
};

struct HangVerdict {
  uint32_t stream = 0;
  uint64_t seq = 0;
  std::string kind, origin;           // of #seq; empty when no waiting rank reported it
  std::vector<uint32_t> missing;      // reachable ranks that never entered #seq
  std::vector<uint32_t> waiting;      // ranks inside #seq
  std::vector<uint32_t> unreachable;  // dead, disconnected or silent
  double wait_seconds = 0;            // how long the waiting ranks have waited in #seq
  std::string message;                // one line for the log, /status and `stride status`
  // Identifies the verdict so each is logged once: stream, sequence number and the ranks named.
  std::string key() const;
};

// `report_after_s` 0: report any open collective (the coordinator has declared a rank dead).
std::optional<HangVerdict> hang_verdict(const std::vector<RankProgress>& ranks, double report_after_s);

// "0", "0-2", "0-2 and 4-7".
std::string rank_ranges(const std::vector<uint32_t>& ranks);

}  // namespace stride::cluster
