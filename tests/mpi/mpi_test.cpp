// Runs under mpirun (ctest label `mpi`): real Open MPI ranks, the same checks as the local-back-end unit tests,
// plus what only real processes can show (host names, a peer killed with SIGKILL).
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <cstdlib>

#include <mpi.h>

#include "comm/mpi/mpi_communicator.h"
#include "tests/common/comm_checks.h"

namespace stride::testing {
namespace {

std::shared_ptr<comm::Communicator> world() {
  static std::shared_ptr<comm::Communicator> c = [] {
    auto m = comm::MpiCommunicator::create();
    m->set_timeout(std::chrono::seconds(120));
    return std::shared_ptr<comm::Communicator>(m);
  }();
  return c;
}

TEST(Mpi, RanksAndHostAreKnown) {
  auto c = world();
  EXPECT_GE(c->size(), 2) << "run under mpirun -np 2 or more";
  EXPECT_EQ(c->backend(), "mpi");
  EXPECT_FALSE(c->host().empty());
  EXPECT_GE(c->local_rank(), 0);
  EXPECT_NE(c->describe().find(concat("rank ", c->rank(), "/", c->size())), std::string::npos);
}

TEST(Mpi, Collectives) { check_collectives(*world()); }

TEST(Mpi, LargeAllreduceMatchesTheFormula) {
  auto c = world();
  auto t = torch::arange(int64_t{1} << 22, torch::kFloat).remainder(1000) + c->rank();
  c->allreduce(t, comm::ReduceOp::kAvg)->wait();
  auto expected = torch::arange(int64_t{1} << 22, torch::kFloat).remainder(1000) + (c->size() - 1) / 2.0;
  EXPECT_LE(max_abs_diff(t, expected), 1e-4);
}

// Every rank of these tests shares one host: collectives go through shared memory unless STRIDE_SHM=0 (ctest
// runs the suite both ways).
TEST(Mpi, TransportIsSharedMemoryOnOneHostUnlessTurnedOff) {
  auto c = world();
  const char* env = std::getenv("STRIDE_SHM");
  const bool pretend_hosts = std::getenv("STRIDE_TEST_HOSTS") != nullptr;  // then the ranks span "hosts"
  const comm::Layout l = c->layout();
  if (pretend_hosts) {
    EXPECT_GE(l.hosts, 2);
    EXPECT_NE(l.transport_name(), "shm");
  } else {
    EXPECT_EQ(l.hosts, 1);
    EXPECT_EQ(l.local_size, c->size());
    const char* forced = std::getenv("STRIDE_ALLREDUCE");  // ctest's mpi.np3_ring forces the ring
    const std::string mode = forced && *forced ? forced : "auto";
    const std::string expected = mode == "ring" || mode == "hier"                    ? "ring"
                                 : mode == "mpi" || (env && std::string(env) == "0") ? "mpi"
                                                                                     : "shm";
    EXPECT_EQ(l.transport_name(), expected);
  }
}

// The TCP btl's flags as Open MPI really uses them, read through the MPI tool interface: without the emulated-RDMA
// `put` protocol unless the job chose its own (ctest runs mpi.np2_no_shm with `put` passed through -x, and names
// that in STRIDE_TEST_EXPECT_TCP_PUT). The bit values are Open MPI's MCA_BTL_FLAGS_SEND (1) and _PUT (2).
TEST(Mpi, TcpBtlSendsPlainFragmentsUnlessTheJobChoseItsOwnFlags) {
  world();  // MPI_Init ran
  int provided = 0;
  ASSERT_EQ(MPI_T_init_thread(MPI_THREAD_SINGLE, &provided), MPI_SUCCESS);
  int num = 0, index = -1;
  MPI_T_cvar_get_num(&num);
  for (int i = 0; i < num && index < 0; ++i) {
    char name[256], desc[1024];
    int name_len = sizeof name, desc_len = sizeof desc, verbosity = 0, bind = 0, scope = 0;
    MPI_Datatype type;
    MPI_T_enum enumtype;
    if (MPI_T_cvar_get_info(i, name, &name_len, &verbosity, &type, &enumtype, desc, &desc_len, &bind, &scope) ==
            MPI_SUCCESS &&
        std::string(name) == "btl_tcp_flags")
      index = i;
  }
  ASSERT_GE(index, 0) << "Open MPI has no btl_tcp_flags variable (is the tcp btl built?)";
  MPI_T_cvar_handle handle;
  int count = 0;
  ASSERT_EQ(MPI_T_cvar_handle_alloc(index, nullptr, &handle, &count), MPI_SUCCESS);
  unsigned int flags = 0;
  ASSERT_EQ(MPI_T_cvar_read(handle, &flags), MPI_SUCCESS);
  MPI_T_cvar_handle_free(&handle);
  MPI_T_finalize();
  const bool expect_put = std::getenv("STRIDE_TEST_EXPECT_TCP_PUT") != nullptr;
  EXPECT_TRUE(flags & 1u) << "send, flags " << flags;
  EXPECT_EQ((flags & 2u) != 0, expect_put) << "put, flags " << flags;
}

// The path a large float allreduce takes under this job's STRIDE_ALLREDUCE / STRIDE_TEST_HOSTS (ctest runs the
// suite with ring, hierarchical and uneven-host layouts and names the path it expects in
// STRIDE_TEST_EXPECT_PATH): a job that silently fell back to MPI_Allreduce fails here.
TEST(MpiAllreduce, TakesTheExpectedPath) {
  auto c = std::dynamic_pointer_cast<comm::MpiCommunicator>(world());
  ASSERT_TRUE(c);
  const char* expect = std::getenv("STRIDE_TEST_EXPECT_PATH");
  if (!expect) GTEST_SKIP() << "set STRIDE_TEST_EXPECT_PATH";
  auto t = torch::zeros({int64_t{1} << 20});
  EXPECT_EQ(c->allreduce_path(t, comm::ReduceOp::kSum), expect);
  if (const char* hosts = std::getenv("STRIDE_TEST_HOSTS")) {
    const int k = std::atoi(hosts);
    EXPECT_LT(c->local_size(), c->size());
    EXPECT_GE(c->local_size(), c->size() / k);
    // What the start-up line reports: the hosts, this host's ranks and the way of a gradient bucket.
    const comm::Layout l = c->layout();
    EXPECT_EQ(l.hosts, k);
    EXPECT_EQ(l.local_size, c->local_size());
    EXPECT_EQ(l.transport_name(), expect);
    EXPECT_NE(l.summary().find(concat(k, " hosts")), std::string::npos) << l.summary();
  }
  // Not ring-reducible: half max stays on MPI (and fails there as before); bool never rings.
  EXPECT_NE(c->allreduce_path(torch::zeros({1 << 20}, torch::kHalf), comm::ReduceOp::kMax), "ring");
}

// Integer-valued data, small enough that every partial sum is exact in every dtype: whatever the order of the
// additions (ring, hierarchy, MPI), the result equals the flat sum bitwise. Sizes cover empty, fewer elements
// than ranks, not divisible by the ranks, one segment, many segments.
TEST(MpiAllreduce, EqualsTheFlatSumBitwiseForEverySizeDtypeAndOp) {
  auto c = world();
  auto mpi = std::dynamic_pointer_cast<comm::MpiCommunicator>(c);
  ASSERT_TRUE(mpi);
  const int n = c->size();
  for (int64_t numel : {int64_t{0}, int64_t{1}, int64_t{2}, int64_t{3}, int64_t{5}, int64_t{7}, int64_t{13},
                        int64_t{1000}, int64_t{4099}, int64_t{65539}, int64_t{300001}, (int64_t{1} << 20) + 7}) {
    auto idx = torch::arange(numel, torch::kLong);
    auto value = [&](int r) { return (idx * 7 + r * 13).remainder(11) - 5; };
    auto sum = torch::zeros({numel}, torch::kLong), mx = value(0), mn = value(0);
    for (int r = 0; r < n; ++r) {
      sum += value(r);
      mx = torch::maximum(mx, value(r));
      mn = torch::minimum(mn, value(r));
    }
    for (auto dtype : {torch::kFloat, torch::kDouble, torch::kHalf, torch::kBFloat16, torch::kLong}) {
      std::vector<comm::ReduceOp> ops = {comm::ReduceOp::kSum};
      if (dtype != torch::kLong) ops.push_back(comm::ReduceOp::kAvg);
      if (dtype == torch::kFloat || dtype == torch::kLong) {
        ops.push_back(comm::ReduceOp::kMax);
        ops.push_back(comm::ReduceOp::kMin);
      }
      for (auto op : ops) {
        auto t = value(c->rank()).to(dtype);
        c->allreduce(t, op)->wait();
        torch::Tensor expected;
        switch (op) {
          case comm::ReduceOp::kSum:
            expected = sum.to(dtype);
            break;
          case comm::ReduceOp::kAvg:
            expected = sum.to(dtype).div_(n);  // the flat path's rounding: the sum, then one division
            break;
          case comm::ReduceOp::kMax:
            expected = mx.to(dtype);
            break;
          case comm::ReduceOp::kMin:
            expected = mn.to(dtype);
            break;
        }
        // The shared-memory path averages by multiplying with 1/n in the same pass: within rounding there.
        const std::string path = mpi->allreduce_path(t, op);
        if (op == comm::ReduceOp::kAvg && path != "ring" && path != "hier") {
          const double tol = t.element_size() == 2 ? 1e-2 : 1e-6;
          ASSERT_TRUE(torch::allclose(t.to(torch::kDouble), expected.to(torch::kDouble), tol, 0))
              << numel << " x " << dtype << " avg on " << c->describe();
          continue;
        }
        ASSERT_TRUE(torch::equal(t, expected)) << numel << " x " << dtype << " " << comm::reduce_op_name(op) << " over "
                                               << path << " on " << c->describe();
      }
    }
  }
}

// Random data: the result equals raw MPI_Allreduce on the same inputs, within float rounding (the order of the
// additions differs beyond 2 ranks), and every rank holds the same bits.
TEST(MpiAllreduce, RandomDataMatchesMpiAllreduceAndIsIdenticalOnEveryRank) {
  auto c = std::dynamic_pointer_cast<comm::MpiCommunicator>(world());
  ASSERT_TRUE(c);
  for (int64_t numel : {int64_t{17}, int64_t{333333}, (int64_t{1} << 21) + 3}) {
    auto gen = seeded(static_cast<uint64_t>(1000 + c->rank()));
    auto t = torch::randn({numel}, gen, torch::kFloat);
    auto reference = t.clone();
    c->run_on_owner([&] {
      MPI_Allreduce(MPI_IN_PLACE, reference.data_ptr(), static_cast<int>(numel), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    });
    c->allreduce(t, comm::ReduceOp::kSum)->wait();
    EXPECT_LE(max_abs_diff(t, reference), 1e-5 * c->size()) << numel;
    if (c->size() == 2) {
      EXPECT_TRUE(torch::equal(t, reference)) << "two ranks add in one order only";
    }
    auto gathered = torch::empty({numel * c->size()});
    c->allgather(t, gathered)->wait();
    for (int r = 0; r < c->size(); ++r) {
      EXPECT_TRUE(torch::equal(gathered.narrow(0, r * numel, numel), t)) << "rank " << r << " differs";
    }
  }
}

// STRIDE_SHM_WAIT forces how ranks wait (ctest runs the suite with "spin"); unset, it depends on the host.
TEST(Mpi, ShmWaitFollowsTheEnvironmentAndCanBeFlipped) {
  auto c = std::dynamic_pointer_cast<comm::MpiCommunicator>(world());
  ASSERT_TRUE(c);
  if (c->layout().transport != comm::Transport::kShm) {
    EXPECT_EQ(c->layout().shm_wait, comm::ShmWait::kNone);
    return;
  }
  const char* env = std::getenv("STRIDE_SHM_WAIT");
  const std::string wanted = env && *env ? env : "auto";
  const std::string initial = comm::shm_wait_name(c->layout().shm_wait);
  if (wanted != "auto") {
    EXPECT_EQ(initial, wanted);
  }
  EXPECT_TRUE(initial == "spin" || initial == "sleep") << initial;
  for (bool spin : {initial != "spin", initial == "spin"}) {
    c->set_shm_wait(spin);
    EXPECT_EQ(c->layout().shm_wait, spin ? comm::ShmWait::kSpin : comm::ShmWait::kSleep);
    auto t = torch::full({300000}, static_cast<float>(c->rank() + 1));
    c->allreduce(t, comm::ReduceOp::kSum)->wait();
    EXPECT_EQ(t[299999].item<float>(), static_cast<float>(c->size() * (c->size() + 1) / 2));
  }
}

TEST(Mpi, BuffersFromAllocBufferAreZeroedAndReduceInPlace) {
  auto c = world();
  const int64_t n = 1000003;
  auto buffer = c->alloc_buffer(n, torch::kFloat);
  ASSERT_EQ(buffer.numel(), n);
  EXPECT_TRUE(torch::equal(buffer, torch::zeros_like(buffer)));
  buffer.copy_(torch::arange(n, torch::kFloat).remainder(97) * (c->rank() + 1));
  auto view = buffer.narrow(0, 5, n - 10);  // a bucket's worth of parameters inside a larger buffer
  c->allreduce(view, comm::ReduceOp::kAvg)->wait();
  const double mean_factor = (c->size() + 1) / 2.0;  // average of 1..size
  auto expected = torch::arange(n, torch::kFloat).remainder(97).narrow(0, 5, n - 10) * mean_factor;
  EXPECT_LE(max_abs_diff(view, expected), 1e-3);
  EXPECT_EQ(buffer[0].item<float>(), 0.0f);  // outside the view: untouched (element 0 is 0 on every rank)
  EXPECT_EQ(buffer[n - 1].item<float>(), static_cast<float>(((n - 1) % 97) * (c->rank() + 1)));
}

TEST(Mpi, DataParallelEqualsOneProcess) { check_data_parallel_equivalence(world(), false); }

TEST(Mpi, Fp16CompressedDataParallelStaysClose) { check_data_parallel_equivalence(world(), false, "fp16"); }

TEST(Mpi, SyncBatchNormDataParallelEqualsOneProcessOnTheWholeBatch) { check_data_parallel_equivalence(world(), true); }

TEST(Mpi, Bf16AutocastDataParallelWithSyncBnAndBf16Compression) { check_bf16_data_parallel(world()); }

TEST(Mpi, SyncBatchNormWithUnequalBatchesIncludingAnEmptyRank) {
  auto c = world();
  std::vector<int64_t> sizes;
  for (int r = 0; r < c->size(); ++r) sizes.push_back(r == 1 ? 0 : 2 + 3 * r);
  check_sync_batch_norm(c, sizes);
  std::vector<int64_t> equal(static_cast<size_t>(c->size()), 4);
  check_sync_batch_norm(c, equal);
}

TEST(Mpi, SyncBatchNormOnBf16ActivationsKeepsFloat32Statistics) {
  auto c = world();
  std::vector<int64_t> sizes;
  for (int r = 0; r < c->size(); ++r) sizes.push_back(r == 1 ? 0 : 3 + 2 * r);
  check_sync_batch_norm_bf16(c, sizes);
}

// Rank 1 is killed with SIGKILL in the middle of a collective sequence; the survivors must fail with CommError
// (within the timeout), not hang. Run alone (the job cannot continue afterwards): STRIDE_MPI_KILL_TEST=1.
TEST(MpiFailure, PeerKilledMidCollectiveFailsSurvivorsWithCommError) {
  if (!std::getenv("STRIDE_MPI_KILL_TEST")) GTEST_SKIP() << "runs alone, with STRIDE_MPI_KILL_TEST=1";
  auto c = world();
  c->set_timeout(std::chrono::seconds(5));
  auto t = torch::ones({1 << 20});
  c->allreduce(t, comm::ReduceOp::kSum)->wait();
  if (c->rank() == 1) {
    std::fflush(stdout);
    ::kill(::getpid(), SIGKILL);
  }
  const auto t0 = std::chrono::steady_clock::now();
  try {
    for (int i = 0; i < 100; ++i) c->allreduce(t, comm::ReduceOp::kSum)->wait();
    FAIL() << "collectives with a dead peer succeeded";
  } catch (const comm::CommError& e) {
    std::printf("survivor rank %d got CommError after %.1f s: %s\n", c->rank(),
                std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), e.what());
    std::fflush(stdout);
  }
  // The job is broken: leave without MPI_Finalize (which would wait for the dead peer).
  std::_Exit(::testing::Test::HasFailure() ? 1 : 0);
}

}  // namespace
}  // namespace stride::testing
