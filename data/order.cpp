#include "data/order.h"

#include <algorithm>
#include <numeric>

#include "common/error.h"
#include "data/rng.h"

namespace stride::data {

namespace {
constexpr uint64_t kShardStream = 1;
constexpr uint64_t kWindowStream = 2;
}  // namespace

std::vector<uint64_t> epoch_order(const std::vector<uint64_t>& shard_sizes, uint64_t seed, uint64_t epoch,
                                  const OrderOptions& options) {
  std::vector<uint64_t> first(shard_sizes.size());
  uint64_t total = 0;
  for (size_t s = 0; s < shard_sizes.size(); ++s) {
    first[s] = total;
    total += shard_sizes[s];
  }
  std::vector<uint64_t> order;
  order.reserve(total);
  if (!options.shuffle) {
    for (uint64_t i = 0; i < total; ++i) order.push_back(i);
    return options.repeats > 1 ? repeated_order(order, options.repeat_group, options.repeats) : order;
  }
  STRIDE_CHECK_GT(options.window_shards, 0, "window_shards");
  std::vector<uint64_t> shards(shard_sizes.size());
  std::iota(shards.begin(), shards.end(), 0);
  Rng(derive_seed(seed, epoch, kShardStream)).shuffle(shards);
  const size_t w = static_cast<size_t>(options.window_shards);
  for (size_t begin = 0, window = 0; begin < shards.size(); begin += w, ++window) {
    const size_t window_start = order.size();
    for (size_t k = begin; k < std::min(begin + w, shards.size()); ++k) {
      for (uint64_t i = 0; i < shard_sizes[shards[k]]; ++i) order.push_back(first[shards[k]] + i);
    }
    std::vector<uint64_t> part(order.begin() + static_cast<std::ptrdiff_t>(window_start), order.end());
    Rng(derive_seed(seed, epoch, kWindowStream, window)).shuffle(part);
    std::copy(part.begin(), part.end(), order.begin() + static_cast<std::ptrdiff_t>(window_start));
  }
  return options.repeats > 1 ? repeated_order(order, options.repeat_group, options.repeats) : order;
}

std::vector<uint64_t> repeated_order(const std::vector<uint64_t>& base, uint64_t group, uint64_t repeats) {
  STRIDE_CHECK_GT(group, 0u, "repeated augmentation group");
  STRIDE_CHECK_GT(repeats, 0u, "repeated augmentation copies");
  const uint64_t n = base.size(), distinct = (group + repeats - 1) / repeats;
  std::vector<uint64_t> order(n);
  for (uint64_t p = 0; p < n; ++p) {
    const uint64_t j = p / group, o = p % group;
    order[p] = base[(j * distinct + o % distinct) % n];
  }
  return order;
}

uint64_t EpochPlan::steps(uint64_t start) const {
  const uint64_t b = global_batch();
  if (start >= num_samples) return 0;
  const uint64_t left = num_samples - start;
  return drop_last ? left / b : (left + b - 1) / b;
}

void validate(const EpochPlan& plan) {
  if (plan.per_rank_batch == 0) throw UsageError("batch-size must be positive");
  if (plan.world_size == 0 || plan.rank >= plan.world_size) {
    throw Error(concat("rank ", plan.rank, " is outside a world of ", plan.world_size));
  }
  if (plan.drop_last && plan.num_samples < plan.global_batch()) {
    throw UsageError(concat("the dataset has ", plan.num_samples, " samples, fewer than one global batch of ",
                            plan.global_batch(), " (", plan.per_rank_batch, " per rank x ", plan.world_size,
                            " ranks)"));
  }
}

}  // namespace stride::data
