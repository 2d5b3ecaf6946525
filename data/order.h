// The global sample order and each rank's share of it.
//
// Note [Global order]
// For epoch e the whole job sees one sequence of sample ids, a function of (seed, e) and the shard sizes only:
//   1. shuffle the shards;
//   2. cut the shuffled shard list into windows of `window_shards` shards;
//   3. shuffle the samples inside each window; concatenate the windows.
// A window's samples come from a few shards, so reads stay close together and a reader needs only those shards
// hot; the order never depends on the number of ranks or threads. A global batch of B = per_rank_batch x world
// consecutive positions is split into world contiguous slices, rank r taking slice r. The resume cursor is the
// number of positions the job has consumed in the epoch, so resuming with any world size that keeps B (or any
// B at all) continues the same sequence: nothing is repeated or skipped.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace stride::data {

// Where the job is in the data. Stored in checkpoints (trainer) and reported on /status.
struct Cursor {
  uint64_t epoch = 0;
  uint64_t consumed = 0;  // positions of the epoch's global order already consumed by the whole job
  uint64_t seed = 0;
  bool operator==(const Cursor& o) const { return epoch == o.epoch && consumed == o.consumed && seed == o.seed; }
};

// Note [Repeated augmentation]
// torchvision's RASampler (--ra-sampler, Hoffer et al. 2020) repeats each sample `ra_reps` times in an epoch, each
// copy with its own augmentation, and deals the copies to different ranks: it expands the permutation to
// a,a,a,b,b,b,... and gives rank r every world-th entry, so the layout depends on the number of ranks. An epoch
// still has N positions, so it sees about N / reps distinct samples.
// Stride keeps those semantics but fixes the layout by the global batch G (images per optimizer step), not the
// world: positions [jG, (j+1)G) hold the next g = ceil(G / reps) samples of the epoch's permutation, copy k of
// sample i at position jG + k g + i (positions past G dropped, so with G not a multiple of reps the last samples of
// a group get reps - 1 copies). Copies are g positions apart inside one step, which puts them on different ranks
// whenever a rank's slice is at most g, and the order is the same for every world size that keeps G. A copy's
// augmentation is seeded by its position, so the copies differ.
struct OrderOptions {
  bool shuffle = true;
  int64_t window_shards = 8;  // shards whose samples are shuffled together
  uint64_t repeats = 1;       // > 1: repeated augmentation with this many copies (Note [Repeated augmentation])
  uint64_t repeat_group = 0;  // ... laid out per global batch of this many positions
};

// The epoch's permutation of sample ids 0..N-1, where shard s holds ids [first_s, first_s + size_s).
std::vector<uint64_t> epoch_order(const std::vector<uint64_t>& shard_sizes, uint64_t seed, uint64_t epoch,
                                  const OrderOptions& options = {});

// Note [Repeated augmentation]'s layout of `base` (the epoch's permutation): as many positions as `base` has.
std::vector<uint64_t> repeated_order(const std::vector<uint64_t>& base, uint64_t group, uint64_t repeats);

// How one epoch is split into global batches and rank slices.
//
// Tail policy: training (`drop_last`) runs floor(N / B) global batches and leaves the last N mod B positions of
// the (shuffled) order out of that epoch. Evaluation runs ceil(N / B) batches; positions past N are padding,
// filled with real samples so shapes stay fixed, and flagged invalid so no sample is counted twice.
struct EpochPlan {
  uint64_t num_samples = 0;
  uint64_t per_rank_batch = 0;
  uint64_t world_size = 1;
  uint64_t rank = 0;
  bool drop_last = true;

  uint64_t global_batch() const { return per_rank_batch * world_size; }
  // Global batches in the epoch when starting from position `start`.
  uint64_t steps(uint64_t start = 0) const;
  // First position of this rank's slice in the global batch starting at `batch_start`.
  uint64_t slice_begin(uint64_t batch_start) const { return batch_start + rank * per_rank_batch; }
};

void validate(const EpochPlan& plan);

}  // namespace stride::data
