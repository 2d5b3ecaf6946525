// Straggler detection (cluster/straggler_detector.h) and the overlap timeline through the coordinator's core with a
// fake clock, and the automatic checkpoint interval (trainer/checkpoint_interval.h) with injected costs, step times and
// failures.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdlib>
#include <string>

#include "cluster/coordinator_core.h"
#include "cluster/straggler_detector.h"
#include "common/error.h"
#include "tests/unit/cluster_test_util.h"
#include "trainer/checkpoint_interval.h"
#include "trainer/config.h"

namespace stride {
namespace {

using cluster::testutil::hello;
using cluster::testutil::kNonce;

// A heartbeat whose running totals say the rank took `steps` steps of `compute_s` seconds each.
proto::Heartbeat totals(uint64_t steps, double compute_s) {
  proto::Heartbeat hb;
  hb.set_step(steps);
  hb.set_breakdown_steps(steps);
  hb.set_compute_total_s(static_cast<double>(steps) * compute_s);
  hb.set_comm_exposed_total_s(static_cast<double>(steps) * 0.01);
  hb.set_data_wait_total_s(static_cast<double>(steps) * 0.002);
  hb.set_optimizer_total_s(static_cast<double>(steps) * 0.003);
  return hb;
}

// Note [Overlap timeline]: a rank's last-step bucket timeline goes from its heartbeat to /status and /metrics.
TEST(Overlap, HeartbeatTimelineReachesStatusAndMetrics) {
  cluster::CoordinatorCore core(cluster::testutil::core_options("", 2), 0.0, 1000.0);
  ASSERT_EQ(core.admit(hello("secret", 0, 2).hello(), kNonce, 0.0), "");
  ASSERT_EQ(core.admit(hello("secret", 1, 2).hello(), kNonce, 0.0), "");
  proto::Heartbeat hb = totals(5, 0.1);
  hb.set_timeline_step(5);
  hb.set_timeline_backward_s(0.100);
  // Bucket 0 runs 20-60 ms (all hidden); bucket 1 runs 90-130 ms: 10 of its 40 ms before backward ended.
  const double times[2][4] = {{0.010, 0.010, 0.020, 0.060}, {0.080, 0.085, 0.090, 0.130}};
  for (const auto& t : times) {
    auto* b = hb.add_timeline();
    b->set_bytes(4096);
    b->set_parameters(3);
    b->set_ready_s(t[0]);
    b->set_launched_s(t[1]);
    b->set_started_s(t[2]);
    b->set_done_s(t[3]);
    b->set_communicated(true);
  }
  core.heartbeat(0, hb, 1.0);
  core.heartbeat(1, totals(5, 0.1), 1.0);
  const auto status = nlohmann::json::parse(core.status_json(1.0));
  EXPECT_TRUE(status["ranks"][1]["overlap"].is_null()) << "no timeline yet";
  const auto& o = status["ranks"][0]["overlap"];
  ASSERT_TRUE(o.is_object()) << status.dump();
  EXPECT_EQ(o["step"], 5);
  EXPECT_NEAR(o["backward_s"].get<double>(), 0.1, 1e-12);
  EXPECT_NEAR(o["comm_s"].get<double>(), 0.080, 1e-12);
  EXPECT_NEAR(o["hidden_fraction"].get<double>(), 0.050 / 0.080, 1e-9);
  EXPECT_NEAR(o["after_backward_s"].get<double>(), 0.030, 1e-9);
  ASSERT_EQ(o["buckets"].size(), 2u);
  EXPECT_NEAR(o["buckets"][0]["hidden_fraction"].get<double>(), 1.0, 1e-9);
  EXPECT_NEAR(o["buckets"][1]["hidden_fraction"].get<double>(), 0.25, 1e-9);
  EXPECT_NEAR(o["buckets"][1]["launched_s"].get<double>(), 0.085, 1e-12);
  EXPECT_EQ(o["buckets"][1]["bytes"], 4096);
  const std::string metrics = core.metrics_text(1.0);
  const std::string label = "stride_rank_comm_hidden_fraction{rank=\"0\",host=\"testhost\"} ";
  const auto at = metrics.find(label);
  ASSERT_NE(at, std::string::npos) << metrics;
  EXPECT_NEAR(std::strtod(metrics.c_str() + at + label.size(), nullptr), 0.625, 1e-9);
}

// A rank's remote data source totals (heartbeat fields 40-45) reach /status and /metrics (as counters).
TEST(DataSource, HeartbeatTotalsReachStatusAndMetrics) {
  cluster::CoordinatorCore core(cluster::testutil::core_options("", 1), 0.0, 1000.0);
  ASSERT_EQ(core.admit(hello("secret", 0, 1).hello(), kNonce, 0.0), "");
  proto::Heartbeat hb = totals(5, 0.1);
  hb.set_data_bytes_fetched(123456789012);
  hb.set_data_shards_fetched(7);
  hb.set_data_cache_hits(3);
  hb.set_data_refetches(1);
  hb.set_data_evictions(2);
  hb.set_data_stall_total_s(1.5);
  core.heartbeat(0, hb, 1.0);
  const auto d = nlohmann::json::parse(core.status_json(1.0))["ranks"][0]["data"];
  EXPECT_EQ(d["bytes_fetched"], 123456789012u);
  EXPECT_EQ(d["shards_fetched"], 7u);
  EXPECT_EQ(d["cache_hits"], 3u);
  EXPECT_EQ(d["refetches"], 1u);
  EXPECT_EQ(d["evictions"], 2u);
  EXPECT_DOUBLE_EQ(d["stall_s"].get<double>(), 1.5);
  const std::string metrics = core.metrics_text(1.0);
  EXPECT_NE(metrics.find("# TYPE stride_rank_data_bytes_fetched_total counter\n"
                         "stride_rank_data_bytes_fetched_total{rank=\"0\",host=\"testhost\"} 123456789012\n"),
            std::string::npos)
      << metrics;
  EXPECT_NE(metrics.find("stride_rank_data_cache_hits_total{rank=\"0\",host=\"testhost\"} 3\n"), std::string::npos);
  EXPECT_NE(metrics.find("# TYPE stride_rank_step gauge\n"), std::string::npos) << "only *_total are counters";
}

TEST(Straggler, MedianOfPeersLeavesTheRankOutOfItsOwnBaseline) {
  EXPECT_DOUBLE_EQ(cluster::median({}), 0.0);
  EXPECT_DOUBLE_EQ(cluster::median({3.0}), 3.0);
  EXPECT_DOUBLE_EQ(cluster::median({4.0, 1.0}), 2.5);
  EXPECT_DOUBLE_EQ(cluster::median({5.0, 1.0, 3.0}), 3.0);
  // 3 ranks, rank 2 at 1.5x: its peers' median is 1.0; one peer's median is the other peer and rank 2's mean.
  cluster::StragglerDetector d({0.2, 1}, 3);
  for (uint32_t r = 0; r < 3; ++r) d.observe(r, 0, 0, 0, 0, 0, 0);
  d.observe(0, 10, 10.0, 0, 0, 0, 1);
  d.observe(1, 10, 10.0, 0, 0, 0, 1);
  const auto change = d.observe(2, 10, 15.0, 0, 0, 0, 1);
  ASSERT_TRUE(change);
  EXPECT_EQ(change->rank, 2u);
  EXPECT_TRUE(change->flagged);
  EXPECT_DOUBLE_EQ(change->peer_median_s, 1.0);
  EXPECT_DOUBLE_EQ(d.rank(2).ratio, 1.5);
  EXPECT_FALSE(d.rank(0).flagged);
}

TEST(Straggler, FlaggedAfterTheWindowAndClearedAfterTheWindow) {
  auto o = cluster::testutil::core_options("", 2);
  o.straggler = {0.2, 3};
  cluster::CoordinatorCore core(o, 0.0, 1000.0);
  ASSERT_EQ(core.admit(hello("secret", 0, 2).hello(), kNonce, 0.0), "");
  ASSERT_EQ(core.admit(hello("secret", 1, 2).hello(), kNonce, 0.0), "");
  uint64_t steps = 0;
  double total0 = 0, total1 = 0;
  double now = 0;
  // One heartbeat per rank per second, 10 steps each: rank 0 computes 100 ms per step, rank 1 `slow1`.
  auto second = [&](double slow1) {
    now += 1;
    steps += 10;
    total0 += 10 * 0.1;
    total1 += 10 * slow1;
    auto h0 = totals(steps, 0), h1 = totals(steps, 0);
    h0.set_compute_total_s(total0);
    h1.set_compute_total_s(total1);
    core.heartbeat(0, h0, now);
    core.heartbeat(1, h1, now);
  };
  auto stragglers = [&] { return nlohmann::json::parse(core.status_json(now))["stragglers"]; };
  second(0.1);  // the baseline heartbeats
  second(0.1);
  EXPECT_TRUE(stragglers().empty());
  second(0.15);  // 50% slower: 2 samples are not a window of 3
  second(0.15);
  EXPECT_TRUE(stragglers().empty());
  EXPECT_NE(core.metrics_text(now).find("stride_rank_straggler{rank=\"1\",host=\"testhost\"} 0"), std::string::npos);
  second(0.15);
  auto s = stragglers();
  ASSERT_EQ(s.size(), 1u) << core.status_json(now);
  EXPECT_EQ(s[0]["rank"], 1);
  EXPECT_EQ(s[0]["host"], "testhost");
  EXPECT_NEAR(s[0]["slower_percent"].get<double>(), 50.0, 1e-6);
  EXPECT_NEAR(s[0]["peer_median_compute_s"].get<double>(), 0.1, 1e-9);
  const auto status = nlohmann::json::parse(core.status_json(now));
  EXPECT_TRUE(status["ranks"][1]["breakdown"]["straggler"].get<bool>());
  EXPECT_NEAR(status["ranks"][1]["breakdown"]["compute_s"].get<double>(), 0.15, 1e-9);
  EXPECT_NEAR(status["ranks"][0]["breakdown"]["comm_exposed_s"].get<double>(), 0.01, 1e-9);
  const std::string metrics = core.metrics_text(now);
  EXPECT_NE(metrics.find("stride_rank_straggler{rank=\"1\",host=\"testhost\"} 1"), std::string::npos);
  EXPECT_NE(metrics.find("stride_rank_straggler{rank=\"0\",host=\"testhost\"} 0"), std::string::npos);
  const std::string ratio_label = "stride_rank_compute_ratio{rank=\"1\",host=\"testhost\"} ";
  const auto at = metrics.find(ratio_label);
  ASSERT_NE(at, std::string::npos) << metrics;
  EXPECT_NEAR(std::strtod(metrics.c_str() + at + ratio_label.size(), nullptr), 1.5, 1e-9);
  EXPECT_NE(metrics.find("stride_stragglers 1"), std::string::npos);
  const auto events = core.events();
  ASSERT_FALSE(events.empty());
  EXPECT_EQ(events.back().level, "warning");
  EXPECT_NE(events.back().message.find("straggler: rank 1 on testhost (pid 1001) computes 50% slower"),
            std::string::npos)
      << events.back().message;
  // Rank 0, the fast one, is never flagged: against its peer it is faster.
  EXPECT_FALSE(core.stragglers().rank(0).flagged);

  second(0.1);  // recovered: flagged until a window of samples within the threshold
  second(0.11);
  EXPECT_EQ(stragglers().size(), 1u);
  second(0.1);
  EXPECT_TRUE(stragglers().empty());
  EXPECT_NE(core.events().back().message.find("straggler recovered: rank 1 on testhost"), std::string::npos)
      << core.events().back().message;
  EXPECT_NE(core.metrics_text(now).find("stride_rank_straggler{rank=\"1\",host=\"testhost\"} 0"), std::string::npos);
}

TEST(Straggler, HeartbeatsWithoutNewStepsAndNewProcessesGiveNoSample) {
  cluster::StragglerDetector d({0.2, 1}, 2);
  d.observe(0, 5, 0.5, 0, 0, 0, 0);
  d.observe(1, 5, 0.5, 0, 0, 0, 0);
  d.observe(0, 10, 1.0, 0, 0, 0, 1);               // 100 ms per step
  EXPECT_FALSE(d.observe(1, 5, 0.9, 0, 0, 0, 1));  // no new step: no sample
  EXPECT_FALSE(d.rank(1).has_sample);
  EXPECT_FALSE(d.observe(1, 2, 0.9, 0, 0, 0, 2));  // the counter went back (a new process): a new baseline
  EXPECT_FALSE(d.rank(1).has_sample);
  const auto change = d.observe(1, 4, 0.9 + 0.4, 0, 0, 0, 3);  // 200 ms per step
  ASSERT_TRUE(change);
  EXPECT_TRUE(change->flagged);
  d.forget(1);  // dead: neither flagged nor a peer
  EXPECT_FALSE(d.rank(1).flagged);
  EXPECT_FALSE(d.observe(0, 20, 3.0, 0, 0, 0, 4));
  EXPECT_DOUBLE_EQ(d.rank(0).ratio, 0.0);  // no peer left: no baseline
}

// --checkpoint-every auto with a fake clock: the interval is the formula's for the injected figures and moves
// when they move (Note [Checkpoint interval] in trainer/checkpoint_interval.h).
TEST(CheckpointInterval, YoungDalyFromInjectedCostAndMtbf) {
  using trainer::CheckpointInterval;
  const double mtbf = 8 * 3600.0;
  CheckpointInterval ci(mtbf, /*restarts=*/0, /*now=*/0.0);
  bool changed = false;
  EXPECT_EQ(ci.decide(0.0, &changed), 0);  // no step time yet: nothing to decide
  EXPECT_FALSE(changed);

  ci.record_steps(100, 10.0);  // 100 ms per step
  // No checkpoint measured yet: the lower bound, so a measurement comes early.
  EXPECT_EQ(ci.decide(0.0, &changed), 600);
  EXPECT_TRUE(changed);
  EXPECT_TRUE(ci.figures().clamped);

  ci.record_stall(2.0);
  const double expected = std::sqrt(2 * 2.0 * mtbf);  // 339.4 s
  EXPECT_EQ(ci.decide(0.0, &changed), std::llround(expected / 0.1));
  EXPECT_TRUE(changed);
  EXPECT_FALSE(ci.figures().clamped);
  EXPECT_DOUBLE_EQ(ci.figures().cost_s, 2.0);
  EXPECT_DOUBLE_EQ(ci.figures().mtbf_s, mtbf);
  EXPECT_NEAR(ci.figures().interval_s, expected, 1e-9);
  EXPECT_NE(ci.describe().find("sqrt(2 x C x M)"), std::string::npos) << ci.describe();

  // The same figures a moment later: no change, nothing to log.
  EXPECT_EQ(ci.decide(1.0, &changed), std::llround(expected / 0.1));
  EXPECT_FALSE(changed);

  // A dearer checkpoint (smoothed: 2 + 0.3 x (18 - 2) = 6.8 s) lengthens the interval by sqrt(6.8 / 2).
  ci.record_stall(18.0);
  const double dearer = std::sqrt(2 * 6.8 * (mtbf + 2.0));
  EXPECT_EQ(ci.decide(2.0, &changed), std::llround(dearer / 0.1));
  EXPECT_TRUE(changed);
  EXPECT_NEAR(ci.figures().cost_s, 6.8, 1e-9);

  // Clean running time lengthens M: after 24 h more, M = 32 h.
  const double later = 24 * 3600.0;
  EXPECT_EQ(ci.decide(later, &changed), std::llround(std::sqrt(2 * 6.8 * (mtbf + later)) / 0.1));
  EXPECT_TRUE(changed);
  EXPECT_DOUBLE_EQ(ci.figures().mtbf_s, mtbf + later);

  // Slower steps: the same seconds are fewer steps.
  ci.record_steps(10, 10.0);  // 1 s per step now; smoothed 0.1 + 0.3 x 0.9 = 0.37 s
  EXPECT_EQ(ci.decide(later, &changed), std::llround(std::sqrt(2 * 6.8 * (mtbf + later)) / 0.37));
  EXPECT_TRUE(changed);
}

TEST(CheckpointInterval, RestartsShortenTheIntervalAndBoundsHold) {
  using trainer::CheckpointInterval;
  bool changed = false;
  // Three failures so far: M = 8 h / 4 = 2 h.
  CheckpointInterval failing(8 * 3600.0, 3, 0.0);
  failing.record_steps(1, 1.0);
  failing.record_stall(2.0);
  failing.decide(0.0, &changed);
  EXPECT_DOUBLE_EQ(failing.figures().mtbf_s, 2 * 3600.0);
  EXPECT_EQ(failing.figures().steps, std::llround(std::sqrt(2 * 2.0 * 7200.0)));
  // A tiny cost with a short MTBF: clamped to 60 s, or to the write latency when that is longer.
  CheckpointInterval cheap(600.0, 0, 0.0);
  cheap.record_steps(10, 1.0);
  cheap.record_stall(0.01);
  EXPECT_EQ(cheap.decide(0.0, &changed), 600);
  EXPECT_TRUE(cheap.figures().clamped);
  cheap.record_write(120.0);
  EXPECT_EQ(cheap.decide(0.0, &changed), 1200);
  // A huge cost and MTBF: at most 24 h.
  CheckpointInterval dear(1e9, 0, 0.0);
  dear.record_steps(1, 1.0);
  dear.record_stall(1e4);
  EXPECT_EQ(dear.decide(0.0, &changed), 24 * 3600);
}

TEST(CheckpointInterval, BadFlagsAreNamed) {
  EXPECT_DOUBLE_EQ(trainer::parse_duration_seconds("8h", "mtbf"), 8 * 3600.0);
  EXPECT_DOUBLE_EQ(trainer::parse_duration_seconds("1.5d", "mtbf"), 1.5 * 86400.0);
  EXPECT_DOUBLE_EQ(trainer::parse_duration_seconds("90", "mtbf"), 90.0);
  for (const char* bad : {"", "h", "8x", "-1h", "0", "nan"}) {
    try {
      trainer::parse_duration_seconds(bad, "mtbf");
      ADD_FAILURE() << "accepted '" << bad << "'";
    } catch (const UsageError& e) {
      EXPECT_NE(std::string(e.what()).find("--mtbf"), std::string::npos) << e.what();
    }
  }
  auto expect_error = [](auto set, const std::string& flag) {
    trainer::TrainConfig c;
    set(c);
    try {
      trainer::validate(c);
      ADD_FAILURE() << "accepted a bad " << flag;
    } catch (const UsageError& e) {
      EXPECT_NE(std::string(e.what()).find(flag), std::string::npos) << e.what();
    }
  };
  expect_error([](trainer::TrainConfig& c) { c.straggler_threshold = 0; }, "--straggler-threshold");
  expect_error([](trainer::TrainConfig& c) { c.straggler_threshold = -0.5; }, "--straggler-threshold");
  expect_error([](trainer::TrainConfig& c) { c.straggler_window = 0; }, "--straggler-window");
  expect_error([](trainer::TrainConfig& c) { c.checkpoint_every = "often"; }, "--checkpoint-every");
  expect_error([](trainer::TrainConfig& c) { c.checkpoint_every = "-5"; }, "--checkpoint-every");
  expect_error(
      [](trainer::TrainConfig& c) {
        c.checkpoint_every = "auto";
        c.mtbf = "soon";
      },
      "--mtbf");
  trainer::TrainConfig ok;
  ok.checkpoint_every = "auto";
  EXPECT_NO_THROW(trainer::validate(ok));
  EXPECT_TRUE(trainer::checkpoint_every_auto(ok));
  ok.checkpoint_every = "25";
  EXPECT_EQ(trainer::checkpoint_every_steps(ok), 25);
  // A config.toml of an older run holds the step count as an integer.
  trainer::TrainConfig from_toml;
  trainer::parse_toml("checkpoint-every = 40\n", "config.toml", from_toml);
  EXPECT_EQ(trainer::checkpoint_every_steps(from_toml), 40);
}

}  // namespace
}  // namespace stride
