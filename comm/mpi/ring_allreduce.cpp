#include "comm/mpi/ring_allreduce.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "comm/shm/reduce_kernels.h"
#include "common/error.h"

namespace stride::comm {
namespace {

std::string mpi_error(int rc) {
  char buf[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(rc, buf, &len) != MPI_SUCCESS) return concat("MPI error ", rc);
  return std::string(buf, static_cast<size_t>(len));
}

// One message of the ring: segment `seg` of the chunk moved in step `step`.
struct Unit {
  int step = 0;
  int64_t seg = 0;
  int64_t begin = 0, count = 0;  // elements of the tensor
};

}  // namespace

bool ring_supports(torch::ScalarType dtype, ReduceOp op) {
  if (dtype == torch::kBool) return false;
  if (dtype == torch::kHalf || dtype == torch::kBFloat16) return op == ReduceOp::kSum || op == ReduceOp::kAvg;
  switch (dtype) {
    case torch::kFloat:
    case torch::kDouble:
    case torch::kLong:
    case torch::kInt:
    case torch::kShort:
    case torch::kChar:
    case torch::kByte:
      return true;
    default:
      return false;
  }
}

void ring_allreduce(const torch::Tensor& t, ReduceOp op, MPI_Comm comm, const RingOptions& options,
                    const std::string& what) {
  auto check = [&](int rc, const char* call) {
    if (rc != MPI_SUCCESS)
      throw CommError(concat(call, " failed in the ring allreduce on ", what, ": ", mpi_error(rc)));
  };
  int rank = 0, n = 1;
  check(MPI_Comm_rank(comm, &rank), "MPI_Comm_rank");
  check(MPI_Comm_size(comm, &n), "MPI_Comm_size");
  STRIDE_CHECK(ring_supports(t.scalar_type(), op), "ring allreduce: ", reduce_op_name(op), " of ", t.scalar_type());
  STRIDE_CHECK(t.is_contiguous() && t.device().is_cpu(), "ring allreduce takes contiguous CPU tensors");
  const int64_t numel = t.numel();
  if (n < 2 || numel == 0) {
    if (op == ReduceOp::kAvg && n > 1) t.div_(n);
    return;
  }
  const auto dtype = t.scalar_type();
  const int64_t elem = static_cast<int64_t>(t.element_size());
  const ReduceOp kernel_op = op == ReduceOp::kAvg ? ReduceOp::kSum : op;
  char* base = static_cast<char*>(t.data_ptr());

  // Chunk c: [chunk_begin(c), chunk_begin(c + 1)); the first numel % n chunks hold one element more.
  const int64_t q = numel / n, extra = numel % n;
  auto chunk_begin = [&](int64_t c) { return c * q + std::min<int64_t>(c, extra); };
  auto mod = [n](int64_t x) { return static_cast<int>(((x % n) + n) % n); };
  const int64_t seg_elems = std::max<int64_t>(1, options.segment_bytes / elem);
  const int steps = 2 * (n - 1);
  // Step k sends chunk send_chunk(k) to rank+1 and receives recv_chunk(k) from rank-1; send_chunk(k+1) ==
  // recv_chunk(k), which is what lets segment j of step k+1 leave as soon as segment j of step k arrived.
  // Reduce-scatter (k < n-1): send rank-k, receive rank-k-1 (reduced into place). All-gather: send rank+1-s,
  // receive rank-s (copied into place), s = k-(n-1).
  auto send_chunk = [&](int k) { return k < n - 1 ? mod(rank - k) : mod(rank + 1 - (k - (n - 1))); };
  auto recv_chunk = [&](int k) { return k < n - 1 ? mod(rank - k - 1) : mod(rank - (k - (n - 1))); };
  auto units_of = [&](int k, int chunk) {
    std::vector<Unit> out;
    const int64_t b = chunk_begin(chunk), e = chunk_begin(chunk + 1);
    for (int64_t s = 0, off = b; off < e; ++s, off += seg_elems)
      out.push_back({k, s, off, std::min(seg_elems, e - off)});
    return out;
  };
  // Both sequences in the order the peer produces them; messages carry no tag distinction (MPI keeps the order
  // of messages between two ranks on one tag), so sends are posted strictly in order.
  std::vector<Unit> sends, recvs;
  std::vector<size_t> first_send_of_step(static_cast<size_t>(steps) + 1),
      first_recv_of_step(static_cast<size_t>(steps) + 1);
  for (int k = 0; k < steps; ++k) {
    first_send_of_step[static_cast<size_t>(k)] = sends.size();
    first_recv_of_step[static_cast<size_t>(k)] = recvs.size();
    for (auto& u : units_of(k, send_chunk(k))) sends.push_back(u);
    for (auto& u : units_of(k, recv_chunk(k))) recvs.push_back(u);
  }
  first_send_of_step[static_cast<size_t>(steps)] = sends.size();
  first_recv_of_step[static_cast<size_t>(steps)] = recvs.size();

  const int window = std::max(1, options.window);
  const int next = mod(rank + 1), prev = mod(rank - 1);
  const MPI_Datatype bytes = MPI_BYTE;
  constexpr int kTag = 0x5249;  // "RI"
  // Receive slots: reduce-scatter segments land here and are reduced into the tensor; all-gather segments too,
  // then are copied into place once this rank's own send of that region (an earlier step) has completed.
  std::vector<char> slots(static_cast<size_t>(window * seg_elems * elem));
  std::vector<MPI_Request> reqs(static_cast<size_t>(2 * window), MPI_REQUEST_NULL);  // [0,w): recvs, [w,2w): sends
  std::vector<size_t> req_unit(static_cast<size_t>(2 * window), 0);
  std::vector<char> recv_done(recvs.size(), 0), send_done(sends.size(), 0);
  // Index of the send of step k, segment s (both sequences hold each step's segments in order).
  auto send_index = [&](int k, int64_t s) {
    return first_send_of_step[static_cast<size_t>(k)] + static_cast<size_t>(s);
  };
  size_t next_recv = 0, next_send = 0, recvs_finished = 0, sends_finished = 0;
  std::vector<int> free_recv_slots, free_send_slots;
  for (int i = window - 1; i >= 0; --i) {
    free_recv_slots.push_back(i);
    free_send_slots.push_back(window + i);
  }
  std::vector<int> indices(static_cast<size_t>(2 * window));
  std::vector<MPI_Status> statuses(static_cast<size_t>(2 * window));

  // Is the region of send `si` still being read by MPI? Then a receive must not overwrite it yet.
  auto wait_send = [&](size_t si) {
    while (!send_done[si]) {
      int done_count = 0;
      // Complete every finished send; cheap, the region's send is causally complete already in practice.
      for (int slot = window; slot < 2 * window; ++slot) {
        if (reqs[static_cast<size_t>(slot)] == MPI_REQUEST_NULL) continue;
        if (req_unit[static_cast<size_t>(slot)] != si) continue;
        check(MPI_Wait(&reqs[static_cast<size_t>(slot)], MPI_STATUS_IGNORE), "MPI_Wait");
        send_done[si] = 1;
        ++sends_finished;
        free_send_slots.push_back(slot);
        ++done_count;
      }
      STRIDE_CHECK(send_done[si] || done_count > 0, "ring allreduce: send ", si, " was never posted");
    }
  };

  while (recvs_finished < recvs.size() || sends_finished < sends.size()) {
    while (next_recv < recvs.size() && !free_recv_slots.empty()) {
      const int slot = free_recv_slots.back();
      free_recv_slots.pop_back();
      const Unit& u = recvs[next_recv];
      check(MPI_Irecv(slots.data() + static_cast<size_t>(slot * seg_elems * elem), static_cast<int>(u.count * elem),
                      bytes, prev, kTag, comm, &reqs[static_cast<size_t>(slot)]),
            "MPI_Irecv");
      req_unit[static_cast<size_t>(slot)] = next_recv++;
    }
    while (next_send < sends.size() && !free_send_slots.empty()) {
      const Unit& u = sends[next_send];
      // Step 0 sends this rank's own data; later steps forward what arrived in the step before.
      if (u.step > 0 && !recv_done[first_recv_of_step[static_cast<size_t>(u.step - 1)] + static_cast<size_t>(u.seg)])
        break;
      const int slot = free_send_slots.back();
      free_send_slots.pop_back();
      check(MPI_Isend(base + u.begin * elem, static_cast<int>(u.count * elem), bytes, next, kTag, comm,
                      &reqs[static_cast<size_t>(slot)]),
            "MPI_Isend");
      req_unit[static_cast<size_t>(slot)] = next_send++;
    }
    int outcount = 0;
    check(MPI_Waitsome(2 * window, reqs.data(), &outcount, indices.data(), statuses.data()), "MPI_Waitsome");
    STRIDE_CHECK(outcount != MPI_UNDEFINED, "ring allreduce: nothing in flight on ", what);
    // Sends first: a receive below may wait for one of them.
    for (int i = 0; i < outcount; ++i) {
      const int slot = indices[static_cast<size_t>(i)];
      if (slot < window) continue;
      const size_t si = req_unit[static_cast<size_t>(slot)];
      send_done[si] = 1;
      ++sends_finished;
      free_send_slots.push_back(slot);
    }
    for (int i = 0; i < outcount; ++i) {
      const int slot = indices[static_cast<size_t>(i)];
      if (slot >= window) continue;
      const size_t ri = req_unit[static_cast<size_t>(slot)];
      const Unit& u = recvs[ri];
      const char* data = slots.data() + static_cast<size_t>(slot * seg_elems * elem);
      char* dst = base + u.begin * elem;
      if (u.step < n - 1) {
        shm_kernels::reduce(dtype, dst, {dst, data}, u.count, kernel_op, n);
      } else {
        // The region was last sent in reduce-scatter step s (same chunk, same segment).
        const int s = u.step - (n - 1);
        wait_send(send_index(s, u.seg));
        std::memcpy(dst, data, static_cast<size_t>(u.count * elem));
      }
      recv_done[ri] = 1;
      ++recvs_finished;
      free_recv_slots.push_back(slot);
    }
  }
  if (op == ReduceOp::kAvg) t.div_(n);
}

}  // namespace stride::comm
