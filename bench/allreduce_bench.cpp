// `stride bench allreduce`: algorithm and bus bandwidth of the communicator's allreduce from 1 KiB to 256 MiB,
// side by side with raw MPI_Allreduce on the same buffers (run under mpirun -np 2 or more). The two are timed in
// alternation, several rounds, and the median round is reported, so machine drift affects both alike.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "comm/communicator.h"
#include "common/error.h"
#ifdef STRIDE_WITH_MPI
#include <mpi.h>

#include "comm/mpi/mpi_communicator.h"
#endif

namespace stride::bench {
namespace {

struct AllreduceArgs {
  int64_t min_bytes = 1 << 10;
  int64_t max_bytes = int64_t{256} << 20;
  int64_t rounds = 5;
  double seconds_per_point = 0.2;  // per implementation per round
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

void run_allreduce_bench(const AllreduceArgs& a) {
#ifndef STRIDE_WITH_MPI
  (void)a;
  throw UsageError("stride bench allreduce needs the MPI back-end (this binary was built without Open MPI)");
#else
  auto comm = comm::MpiCommunicator::create();
  const int n = comm->size();
  if (n < 2) throw UsageError("stride bench allreduce: run under mpirun with 2 or more ranks");
  const bool root = comm->rank() == 0;
  if (root) {
    std::printf("# allreduce (float32 sum), %d ranks, host %s; busbw = algbw x 2(n-1)/n\n", n, comm->host().c_str());
    std::printf(
        "# stride: an ordinary tensor; bucket: a buffer from alloc_buffer (how the GradientReducer's buckets\n"
        "# are allocated; in shared memory when all ranks share the host), rewritten before each call (untimed);\n"
        "# transport: %s\n",
        comm->layout().summary().c_str());
    std::printf("%12s %8s %12s %12s %12s %14s %14s %14s %8s %8s\n", "bytes", "iters", "stride_us", "bucket_us",
                "mpi_us", "stride_busGB/s", "bucket_busGB/s", "mpi_busGB/s", "ratio", "b_ratio");
  }
  for (int64_t bytes = a.min_bytes; bytes <= a.max_bytes; bytes *= 4) {
    // Zeros: summed in place call after call, ones would reach inf after ~128 calls.
    auto t = torch::zeros({bytes / 4}, torch::kFloat);
    auto bucket = comm->alloc_buffer(bytes / 4, torch::kFloat);
    bucket.fill_(1);
    // Iterations per round from a quick probe, agreed across ranks (every rank must run the same count).
    comm->barrier()->wait();
    auto p0 = std::chrono::steady_clock::now();
    comm->allreduce(t, comm::ReduceOp::kSum)->wait();
    auto probe =
        torch::tensor({std::chrono::duration<double>(std::chrono::steady_clock::now() - p0).count()}, torch::kDouble);
    comm->allreduce(probe, comm::ReduceOp::kMax)->wait();
    const int64_t iters =
        std::clamp<int64_t>(static_cast<int64_t>(a.seconds_per_point / std::max(probe.item<double>(), 1e-7)), 3, 20000);
    std::vector<double> stride_s, bucket_s, mpi_s;
    for (int64_t round = 0; round < a.rounds; ++round) {
      comm->barrier()->wait();
      auto t0 = std::chrono::steady_clock::now();
      for (int64_t i = 0; i < iters; ++i) comm->allreduce(t, comm::ReduceOp::kSum)->wait();
      stride_s.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() /
                         static_cast<double>(iters));
      // Each rank rewrites its whole bucket before each call, untimed, as backward does in training: otherwise a
      // rank would find the slice it reduces still in its cache from the previous call. The barrier keeps one
      // rank's fill out of the other's timed wait.
      double bucket_total = 0;
      for (int64_t i = 0; i < iters; ++i) {
        bucket.fill_(1);
        comm->barrier()->wait();
        t0 = std::chrono::steady_clock::now();
        comm->allreduce(bucket, comm::ReduceOp::kSum)->wait();
        bucket_total += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      }
      bucket_s.push_back(bucket_total / static_cast<double>(iters));
      double raw = 0;
      comm->run_on_owner([&] {
        MPI_Barrier(MPI_COMM_WORLD);
        const double r0 = MPI_Wtime();
        for (int64_t i = 0; i < iters; ++i) {
          MPI_Allreduce(MPI_IN_PLACE, t.data_ptr(), static_cast<int>(t.numel()), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
        }
        raw = (MPI_Wtime() - r0) / static_cast<double>(iters);
      });
      mpi_s.push_back(raw);
    }
    // The slowest rank defines the time of a collective.
    auto times = torch::tensor({median(stride_s), median(mpi_s), median(bucket_s)}, torch::kDouble);
    comm->allreduce(times, comm::ReduceOp::kMax)->wait();
    const double ts = times[0].item<double>(), tm = times[1].item<double>(), tb = times[2].item<double>();
    const double factor = 2.0 * (n - 1) / n;
    const double bus_s = static_cast<double>(bytes) / ts * factor / 1e9,
                 bus_m = static_cast<double>(bytes) / tm * factor / 1e9,
                 bus_b = static_cast<double>(bytes) / tb * factor / 1e9;
    if (root) {
      std::printf("%12lld %8lld %12.1f %12.1f %12.1f %14.3f %14.3f %14.3f %8.3f %8.3f\n", static_cast<long long>(bytes),
                  static_cast<long long>(iters), ts * 1e6, tb * 1e6, tm * 1e6, bus_s, bus_b, bus_m, tm / ts, tm / tb);
      nlohmann::json j = {{"bench", "allreduce"},
                          {"ranks", n},
                          {"bytes", bytes},
                          {"iters", iters},
                          {"stride_s", ts},
                          {"mpi_s", tm},
                          {"bucket_s", tb},
                          {"bucket_busbw_gbs", bus_b},
                          {"bucket_ratio", tm / tb},
                          {"transport", comm->layout().transport_name()},
                          {"shm_wait", comm::shm_wait_name(comm->layout().shm_wait)},
                          {"stride_busbw_gbs", bus_s},
                          {"mpi_busbw_gbs", bus_m},
                          {"ratio", tm / ts}};
      std::fprintf(stderr, "%s\n", j.dump().c_str());
    }
  }
#endif
}

}  // namespace

void add_allreduce_bench(CLI::App& bench) {
  auto a = std::make_shared<AllreduceArgs>();
  auto* cmd = bench.add_subcommand("allreduce", "Allreduce bandwidth vs raw MPI_Allreduce (under mpirun)");
  cmd->add_option("--min-bytes", a->min_bytes)->capture_default_str();
  cmd->add_option("--max-bytes", a->max_bytes)->capture_default_str();
  cmd->add_option("--rounds", a->rounds)->capture_default_str();
  cmd->add_option("--seconds-per-point", a->seconds_per_point)->capture_default_str();
  cmd->callback([a] { run_allreduce_bench(*a); });
}

}  // namespace stride::bench
