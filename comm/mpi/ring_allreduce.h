// A segmented, full-duplex ring all-reduce on MPI point-to-point, for links where bandwidth is what counts (ranks
// on different hosts).
//
// Why: across two emulated hosts joined by a 1 Gbit/s link, Open MPI's allreduce (TCP btl) moved 0.5-0.69 of the
// link rate while raw TCP moves 0.95 in both directions at once. This ring cuts each chunk into segments, keeps
// several receives and sends in flight both ways and reduces a segment while the next ones travel, so that the
// algorithm cannot be what limits the link; it also carries the inter-host step of the hierarchical allreduce.
// The ~0.5 that both this ring and MPI_Allreduce first reached there came from below the algorithm: the TCP btl's
// emulated-RDMA protocol, whose control messages wait behind the reverse data; MpiCommunicator turns it off
// (btl_tcp_flags), and the ring then moves 0.92-0.95 of the link (docs/benchmarks.md, #16).
//
// The algorithm: reduce-scatter then all-gather around the ring rank -> rank+1, 2(n-1) steps, each moving 1/n of
// the tensor; a rank sends segment j of step k as soon as it received (and reduced) segment j of step k-1.
// Sums in half and bfloat16 accumulate in float per step, like the MPI back-end's user operations. Any numel
// (also smaller than the number of ranks: empty chunks are skipped by every rank alike).
//
// Blocking, on the calling thread (the MPI owner thread); like any blocking MPI call it cannot be cancelled: the
// communicator's waiter enforces the timeout. MPI errors throw CommError naming the call and the rank.
#pragma once

#include <mpi.h>
#include <torch/torch.h>

#include <cstdint>
#include <string>

#include "comm/communicator.h"

namespace stride::comm {

struct RingOptions {
  // Bytes per message. Small enough that the first segment starts the pipeline early and a segment is reduced
  // while the next travels; large enough that per-message costs vanish (the sizes measured on a 1 Gbit/s link:
  // docs/benchmarks.md, "Across hosts on a shaped link").
  int64_t segment_bytes = int64_t{128} << 10;
  // Receives (and, separately, sends) in flight per rank: 2 MiB each way at the default segment.
  int window = 16;
};

// Whether ring_allreduce can run `op` on `dtype`: floating-point and integer sums, averages (floating point),
// max and min; not bool.
bool ring_supports(torch::ScalarType dtype, ReduceOp op);

// In place, over every rank of `comm`; `t` contiguous CPU. `what` names the caller in errors ("rank 1/4 (host)").
// kAvg sums, then divides by the size of `comm` (as the flat MPI path does: the same rounding).
void ring_allreduce(const torch::Tensor& t, ReduceOp op, MPI_Comm comm, const RingOptions& options,
                    const std::string& what);

}  // namespace stride::comm
