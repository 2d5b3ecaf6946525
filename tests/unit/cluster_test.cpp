// The coordinator: wire framing, liveness with a fake clock, the two-phase checkpoint commit (a rank dying at
// every phase, a MANIFEST write failing at every operation), garbage collection, and the real server on
// loopback (bad peers, clients, HTTP endpoint).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>
#include <nlohmann/json.hpp>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <future>
#include <optional>
#include <thread>

#include "cluster/auth.h"
#include "cluster/client.h"
#include "cluster/coordinator.h"
#include "cluster/wire.h"
#include "storage/file_io.h"
#include "tests/unit/cluster_test_util.h"
#include "tests/unit/test_util.h"

namespace stride::cluster {
namespace {

using storage::CheckpointInfo;
using storage::commit_manifest;
using storage::FileOps;
using storage::lineage_head;
using storage::list_checkpoints;
using storage::prepare_step_dir;
using storage::real_file_ops;
using storage::step_dir;
using storage::verify_checkpoint;
using storage::write_checkpoint_file;
using testing::ScratchDir;
using namespace testutil;  // NOLINT(build/namespaces): the shared loopback helpers
namespace fs = std::filesystem;

// ---------------------------------------------------------------------------------------------------------
// Framing
// ---------------------------------------------------------------------------------------------------------
TEST(Wire, FramesSurviveAnySplitOfTheStream) {
  std::string stream;
  for (uint32_t r = 0; r < 3; ++r) stream += encode_frame(hello("tok", r, 3));
  FrameDecoder dec;
  std::vector<uint32_t> ranks;
  for (char c : stream) {  // one byte at a time: every partial read
    dec.feed(&c, 1);
    while (auto e = dec.next()) ranks.push_back(e->hello().rank());
  }
  EXPECT_EQ(ranks, (std::vector<uint32_t>{0, 1, 2}));
  EXPECT_EQ(dec.buffered(), 0u);
  FrameDecoder all;  // and all at once
  all.feed(stream.data(), stream.size());
  int n = 0;
  while (all.next()) ++n;
  EXPECT_EQ(n, 3);
}

TEST(Wire, OversizedGarbageAndWrongVersionAreErrors) {
  FrameDecoder dec;
  const unsigned char big[4] = {0x7f, 0xff, 0xff, 0xff};
  dec.feed(reinterpret_cast<const char*>(big), 4);  // the length alone is enough to refuse
  try {
    dec.next();
    FAIL() << "oversized frame accepted";
  } catch (const WireError& e) {
    EXPECT_NE(std::string(e.what()).find("exceeds the limit"), std::string::npos) << e.what();
  }
  FrameDecoder garbage;
  const std::string junk = std::string("\0\0\0\x08", 4) + "\xff\xff\xff\xff\xff\xff\xff\xff";
  garbage.feed(junk.data(), junk.size());
  EXPECT_THROW(garbage.next(), WireError);
  // Another protocol version: a valid protobuf whose version field is not ours.
  proto::Envelope e = hello("t", 0, 1);
  e.set_version(kProtocolVersion + 1);
  const std::string payload = e.SerializeAsString();
  const uint32_t n = static_cast<uint32_t>(payload.size());
  const char header[4] = {0, 0, static_cast<char>(n >> 8), static_cast<char>(n & 0xff)};
  FrameDecoder wrong;
  wrong.feed(header, 4);
  wrong.feed(payload.data(), payload.size());
  try {
    wrong.next();
    FAIL() << "wrong version accepted";
  } catch (const WireError& err) {
    EXPECT_NE(std::string(err.what()).find("protocol version"), std::string::npos) << err.what();
  }
  EXPECT_TRUE(token_equal("abc", "abc"));
  EXPECT_FALSE(token_equal("abc", "abd"));
  EXPECT_FALSE(token_equal("abc", "abcd"));
  EXPECT_EQ(random_token().size(), 32u);
  EXPECT_NE(random_token(), random_token());
}

// ---------------------------------------------------------------------------------------------------------
// Core: liveness with a fake clock
// ---------------------------------------------------------------------------------------------------------
bool has_command(const std::vector<Outbound>& out, proto::Command::Kind kind, uint64_t step = 0) {
  for (const auto& m : out) {
    if (m.command.kind() == kind && (step == 0 || m.command.step() == step)) return true;
  }
  return false;
}

TEST(CoordinatorCore, AdmitsOnlyTheJobsRanks) {
  ScratchDir dir("core");
  CoordinatorCore core(core_options(dir.file("ckpt"), 2), 0.0, 1e9);
  EXPECT_NE(core.admit(hello("wrong", 0, 2).hello(), kNonce, 0.1).find("token"), std::string::npos);
  EXPECT_NE(core.admit(hello("secret", 2, 2).hello(), kNonce, 0.1).find("outside the world"), std::string::npos);
  EXPECT_NE(core.admit(hello("secret", 0, 3).hello(), kNonce, 0.1).find("world size"), std::string::npos);
  EXPECT_EQ(core.admit(hello("secret", 0, 2).hello(), kNonce, 0.1), "");
  auto other = hello("secret", 0, 2);
  other.mutable_hello()->set_pid(4242);  // a second process claiming rank 0
  auth::sign_hello(other.mutable_hello(), "secret", kNonce, "");
  EXPECT_NE(core.admit(other.hello(), kNonce, 0.2).find("is live"), std::string::npos);
}

// Knowing the token is not enough to take over a live rank, whatever the pid: the Hello must prove the session
// key of the rank's first Hello (#17). A Hello answering another connection's Challenge is refused.
TEST(CoordinatorCore, ALiveRankIsTakenOverOnlyWithItsSessionProof) {
  ScratchDir dir("core");
  CoordinatorCore core(core_options(dir.file("ckpt"), 1), 0.0, 1e9);
  const auto first = hello("secret", 0, 1);
  const std::string other_nonce(auth::kNonceBytes, 'o');
  EXPECT_NE(core.admit(first.hello(), other_nonce, 0.0).find("authentication failed"), std::string::npos);
  ASSERT_EQ(core.admit(first.hello(), kNonce, 0.0), "");
  const std::string key = auth::session_key("secret", auth::transcript(kNonce, first.hello()));
  const std::string n2(auth::kNonceBytes, '2');
  EXPECT_NE(core.admit(hello("secret", 0, 1, n2).hello(), n2, 0.1).find("no session proof"), std::string::npos);
  const std::string wrong_key = auth::session_key("secret", "another transcript");
  EXPECT_NE(core.admit(hello("secret", 0, 1, n2, wrong_key).hello(), n2, 0.1).find("session proof is wrong"),
            std::string::npos);
  core.disconnected(0, 0.2);  // also while its connection is down (within the grace)
  EXPECT_NE(core.admit(hello("secret", 0, 1, n2).hello(), n2, 0.3).find("is live"), std::string::npos);
  bool resumed = false;
  EXPECT_EQ(core.admit(hello("secret", 0, 1, n2, key).hello(), n2, 0.3, &resumed), "");
  EXPECT_TRUE(resumed);
  // A resumed session keeps its key: the next reconnect proves the same one.
  const std::string n3(auth::kNonceBytes, '3');
  EXPECT_EQ(core.admit(hello("secret", 0, 1, n3, key).hello(), n3, 0.4), "");
}

// File names come from the network and the MANIFEST lists them for resume to open inside the step directory:
// anything but a plain name discards the step with an error naming the rank and the name (#17).
TEST(CoordinatorCore, ReportedFileNamesMustBePlainNamesInTheStepDirectory) {
  const std::string bad[] = {
      "../x",          "/etc/passwd",         "a/b",      "..", ".", "", std::string("a\0b", 3), "MANIFEST",
      ".MANIFEST.tmp", std::string(256, 'a'), "tab\tname"};
  for (const auto& name : bad) {
    ScratchDir dir("names");
    CoordinatorCore core(core_options(dir.file("ckpt"), 1), 0.0, 1e9);
    ASSERT_EQ(core.admit(hello("secret", 0, 1).hello(), kNonce, 0.0), "");
    proto::CheckpointReport rep;
    rep.set_step(10);
    rep.set_ok(true);
    rep.mutable_manifest()->set_step(10);
    auto* f = rep.add_files();
    f->set_name(name);
    f->set_size(0);
    core.report(0, rep, 1.0);
    auto out = core.take_outbound();
    EXPECT_TRUE(has_command(out, proto::Command::DISCARDED, 10)) << "name '" << name << "' accepted";
    EXPECT_FALSE(has_command(out, proto::Command::COMMITTED, 10)) << "name '" << name << "' committed";
    const auto events = core.events();
    ASSERT_FALSE(events.empty());
    EXPECT_EQ(events.back().level, "error");
    EXPECT_NE(events.back().message.find("rank 0 on testhost (pid 1000) reported an invalid file name"),
              std::string::npos)
        << events.back().message;
  }
  EXPECT_EQ(storage::checkpoint_file_name_problem("rank-0.safetensors"), "");
  EXPECT_EQ(storage::checkpoint_file_name_problem("model..safetensors"), "");
}

TEST(CoordinatorCore, SilentRankIsDeclaredDeadAfterTheTimeout) {
  ScratchDir dir("core");
  CoordinatorCore core(core_options(dir.file("ckpt"), 2), 0.0, 1e9);
  ASSERT_EQ(core.admit(hello("secret", 0, 2).hello(), kNonce, 0.0), "");
  ASSERT_EQ(core.admit(hello("secret", 1, 2).hello(), kNonce, 0.0), "");
  proto::Heartbeat hb;
  hb.set_step(7);
  core.heartbeat(1, hb, 0.5);  // rank 1's last word
  for (double t = 1.0; t <= 5.4; t += 0.5) {
    hb.set_step(static_cast<uint64_t>(t * 10));
    core.heartbeat(0, hb, t);
    core.tick(t);
  }
  EXPECT_FALSE(core.failure().has_value()) << *core.failure();  // 4.9 s of silence: still alive
  EXPECT_TRUE(core.rank_alive(1));
  core.heartbeat(0, hb, 5.6);
  core.tick(5.6);  // 5.1 s of silence
  ASSERT_TRUE(core.failure().has_value());
  EXPECT_FALSE(core.rank_alive(1));
  EXPECT_TRUE(core.rank_alive(0));
  const std::string& f = *core.failure();
  EXPECT_NE(f.find("rank 1 on testhost (pid 1001)"), std::string::npos) << f;
  EXPECT_NE(f.find("last step 7"), std::string::npos) << f;
  EXPECT_TRUE(has_command(core.take_outbound(), proto::Command::ABORT));
  auto status = nlohmann::json::parse(core.status_json(6.0));
  EXPECT_EQ(status["state"], "failed");
  EXPECT_EQ(status["ranks"][1]["alive"], false);
  EXPECT_NE(core.metrics_text(6.0).find("stride_ranks_alive 1"), std::string::npos);
}

TEST(CoordinatorCore, DroppedConnectionMustComeBackWithinTheGrace) {
  ScratchDir dir("core");
  CoordinatorCore core(core_options(dir.file("ckpt"), 1), 0.0, 1e9);
  const auto first = hello("secret", 0, 1);
  ASSERT_EQ(core.admit(first.hello(), kNonce, 0.0), "");
  core.disconnected(0, 1.0);
  core.tick(2.5);  // 1.5 s < 2 s grace
  EXPECT_FALSE(core.failure());
  // The reconnect answers a new Challenge and proves the session its first Hello fixed.
  const std::string key = auth::session_key("secret", auth::transcript(kNonce, first.hello()));
  const std::string nonce2(auth::kNonceBytes, 'm');
  bool resumed = false;
  ASSERT_EQ(core.admit(hello("secret", 0, 1, nonce2, key).hello(), nonce2, 2.8, &resumed), "");
  EXPECT_TRUE(resumed);
  core.tick(4.0);
  EXPECT_FALSE(core.failure());
  core.disconnected(0, 4.0);
  core.tick(6.1);
  ASSERT_TRUE(core.failure());
  EXPECT_NE(core.failure()->find("connection lost"), std::string::npos);
  // A finished rank is never declared dead.
  CoordinatorCore done(core_options(dir.file("ckpt2"), 1), 0.0, 1e9);
  ASSERT_EQ(done.admit(hello("secret", 0, 1).hello(), kNonce, 0.0), "");
  proto::Goodbye bye;
  bye.set_finished(true);
  done.goodbye(0, bye, 1.0);
  done.disconnected(0, 1.0);
  done.tick(100.0);
  EXPECT_FALSE(done.failure());
  EXPECT_TRUE(done.finished());
}

// ---------------------------------------------------------------------------------------------------------
// Core: two-phase commit
// ---------------------------------------------------------------------------------------------------------
// What rank `rank` of a 2-rank job writes for `step`: its file, fsynced, and the report.
proto::CheckpointReport write_rank_files(const std::string& root, uint64_t step, uint32_t rank) {
  auto& ops = *real_file_ops();
  storage::prepare_step_dir(ops, root, step);
  proto::CheckpointReport r;
  r.set_step(step);
  r.set_ok(true);
  *r.add_files() = write_checkpoint_file(ops, step_dir(root, step), concat("part", rank, ".bin"),
                                         std::string(100 + rank, static_cast<char>('a' + step % 26)));
  if (rank == 0) {
    r.mutable_manifest()->set_step(step);
    r.mutable_manifest()->set_model("resnet20");
  }
  return r;
}

uint64_t newest_valid(const std::string& root) {
  for (const auto& info : list_checkpoints(root)) {
    if (info.valid) return info.step;
  }
  return 0;
}

TEST(CoordinatorCore, CommitsWhenEveryRankReported) {
  ScratchDir dir("commit");
  const std::string root = dir.file("ckpt");
  CoordinatorCore core(core_options(root, 2), 0.0, 1e9);
  ASSERT_EQ(core.admit(hello("secret", 0, 2).hello(), kNonce, 0.0), "");
  ASSERT_EQ(core.admit(hello("secret", 1, 2).hello(), kNonce, 0.0), "");
  core.report(1, write_rank_files(root, 10, 1), 1.0);
  EXPECT_EQ(newest_valid(root), 0u);  // one of two: invisible
  EXPECT_FALSE(has_command(core.take_outbound(), proto::Command::COMMITTED));
  core.report(0, write_rank_files(root, 10, 0), 1.2);
  EXPECT_TRUE(has_command(core.take_outbound(), proto::Command::COMMITTED, 10));
  EXPECT_EQ(newest_valid(root), 10u);
  const auto m = verify_checkpoint(step_dir(root, 10));
  EXPECT_EQ(m.files_size(), 2);  // both ranks' files listed
  EXPECT_EQ(m.model(), "resnet20");
  EXPECT_EQ(core.last_committed_step(), 10u);
  // A second report for a step this job committed is refused (it could destroy the commit).
  core.report(0, write_rank_files(root + "-other", 10, 0), 2.0);
  auto out = core.take_outbound();
  EXPECT_TRUE(has_command(out, proto::Command::DISCARDED, 10));
  EXPECT_EQ(newest_valid(root), 10u);
}

// A rank dies before reporting, after one report, and after the commit: the checkpoint never becomes visible
// unless it was committed, and the previous commit stays the newest.
TEST(CoordinatorCore, RankDyingAtEveryPhaseNeverExposesAPartialCheckpoint) {
  for (int phase = 0; phase < 4; ++phase) {
    SCOPED_TRACE(concat("rank 1 dies at phase ", phase));
    ScratchDir dir("phase");
    const std::string root = dir.file("ckpt");
    CoordinatorCore core(core_options(root, 2), 0.0, 1e9);
    ASSERT_EQ(core.admit(hello("secret", 0, 2).hello(), kNonce, 0.0), "");
    ASSERT_EQ(core.admit(hello("secret", 1, 2).hello(), kNonce, 0.0), "");
    core.report(0, write_rank_files(root, 10, 0), 0.1);
    core.report(1, write_rank_files(root, 10, 1), 0.1);
    ASSERT_EQ(newest_valid(root), 10u);
    core.take_outbound();
    // Checkpoint 20: phase 0 nothing written; 1 rank 1 wrote but did not report; 2 rank 0 reported;
    // 3 both reported (committed before the death).
    if (phase >= 1) write_rank_files(root, 20, 1);
    if (phase >= 2) core.report(0, write_rank_files(root, 20, 0), 0.2);
    if (phase >= 3) core.report(1, write_rank_files(root, 20, 1), 0.3);
    core.disconnected(1, 0.4);
    core.tick(10.0);  // past the grace: rank 1 is dead
    ASSERT_TRUE(core.failure());
    auto out = core.take_outbound();
    EXPECT_TRUE(has_command(out, proto::Command::ABORT));
    if (phase == 3) {
      EXPECT_EQ(newest_valid(root), 20u);
    } else {
      EXPECT_EQ(newest_valid(root), 10u);
      if (phase == 2) {
        EXPECT_TRUE(has_command(out, proto::Command::DISCARDED, 20));
      }
      // A late report after the death changes nothing.
      core.report(1, write_rank_files(root, 20, 1), 11.0);
      EXPECT_EQ(newest_valid(root), 10u);
    }
    EXPECT_TRUE(verify_checkpoint(step_dir(root, 10)).files_size() == 2);
  }
}

TEST(CoordinatorCore, FailedReportDiscardsTheStep) {
  ScratchDir dir("failrep");
  const std::string root = dir.file("ckpt");
  CoordinatorCore core(core_options(root, 2), 0.0, 1e9);
  ASSERT_EQ(core.admit(hello("secret", 0, 2).hello(), kNonce, 0.0), "");
  ASSERT_EQ(core.admit(hello("secret", 1, 2).hello(), kNonce, 0.0), "");
  core.report(0, write_rank_files(root, 10, 0), 0.1);
  proto::CheckpointReport bad;
  bad.set_step(10);
  bad.set_ok(false);
  bad.set_error("write /x: disk full");
  core.report(1, bad, 0.2);
  auto out = core.take_outbound();
  ASSERT_TRUE(has_command(out, proto::Command::DISCARDED, 10));
  for (const auto& m : out) {
    if (m.command.kind() == proto::Command::DISCARDED) {
      EXPECT_NE(m.command.reason().find("disk full"), std::string::npos);
    }
  }
  EXPECT_EQ(newest_valid(root), 0u);
  EXPECT_FALSE(core.failure());  // a failed checkpoint does not fail the job
}

// Note [Coordinated checkpoints], point 4: with the MANIFEST written elsewhere, the step waits for published();
// a rank dying meanwhile does not discard it (its files are all written), a second report of it is refused, and a
// failed publish discards it.
TEST(CoordinatorCore, PublishingElsewhereCommitsOnlyWhenTheWriterIsDone) {
  ScratchDir dir("elsewhere");
  const std::string root = dir.file("ckpt");
  std::vector<PublishJob> jobs;
  auto o = core_options(root, 2);
  o.publish_elsewhere = [&](PublishJob job) { jobs.push_back(std::move(job)); };
  CoordinatorCore core(o, 0.0, 1e9);
  ASSERT_EQ(core.admit(hello("secret", 0, 2).hello(), kNonce, 0.0), "");
  ASSERT_EQ(core.admit(hello("secret", 1, 2).hello(), kNonce, 0.0), "");
  core.report(0, write_rank_files(root, 10, 0), 0.1);
  EXPECT_TRUE(jobs.empty());
  core.report(1, write_rank_files(root, 10, 1), 0.2);
  ASSERT_EQ(jobs.size(), 1u);
  EXPECT_EQ(jobs[0].step, 10u);
  EXPECT_EQ(jobs[0].manifest.files_size(), 2);
  EXPECT_GT(jobs[0].bytes, 0u);
  EXPECT_EQ(newest_valid(root), 0u);  // nothing written yet
  auto out = core.take_outbound();
  EXPECT_FALSE(has_command(out, proto::Command::COMMITTED));
  EXPECT_FALSE(has_command(out, proto::Command::DISCARDED));
  EXPECT_EQ(nlohmann::json::parse(core.status_json(0.3))["state"], "checkpointing");
  core.report(1, write_rank_files(root + "-other", 10, 1), 0.3);  // a confused second copy
  out = core.take_outbound();
  ASSERT_TRUE(has_command(out, proto::Command::DISCARDED, 10));
  EXPECT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0].rank, 1);  // told to the sender only
  // Rank 1 dies while the MANIFEST is written: the step still commits.
  core.disconnected(1, 0.4);
  core.tick(10.0);
  ASSERT_TRUE(core.failure());
  out = core.take_outbound();
  EXPECT_FALSE(has_command(out, proto::Command::DISCARDED, 10));
  const auto r = CoordinatorCore::publish(*real_file_ops(), root, 2, jobs[0]);
  EXPECT_TRUE(r.error.empty()) << r.error;
  EXPECT_EQ(newest_valid(root), 10u);
  core.published(jobs[0], r, 10.5);
  EXPECT_TRUE(has_command(core.take_outbound(), proto::Command::COMMITTED, 10));
  EXPECT_EQ(core.last_committed_step(), 10u);
  EXPECT_EQ(core.commits(), 1);

  // A publish that failed discards its step; one of an earlier start is recorded and told to no one.
  core.restart(2, 1, "test", 11.0);
  ASSERT_EQ(core.admit(hello("secret", 0, 2, kNonce, "", 1).hello(), kNonce, 11.0), "");
  ASSERT_EQ(core.admit(hello("secret", 1, 2, kNonce, "", 1).hello(), kNonce, 11.0), "");
  core.report(0, write_rank_files(root, 20, 0), 11.1);
  core.report(1, write_rank_files(root, 20, 1), 11.2);
  ASSERT_EQ(jobs.size(), 2u);
  PublishResult failed;
  failed.error = "injected (No space left on device)";
  core.published(jobs[1], failed, 11.3);
  out = core.take_outbound();
  ASSERT_TRUE(has_command(out, proto::Command::DISCARDED, 20));
  EXPECT_FALSE(has_command(out, proto::Command::COMMITTED));
  EXPECT_EQ(core.last_committed_step(), 10u);
  core.report(0, write_rank_files(root, 30, 0), 11.4);
  core.report(1, write_rank_files(root, 30, 1), 11.5);
  ASSERT_EQ(jobs.size(), 3u);
  core.restart(2, 2, "test", 12.0);
  core.published(jobs[2], CoordinatorCore::publish(*real_file_ops(), root, 2, jobs[2]), 12.1);
  EXPECT_TRUE(core.take_outbound().empty());
  EXPECT_EQ(core.last_committed_step(), 30u);  // valid on disk: a resume will use it
  EXPECT_EQ(newest_valid(root), 30u);
}

// Fails the n-th file operation of the MANIFEST commit, as a crash or a full disk would.
class FailingOps : public FileOps {
 public:
  explicit FailingOps(int fail_at) : fail_at_(fail_at) {}
  int ops = 0;
  void write_file(const std::string& p, const std::string& b) override { tick(), FileOps::write_file(p, b); }
  void rename(const std::string& a, const std::string& b) override { tick(), FileOps::rename(a, b); }
  void fsync_dir(const std::string& d) override { tick(), FileOps::fsync_dir(d); }
  void make_dir(const std::string& d) override { tick(), FileOps::make_dir(d); }
  void remove_all(const std::string& p) override { tick(), FileOps::remove_all(p); }

 private:
  void tick() {
    if (++ops == fail_at_) throw Error("injected failure (No space left on device)");
  }
  int fail_at_;
};

TEST(CoordinatorCore, ManifestWriteFailingAtEveryOperationKeepsThePreviousCommit) {
  int total = 0;
  {
    ScratchDir dir("probe");
    auto counter = std::make_shared<FailingOps>(-1);
    auto o = core_options(dir.file("ckpt"), 1);
    o.ops = counter;
    CoordinatorCore core(o, 0.0, 1e9);
    ASSERT_EQ(core.admit(hello("secret", 0, 1).hello(), kNonce, 0.0), "");
    core.report(0, write_rank_files(dir.file("ckpt"), 10, 0), 0.1);
    total = counter->ops;
  }
  ASSERT_GE(total, 6);
  for (int fail = 1; fail <= total; ++fail) {
    SCOPED_TRACE(concat("failure at operation ", fail, " of ", total));
    ScratchDir dir("mfail");
    const std::string root = dir.file("ckpt");
    auto ops = std::make_shared<FailingOps>(-1);
    auto o = core_options(root, 1);
    o.ops = ops;
    CoordinatorCore core(o, 0.0, 1e9);
    ASSERT_EQ(core.admit(hello("secret", 0, 1).hello(), kNonce, 0.0), "");
    core.report(0, write_rank_files(root, 10, 0), 0.1);
    ASSERT_EQ(newest_valid(root), 10u);
    *ops = FailingOps(fail);
    core.take_outbound();
    core.report(0, write_rank_files(root, 20, 0), 0.2);
    auto out = core.take_outbound();
    const uint64_t newest = newest_valid(root);
    // Exactly one verdict, and it is the truth on disk: a failure while the MANIFEST is published (write,
    // rename, the two directory fsyncs) discards the step and leaves step 10 the newest; a failure after it
    // (LATEST, garbage collection) leaves step 20 committed, and the ranks are told so.
    const bool committed = has_command(out, proto::Command::COMMITTED, 20);
    const bool discarded = has_command(out, proto::Command::DISCARDED, 20);
    EXPECT_NE(committed, discarded);
    EXPECT_EQ(committed, fail > 4);
    EXPECT_EQ(newest, committed ? 20u : 10u);
    EXPECT_EQ(core.last_committed_step(), committed ? 20u : 10u);
    EXPECT_NO_THROW(verify_checkpoint(step_dir(root, newest)));
  }
}

// LATEST or garbage collection failing after the MANIFEST rename: the checkpoint is valid on disk and a resume
// will use it, so the step is reported committed and the failure is a warning, never a discard (#17).
TEST(CoordinatorCore, FailureAfterTheManifestRenameStillCommits) {
  struct AfterCommitFailingOps : FileOps {
    bool fail_latest = false, fail_remove = false;
    void write_file(const std::string& p, const std::string& b) override {
      if (fail_latest && p.find("LATEST") != std::string::npos) throw Error(concat("cannot create ", p, ": EIO"));
      FileOps::write_file(p, b);
    }
    void remove_all(const std::string& p) override {
      if (fail_remove) throw Error(concat("cannot remove ", p, ": EIO"));
      FileOps::remove_all(p);
    }
  };
  for (const bool latest : {true, false}) {
    SCOPED_TRACE(latest ? "LATEST fails" : "garbage collection fails");
    ScratchDir dir("aftercommit");
    const std::string root = dir.file("ckpt");
    auto ops = std::make_shared<AfterCommitFailingOps>();
    auto o = core_options(root, 1);
    o.keep = 1;  // step 20's commit removes step 10
    o.ops = ops;
    CoordinatorCore core(o, 0.0, 1e9);
    ASSERT_EQ(core.admit(hello("secret", 0, 1).hello(), kNonce, 0.0), "");
    core.report(0, write_rank_files(root, 10, 0), 0.1);
    ASSERT_TRUE(has_command(core.take_outbound(), proto::Command::COMMITTED, 10));
    ops->fail_latest = latest;
    ops->fail_remove = !latest;
    core.report(0, write_rank_files(root, 20, 0), 0.2);
    const auto out = core.take_outbound();
    EXPECT_TRUE(has_command(out, proto::Command::COMMITTED, 20));
    EXPECT_FALSE(has_command(out, proto::Command::DISCARDED, 20));
    EXPECT_EQ(core.last_committed_step(), 20u);
    EXPECT_EQ(core.commits(), 2);
    EXPECT_EQ(newest_valid(root), 20u);
    EXPECT_EQ(lineage_head(root)->step, 20u);     // what `--resume auto` picks
    EXPECT_TRUE(fs::exists(step_dir(root, 10)));  // left for a later commit's garbage collection
    const auto status = nlohmann::json::parse(core.status_json(0.3));
    EXPECT_EQ(status["checkpoint"]["discarded"], 0);
    bool warned = false;
    for (const auto& e : core.events()) {
      warned |= e.level == "warning" && e.message.find("step 20 is committed, but") != std::string::npos;
    }
    EXPECT_TRUE(warned);
  }
}

TEST(CheckpointFiles, GarbageCollectionKeepsTheNewestAndInFlightDirectories) {
  ScratchDir dir("gc");
  const std::string root = dir.file("ckpt");
  auto& ops = *real_file_ops();
  auto commit = [&](uint64_t step) {
    proto::Manifest m;
    m.set_step(step);
    storage::prepare_step_dir(ops, root, step);
    *m.add_files() = write_checkpoint_file(ops, step_dir(root, step), "a.bin", "abc");
    storage::commit_manifest(ops, root, m, 1);
  };
  commit(10);
  ops.make_dir(step_dir(root, 15));  // a crashed attempt, older than the next commit
  commit(20);
  ops.make_dir(step_dir(root, 40));  // in flight: newer than every commit
  commit(30);
  std::vector<uint64_t> steps;
  for (const auto& info : list_checkpoints(root)) steps.push_back(info.step);
  EXPECT_EQ(steps, (std::vector<uint64_t>{40, 30}));
  EXPECT_EQ(newest_valid(root), 30u);
  // keep = 1 with a corrupt newest: the valid one below it is what survives.
  storage::garbage_collect(ops, root, 1, 30);
  EXPECT_EQ(newest_valid(root), 30u);
  std::ifstream latest(root + "/LATEST");
  std::string name;
  latest >> name;
  EXPECT_EQ(name, "step-00000030");
}

std::string read_manifest_id(const std::string& dir) { return verify_checkpoint(dir, false).lineage().id(); }

// Note [Checkpoint lineage]: a branch started from an older checkpoint is what LATEST, lineage_head and garbage
// collection follow; the abandoned branch's newer checkpoints are never picked and go once they are passed.
TEST(CheckpointFiles, LineageHeadAndGarbageCollectionFollowTheNewestBranch) {
  ScratchDir dir("lineage");
  const std::string root = dir.file("ckpt");
  auto& ops = *real_file_ops();
  int ids = 0;
  auto id_of = [&](uint64_t step) { return read_manifest_id(step_dir(root, step)); };
  auto commit = [&](uint64_t step, std::optional<uint64_t> parent, int64_t keep = 3) {
    proto::Manifest m;
    m.set_step(step);
    m.mutable_lineage()->set_id(concat("id", step, "-", ++ids));
    m.mutable_lineage()->set_has_parent(parent.has_value());
    if (parent) {
      m.mutable_lineage()->set_parent_step(*parent);
      m.mutable_lineage()->set_parent_id(id_of(*parent));
    }
    prepare_step_dir(ops, root, step);
    *m.add_files() = write_checkpoint_file(ops, step_dir(root, step), "a.bin", concat("step ", step));
    commit_manifest(ops, root, m, keep);
  };
  auto steps = [&] {
    std::vector<uint64_t> out;
    for (const auto& info : list_checkpoints(root)) out.push_back(info.step);
    return out;
  };
  auto head = [&] { return lineage_head(root).value().step; };
  auto spit = [](const std::string& path, const std::string& bytes) { std::ofstream(path, std::ios::trunc) << bytes; };
  commit(10, std::nullopt);
  commit(20, 10);
  commit(30, 20);
  EXPECT_EQ(steps(), (std::vector<uint64_t>{30, 20, 10}));
  EXPECT_EQ(head(), 30u);
  // Resumed from step 10: the branch 10 -> 15 is the run now; 20 and 30 stay until the branch passes them.
  commit(15, 10);
  EXPECT_EQ(head(), 15u);
  EXPECT_EQ(steps(), (std::vector<uint64_t>{30, 20, 15, 10}));
  commit(17, 15);
  EXPECT_EQ(steps(), (std::vector<uint64_t>{30, 20, 17, 15, 10}));
  commit(19, 17);  // keep 3 of the branch: 10 goes, the other branch's 20 and 30 stay
  EXPECT_EQ(steps(), (std::vector<uint64_t>{30, 20, 19, 17, 15}));
  EXPECT_EQ(head(), 19u);
  // A damaged head falls back along its own branch, not to the newer step 30 of the other one.
  spit(step_dir(root, 19) + "/a.bin", "step 1X");  // same size: only the checksum tells
  std::vector<CheckpointInfo> skipped;
  EXPECT_EQ(lineage_head(root, &skipped).value().step, 17u);
  ASSERT_EQ(skipped.size(), 1u);
  EXPECT_EQ(skipped[0].step, 19u);
  // A commit whose LATEST update was cut short still counts: it descends from LATEST.
  commit(21, 17);
  EXPECT_EQ(steps(), (std::vector<uint64_t>{30, 21, 17, 15}));  // 20 passed, 19 (damaged, older) removed
  spit(root + "/LATEST", "step-00000017\n");
  EXPECT_EQ(head(), 21u);
  // Passing the other branch's last step removes it.
  commit(31, 21);
  EXPECT_EQ(steps(), (std::vector<uint64_t>{31, 21, 17}));
  // A branch that rewrites a step directory breaks the other branch's link to it: the old step 40, whose parent
  // was the old step 31, does not descend from the new step 31.
  commit(40, 31);
  commit(33, 31);  // not LATEST-worthy yet: resumed from 31 again, a new branch
  commit(31, 21);  // and a third branch rewrites step 31 itself
  EXPECT_EQ(head(), 31u);
  EXPECT_EQ(steps(), (std::vector<uint64_t>{40, 33, 31, 21}));
  // Checkpoints from before lineages were recorded: step order.
  ScratchDir old("lineage-old");
  const std::string old_root = old.file("ckpt");
  for (uint64_t step : {10, 20}) {
    proto::Manifest m;
    m.set_step(step);
    prepare_step_dir(ops, old_root, step);
    *m.add_files() = write_checkpoint_file(ops, step_dir(old_root, step), "a.bin", "x");
    commit_manifest(ops, old_root, m, 3);
  }
  spit(old_root + "/LATEST", "step-00000010\n");
  EXPECT_EQ(lineage_head(old_root).value().step, 20u);
}

// ---------------------------------------------------------------------------------------------------------
// The real server on loopback
// ---------------------------------------------------------------------------------------------------------
TEST(Coordinator, BadPeersAreRejectedAndTheServerKeepsServing) {
  ScratchDir dir("server");
  auto coord = start(dir.file("ckpt"), 1, /*hello_timeout=*/0.5);
  const uint16_t port = coord->port();
  auto send_and_read = [&](const std::string& bytes) {
    const int fd = raw_connect(port);
    EXPECT_GE(fd, 0);
    EXPECT_EQ(::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL), static_cast<ssize_t>(bytes.size()));
    return read_until_closed(fd);
  };
  // Wrong token: a Reject frame, then the server closes.
  auto e = handshake(port, hello("", 0, 1), "wrong");
  ASSERT_EQ(e.body_case(), proto::Envelope::kReject);
  EXPECT_NE(e.reject().reason().find("token"), std::string::npos);
  // Unknown rank, oversized frame, garbage, another version, a non-Hello first message: closed.
  EXPECT_EQ(handshake(port, hello("", 5, 1), "secret").body_case(), proto::Envelope::kReject);
  send_and_read(std::string("\x10\x00\x00\x00", 4));
  send_and_read(std::string("\0\0\0\x06garbag", 10));
  {
    proto::Envelope v = hello("secret", 0, 1);
    v.set_version(99);
    const std::string p = v.SerializeAsString();
    send_and_read(std::string("\0\0\0", 3) + static_cast<char>(p.size()) + p);
  }
  {
    proto::Envelope hb;
    hb.mutable_heartbeat()->set_step(1);
    send_and_read(encode_frame(hb));
  }
  // Silent connection: closed after the Hello timeout.
  {
    const auto t0 = std::chrono::steady_clock::now();
    const int fd = raw_connect(port);
    read_until_closed(fd);
    EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(4));
  }
  int64_t rejected = 0;
  coord->with_core([&](CoordinatorCore& c) { rejected = c.rejected_connections; });
  EXPECT_EQ(rejected, 7);
  // Still serving: a real client joins.
  ClientOptions co;
  co.address = coord->address();
  co.token = coord->token();
  co.host = "h";
  co.pid = 1;
  CoordinatorClient client(co, nullptr);
  EXPECT_TRUE(client.wait_connected(5.0));
  EXPECT_FALSE(coord->failure());
}

// Rejected connections (a port scan, a wrong token, ranks of an earlier start) must not use up the connection
// cap (4 x world + 16): after three times that many, a restarted job's ranks still join (#17).
TEST(Coordinator, RejectedConnectionsDoNotExhaustTheConnectionCap) {
  ScratchDir dir("cap");
  constexpr uint32_t kWorld = 2;
  auto coord = start(dir.file("ckpt"), kWorld);
  const uint16_t port = coord->port();
  auto client = [&](uint32_t rank, uint32_t attempt) {
    ClientOptions co;
    co.address = coord->address();
    co.token = coord->token();
    co.rank = rank;
    co.world_size = kWorld;
    co.host = "h";
    co.pid = 100 + rank + 10 * attempt;
    co.attempt = attempt;
    return std::make_unique<CoordinatorClient>(co, nullptr);
  };
  {
    auto c0 = client(0, 0), c1 = client(1, 0);
    ASSERT_TRUE(c0->wait_connected(5.0));
    ASSERT_TRUE(c1->wait_connected(5.0));
  }
  coord->restart(kWorld, 1, "test restart");
  const std::string garbage("\0\0\0\x06garbag", 10);
  const int n = 3 * (4 * static_cast<int>(kWorld) + 16);
  int64_t before = 0;
  coord->with_core([&](CoordinatorCore& c) { before = c.rejected_connections; });
  for (int i = 0; i < n; ++i) {
    std::optional<proto::Envelope> e;  // each one is told why, not just dropped by the cap
    if (i % 3 == 0) {
      const int fd = raw_connect(port);
      ASSERT_GE(fd, 0);
      ::send(fd, garbage.data(), garbage.size(), MSG_NOSIGNAL);
      e = answer(read_until_closed(fd));
    } else if (i % 3 == 1) {
      e = handshake(port, hello("", 0, kWorld), "wrong");
    } else {
      e = handshake(port, hello("", 0, kWorld), coord->token());  // start 0 of the job: refused after the restart
      EXPECT_NE(e->reject().reason().find("belongs to start 0"), std::string::npos) << e->reject().reason();
    }
    ASSERT_TRUE(e.has_value()) << "connection " << i << " closed without a Reject";
    EXPECT_EQ(e->body_case(), proto::Envelope::kReject);
  }
  int64_t after = 0;
  coord->with_core([&](CoordinatorCore& c) { after = c.rejected_connections; });
  EXPECT_EQ(after - before, n);
  auto c0 = client(0, 1), c1 = client(1, 1);
  EXPECT_TRUE(c0->wait_connected(5.0));
  EXPECT_TRUE(c1->wait_connected(5.0));
  EXPECT_FALSE(coord->failure());
}

// Before its Hello a connection is nobody: a first frame announcing 1 MiB is refused at once, without waiting
// for (or allocating) its body, and the server keeps serving (#17).
TEST(Coordinator, LargeFirstFrameIsRefusedBeforeHello) {
  ScratchDir dir("bigframe");
  auto coord = start(dir.file("ckpt"), 1);  // Hello timeout 10 s: a refusal within 4 s is the size check
  const auto t0 = std::chrono::steady_clock::now();
  const int fd = raw_connect(coord->port());
  ASSERT_GE(fd, 0);
  const uint32_t n = static_cast<uint32_t>(kMaxFrameBytes);
  const char header[4] = {static_cast<char>(n >> 24), static_cast<char>(n >> 16), static_cast<char>(n >> 8),
                          static_cast<char>(n)};
  ASSERT_EQ(::send(fd, header, 4, MSG_NOSIGNAL), 4);
  const std::string reply = read_until_closed(fd);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(4));
  auto e = answer(reply);
  ASSERT_TRUE(e.has_value()) << "no Reject for a 1 MiB first frame";
  ASSERT_EQ(e->body_case(), proto::Envelope::kReject);
  EXPECT_NE(e->reject().reason().find("exceeds the limit of 4096"), std::string::npos) << e->reject().reason();
  ClientOptions co;
  co.address = coord->address();
  co.token = coord->token();
  co.host = "h";
  co.pid = 1;
  CoordinatorClient client(co, nullptr);
  EXPECT_TRUE(client.wait_connected(5.0));
}

// Out of file descriptors, the accept loop waits between tries instead of spinning on EMFILE, and accepts again
// once descriptors are free (#17).
TEST(Coordinator, AcceptBacksOffWhenOutOfDescriptors) {
  ScratchDir dir("emfile");
  auto coord = start(dir.file("ckpt"), 1);
  const uint16_t port = coord->port();
  rlimit old_limit{};
  ASSERT_EQ(::getrlimit(RLIMIT_NOFILE, &old_limit), 0);
  const int peer = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(peer, 0);
  int open_fds = 0;
  for (const auto& e : fs::directory_iterator("/proc/self/fd")) {
    (void)e;
    ++open_fds;
  }
  rlimit low = old_limit;
  low.rlim_cur = static_cast<rlim_t>(open_fds + 8);
  ASSERT_EQ(::setrlimit(RLIMIT_NOFILE, &low), 0);
  std::vector<int> fillers;  // every descriptor left: the server's accept fails with EMFILE
  for (;;) {
    const int f = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (f < 0) break;
    fillers.push_back(f);
  }
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  const int rc = ::connect(peer, reinterpret_cast<sockaddr*>(&a), sizeof(a));  // completes in the backlog
  rusage r0{}, r1{};
  ::getrusage(RUSAGE_SELF, &r0);
  std::this_thread::sleep_for(std::chrono::seconds(1));
  ::getrusage(RUSAGE_SELF, &r1);
  for (int f : fillers) ::close(f);
  ::setrlimit(RLIMIT_NOFILE, &old_limit);
  ASSERT_EQ(rc, 0);
  auto cpu = [](const rusage& r) {
    return static_cast<double>(r.ru_utime.tv_sec + r.ru_stime.tv_sec) +
           static_cast<double>(r.ru_utime.tv_usec + r.ru_stime.tv_usec) / 1e6;
  };
  EXPECT_LT(cpu(r1) - cpu(r0), 0.25) << "the accept loop spun while out of descriptors";
  // Descriptors are back: the waiting connection is accepted and served.
  timeval tv{5, 0};
  ::setsockopt(peer, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  const std::string bad = encode_frame(hello("wrong", 0, 1));
  ::send(peer, bad.data(), bad.size(), MSG_NOSIGNAL);
  const std::string reply = read_until_closed(peer);
  auto e = answer(reply);
  ASSERT_TRUE(e.has_value()) << "the connection that waited out the EMFILE was not served";
  EXPECT_EQ(e->body_case(), proto::Envelope::kReject);
  bool noted = false;
  coord->with_core([&](CoordinatorCore& c) {
    for (const auto& ev : c.events()) noted |= ev.message.find("accepting a connection failed") != std::string::npos;
  });
  EXPECT_TRUE(noted);
}

// RUN/job_token authorises /checkpoint and /stop, and run directories are often shared: no moment may exist in
// which another user could read it, whatever the umask (#17). A watcher stats the file and its temporary while
// the endpoint files are written again and again.
TEST(Coordinator, JobTokenIsCreatedPrivate) {
  ScratchDir dir("token");
  auto coord = start(dir.file("ckpt"), 1);
  const std::string run = dir.file("run");
  fs::create_directories(run);
  const std::string token = (fs::path(run) / "job_token").string();
  const std::string tmp = (fs::path(run) / ".job_token.tmp").string();
  const mode_t old_umask = ::umask(0);
  std::atomic<bool> done{false};
  std::atomic<int> exposed{0};
  std::thread watcher([&] {
    while (!done.load()) {
      for (const auto& p : {token, tmp}) {
        struct stat st {};
        if (::stat(p.c_str(), &st) == 0 && (st.st_mode & 077) != 0) ++exposed;
      }
    }
  });
  for (int i = 0; i < 40; ++i) write_endpoint_files(*coord, run, coord->address(), false);
  done = true;
  watcher.join();
  ::umask(old_umask);
  EXPECT_EQ(exposed.load(), 0) << "job_token or its temporary was readable by group or others";
  struct stat st {};
  ASSERT_EQ(::stat(token.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_EQ(storage::read_file(token), coord->token() + "\n");
}

// Rank `rank` of a 2-rank job on host "h" (pid 100 + rank).
ClientOptions client_options(const Coordinator& coord, uint32_t rank) {
  ClientOptions co;
  co.address = coord.address();
  co.token = coord.token();
  co.rank = rank;
  co.world_size = 2;
  co.host = "h";
  co.pid = 100 + rank;
  return co;
}

// A disk that stalls on the MANIFEST until released (an NFS server gone slow, a device flushing its cache).
class StallingOps : public FileOps {
 public:
  void write_file(const std::string& p, const std::string& b) override {
    if (fs::path(p).filename().string().find("MANIFEST") != std::string::npos) {
      std::unique_lock<std::mutex> lock(mu_);
      entered_ = true;
      cv_.notify_all();
      cv_.wait(lock, [&] { return released_; });
    }
    FileOps::write_file(p, b);
  }
  bool wait_entered(double seconds) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, std::chrono::duration<double>(seconds), [&] { return entered_; });
  }
  void release() {
    std::lock_guard<std::mutex> lock(mu_);
    released_ = true;
    cv_.notify_all();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool entered_ = false, released_ = false;
};

// Note [Coordinated checkpoints], point 4: the MANIFEST's fsyncs run on the coordinator's writer thread. A disk
// stalled longer than the heartbeat timeout holds up neither /status nor the ranks' liveness, and the step
// commits once the disk is back.
TEST(Coordinator, AStalledDiskHoldsUpNeitherStatusNorHeartbeats) {
  ScratchDir dir("stall");
  const std::string root = dir.file("ckpt");
  auto ops = std::make_shared<StallingOps>();
  CoordinatorOptions o;
  o.core = core_options(root, 2);
  o.core.heartbeat_interval_s = 0.05;
  o.core.heartbeat_timeout_s = 2.0;
  o.core.ops = ops;
  o.status_port = 0;
  auto coord = std::make_unique<Coordinator>(o);
  auto make = [&](uint32_t rank) {
    return std::make_unique<CoordinatorClient>(client_options(*coord, rank), [](const std::string&) {});
  };
  auto c0 = make(0), c1 = make(1);
  ASSERT_TRUE(c0->wait_connected(5.0));
  ASSERT_TRUE(c1->wait_connected(5.0));
  c0->report(write_rank_files(root, 10, 0));
  c1->report(write_rank_files(root, 10, 1));
  ASSERT_TRUE(ops->wait_entered(10.0));
  // Stalled for 1.5 heartbeat timeouts: /status answers meanwhile, and no rank is declared dead.
  auto status = std::async(std::launch::async, [&] { return coord->status_json(); });
  const bool answered = status.wait_for(std::chrono::seconds(1)) == std::future_status::ready;
  std::this_thread::sleep_for(std::chrono::milliseconds(3000));
  auto failure = std::async(std::launch::async, [&] { return coord->failure(); });
  const bool answered_later = failure.wait_for(std::chrono::seconds(1)) == std::future_status::ready;
  ops->release();  // (before the asserts: with the disk held under the coordinator's lock, they would wait forever)
  EXPECT_TRUE(answered) << "/status waited for the disk";
  EXPECT_TRUE(answered_later) << "the coordinator's state waited for the disk";
  EXPECT_EQ(nlohmann::json::parse(status.get())["state"], "checkpointing");
  const auto failed_meanwhile = failure.get();
  EXPECT_FALSE(failed_meanwhile) << *failed_meanwhile;
  std::string detail;
  EXPECT_EQ(c0->wait_commit(10, 10.0, &detail), CoordinatorClient::Commit::kCommitted) << detail;
  EXPECT_EQ(c1->wait_commit(10, 10.0), CoordinatorClient::Commit::kCommitted);
  EXPECT_EQ(newest_valid(root), 10u);
  EXPECT_FALSE(coord->failure());
}

TEST(Coordinator, ClientsCheckpointStopAndSeeAPeerDie) {
  ScratchDir dir("clients");
  const std::string root = dir.file("ckpt");
  auto coord = start(root, 2);
  std::atomic<int> aborted{0};
  std::string abort_reason;
  std::mutex mu;
  auto make = [&](uint32_t rank) {
    return std::make_unique<CoordinatorClient>(client_options(*coord, rank), [&](const std::string& why) {
      std::lock_guard<std::mutex> lock(mu);
      abort_reason = why;
      ++aborted;
    });
  };
  auto c0 = make(0), c1 = make(1);
  ASSERT_TRUE(c0->wait_connected(5.0));
  ASSERT_TRUE(c1->wait_connected(5.0));
  c1->report(write_rank_files(root, 10, 1));
  c0->report(write_rank_files(root, 10, 0));
  std::string detail;
  EXPECT_EQ(c0->wait_commit(10, 10.0, &detail), CoordinatorClient::Commit::kCommitted) << detail;
  EXPECT_EQ(c1->wait_commit(10, 10.0), CoordinatorClient::Commit::kCommitted);
  EXPECT_NE(detail.find("step-00000010"), std::string::npos);
  EXPECT_EQ(coord->last_committed_step(), 10u);

  coord->request(proto::Command::CHECKPOINT, "test");
  coord->request(proto::Command::STOP, "test");
  for (int i = 0; i < 500 && !(c0->stop_requested() && c1->stop_requested()); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_TRUE(c0->stop_requested());
  EXPECT_TRUE(c1->take_checkpoint_request());
  EXPECT_FALSE(c1->take_checkpoint_request());  // consumed

  // Rank 1's process vanishes (no goodbye): after the reconnect grace, rank 0 is told to abort.
  c1.reset();
  for (int i = 0; i < 600 && aborted.load() == 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  ASSERT_EQ(aborted.load(), 1);
  {
    std::lock_guard<std::mutex> lock(mu);
    EXPECT_NE(abort_reason.find("rank 1 on h (pid 101)"), std::string::npos) << abort_reason;
  }
  ASSERT_TRUE(coord->failure());
}

TEST(Coordinator, HttpEndpointServesStatusMetricsAndGuardsControl) {
  ScratchDir dir("http");
  auto coord = start(dir.file("ckpt"), 1);
  ClientOptions co;
  co.address = coord->address();
  co.token = coord->token();
  co.host = "h";
  co.pid = 7;
  CoordinatorClient client(co, nullptr);
  ASSERT_TRUE(client.wait_connected(5.0));
  proto::Heartbeat hb;
  hb.set_step(12);
  hb.set_total_steps(100);
  hb.set_loss(0.75);
  hb.set_img_per_s(321);
  client.update(hb, true);
  const std::string url = coord->status_url();
  nlohmann::json st;
  for (int i = 0; i < 200; ++i) {  // until the heartbeat arrived
    st = nlohmann::json::parse(http_request("GET", url + "status").body);
    if (st["step"] == 12) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(st["step"], 12);
  EXPECT_EQ(st["job"], "test");
  EXPECT_EQ(st["state"], "running");
  EXPECT_EQ(st["ranks"][0]["host"], "h");
  EXPECT_EQ(st["ranks"][0]["pid"], 7);
  auto metrics = http_request("GET", url + "metrics");
  EXPECT_EQ(metrics.status, 200);
  EXPECT_NE(metrics.body.find("stride_step 12"), std::string::npos) << metrics.body;
  EXPECT_NE(metrics.body.find("stride_rank_step{rank=\"0\",host=\"h\"} 12"), std::string::npos);
  EXPECT_EQ(http_request("GET", url + "healthz").body, "ok\n");
  auto page = http_request("GET", url);
  EXPECT_NE(page.content_type.find("text/html"), std::string::npos);
  EXPECT_NE(page.body.find("<title>Stride status</title>"), std::string::npos);
  EXPECT_EQ(http_request("GET", url + "nope").status, 404);
  EXPECT_EQ(http_request("DELETE", url + "status").status, 405);
  // Control needs the token.
  EXPECT_EQ(http_request("POST", url + "stop").status, 401);
  EXPECT_EQ(http_request("POST", url + "stop", "", "wrong-token").status, 401);
  EXPECT_FALSE(client.stop_requested());
  EXPECT_EQ(http_request("POST", url + "checkpoint", "", coord->token()).status, 202);
  EXPECT_EQ(http_request("POST", url + "stop", "", coord->token()).status, 202);
  for (int i = 0; i < 500 && !client.stop_requested(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_TRUE(client.stop_requested());
  EXPECT_TRUE(client.take_checkpoint_request());
  // Malformed requests: answered or closed, never a crash.
  const uint16_t port = static_cast<uint16_t>(coord->status_port());
  const std::string junk[] = {"GARBAGE\r\n\r\n", "GET / HTTP/9.9\r\n\r\n", std::string(20000, 'A') + "\r\n\r\n",
                              "GET /status HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n", "\x01\x02\x03\r\n\r\n"};
  for (const auto& j : junk) {
    const int fd = raw_connect(port);
    ASSERT_GE(fd, 0);
    ::send(fd, j.data(), j.size(), MSG_NOSIGNAL);
    ::shutdown(fd, SHUT_WR);
    read_until_closed(fd);
  }
  EXPECT_EQ(http_request("GET", url + "healthz").status, 200);
  // Counted: the three refused control requests (no token, wrong token, DELETE) and the five junk requests.
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // past the quarter-second render cache
  auto after = http_request("GET", url + "metrics").body;
  EXPECT_NE(after.find("\nstride_http_bad_requests_total 8\n"), std::string::npos) << after;
}

// The first line of the answer to a raw HTTP request ("HTTP/1.1 421 Misdirected Request").
std::string raw_http_status_line(uint16_t port, const std::string& request) {
  const int fd = raw_connect(port);
  EXPECT_GE(fd, 0);
  ::send(fd, request.data(), request.size(), MSG_NOSIGNAL);
  ::shutdown(fd, SHUT_WR);
  const std::string all = read_until_closed(fd);
  return all.substr(0, all.find("\r\n"));
}

// DNS rebinding: a page whose name the attacker points at 127.0.0.1 sends its own name as Host. Only this
// machine's names, the configured ones and the address the request came to are served, on any port (#17).
TEST(Coordinator, HttpEndpointAnswersOnlyItsOwnHostNames) {
  ScratchDir dir("host");
  CoordinatorOptions o;
  o.core = core_options(dir.file("ckpt"), 1);
  o.status_port = 0;
  o.status_hosts = {"stride-head.example.org"};
  Coordinator coord(o);
  const uint16_t port = static_cast<uint16_t>(coord.status_port());
  ClientOptions co;
  co.address = coord.address();
  co.token = coord.token();
  co.host = "h";
  co.pid = 7;
  CoordinatorClient client(co, nullptr);
  ASSERT_TRUE(client.wait_connected(5.0));
  auto get = [&](const std::string& host_line, const std::string& method = "GET", const std::string& path = "/status",
                 const std::string& extra = "") {
    return raw_http_status_line(
        port, concat(method, " ", path, " HTTP/1.1\r\n", host_line, extra, "Connection: close\r\n\r\n"));
  };
  const std::string p = std::to_string(port);
  for (const std::string& host : std::vector<std::string>{
           "localhost", "localhost:" + p, "LOCALHOST:" + p, "127.0.0.1:" + p, "[::1]:" + p, "127.0.0.1:9999",
           "stride-head.example.org", "stride-head.example.org.:80", local_hostname() + ":" + p}) {
    EXPECT_EQ(get(concat("Host: ", host, "\r\n")), "HTTP/1.1 200 OK") << host;
  }
  EXPECT_EQ(get(""), "HTTP/1.1 200 OK") << "no Host header";
  for (const std::string& host :
       std::vector<std::string>{"evil.example", "evil.example:" + p, "127.0.0.2", "localhost.evil.example",
                                "stride-head.example.org.evil.example", "[::2]:" + p}) {
    EXPECT_EQ(get(concat("Host: ", host, "\r\n")), "HTTP/1.1 421 Misdirected Request") << host;
    EXPECT_EQ(get(concat("Host: ", host, "\r\n"), "GET", "/metrics"), "HTTP/1.1 421 Misdirected Request") << host;
  }
  // Control from a rebound page is refused before the token is even looked at.
  EXPECT_EQ(get("Host: evil.example\r\n", "POST", "/stop",
                concat("Authorization: Bearer ", coord.token(), "\r\nContent-Length: 0\r\n")),
            "HTTP/1.1 421 Misdirected Request");
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_FALSE(client.stop_requested());
  EXPECT_EQ(http_request("GET", coord.status_url() + "healthz").status, 200);  // the client sends a good Host
}

// Counters and steps are exact in /metrics: the default stream precision printed 1234567 as 1.23457e+06 (#17).
TEST(CoordinatorCore, MetricsPrintIntegersExactly) {
  ScratchDir dir("metrics");
  CoordinatorCore core(core_options(dir.file("ckpt"), 1), 0.0, 1e9);
  ASSERT_EQ(core.admit(hello("secret", 0, 1).hello(), kNonce, 0.0), "");
  proto::Heartbeat hb;
  hb.set_step(1234567);
  hb.set_total_steps(98765432101ull);
  hb.set_epoch(1234567);
  hb.set_loss(0.1);
  hb.set_img_per_s(1234567.5);
  hb.set_step_time_s(0.001234);
  core.heartbeat(0, hb, 0.5);
  core.rejected_connections = 12345678;
  core.http_bad_requests = 9876543;
  const std::string m = core.metrics_text(1.0);
  for (const char* line :
       {"\nstride_step 1234567\n", "\nstride_total_steps 98765432101\n", "\nstride_epoch 1234567\n",
        "\nstride_rejected_connections_total 12345678\n", "\nstride_http_bad_requests_total 9876543\n",
        "\nstride_rank_step{rank=\"0\",host=\"testhost\"} 1234567\n", "\nstride_loss 0.1\n",
        "\nstride_images_per_second 1234567.5\n", "\nstride_world_size 1\n", "\nstride_up 1\n",
        "\nstride_rank_step_seconds{rank=\"0\",host=\"testhost\"} 0.001234\n"}) {
    EXPECT_NE(m.find(line), std::string::npos) << line << " missing in\n" << m;
  }
  EXPECT_EQ(m.find("e+"), std::string::npos) << m;
}

// Each recovered failure reaches /status (where the seconds went, the steps redone, where the state came from),
// survives the job's restarts, and is counted in /metrics by source (#18); the list keeps the newest.
TEST(CoordinatorCore, RecoveriesReachStatusAndMetricsAndOutliveRestarts) {
  ScratchDir dir("recoveries");
  CoordinatorCore core(core_options(dir.file("ckpt"), 2), 0.0, 1e9);
  const std::string before = core.metrics_text(0.0);
  EXPECT_NE(before.find("\nstride_recoveries_total{source=\"memory\"} 0\n"), std::string::npos) << before;
  EXPECT_NE(before.find("\nstride_recovery_seconds_count 0\n"), std::string::npos) << before;
  Recovery a;
  a.restart = 1;
  a.reason = "rank 1 on vm (pid 42) exited with signal 9";
  a.detection_s = 0.05;
  a.stop_s = 0.03;
  a.backoff_s = 0.2;
  a.start_s = 1.7;
  a.warmup_s = 0.5;
  a.total_s = 2.48;
  a.failed_step = 38;
  a.start_step = 30;
  a.redone = 8;
  a.source = "memory";
  core.recovered(a, 10.0);
  core.restart(2, 1, a.reason, 10.5);
  Recovery b = a;
  b.restart = 2;
  b.total_s = 3.5;
  b.start_step = 20;
  b.redone = 25;
  b.source = "disk";
  core.recovered(b, 20.0);
  const auto j = nlohmann::json::parse(core.status_json(21.0));
  ASSERT_EQ(j["recoveries"].size(), 2u) << j.dump();
  const auto& r = j["recoveries"][0];
  EXPECT_EQ(r["restart"], 1);
  EXPECT_EQ(r["source"], "memory");
  EXPECT_EQ(r["steps_redone"], 8);
  EXPECT_EQ(r["start_step"], 30);
  EXPECT_EQ(r["failed_step"], 38);
  EXPECT_DOUBLE_EQ(r["detection_seconds"].get<double>(), 0.05);
  EXPECT_DOUBLE_EQ(r["warmup_seconds"].get<double>(), 0.5);
  EXPECT_DOUBLE_EQ(r["recovery_seconds"].get<double>(), 2.48);
  EXPECT_DOUBLE_EQ(r["time"].get<double>(), 1e9 + 10.0);
  EXPECT_EQ(r["reason"], a.reason);
  EXPECT_EQ(j["recoveries"][1]["source"], "disk");
  const std::string m = core.metrics_text(21.0);
  for (const char* line :
       {"\nstride_recoveries_total{source=\"memory\"} 1\n", "\nstride_recoveries_total{source=\"disk\"} 1\n",
        "\nstride_recoveries_total{source=\"scratch\"} 0\n", "\nstride_steps_redone_total 33\n",
        "\nstride_recovery_seconds_sum 5.98\n", "\nstride_recovery_seconds_count 2\n",
        "\nstride_last_recovery_seconds 3.5\n"}) {
    EXPECT_NE(m.find(line), std::string::npos) << line << " missing in\n" << m;
  }
  for (int i = 0; i < static_cast<int>(CoordinatorCore::kMaxRecoveries) + 5; ++i) {
    b.restart = 3 + i;
    core.recovered(b, 30.0 + i);
  }
  const auto k = nlohmann::json::parse(core.status_json(100.0));
  ASSERT_EQ(k["recoveries"].size(), CoordinatorCore::kMaxRecoveries);
  EXPECT_EQ(k["recoveries"].back()["restart"], 3 + static_cast<int>(CoordinatorCore::kMaxRecoveries) + 4);
  EXPECT_NE(core.metrics_text(100.0).find(
                concat("\nstride_recovery_seconds_count ", 2 + CoordinatorCore::kMaxRecoveries + 5, "\n")),
            std::string::npos);
}

}  // namespace
}  // namespace stride::cluster
