// The model zoo: every architecture Stride trains, by name. Thread-safe (the table is immutable).
#pragma once

#include <string>
#include <vector>

#include "models/resnet.h"

namespace stride::models {

// Every registered name, in display order (ImageNet family first, then CIFAR-style).
const std::vector<std::string>& model_names();

// The architecture a name stands for. Throws UsageError naming the close matches when unknown.
ResNetSpec model_spec(const std::string& name);

// Builds and initialises a model. Uses the global LibTorch RNG (seed it with torch::manual_seed).
ResNet make_model(const std::string& name, const ModelOptions& options = {});

// Number of parameters of `name` with the given options, computed without allocating or initialising the
// weights (so `stride models` stays fast for 100M-parameter networks).
int64_t parameter_count(const std::string& name, const ModelOptions& options = {});

}  // namespace stride::models
