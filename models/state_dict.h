// Moving weights in and out of a module by torchvision-style names ("layer1.0.bn2.running_var").
// No file I/O here: trainer/ reads and writes the files. Not thread-safe with concurrent use of the module.
#pragma once

#include <torch/torch.h>

#include <map>
#include <string>
#include <vector>

namespace stride::models {

using NamedTensors = std::map<std::string, torch::Tensor>;

// Every parameter and buffer, as torchvision's state_dict() would name them (detached, sharing storage).
NamedTensors state_dict(const torch::nn::Module& module);

struct LoadReport {
  std::vector<std::string> loaded;
  std::vector<std::string> missing;     // in the module, not in the source
  std::vector<std::string> unexpected;  // in the source, not in the module
  std::vector<std::string> skipped;     // names matched by `skip_prefixes`
};

struct LoadOptions {
  bool strict = true;                      // missing or unexpected names are errors
  std::vector<std::string> skip_prefixes;  // e.g. {"fc."} to keep a freshly initialised head
  std::string source = "state dict";       // how errors name where the tensors came from (a file path)
};

// Copies tensors into the module's parameters and buffers (casting dtype, keeping device). A shape mismatch
// is always an error naming the key and both shapes; strictness governs missing/unexpected names.
LoadReport load_state_dict(torch::nn::Module& module, const NamedTensors& tensors, const LoadOptions& options = {});

// A stem convolution's weight [O, I, kh, kw] made to take `in_channels` inputs, as timm's adapt_input_conv does:
// RGB weights for a 1-channel model are summed over I ("sum": a gray image g gives what the RGB model gives for
// (g, g, g)) or averaged ("mean": the activations of an image of mean intensity); for C > 3 channels the RGB
// weights are repeated and scaled by 3 / C. Throws UsageError naming `what` where no rule applies.
torch::Tensor adapt_input_conv(const torch::Tensor& weight, int64_t in_channels, const std::string& mode,
                               const std::string& what);

}  // namespace stride::models
