#include "trainer/config_diff.h"

#include <toml++/toml.h>

#include <charconv>
#include <map>
#include <set>
#include <sstream>

#include "common/error.h"

namespace stride::trainer {
namespace {

// Keys that cannot change what the run computes: where it writes and reads from, how it reports, how it is
// coordinated, threads and buffering, and when it stops or checkpoints.
const std::set<std::string>& operational_keys() {
  static const std::set<std::string> keys = {"data-path",
                                             "dataset",
                                             "dataset-source",
                                             "workers",
                                             "prefetch",
                                             "max-corrupt",
                                             "max-steps",
                                             "output-dir",
                                             "resume",
                                             "checkpoint-every",
                                             "keep-checkpoints",
                                             "snapshot-every",
                                             "snapshot-dir",
                                             "snapshot-buddy",
                                             "print-freq",
                                             "eval-freq",
                                             "test-only",
                                             "threads",
                                             "comm-backend",
                                             "comm-timeout",
                                             "bucket-cap-mb",
                                             "bucket-tune-steps",
                                             "job",
                                             "status-port",
                                             "status-bind",
                                             "coordinator-bind",
                                             "heartbeat-interval",
                                             "heartbeat-timeout",
                                             "control-every",
                                             "straggler-threshold",
                                             "straggler-window",
                                             "mtbf",
                                             "trace-samples",
                                             "flight-recorder",
                                             "hang-report-after",
                                             "eval-hflip",
                                             "weights",
                                             "allow-config-change",
                                             "use-deterministic-algorithms",

                                             "cache-dir",
                                             "cache-limit",
                                             "prefetch-shards",
                                             "fetch-timeout",
                                             "fetch-retries"};
  return keys;
}

// Keys compared through the global batch they make together (the per-rank batch follows the world size).
const std::set<std::string>& batch_keys() {
  static const std::set<std::string> keys = {"batch-size", "accum-steps", "global-batch"};
  return keys;
}

std::map<std::string, std::string> render(const std::string& toml_text, const std::string& source) {
  toml::table t;
  try {
    t = toml::parse(toml_text, source);
  } catch (const toml::parse_error& e) {
    throw Error(concat(source, ": cannot parse: ", e.description()));
  }
  std::map<std::string, std::string> out;
  for (const auto& [key, node] : t) {
    std::ostringstream s;
    node.visit([&](const auto& v) {
      if constexpr (toml::is_floating_point<decltype(v)>) {
        char buf[32];  // the shortest form that reads back as the same double ("0.1", not 0.10000000000000001)
        const auto r = std::to_chars(buf, buf + sizeof(buf), v.get());
        s << std::string(buf, r.ptr);
      } else {
        s << v;
      }
    });
    out[std::string(key.str())] = s.str();
  }
  return out;
}

int64_t integer(const std::map<std::string, std::string>& values, const std::string& key, int64_t fallback) {
  const auto it = values.find(key);
  return it == values.end() ? fallback : std::stoll(it->second);
}

}  // namespace

std::vector<ConfigChange> config_changes(const std::string& before_toml, uint64_t before_world,
                                         const TrainConfig& after, uint64_t after_world) {
  const auto before = render(before_toml, "the checkpoint's configuration");
  const auto now = render(to_toml(after), "this run's configuration");
  const auto defaults = render(to_toml(TrainConfig{}), "the defaults");
  std::vector<ConfigChange> changes;
  for (const auto& [key, value] : now) {
    // How this start was told to resume is no setting of the run: every restart passes --resume auto.
    if (batch_keys().count(key) || key == "resume") continue;
    auto it = before.find(key);
    const std::string& old = it != before.end() ? it->second : defaults.at(key);
    if (old != value) changes.push_back({key, old, value, !operational_keys().count(key)});
  }
  for (const auto& [key, value] : before) {
    if (!now.count(key)) changes.push_back({key, value, "(no such option now)", !operational_keys().count(key)});
  }
  const int64_t batch_before = integer(before, "batch-size", after.batch_size) * integer(before, "accum-steps", 1) *
                               static_cast<int64_t>(before_world);
  const int64_t batch_after = after.batch_size * after.accum_steps * static_cast<int64_t>(after_world);
  if (batch_before != batch_after) {
    changes.push_back({"global batch", std::to_string(batch_before), std::to_string(batch_after), true});
  }
  return changes;
}

std::string describe(const std::vector<ConfigChange>& changes) {
  std::string out;
  for (const auto& c : changes) out += concat(out.empty() ? "" : ", ", c.key, " ", c.before, " -> ", c.after);
  return out;
}

}  // namespace stride::trainer
