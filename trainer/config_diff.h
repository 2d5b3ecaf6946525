// What differs between the configuration a checkpoint was written with and the one resuming it. Resuming with
// other settings silently changes the result (a dropped --nesterov, another schedule), so `stride train`
// reports every changed key at start-up and refuses the changes that make the continuation differ from an
// uninterrupted run, unless --allow-config-change is given. Keys that cannot change the weights (where the
// run writes, how often it prints, how many loader threads) may change freely; the per-rank batch may change
// with the world size as long as the global batch does not. Pure functions; thread-safe.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "trainer/config.h"

namespace stride::trainer {

struct ConfigChange {
  std::string key;            // a flag name, or "global batch"
  std::string before, after;  // TOML renderings
  bool changes_result = true;
};

// `before_toml`: the resolved config.toml of the run that wrote the checkpoint, with that run's world size.
// Keys missing from it (options added since) count as their defaults. Throws stride::Error when it does not
// parse.
std::vector<ConfigChange> config_changes(const std::string& before_toml, uint64_t before_world,
                                         const TrainConfig& after, uint64_t after_world);

// "lr 0.1 -> 0.2, nesterov false -> true".
std::string describe(const std::vector<ConfigChange>& changes);

}  // namespace stride::trainer
