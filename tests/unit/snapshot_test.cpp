// In-memory snapshots (trainer/snapshot.h): what is kept, what verifies, and which step the ranks agree on.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>
#include <thread>

#include "comm/local/local_communicator.h"
#include "common/error.h"
#include "storage/file_io.h"
#include "test_util.h"
#include "trainer/config.h"
#include "trainer/snapshot.h"

namespace stride::trainer {
namespace {

namespace fs = std::filesystem;
using testing::ScratchDir;
using Parent = std::optional<std::pair<uint64_t, std::string>>;

CheckpointData state_at(uint64_t step, const Parent& parent, uint32_t world = 2) {
  CheckpointData d;
  d.model = {{"fc.weight", torch::full({4, 3}, static_cast<float>(step))}};
  d.optimizer = {{"fc.weight", torch::ones({4, 3})}};
  d.state = {{"rng", torch::arange(8).to(torch::kUInt8)}};
  d.extra.emplace_back("powersgd-rank-1.safetensors", NamedTensors{{"q", torch::full({2}, 7.f)}});
  d.manifest.set_step(step);
  d.manifest.set_world_size(world);
  d.manifest.set_model("resnet20");
  d.manifest.mutable_lineage()->set_id(concat("snap-", step));
  d.manifest.mutable_lineage()->set_has_parent(parent.has_value());
  if (parent) {
    d.manifest.mutable_lineage()->set_parent_step(parent->first);
    d.manifest.mutable_lineage()->set_parent_id(parent->second);
  }
  return d;
}

void write(SnapshotStore& store, uint64_t step, const Parent& parent, uint32_t world = 2) {
  ASSERT_TRUE(store.submit(state_at(step, parent, world)));
  store.drain();
}

std::vector<uint64_t> steps(const std::vector<CheckpointInfo>& infos) {
  std::vector<uint64_t> s;
  for (const auto& i : infos) s.push_back(i.step);
  return s;
}

// Runs choose() on two ranks (threads over a LocalWorld), each with its own store.
std::vector<std::optional<SnapshotChoice>> choose_on_two(std::vector<SnapshotStore*> stores, const Parent& disk,
                                                         std::vector<std::string>* why) {
  auto world = comm::LocalWorld::create(2);
  std::vector<std::optional<SnapshotChoice>> picks(2);
  why->assign(2, "");
  std::vector<std::thread> threads;
  for (int r = 0; r < 2; ++r) {
    threads.emplace_back([&, r] {
      auto c = world->communicator(r);
      picks[static_cast<size_t>(r)] =
          stores[static_cast<size_t>(r)]->choose(disk, 2, *c, &(*why)[static_cast<size_t>(r)]);
    });
  }
  for (auto& t : threads) t.join();
  return picks;
}

TEST(Snapshot, NewestCommonStepIsTheNewestEveryRankHolds) {
  EXPECT_EQ(newest_common_step({{30, 20}, {20, 10}}), 20u);
  EXPECT_EQ(newest_common_step({{30, 20}, {30, 20}, {20}}), 20u);
  EXPECT_EQ(newest_common_step({{30}, {20}}), std::nullopt);
  EXPECT_EQ(newest_common_step({{30, 20}, {}}), std::nullopt);
  EXPECT_EQ(newest_common_step({{40, 30}}), 40u);
  EXPECT_EQ(newest_common_step({}), std::nullopt);
}

TEST(Snapshot, KeepsTheNewestTwoWithEveryFileAndRemovesNewerOnes) {
  ScratchDir dir("snap");
  SnapshotStore store(dir.file("shm"), 1);
  const Parent disk = std::make_pair(10u, std::string("d10"));
  for (uint64_t s : {13u, 16u, 19u}) write(store, s, disk);
  EXPECT_EQ(steps(store.valid()), (std::vector<uint64_t>{19, 16}));
  EXPECT_EQ(store.written(), 3u);
  EXPECT_GT(store.last_bytes(), 0u);
  EXPECT_EQ(store.dir(), dir.file("shm/rank-1"));
  auto back = load_checkpoint(store.valid()[0].path);
  EXPECT_TRUE(torch::equal(back.model.at("fc.weight"), torch::full({4, 3}, 19.f)));
  EXPECT_TRUE(fs::exists(fs::path(store.valid()[0].path) / "powersgd-rank-1.safetensors"));
  store.discard_after(16);
  EXPECT_EQ(steps(store.valid()), (std::vector<uint64_t>{16}));
  store.remove_all();
  EXPECT_FALSE(fs::exists(dir.file("shm")));
}

TEST(Snapshot, ACorruptFileFailsItsCrcAndTheSnapshotIsNotListed) {
  ScratchDir dir("snap");
  SnapshotStore store(dir.file("shm"), 0);
  write(store, 13, std::nullopt);
  write(store, 16, std::nullopt);
  const std::string file = store.valid()[0].path + "/model.safetensors";
  {
    std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(-3, std::ios::end);
    f.put('\x5a');
  }
  std::vector<CheckpointInfo> skipped;
  EXPECT_EQ(steps(store.valid(&skipped)), (std::vector<uint64_t>{13}));
  ASSERT_EQ(skipped.size(), 1u);
  EXPECT_NE(skipped[0].problem.find("model.safetensors"), std::string::npos) << skipped[0].problem;
  EXPECT_NE(skipped[0].problem.find("checksum mismatch"), std::string::npos) << skipped[0].problem;
}

TEST(Snapshot, RanksAgreeOnTheNewestStepCompleteOnEveryRank) {
  ScratchDir dir("snap");
  SnapshotStore r0(dir.file("shm"), 0), r1(dir.file("shm"), 1);
  const Parent disk = std::make_pair(10u, std::string("d10"));
  for (uint64_t s : {13u, 16u}) {
    write(r0, s, disk);
    write(r1, s, disk);
  }
  // Rank 1 died while writing step 16: its files may be there, its MANIFEST is not.
  fs::remove(fs::path(r1.valid()[0].path) / "MANIFEST");
  std::vector<std::string> why;
  auto picks = choose_on_two({&r0, &r1}, disk, &why);
  for (int r = 0; r < 2; ++r) {
    ASSERT_TRUE(picks[r].has_value()) << why[r];
    EXPECT_EQ(picks[r]->step, 13u);
    EXPECT_EQ(picks[r]->parent, disk);
    EXPECT_NE(picks[r]->path.find(concat("rank-", r)), std::string::npos) << picks[r]->path;
  }
}

TEST(Snapshot, NoneIsUsedUnlessItContinuesTheDiskCheckpointAndIsNewer) {
  ScratchDir dir("snap");
  SnapshotStore r0(dir.file("shm"), 0), r1(dir.file("shm"), 1);
  const Parent old_disk = std::make_pair(10u, std::string("d10"));
  write(r0, 13, old_disk);
  write(r1, 13, old_disk);
  std::vector<std::string> why;
  // The disk moved on (a commit at step 20 after the snapshot): the snapshot is older, and of another parent.
  auto picks = choose_on_two({&r0, &r1}, std::make_pair(20u, std::string("d20")), &why);
  EXPECT_FALSE(picks[0] || picks[1]);
  EXPECT_EQ(why[0], "no rank holds a snapshot newer than the disk checkpoint");
  // Another branch's checkpoint at step 10 (an explicit --resume elsewhere): same step, another id.
  picks = choose_on_two({&r0, &r1}, std::make_pair(10u, std::string("other")), &why);
  EXPECT_FALSE(picks[0] || picks[1]);
  // Only one rank holds a snapshot: none complete.
  SnapshotStore fresh(dir.file("other"), 1);
  picks = choose_on_two({&r0, &fresh}, old_disk, &why);
  EXPECT_FALSE(picks[0] || picks[1]);
  EXPECT_EQ(why[1],
            "1 of 2 ranks hold snapshots newer than the disk checkpoint, but no step is complete on every rank");
  // A snapshot of a world of another size.
  SnapshotStore w3(dir.file("w3"), 0), w3b(dir.file("w3"), 1);
  write(w3, 13, old_disk, 3);
  write(w3b, 13, old_disk, 3);
  picks = choose_on_two({&w3, &w3b}, old_disk, &why);
  EXPECT_FALSE(picks[0] || picks[1]);
  // And the same snapshots with the right parent are used.
  picks = choose_on_two({&r0, &r1}, old_disk, &why);
  ASSERT_TRUE(picks[0] && picks[1]);
  EXPECT_EQ(picks[0]->step, 13u);
}

TEST(Snapshot, BuddiesAreTheRanksAtTheSamePlaceOnTheNextHost) {
  std::string why;
  // Ranks placed host by host, and round robin: each rank's buddy is on the next host.
  EXPECT_EQ(plan_buddies({7, 7, 9, 9}, &why), (std::vector<int>{2, 3, 0, 1}));
  EXPECT_EQ(plan_buddies({7, 9, 7, 9}, &why), (std::vector<int>{1, 0, 3, 2}));
  EXPECT_EQ(plan_buddies({5, 6, 8}, &why), (std::vector<int>{1, 2, 0}));
  EXPECT_TRUE(plan_buddies({7, 7}, &why).empty());
  EXPECT_EQ(why, "every rank runs on one host");
  EXPECT_TRUE(plan_buddies({7, 7, 9}, &why).empty());
  EXPECT_EQ(why, "the hosts run different numbers of ranks (2, 1)");
}

TEST(Snapshot, APackedSnapshotUnpacksToTheSameFilesAndDamageIsRefused) {
  ScratchDir dir("snap");
  SnapshotStore store(dir.file("a"), 3);
  write(store, 13, std::nullopt);
  const std::string src = store.valid()[0].path;
  auto packed = pack_snapshot(src, 3, 13);
  const std::string copy = unpack_snapshot(packed, dir.file("b"), "rank 0");
  EXPECT_EQ(copy, dir.file("b") + "/rank-3/checkpoints/step-00000013");
  for (const auto& e : fs::directory_iterator(src)) {
    EXPECT_EQ(storage::read_file(e.path().string()), storage::read_file(copy + "/" + e.path().filename().string()));
  }
  SnapshotStore there(dir.file("b"), 3);
  ASSERT_EQ(steps(there.valid()), (std::vector<uint64_t>{13}));  // MANIFEST and CRC32C hold
  auto expect_refused = [&](const torch::Tensor& bad, const std::string& what) {
    try {
      unpack_snapshot(bad, dir.file("c"), "rank 0");
      FAIL() << "no error for " << what;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("the buddy copy from rank 0 is damaged: "), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
    }
  };
  expect_refused(packed.narrow(0, 0, packed.numel() - 5).clone(), "state.safetensors is cut short");
  auto evil = packed.clone();
  const int64_t name_at = 4 * 8 + 8;  // the first file's name, after the header and its length
  evil[name_at] = static_cast<uint8_t>('/');
  expect_refused(evil, "the file name '/");
  EXPECT_FALSE(fs::exists(dir.file("c") + "/rank-3/checkpoints/step-00000013"));
}

// Two "hosts" (two snapshot roots), one rank on each, each rank the other's buddy: the exchange at every snapshot
// step, then a restart after host B lost its RAM.
TEST(Snapshot, ALostHostResumesFromItsBuddyCopy) {
  ScratchDir dir("snap");
  const std::vector<std::string> host = {dir.file("hostA"), dir.file("hostB")};
  const Parent disk = std::make_pair(10u, std::string("d10"));
  auto world = comm::LocalWorld::create(2);
  auto on_both = [&](const std::function<void(int, comm::Communicator&)>& fn) {
    std::vector<std::thread> threads;
    for (int r = 0; r < 2; ++r) {
      threads.emplace_back([&, r] {
        auto c = world->communicator(r);
        fn(r, *c);
      });
    }
    for (auto& t : threads) t.join();
  };
  std::vector<uint64_t> copies(2);
  on_both([&](int r, comm::Communicator& c) {
    SnapshotStore store(host[static_cast<size_t>(r)], static_cast<uint64_t>(r));
    store.set_buddies({1, 0});
    // A state of about 600 kB, so that the copy goes in two chunks (of at least 256 KiB) over two steps.
    auto big = [&](uint64_t s) {
      auto d = state_at(s, disk);
      d.model["layer.big"] = torch::full({150000}, static_cast<float>(s + r));
      return d;
    };
    for (uint64_t s : {13u, 16u, 19u}) {
      ASSERT_TRUE(store.submit(big(s)));
      store.exchange(c, 2);  // a step later (waits for the writer): the first chunk
      store.drain();
      EXPECT_EQ(store.buddy_copies(), s == 13u ? 0u : s == 16u ? 1u : 2u) << "a copy before its last chunk";
      store.exchange_step(c);  // the second chunk, then the copy goes to the writer
    }
    // A job that ends between the chunks drops the copy in transfer: no partial copy is kept.
    ASSERT_TRUE(store.submit(big(22)));
    store.exchange(c, 2);
    store.finish_exchange();
    store.drain();
    copies[static_cast<size_t>(r)] = store.buddy_copies();
  });
  // Each host holds its rank's newest two and a copy of the other rank's newest two complete ones.
  EXPECT_EQ(copies, (std::vector<uint64_t>{3, 3}));
  EXPECT_EQ(steps(CheckpointStore(host[0] + "/rank-1", 9).list(false)), (std::vector<uint64_t>{19, 16}));
  EXPECT_EQ(steps(CheckpointStore(host[1] + "/rank-0", 9).list(false)), (std::vector<uint64_t>{19, 16}));
  // Host B loses its RAM after its snapshot of step 22 (the copy of which never arrived): no step is newer than
  // 19 on both ranks, so 19 it is.
  EXPECT_EQ(steps(CheckpointStore(host[0] + "/rank-0", 9).list(false)), (std::vector<uint64_t>{22, 19}));
  // Host B is gone with its RAM; its rank restarts elsewhere, empty.
  fs::remove_all(host[1]);
  std::vector<std::optional<SnapshotChoice>> picks(2);
  std::vector<std::string> why(2);
  on_both([&](int r, comm::Communicator& c) {
    SnapshotStore store(host[static_cast<size_t>(r)], static_cast<uint64_t>(r));
    store.set_buddies({1, 0});
    picks[static_cast<size_t>(r)] = store.choose(disk, 2, c, &why[static_cast<size_t>(r)]);
  });
  for (int r = 0; r < 2; ++r) {
    ASSERT_TRUE(picks[r].has_value()) << why[r];
    EXPECT_EQ(picks[r]->step, 19u);
    EXPECT_EQ(picks[r]->from_buddies, (std::vector<std::pair<int, int>>{{1, 0}}));
    EXPECT_EQ(picks[r]->mine_from_buddy, r == 1);
    EXPECT_EQ(picks[r]->parent, disk);
  }
  EXPECT_EQ(picks[1]->path, host[1] + "/rank-1/checkpoints/step-00000019");
  auto back = load_checkpoint(picks[1]->path);
  EXPECT_TRUE(torch::equal(back.model.at("fc.weight"), torch::full({4, 3}, 19.f)));
  EXPECT_TRUE(torch::equal(back.model.at("layer.big"), torch::full({150000}, 20.f)));  // rank 1's own
  // Without the copy (buddies off) the same loss leaves no step complete on both ranks.
  fs::remove_all(host[1]);
  on_both([&](int r, comm::Communicator& c) {
    SnapshotStore store(host[static_cast<size_t>(r)], static_cast<uint64_t>(r));
    picks[static_cast<size_t>(r)] = store.choose(disk, 2, c, &why[static_cast<size_t>(r)]);
  });
  EXPECT_FALSE(picks[0] || picks[1]);
}

TEST(Snapshot, AFailedWriteTurnsSnapshotsOffInsteadOfStoppingTheRun) {
  ScratchDir dir("snap");
  std::ofstream(dir.file("blocker")) << "a file where the snapshot directory would be";
  SnapshotStore store(dir.file("blocker"), 0);
  EXPECT_TRUE(store.submit(state_at(13, std::nullopt)));
  store.drain();
  EXPECT_EQ(store.written(), 0u);
  EXPECT_FALSE(store.submit(state_at(16, std::nullopt)));  // off from now on
}

TEST(Snapshot, ANegativeIntervalIsAUsageErrorNamingTheFlag) {
  TrainConfig c;
  c.snapshot_every = -3;
  try {
    validate(c);
    FAIL() << "no error";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("--snapshot-every must be >= 0, got -3"), std::string::npos) << e.what();
  }
}

TEST(Snapshot, TheDefaultDirectoryIsInRamAndDiffersBetweenRuns) {
  const std::string a = default_snapshot_dir("/tmp/runs/r56"), b = default_snapshot_dir("/tmp/other/r56");
  EXPECT_EQ(a.rfind("/dev/shm/stride-snapshots/r56-", 0), 0u) << a;
  EXPECT_NE(a, b);
  EXPECT_EQ(a, default_snapshot_dir("/tmp/runs/./r56"));
}

}  // namespace
}  // namespace stride::trainer
