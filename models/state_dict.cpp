#include "models/state_dict.h"

#include <set>

#include "common/error.h"

namespace stride::models {

NamedTensors state_dict(const torch::nn::Module& module) {
  NamedTensors out;
  for (const auto& p : module.named_parameters(true)) out[p.key()] = p.value().detach();
  for (const auto& b : module.named_buffers(true)) out[b.key()] = b.value().detach();
  return out;
}

namespace {
bool has_prefix(const std::string& name, const std::vector<std::string>& prefixes) {
  for (const auto& p : prefixes) {
    if (name.rfind(p, 0) == 0) return true;
  }
  return false;
}

std::string join_first(const std::vector<std::string>& names, size_t limit = 5) {
  std::string s;
  for (size_t i = 0; i < names.size() && i < limit; ++i) s += (i ? ", " : "") + names[i];
  if (names.size() > limit) s += concat(", ... (", names.size(), " in all)");
  return s;
}
}  // namespace

LoadReport load_state_dict(torch::nn::Module& module, const NamedTensors& tensors, const LoadOptions& options) {
  LoadReport report;
  torch::NoGradGuard no_grad;
  auto targets = state_dict(module);
  std::set<std::string> seen;
  for (auto& [name, target] : targets) {
    if (has_prefix(name, options.skip_prefixes)) {
      report.skipped.push_back(name);
      continue;
    }
    auto it = tensors.find(name);
    if (it == tensors.end()) {
      report.missing.push_back(name);
      continue;
    }
    seen.insert(name);
    const auto& src = it->second;
    if (src.sizes() != target.sizes()) {
      throw Error(concat(options.source, ": tensor '", name, "' has shape ", src.sizes(), " but the model expects ",
                         target.sizes()));
    }
    target.copy_(src.to(target.device(), target.scalar_type()));
    report.loaded.push_back(name);
  }
  for (const auto& [name, tensor] : tensors) {
    if (!seen.count(name) && !has_prefix(name, options.skip_prefixes)) report.unexpected.push_back(name);
  }
  if (options.strict && (!report.missing.empty() || !report.unexpected.empty())) {
    std::string msg = concat(options.source, " does not match the model:");
    if (!report.missing.empty()) msg += concat(" missing ", join_first(report.missing), ";");
    if (!report.unexpected.empty()) msg += concat(" unexpected ", join_first(report.unexpected), ";");
    throw Error(msg);
  }
  return report;
}

torch::Tensor adapt_input_conv(const torch::Tensor& weight, int64_t in_channels, const std::string& mode,
                               const std::string& what) {
  if (weight.dim() != 4 || weight.size(1) == in_channels) return weight;
  const int64_t have = weight.size(1);
  if (mode != "sum" && mode != "mean") {
    throw UsageError(concat(what, " takes ", have, " input channels but the model has ", in_channels,
                            " (--adapt-stem sum or mean converts it)"));
  }
  const auto w = weight.to(torch::kFloat);
  torch::Tensor out;
  if (in_channels == 1 && have == 3) {
    out = mode == "sum" ? w.sum(1, /*keepdim=*/true) : w.mean(1, /*keepdim=*/true);
  } else if (have == 3 && in_channels > 3) {
    const int64_t repeat = (in_channels + 2) / 3;
    out = w.repeat({1, repeat, 1, 1}).narrow(1, 0, in_channels) * (3.0 / static_cast<double>(in_channels));
  } else {
    throw UsageError(concat(what, " takes ", have, " input channels; no rule adapts it to ", in_channels,
                            " (only 3 -> 1 and 3 -> more)"));
  }
  return out.to(weight.scalar_type());
}

}  // namespace stride::models
