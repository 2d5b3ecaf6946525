// The collective flight recorder (comm/flight_recorder.h, comm/recording_communicator.h), the hang verdict
// (cluster/hang_verdict.h) and the coordinator's use of it, and `stride trace`'s merge (launcher/trace_command.h).
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <set>
#include <thread>

#include "cluster/coordinator_core.h"
#include "cluster/hang_verdict.h"
#include "comm/flight_recorder.h"
#include "comm/recording_communicator.h"
#include "launcher/trace_command.h"
#include "storage/file_io.h"
#include "tests/common/local_ranks.h"
#include "tests/unit/cluster_test_util.h"
#include "tests/unit/test_util.h"

namespace stride {
namespace {

using comm::CollectiveKind;
using comm::CollectiveState;
using comm::CollectiveStream;
using comm::FlightRecorder;
using comm::OriginKind;
using comm::OriginScope;

TEST(FlightRecorder, RingKeepsTheNewestInOrderAfterWrapping) {
  FlightRecorder rec(4);
  rec.set_step(7);
  std::vector<uint64_t> ids;
  for (int i = 0; i < 6; ++i) {
    const OriginScope origin(OriginKind::kBucket, i);
    ids.push_back(rec.begin(CollectiveStream::kAsync, CollectiveKind::kAllreduce, 100 * i, "Float"));
  }
  for (uint64_t id : ids) rec.end(id, true);
  const auto snap = rec.snapshot();
  ASSERT_EQ(snap.size(), 4u);
  for (size_t i = 0; i < snap.size(); ++i) {
    EXPECT_EQ(snap[i].seq, i + 3);  // 1 and 2 were overwritten
    EXPECT_EQ(snap[i].origin_index, static_cast<int64_t>(i + 2));
    EXPECT_EQ(snap[i].state, CollectiveState::kCompleted);
    EXPECT_GT(snap[i].end_s, 0);
  }
  EXPECT_EQ(comm::describe_origin(snap.back()), "bucket 5 of step 7");
  EXPECT_EQ(comm::describe_collective(snap.back()), "allreduce #6");
  const auto p = rec.progress(CollectiveStream::kAsync);
  EXPECT_EQ(p.started, 6u);
  EXPECT_EQ(p.completed, 6u);
  EXPECT_FALSE(p.has_open);
}

TEST(FlightRecorder, StreamsNumberSeparatelyAndAnOpenCollectiveOutlivesTheRing) {
  FlightRecorder rec(2);
  rec.set_step(3);
  uint64_t stuck;
  {
    const OriginScope origin(OriginKind::kSyncBn, 0, "layer1.0.bn1");
    stuck = rec.begin(CollectiveStream::kBlocking, CollectiveKind::kAllgather, 8, "Float");
  }
  for (int i = 0; i < 5; ++i)
    rec.end(rec.begin(CollectiveStream::kAsync, CollectiveKind::kAllreduce, 4, "Float"), true);
  const auto async = rec.progress(CollectiveStream::kAsync);
  EXPECT_EQ(async.started, 5u);
  EXPECT_FALSE(async.has_open);
  const auto blocking = rec.progress(CollectiveStream::kBlocking);
  EXPECT_EQ(blocking.started, 1u);
  EXPECT_EQ(blocking.completed, 0u);
  ASSERT_TRUE(blocking.has_open);  // overwritten in the ring, still known as open
  EXPECT_EQ(blocking.open.seq, 1u);
  EXPECT_EQ(comm::describe_origin(blocking.open), "SyncBN layer1.0.bn1 forward of step 3");
  EXPECT_EQ(comm::describe_collective(blocking.open), "allgather #1 (blocking)");
  rec.end(stuck, false);  // ending an overwritten record only updates the progress
  EXPECT_FALSE(rec.progress(CollectiveStream::kBlocking).has_open);
  EXPECT_EQ(rec.progress(CollectiveStream::kBlocking).completed, 1u);
}

TEST(FlightRecorder, OriginScopesNestAndRestore) {
  EXPECT_EQ(OriginScope::current().kind, OriginKind::kNone);
  {
    const OriginScope eval(OriginKind::kEval);
    {
      const OriginScope bucket(OriginKind::kBucket, 2);
      EXPECT_EQ(OriginScope::current().kind, OriginKind::kBucket);
    }
    EXPECT_EQ(OriginScope::current().kind, OriginKind::kEval);
  }
  EXPECT_EQ(OriginScope::current().kind, OriginKind::kNone);
}

TEST(FlightRecorder, ConcurrentWritersGetUniqueOrderedNumbers) {
  FlightRecorder rec(256);
  constexpr int kThreads = 4, kEach = 2000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < kEach; ++i)
        rec.end(rec.begin(CollectiveStream::kAsync, CollectiveKind::kAllreduce, 4, "Float"), true);
    });
  }
  // A reader (the heartbeat thread) at the same time.
  std::thread reader([&] {
    for (int i = 0; i < 200; ++i) {
      const auto p = rec.progress(CollectiveStream::kAsync);
      EXPECT_LE(p.completed, p.started);
    }
  });
  for (auto& t : threads) t.join();
  reader.join();
  const auto p = rec.progress(CollectiveStream::kAsync);
  EXPECT_EQ(p.started, static_cast<uint64_t>(kThreads * kEach));
  EXPECT_EQ(p.completed, p.started);
  EXPECT_FALSE(p.has_open);
  const auto snap = rec.snapshot();
  ASSERT_EQ(snap.size(), 256u);
  for (size_t i = 1; i < snap.size(); ++i) {
    EXPECT_EQ(snap[i].id, snap[i - 1].id + 1);
    EXPECT_EQ(snap[i].seq, snap[i - 1].seq + 1);
  }
  EXPECT_EQ(snap.back().seq, static_cast<uint64_t>(kThreads * kEach));
}

TEST(RecordingCommunicator, RecordsEveryCollectiveWithItsOriginOnEveryRank) {
  std::vector<std::shared_ptr<FlightRecorder>> recs = {std::make_shared<FlightRecorder>(16),
                                                       std::make_shared<FlightRecorder>(16)};
  testing::run_ranks(2, [&](int rank, std::shared_ptr<comm::Communicator> inner) {
    auto& rec = recs[static_cast<size_t>(rank)];
    auto c = std::make_shared<comm::RecordingCommunicator>(inner, rec);
    rec->set_step(4);
    auto t = torch::ones({8});
    comm::WorkPtr w;
    {
      const OriginScope origin(OriginKind::kBucket, 1);
      w = c->allreduce(t, comm::ReduceOp::kSum);
    }
    w->wait();
    EXPECT_FLOAT_EQ(t[0].item<float>(), 2.0f);
    {
      const OriginScope origin(OriginKind::kSyncBn, 1, "bn1");
      c->allreduce_now(t, comm::ReduceOp::kSum);
    }
    const OriginScope control(OriginKind::kControl);
    auto b = c->broadcast(torch::zeros({3}, torch::kLong), 0);
    // Nobody waits on it here: the recorder's poll (the heartbeat thread's) records its completion.
    while (rec->progress(CollectiveStream::kAsync).completed < 2) std::this_thread::yield();
    b->wait();
  });
  for (const auto& rec : recs) {
    const auto snap = rec->snapshot();
    ASSERT_EQ(snap.size(), 3u);
    EXPECT_EQ(comm::describe_collective(snap[0]), "allreduce #1");
    EXPECT_EQ(comm::describe_origin(snap[0]), "bucket 1 of step 4");
    EXPECT_EQ(snap[0].bytes, 32);
    EXPECT_STREQ(snap[0].dtype, "Float");
    EXPECT_EQ(comm::describe_collective(snap[1]), "allreduce #1 (blocking)");
    EXPECT_EQ(comm::describe_origin(snap[1]), "SyncBN bn1 backward of step 4");
    EXPECT_EQ(comm::describe_collective(snap[2]), "broadcast #2");
    EXPECT_EQ(comm::describe_origin(snap[2]), "control point at step 4");
    for (const auto& r : snap) EXPECT_EQ(r.state, CollectiveState::kCompleted);
    const auto j = nlohmann::json::parse(rec->to_json(0, "h", "test"));
    EXPECT_EQ(j["entries"].size(), 3u);
    EXPECT_EQ(j["entries"][0]["origin"], "bucket 1 of step 4");
  }
}

// ---------------------------------------------------------------------------------------------------------
// The verdict
// ---------------------------------------------------------------------------------------------------------
proto::CollectiveProgress progress(uint32_t stream, uint64_t started, uint64_t open_seq, double open_s,
                                   const std::string& open_origin = "", const std::string& last_origin = "") {
  proto::CollectiveProgress p;
  p.set_stream(stream);
  p.set_started(started);
  p.set_completed(open_seq ? open_seq - 1 : started);
  p.set_last_kind("allreduce");
  p.set_last_origin(last_origin);
  if (open_seq) {
    p.set_open_seq(open_seq);
    p.set_open_kind("allreduce");
    p.set_open_origin(open_origin);
    p.set_open_seconds(open_s);
  }
  return p;
}

cluster::RankProgress rank(uint32_t r, std::vector<proto::CollectiveProgress> streams, bool reachable = true) {
  cluster::RankProgress p;
  p.rank = r;
  p.host = concat("h", r);
  p.reachable = reachable;
  p.unreachable_why = reachable ? "" : "dead (no heartbeat for 31.0 s)";
  p.streams = std::move(streams);
  return p;
}

TEST(HangVerdict, NamesTheRankThatNeverEnteredAndWhereTheOthersWait) {
  std::vector<cluster::RankProgress> ranks = {
      rank(0, {progress(0, 186, 183, 31, "bucket 4 of step 91"), progress(1, 40, 0, 0)}),
      rank(1, {progress(0, 186, 183, 30.5, "bucket 4 of step 91"), progress(1, 40, 0, 0)}),
      rank(2, {progress(0, 182, 0, 0, "", "bucket 3 of step 91"), progress(1, 40, 0, 0)}),
  };
  EXPECT_FALSE(cluster::hang_verdict(ranks, 40.0));  // not open long enough yet
  const auto v = cluster::hang_verdict(ranks, 30.0);
  ASSERT_TRUE(v);
  EXPECT_EQ(v->seq, 183u);
  EXPECT_EQ(v->missing, std::vector<uint32_t>{2});
  EXPECT_EQ(v->waiting, (std::vector<uint32_t>{0, 1}));
  EXPECT_EQ(v->origin, "bucket 4 of step 91");
  EXPECT_EQ(v->message,
            "rank 2 on h2 (its last: allreduce #182, bucket 3 of step 91) never entered allreduce #183, bucket 4 of "
            "step 91; ranks 0-1 wait there for 31 s");
}

TEST(HangVerdict, ADeadRankIsReportedNotWaitedOn) {
  std::vector<cluster::RankProgress> ranks = {
      rank(0, {progress(0, 10, 10, 35, "bucket 0 of step 3")}),
      rank(1, {progress(0, 10, 10, 35, "bucket 0 of step 3")}),
      rank(2, {progress(0, 9, 0, 0, "", "control point at step 2")}, /*reachable=*/false),
  };
  const auto v = cluster::hang_verdict(ranks, 30.0);
  ASSERT_TRUE(v);
  EXPECT_TRUE(v->missing.empty());
  EXPECT_EQ(v->unreachable, std::vector<uint32_t>{2});
  EXPECT_NE(v->message.find("ranks 0-1 entered allreduce #10, bucket 0 of step 3"), std::string::npos) << v->message;
  EXPECT_NE(v->message.find("rank 2 on h2 (its last: allreduce #9, control point at step 2) is dead (no heartbeat"),
            std::string::npos)
      << v->message;
  EXPECT_NE(v->message.find("not waited on"), std::string::npos);
}

TEST(HangVerdict, RankRanges) {
  EXPECT_EQ(cluster::rank_ranges({0}), "0");
  EXPECT_EQ(cluster::rank_ranges({2, 0, 1}), "0-2");
  EXPECT_EQ(cluster::rank_ranges({0, 1, 2, 4, 5, 6, 7}), "0-2 and 4-7");
  EXPECT_EQ(cluster::rank_ranges({0, 3, 5}), "0, 3 and 5");
}

TEST(CoordinatorCore, HangVerdictGoesToEventsStatusAndAsksForDumps) {
  using namespace cluster::testutil;
  testing::ScratchDir dir("hang");
  auto o = core_options(dir.file("ckpt"), 3);
  o.hang_report_after_s = 3.0;
  o.heartbeat_timeout_s = 60.0;
  cluster::CoordinatorCore core(o, 0.0, 1e9);
  for (uint32_t r = 0; r < 3; ++r) ASSERT_EQ(core.admit(hello("secret", r, 3).hello(), kNonce, 0.0), "");
  auto beat = [&](uint32_t r, uint64_t started, uint64_t open_seq, double open_s, double now) {
    proto::Heartbeat hb;
    hb.set_step(91);
    *hb.add_collectives() = progress(0, started, open_seq, open_s, "bucket 4 of step 91", "bucket 3 of step 91");
    core.heartbeat(r, hb, now);
  };
  beat(0, 185, 183, 1.0, 1.0);
  beat(1, 185, 183, 1.0, 1.0);
  beat(2, 182, 0, 0, 1.0);
  core.tick(1.0);
  EXPECT_FALSE(core.hang());
  core.take_outbound();
  beat(0, 185, 183, 3.5, 3.5);
  beat(1, 185, 183, 3.5, 3.5);
  beat(2, 182, 0, 0, 3.5);
  core.tick(3.5);
  ASSERT_TRUE(core.hang());
  EXPECT_EQ(core.hang()->missing, std::vector<uint32_t>{2});
  const auto out = core.take_outbound();
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].command.kind(), proto::Command::DUMP_TRACE);
  const auto s = nlohmann::json::parse(core.status_json(3.5));
  EXPECT_EQ(s["hang"]["seq"], 183);
  EXPECT_EQ(s["hang"]["missing_ranks"], nlohmann::json::array({2}));
  EXPECT_NE(s["hang"]["message"].get<std::string>().find("rank 2 on testhost"), std::string::npos);
  EXPECT_NE(s["events"][0]["message"].get<std::string>().find("hang: rank 2"), std::string::npos);
  core.tick(3.7);  // the same verdict is not logged or dumped again
  EXPECT_TRUE(core.take_outbound().empty());
  // The collective completes: the verdict clears.
  beat(0, 190, 0, 0, 4.0);
  beat(1, 190, 0, 0, 4.0);
  beat(2, 190, 0, 0, 4.0);
  core.tick(4.0);
  EXPECT_FALSE(core.hang());
  EXPECT_TRUE(nlohmann::json::parse(core.status_json(4.0))["hang"].is_null());
}

// ---------------------------------------------------------------------------------------------------------
// stride trace
// ---------------------------------------------------------------------------------------------------------
TEST(StrideTrace, MergesRankDumpsIntoAChromeTraceWithOneTrackPerRank) {
  testing::ScratchDir dir("trace");
  std::filesystem::create_directories(dir.file("run/trace"));
  for (int r = 0; r < 3; ++r) {
    FlightRecorder rec(8);
    rec.set_step(1);
    const OriginScope origin(OriginKind::kBucket, 0);
    rec.end(rec.begin(CollectiveStream::kAsync, CollectiveKind::kAllreduce, 64, "Float"), true);
    if (r < 2) rec.begin(CollectiveStream::kAsync, CollectiveKind::kAllreduce, 64, "Float");  // left open
    storage::write_file_atomic(dir.file(concat("run/trace/rank-", r, ".json")), rec.to_json(r, "h", "test"));
  }
  const auto chrome = nlohmann::json::parse(launcher::merge_traces(dir.file("run"), "chrome"));
  std::set<int> pids;
  int complete = 0, open = 0;
  for (const auto& e : chrome["traceEvents"]) {
    pids.insert(e["pid"].get<int>());
    if (e["ph"] == "X") {
      ++complete;
      open += e["args"]["state"] == "open" ? 1 : 0;
      EXPECT_GE(e["ts"].get<double>(), 0.0);
      EXPECT_GE(e["dur"].get<double>(), 0.0);
    }
  }
  EXPECT_EQ(pids, (std::set<int>{0, 1, 2}));
  EXPECT_EQ(complete, 5);
  EXPECT_EQ(open, 2);
  const auto merged = nlohmann::json::parse(launcher::merge_traces(dir.file("run"), "json"));
  ASSERT_EQ(merged["ranks"].size(), 3u);
  EXPECT_EQ(merged["ranks"][2]["rank"], 2);
  EXPECT_THROW(launcher::merge_traces(dir.file("run"), "xml"), UsageError);
  EXPECT_THROW(launcher::merge_traces(dir.file("nothing"), "json"), UsageError);
  storage::write_file_atomic(dir.file("run/trace/rank-3.json"), "{not json");
  try {
    launcher::merge_traces(dir.file("run"), "json");
    FAIL() << "a corrupt dump was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("rank-3.json"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace stride
