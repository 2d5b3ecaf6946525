// comm/shm: the shared-memory group, with ranks as threads of one process. Each rank still creates its own memfd
// segments and maps its peers' through /proc/PID/fd, as separate processes do; tests/mpi runs the same code in
// real processes (and kills one).
#include <gtest/gtest.h>

#include <climits>
#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <random>
#include <sstream>
#include <thread>

#include "comm/shm/host_cpus.h"
#include "comm/shm/shm_group.h"
#include "tests/unit/test_util.h"

namespace stride::testing {
namespace {

using comm::ReduceOp;
using comm::ShmGroup;
using namespace std::chrono_literals;

// The bootstrap's allgather, between threads.
class ThreadExchange {
 public:
  explicit ThreadExchange(int size) : size_(size), slots_(static_cast<size_t>(size)) {}
  std::vector<std::string> allgather(int rank, const std::string& s) {
    std::unique_lock<std::mutex> lock(mu_);
    const uint64_t gen = gen_;
    slots_[static_cast<size_t>(rank)] = s;
    if (++count_ == size_) {
      result_ = slots_;
      count_ = 0;
      ++gen_;
      cv_.notify_all();
      return result_;
    }
    cv_.wait(lock, [&] { return gen_ != gen; });
    return result_;
  }

 private:
  const int size_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::string> slots_, result_;
  int count_ = 0;
  uint64_t gen_ = 0;
};

// Runs fn(group, rank) on `size` threads; returns each rank's error message ("" when it succeeded).
template <typename F>
std::vector<std::string> run_ranks(int size, F fn, comm::ShmOptions options = {}) {
  ThreadExchange exchange(size);
  std::vector<std::string> errors(static_cast<size_t>(size));
  std::vector<std::thread> threads;
  for (int r = 0; r < size; ++r) {
    threads.emplace_back([&, r] {
      try {
        ShmGroup g(
            comm::ShmBootstrap{r, size, [&exchange, r](const std::string& s) { return exchange.allgather(r, s); }},
            options);
        fn(g, r);
      } catch (const std::exception& e) {
        errors[static_cast<size_t>(r)] = e.what();
      }
    });
  }
  for (auto& t : threads) t.join();
  return errors;
}

void expect_ok(const std::vector<std::string>& errors) {
  for (size_t r = 0; r < errors.size(); ++r) EXPECT_EQ(errors[r], "") << "rank " << r;
}

// Rank r's input: small integers (exact in every dtype tested), different on every rank.
torch::Tensor input(int64_t n, int rank, torch::ScalarType dtype) {
  auto t = (torch::arange(n, torch::kLong) * (rank + 1) + 3 * rank) % 61 - 20;
  return t.to(dtype);
}

torch::Tensor reference(int64_t n, int size, torch::ScalarType dtype, ReduceOp op) {
  auto acc = input(n, 0, torch::kDouble);
  for (int r = 1; r < size; ++r) {
    auto x = input(n, r, torch::kDouble);
    if (op == ReduceOp::kMax) {
      acc = torch::maximum(acc, x);
    } else if (op == ReduceOp::kMin) {
      acc = torch::minimum(acc, x);
    } else {
      acc = acc + x;
    }
  }
  if (op == ReduceOp::kAvg) acc = acc / size;
  return acc.to(dtype);
}

constexpr int64_t kSizes[] = {0, 1, 17, 1000, 5000, 100003};

TEST(ShmGroup, AllreduceMatchesTheReferenceForEveryOpDtypeSizeAndWorld) {
  for (int size = 1; size <= 4; ++size) {
    expect_ok(run_ranks(size, [&](ShmGroup& g, int rank) {
      for (auto dtype :
           {torch::kFloat, torch::kDouble, torch::kHalf, torch::kBFloat16, torch::kLong, torch::kInt, torch::kShort}) {
        for (auto op : {ReduceOp::kSum, ReduceOp::kAvg, ReduceOp::kMax, ReduceOp::kMin}) {
          if (!ShmGroup::supports(dtype, op)) continue;
          for (int64_t n : kSizes) {
            auto t = input(n, rank, dtype);
            g.allreduce(t, op, 10s);
            auto want = reference(n, size, dtype, op);
            if (!torch::allclose(t.to(torch::kDouble), want.to(torch::kDouble), 1e-2, 1e-2)) {
              throw Error(concat("world ", size, " rank ", rank, ": allreduce ", comm::reduce_op_name(op), " of ", n,
                                 " x ", dtype, " differs from the reference"));
            }
          }
        }
      }
    }));
  }
}

TEST(ShmGroup, ChunkedStagingZeroCopyAndMixedBuffersAgree) {
  // A 4 KiB staging area forces many chunks; rank 0's tensor lives in a shared buffer (read in place) while the
  // others' go through staging, then every rank's does.
  comm::ShmOptions options;
  options.staging_bytes = 4096;
  for (int size : {2, 3}) {
    expect_ok(run_ranks(
        size,
        [&](ShmGroup& g, int rank) {
          const int64_t n = 10007;
          auto shared = g.alloc(n + 64, torch::kFloat);
          if (!torch::equal(shared, torch::zeros_like(shared))) throw Error("alloc is not zero-filled");
          auto part = shared.narrow(0, 32, n);  // a contiguous view inside the buffer
          part.copy_(input(n, rank, torch::kFloat));
          auto plain = input(n, rank, torch::kFloat);
          auto t = rank == 0 ? part : plain;  // mixed
          g.allreduce(t, ReduceOp::kSum, 10s);
          if (!torch::equal(t, reference(n, size, torch::kFloat, ReduceOp::kSum))) throw Error("mixed sum");
          part.copy_(input(n, rank, torch::kFloat));
          g.allreduce(part, ReduceOp::kAvg, 10s);  // every rank in place
          if (!torch::allclose(part, reference(n, size, torch::kFloat, ReduceOp::kAvg))) throw Error("shared avg");
          if (shared[0].item<float>() != 0.0f || shared[n + 40].item<float>() != 0.0f) {
            throw Error("the collective wrote outside the view");
          }
        },
        options));
  }
}

TEST(ShmGroup, SharedBuffersReduceInPlaceBelowAndAboveOneChunk) {
  // Up to half a staging area (128 KiB) every rank reduces the whole buffer (result staged, copied back after
  // the rendezvous); above it, each rank reduces its slice and stores it into every rank's buffer. Both read
  // the peers' buffers in place.
  for (int size : {2, 3}) {
    expect_ok(run_ranks(size, [&](ShmGroup& g, int rank) {
      for (int64_t n : {int64_t{1000}, int64_t{262144}, int64_t{262145}, int64_t{700001}}) {
        for (auto op : {ReduceOp::kSum, ReduceOp::kAvg, ReduceOp::kMax}) {
          auto buffer = g.alloc(n, torch::kFloat);
          buffer.copy_(input(n, rank, torch::kFloat));
          g.allreduce(buffer, op, 10s);
          if (!torch::allclose(buffer, reference(n, size, torch::kFloat, op))) {
            throw Error(concat("world ", size, ": shared ", comm::reduce_op_name(op), " of ", n, " floats"));
          }
        }
      }
    }));
  }
}

TEST(ShmGroup, ShardsWrittenIntoPeersBuffersLandInTheirViewsOnly) {
  // Above half a staging area each rank stores its reduced slice into every rank's buffer. The views sit at a different
  // offset on every rank, the length is not a multiple of the slice alignment, and a rank rewrites its buffer as
  // soon as its allreduce returns: a peer that still read or wrote it would corrupt the next result.
  comm::ShmOptions options;
  options.staging_bytes = 4096;  // collectives above 2 KiB split the work between the ranks
  for (int size : {2, 3, 4}) {
    expect_ok(run_ranks(
        size,
        [&](ShmGroup& g, int rank) {
          const int64_t n = 13001, lead = 16 * rank + 3;
          std::mt19937 jitter(static_cast<unsigned>(rank));
          auto shared = g.alloc(n + 100, torch::kFloat);
          auto view = shared.narrow(0, lead, n);
          for (int i = 0; i < 40; ++i) {
            shared.fill_(-7.0f);
            view.copy_(input(n, rank, torch::kFloat) + i);
            if (jitter() % 3 == 0) std::this_thread::yield();
            g.allreduce(view, ReduceOp::kSum, 10s);
            if (!torch::equal(view, reference(n, size, torch::kFloat, ReduceOp::kSum) + size * i)) {
              throw Error(concat("world ", size, " rank ", rank, " step ", i, ": wrong sum"));
            }
            if (!torch::equal(shared.narrow(0, 0, lead), torch::full({lead}, -7.0f)) ||
                !torch::equal(shared.narrow(0, lead + n, 100 - lead), torch::full({100 - lead}, -7.0f))) {
              throw Error(concat("world ", size, " rank ", rank, " step ", i, ": a peer wrote outside the view"));
            }
          }
        },
        options));
  }
}

TEST(ShmGroup, EveryRankGetsBitwiseTheSameSum) {
  expect_ok(run_ranks(3, [&](ShmGroup& g, int rank) {
    torch::manual_seed(rank);
    auto t = torch::randn({300001});
    g.allreduce(t, ReduceOp::kAvg, 10s);
    auto from0 = t.clone();
    g.broadcast(from0, 0, 10s);
    if (!torch::equal(t, from0)) throw Error(concat("rank ", rank, "'s average differs from rank 0's"));
  }));
}

TEST(ShmGroup, BroadcastAndAllgatherFromEveryRootAndInChunks) {
  comm::ShmOptions options;
  options.staging_bytes = 1000;  // not a multiple of the element size
  expect_ok(run_ranks(
      3,
      [&](ShmGroup& g, int rank) {
        for (int root = 0; root < 3; ++root) {
          for (int64_t n : kSizes) {
            auto t = input(n, rank, torch::kDouble);
            g.broadcast(t, root, 10s);
            if (!torch::equal(t, input(n, root, torch::kDouble))) throw Error(concat("broadcast from ", root));
          }
          auto shared = g.alloc(777, torch::kLong);  // the root's tensor read in place
          shared.copy_(input(777, rank, torch::kLong));
          g.broadcast(shared, root, 10s);
          if (!torch::equal(shared, input(777, root, torch::kLong))) throw Error("zero-copy broadcast");
        }
        for (int64_t n : kSizes) {
          auto in = input(n, rank, torch::kInt);
          auto out = torch::full({3 * n}, -1, torch::kInt);
          g.allgather(in, out, 10s);
          for (int p = 0; p < 3; ++p) {
            if (!torch::equal(out.narrow(0, p * n, n), input(n, p, torch::kInt))) throw Error("allgather");
          }
        }
        auto flags = torch::tensor({rank % 2 == 0}, torch::kBool);  // bool travels (not reduced)
        auto all = torch::empty({3}, torch::kBool);
        g.allgather(flags, all, 10s);
        if (!all[0].item<bool>() || all[1].item<bool>() || !all[2].item<bool>()) throw Error("bool allgather");
        g.barrier(10s);
      },
      options));
}

// Small allgathers and allreduces skip their closing rendezvous and alternate between two staging slots; the
// chunked collectives that follow them must wait for readers first. A random (but identical on every rank)
// sequence with a 1 KiB staging area exercises every transition, with ranks drifting apart in between.
void run_mixed_sequence(comm::ShmOptions options) {
  options.staging_bytes = 1024;
  expect_ok(run_ranks(
      3,
      [&](ShmGroup& g, int rank) {
        std::mt19937 sequence(42), jitter(static_cast<unsigned>(rank));
        auto shared = g.alloc(5000, torch::kFloat);
        for (int i = 0; i < 300; ++i) {
          const int kind = static_cast<int>(sequence() % 5);
          const int64_t n = kind < 2 ? 1 + sequence() % 100 : 100 + sequence() % 1000;
          if (jitter() % 4 == 0) std::this_thread::yield();
          if (kind == 0 || kind == 2) {  // allgather: small (1-100 x 4 bytes) or chunked
            auto in = input(n, rank + i, torch::kFloat);
            auto out = torch::empty({3 * n});
            g.allgather(in, out, 10s);
            for (int p = 0; p < 3; ++p) {
              if (!torch::equal(out.narrow(0, p * n, n), input(n, p + i, torch::kFloat)))
                throw Error(concat("step ", i));
            }
          } else if (kind == 1 || kind == 3) {  // allreduce of a private tensor: small or chunked
            auto t = input(n, rank, torch::kFloat) + i;
            g.allreduce(t, ReduceOp::kSum, 10s);
            if (!torch::equal(t, reference(n, 3, torch::kFloat, ReduceOp::kSum) + 3 * i))
              throw Error(concat("step ", i));
          } else {  // allreduce of a shared buffer (pipelined)
            auto part = shared.narrow(0, 0, n);
            part.copy_(input(n, rank, torch::kFloat));
            g.allreduce(part, ReduceOp::kMax, 10s);
            if (!torch::equal(part, reference(n, 3, torch::kFloat, ReduceOp::kMax))) throw Error(concat("step ", i));
          }
        }
      },
      options));
}

TEST(ShmGroup, LongMixedSequencesOfSmallAndChunkedCollectivesStayCorrect) {
  comm::ShmOptions options;
  options.spin = std::chrono::microseconds(0);  // sleep at once: the ranks interleave as unevenly as possible
  run_mixed_sequence(options);
}

TEST(ShmGroup, LongMixedSequencesStayCorrectWhenWaitersSpin) {
  comm::ShmOptions options;
  options.waiters_spin = true;  // as on a host with a core for every waiter: no futex sleep below 100 ms
  run_mixed_sequence(options);
}

TEST(ShmGroup, TheWaitPolicyCanBeFlippedBetweenCollectives) {
  comm::ShmOptions options;
  options.spin = std::chrono::microseconds(0);
  expect_ok(run_ranks(
      2,
      [&](ShmGroup& g, int rank) {
        if (g.waiters_spin()) throw Error("waiters_spin() is not what ShmOptions said");
        for (int i = 0; i < 20; ++i) {
          g.set_waiters_spin(i % 2 == 0);
          if (g.waiters_spin() != (i % 2 == 0)) throw Error("set_waiters_spin did not take");
          auto t = input(3000, rank, torch::kFloat);
          g.allreduce(t, ReduceOp::kSum, 10s);
          if (!torch::equal(t, reference(3000, 2, torch::kFloat, ReduceOp::kSum))) throw Error(concat("step ", i));
        }
      },
      options));
}

TEST(ShmGroup, MismatchedCollectivesFailOnEveryRankWithCommError) {
  const auto errors = run_ranks(2, [&](ShmGroup& g, int rank) {
    auto t = torch::ones({rank == 0 ? 10 : 11});
    try {
      g.allreduce(t, ReduceOp::kSum, 10s);
    } catch (const comm::CommError& e) {
      throw Error(concat("CommError: ", e.what()));
    }
  });
  for (const auto& e : errors) {
    EXPECT_NE(e.find("CommError: collective mismatch"), std::string::npos) << e;
    EXPECT_NE(e.find("allreduce(10 x Float, sum)"), std::string::npos) << e;
    EXPECT_NE(e.find("allreduce(11 x Float, sum)"), std::string::npos) << e;
  }
}

// Rank 2 never joins: the others give up at the timeout, name it, and refuse any later collective.
void check_a_missing_peer_times_out(comm::ShmOptions options) {
  const auto errors = run_ranks(
      3,
      [&](ShmGroup& g, int rank) {
        if (rank == 2) return;  // never joins the collective
        auto t = torch::ones({100});
        const auto t0 = std::chrono::steady_clock::now();
        try {
          g.allreduce(t, ReduceOp::kSum, 300ms);
          throw Error("the allreduce without rank 2 completed");
        } catch (const comm::CommError& e) {
          const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
          if (s < 0.25 || s > 5) throw Error(concat("gave up after ", s, " s"));
          if (std::string(e.what()).find("rank 2 did not arrive") == std::string::npos) throw;
        }
        try {
          g.barrier(10s);
          throw Error("a broken group ran another collective");
        } catch (const comm::CommError& e) {
          if (std::string(e.what()).find("an earlier collective failed") == std::string::npos) throw;
        }
      },
      options);
  expect_ok(errors);
}

TEST(ShmGroup, APeerThatNeverArrivesTimesOutNamingItAndBreaksTheGroup) {
  check_a_missing_peer_times_out(comm::ShmOptions{});
}

TEST(ShmGroup, ASpinningWaiterStillGivesUpAtTheTimeout) {
  comm::ShmOptions options;
  options.waiters_spin = true;
  options.idle_host_spin = std::chrono::seconds(30);  // far beyond the timeout: the spin must stop at the deadline
  check_a_missing_peer_times_out(options);
}

TEST(HostCpus, QuotaTextsAreReadAsWholeCpusRoundedUp) {
  EXPECT_EQ(comm::cpus_from_cpu_max("max 100000"), 0);
  EXPECT_EQ(comm::cpus_from_cpu_max("200000 100000"), 2);
  EXPECT_EQ(comm::cpus_from_cpu_max("150000 100000"), 2);
  EXPECT_EQ(comm::cpus_from_cpu_max("50000 100000"), 1);
  EXPECT_EQ(comm::cpus_from_cpu_max("-1 100000"), 0);  // cgroup v1: no quota
  EXPECT_EQ(comm::cpus_from_cpu_max(""), 0);
  EXPECT_EQ(comm::cpus_from_cpu_max("200000"), 0);
  EXPECT_EQ(comm::cpus_from_cpu_max("20x000 100000"), 0);
  EXPECT_EQ(comm::cpus_from_cpu_max("200000 0"), 0);
  EXPECT_EQ(comm::cpus_from_cpu_max("17000000000000 1000"), INT_MAX);  // no overflow into a small count
}

TEST(HostCpus, TheTightestQuotaAlongTheCgroupPathCounts) {
  ScratchDir root("cgroup");
  auto write = [&](const std::string& dir, const std::string& text) {
    std::filesystem::create_directories(root.path() / dir);
    std::ofstream(root.path() / dir / "cpu.max") << text << "\n";
  };
  write("", "max 100000");
  write("job", "400000 100000");            // 4 CPUs for the job
  write("job/step", "max 100000");          // no limit of its own
  write("job/step/task", "250000 100000");  // 2.5 -> 3
  const std::string mount = root.path().string();
  EXPECT_EQ(comm::cgroup_v2_quota_cpus(mount, "/job/step/task"), 3);
  EXPECT_EQ(comm::cgroup_v2_quota_cpus(mount, "/job/step"), 4);  // the parent's quota still binds
  EXPECT_EQ(comm::cgroup_v2_quota_cpus(mount, "/"), 0);
  EXPECT_EQ(comm::cgroup_v2_quota_cpus(mount, ""), 0);
  EXPECT_EQ(comm::cgroup_v2_quota_cpus(mount, "/no/such/group"), 0);
  write("job/step", "100000 100000");
  EXPECT_EQ(comm::cgroup_v2_quota_cpus(mount, "/job/step/task"), 1);
}

TEST(HostCpus, SpareCoresNeedACoreForEveryComputeAndCommunicationThread) {
  EXPECT_TRUE(comm::spare_cores(2, 1, 4));
  EXPECT_FALSE(comm::spare_cores(2, 1, 3));   // this VM's case with 2 cores: 2 ranks x (1 + 1) threads
  EXPECT_FALSE(comm::spare_cores(2, 8, 16));  // every core computing
  EXPECT_TRUE(comm::spare_cores(2, 7, 16));
  EXPECT_FALSE(comm::spare_cores(0, 1, 16));
  const int cpus = comm::usable_cpus();
  EXPECT_GE(cpus, 1);
  EXPECT_LE(cpus, static_cast<int>(std::thread::hardware_concurrency()));
}

TEST(ShmGroup, AllocationsOfDifferentSizesFailOnEveryRank) {
  const auto errors = run_ranks(2, [&](ShmGroup& g, int rank) { g.alloc(rank == 0 ? 100 : 200, torch::kFloat); });
  for (const auto& e : errors) EXPECT_NE(e.find("the ranks disagree on the buffers"), std::string::npos) << e;
}

TEST(ShmGroup, ASegmentThatIsNotWhatItsOwnerAnnouncedFailsSetupOnEveryRank) {
  // Rank 1's announcement carries a wrong nonce (as when /proc/PID/fd/FD names another process's file, in a
  // different pid namespace): rank 0 must refuse the mapping, and every rank must fail the setup together (the
  // caller then falls back to MPI on all of them).
  ThreadExchange exchange(2);
  std::vector<std::string> errors(2);
  std::vector<std::thread> threads;
  for (int r = 0; r < 2; ++r) {
    threads.emplace_back([&, r] {
      int calls = 0;
      auto tampered = [&exchange, &calls, r](const std::string& s) {
        auto all = exchange.allgather(r, s);
        if (calls++ == 0) {  // "pid fd nonce bytes": change rank 1's nonce
          std::istringstream in(all[1]);
          std::string pid, fd, nonce, bytes;
          in >> pid >> fd >> nonce >> bytes;
          all[1] = concat(pid, " ", fd, " ", std::stoull(nonce) ^ 1, " ", bytes);
        }
        return all;
      };
      try {
        ShmGroup g(comm::ShmBootstrap{r, 2, tampered});
        errors[static_cast<size_t>(r)] = "no error";
      } catch (const Error& e) {
        errors[static_cast<size_t>(r)] = e.what();
      }
    });
  }
  for (auto& t : threads) t.join();
  for (const auto& e : errors) {
    EXPECT_NE(e.find("shared memory setup failed on rank 0"), std::string::npos) << e;
    EXPECT_NE(e.find("is not the segment rank 1 announced"), std::string::npos) << e;
  }
}

TEST(ShmGroup, SupportsWhatItCanReduce) {
  EXPECT_TRUE(ShmGroup::supports(torch::kFloat, ReduceOp::kAvg));
  EXPECT_TRUE(ShmGroup::supports(torch::kLong, ReduceOp::kMax));
  EXPECT_FALSE(ShmGroup::supports(torch::kLong, ReduceOp::kAvg));
  EXPECT_FALSE(ShmGroup::supports(torch::kBool, ReduceOp::kSum));
  EXPECT_TRUE(ShmGroup::supports(torch::kBool));
  EXPECT_FALSE(ShmGroup::supports(torch::kComplexFloat));
}

}  // namespace
}  // namespace stride::testing
