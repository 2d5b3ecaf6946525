// Runs under mpirun (ctest label `mpi`): real Open MPI ranks, the same checks as the local-back-end unit tests,
// plus what only real processes can show (host names, a peer killed with SIGKILL).
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <cstdlib>

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
  EXPECT_EQ(c->transport(), env && std::string(env) == "0" ? "mpi" : "shm");
}

// STRIDE_SHM_WAIT forces how ranks wait (ctest runs the suite with "spin"); unset, it depends on the host.
TEST(Mpi, ShmWaitFollowsTheEnvironmentAndCanBeFlipped) {
  auto c = std::dynamic_pointer_cast<comm::MpiCommunicator>(world());
  ASSERT_TRUE(c);
  if (c->transport() != "shm") {
    EXPECT_EQ(c->shm_wait(), "");
    return;
  }
  const char* env = std::getenv("STRIDE_SHM_WAIT");
  const std::string wanted = env && *env ? env : "auto";
  const std::string initial = c->shm_wait();
  if (wanted != "auto") {
    EXPECT_EQ(initial, wanted);
  }
  EXPECT_TRUE(initial == "spin" || initial == "sleep") << initial;
  for (bool spin : {initial != "spin", initial == "spin"}) {
    c->set_shm_wait(spin);
    EXPECT_EQ(c->shm_wait(), spin ? "spin" : "sleep");
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
