// NCCL on CUDA tensors.
//
// Collectives run on the communicator's own CUDA stream. Before each one the comm stream waits (cudaEvent) for
// the work already queued on the caller's current compute stream, so it reads finished gradients; Work::wait()
// makes the caller's current stream wait for the collective's event. The host never blocks: there is no
// cudaStreamSynchronize inside backward. A watchdog thread checks outstanding collectives; one that has not
// finished within the timeout, or an asynchronous NCCL error, aborts the NCCL communicator (ncclCommAbort, which
// releases kernels stuck on a dead peer) and fails every later wait() with CommError.
//
// The unique id is created by rank 0 and broadcast over the bootstrap communicator (MPI in a multi-rank run).
// With Debian's CPU LibTorch this file compiles and links against NCCL and the CUDA runtime, but there are no
// CUDA tensors: make_nccl_communicator() then says so.
#pragma once

#include <memory>

#include "comm/communicator.h"

namespace stride::comm {

// True when this build's LibTorch has CUDA (and so can hand CUDA tensors and streams to NCCL).
bool torch_has_cuda_support();

// One NCCL rank per process on GPU local_rank % device_count, ids exchanged over `bootstrap`.
std::shared_ptr<Communicator> make_nccl_communicator(std::shared_ptr<Communicator> bootstrap);

}  // namespace stride::comm
