#include "models/flops.h"

#include <ATen/record_function.h>

#include <cstring>
#include <memory>

namespace stride::models {
namespace {

thread_local int64_t t_flops = 0;
thread_local int t_depth = 0;  // counted ops open on this thread: only the outermost one is counted

bool counted(const char* name) {
  return std::strcmp(name, "aten::convolution") == 0 || std::strcmp(name, "aten::addmm") == 0 ||
         std::strcmp(name, "aten::mm") == 0;
}

std::unique_ptr<at::ObserverContext> on_start(const at::RecordFunction& fn) {
  if (counted(fn.name())) ++t_depth;
  return nullptr;
}

int64_t numel_of(const c10::IValue& v) { return v.isTensor() ? v.toTensor().numel() : 0; }

// Runs as each observed op ends: its inputs (and, for convolutions, its output) give the product's size.
void on_end(const at::RecordFunction& fn, at::ObserverContext*) {
  const char* name = fn.name();
  if (!counted(name)) return;
  // A product implemented by another counted op (bf16 addmm calling mm, say) is counted once, as the outer op.
  if (--t_depth > 0) return;
  const auto inputs = fn.inputs();
  if (std::strcmp(name, "aten::convolution") == 0) {
    // Each element of out [N, K, H', W'] is a dot product over one filter of weight [K, C/g, kh, kw].
    const auto& outputs = fn.outputs();
    if (inputs.size() < 2 || outputs.empty() || !inputs[1].isTensor() || !outputs[0].isTensor()) return;
    const auto& w = inputs[1].toTensor();
    if (inputs.size() > 6 && inputs[6].isBool() && inputs[6].toBool()) return;  // transposed: not in our models
    if (w.dim() < 1 || w.size(0) == 0) return;
    t_flops += 2 * numel_of(outputs[0]) * (w.numel() / w.size(0));
  } else if (std::strcmp(name, "aten::addmm") == 0 || std::strcmp(name, "aten::mm") == 0) {
    // [n, k] x [k, m]: n*k*m MACs. addmm's matrices are its 2nd and 3rd inputs, mm's its 1st and 2nd.
    const size_t a = name[6] == 'a' ? 1 : 0;
    if (inputs.size() < a + 2 || !inputs[a].isTensor() || !inputs[a + 1].isTensor()) return;
    const auto &x = inputs[a].toTensor(), &y = inputs[a + 1].toTensor();
    if (x.dim() != 2 || y.dim() != 2) return;
    t_flops += 2 * x.size(0) * x.size(1) * y.size(1);
  }
}

}  // namespace

int64_t count_flops(const std::function<void()>& fn) {
  struct Remove {
    at::CallbackHandle h;
    ~Remove() { at::removeCallback(h); }
  };
  const int64_t before = t_flops;
  Remove handle{at::addThreadLocalCallback(at::RecordFunctionCallback(on_start, on_end)
                                               .needsInputs(true)
                                               .needsOutputs(true)
                                               .scopes({at::RecordScope::FUNCTION}))};
  fn();
  return t_flops - before;
}

}  // namespace stride::models
