#include "cluster/hang_verdict.h"

#include <algorithm>
#include <cstdint>
#include <cstdio>

#include "common/error.h"

namespace stride::cluster {
namespace {

const proto::CollectiveProgress* stream_of(const RankProgress& r, uint32_t stream) {
  for (const auto& s : r.streams) {
    if (s.stream() == stream) return &s;
  }
  return nullptr;
}

std::string collective(const std::string& kind, uint64_t seq, uint32_t stream) {
  return concat(kind.empty() ? "collective" : kind, " #", seq, stream == 1 ? " (blocking)" : "");
}

std::string whole_seconds(double s) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), s < 10 ? "%.1f" : "%.0f", s);
  return buf;
}

std::string ranks_word(const std::vector<uint32_t>& r) { return r.size() == 1 ? "rank " : "ranks "; }

// "rank 2 on h (its last: allreduce #182, bucket 3 of step 91)".
std::string describe_rank(const RankProgress& r, uint32_t stream) {
  std::string out = concat("rank ", r.rank, r.host.empty() ? "" : " on ", r.host);
  const auto* s = stream_of(r, stream);
  if (s && s->started() > 0) {
    out += concat(" (its last: ", collective(s->last_kind(), s->started(), stream),
                  s->last_origin().empty() ? "" : ", ", s->last_origin());
  } else {
    out += " (it entered none";
  }
  // Stuck in the other stream? Then that is where it is.
  for (const auto& o : r.streams) {
    if (o.stream() != stream && o.open_seq() > 0) {
      out += concat("; it waits in ", collective(o.open_kind(), o.open_seq(), o.stream()),
                    o.open_origin().empty() ? "" : ", ", o.open_origin(), " for ",
                    whole_seconds(o.open_seconds() + r.heartbeat_age_s), " s");
    }
  }
  return out + ")";
}

}  // namespace

std::string HangVerdict::key() const {
  return concat(stream, ":", seq, ":", rank_ranges(missing), ":", rank_ranges(unreachable));
}

std::string rank_ranges(const std::vector<uint32_t>& ranks) {
  std::vector<uint32_t> r = ranks;
  std::sort(r.begin(), r.end());
  std::vector<std::string> parts;
  for (size_t i = 0; i < r.size();) {
    size_t j = i;
    while (j + 1 < r.size() && r[j + 1] == r[j] + 1) ++j;
    parts.push_back(j == i ? concat(r[i]) : concat(r[i], "-", r[j]));
    i = j + 1;
  }
  std::string out;
  for (size_t i = 0; i < parts.size(); ++i) {
    out += (i == 0 ? "" : (i + 1 == parts.size() ? " and " : ", ")) + parts[i];
  }
  return out;
}

std::optional<HangVerdict> hang_verdict(const std::vector<RankProgress>& ranks, double report_after_s) {
  for (uint32_t stream = 0; stream < 2; ++stream) {
    std::vector<const RankProgress*> live;
    std::vector<uint32_t> unreachable;
    bool stuck = false;
    for (const auto& r : ranks) {
      if (!r.reachable) {
        unreachable.push_back(r.rank);
        continue;
      }
      const auto* s = stream_of(r, stream);
      if (!s) continue;  // no flight recorder on this rank: it cannot be compared
      live.push_back(&r);
      if (s->open_seq() > 0 && s->open_seconds() + r.heartbeat_age_s >= report_after_s) stuck = true;
    }
    if (!stuck || live.empty()) continue;
    HangVerdict v;
    v.stream = stream;
    v.unreachable = unreachable;
    uint64_t min_started = UINT64_MAX, max_started = 0;
    for (const auto* r : live) {
      min_started = std::min(min_started, stream_of(*r, stream)->started());
      max_started = std::max(max_started, stream_of(*r, stream)->started());
    }
    if (max_started > min_started) {
      v.seq = min_started + 1;  // Note [Hang verdict] 2
    } else {
      v.seq = UINT64_MAX;  // all entered the same: the oldest open one is where they are stuck (3)
      for (const auto* r : live) {
        const auto* s = stream_of(*r, stream);
        if (s->open_seq() > 0) v.seq = std::min(v.seq, s->open_seq());
      }
    }
    for (const auto* r : live) {
      const auto* s = stream_of(*r, stream);
      if (s->started() < v.seq) {
        v.missing.push_back(r->rank);
        continue;
      }
      v.waiting.push_back(r->rank);
      if (s->open_seq() == v.seq) {
        v.kind = s->open_kind();
        v.origin = s->open_origin();
        v.wait_seconds = std::max(v.wait_seconds, s->open_seconds() + r->heartbeat_age_s);
      } else if (v.kind.empty() && s->started() == v.seq) {
        v.kind = s->last_kind();
        v.origin = s->last_origin();
      }
    }
    const std::string what = concat(collective(v.kind, v.seq, stream), v.origin.empty() ? "" : ", ", v.origin);
    std::string msg;
    if (!v.missing.empty()) {
      std::vector<std::string> named;
      for (const auto* r : live) {
        if (std::find(v.missing.begin(), v.missing.end(), r->rank) != v.missing.end()) {
          named.push_back(describe_rank(*r, stream));
        }
      }
      for (size_t i = 0; i < named.size(); ++i) msg += (i ? " and " : "") + named[i];
      msg += concat(" never entered ", what, "; ", ranks_word(v.waiting), rank_ranges(v.waiting), " wait there for ",
                    whole_seconds(v.wait_seconds), " s");
    } else {
      msg = concat(v.waiting.size() == 1 ? "rank " : "ranks ", rank_ranges(v.waiting), " entered ", what,
                   " and it has not completed for ", whole_seconds(v.wait_seconds), " s",
                   unreachable.empty() ? " (every reachable rank is inside it: the transport does not deliver)" : "");
    }
    for (const auto& r : ranks) {
      if (r.reachable) continue;
      msg += concat("; ", describe_rank(r, stream), " is ",
                    r.unreachable_why.empty() ? "unreachable" : r.unreachable_why, ", not waited on");
    }
    v.message = msg;
    return v;
  }
  return std::nullopt;
}

}  // namespace stride::cluster
