#include "comm/sync_batch_norm.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <cstdint>

#include "comm/flight_recorder.h"

namespace stride::comm {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Per-channel view for broadcasting against x.
torch::Tensor per_channel(const torch::Tensor& v, const torch::Tensor& x) {
  std::vector<int64_t> shape(static_cast<size_t>(x.dim()), 1);
  shape[1] = v.numel();
  return v.view(shape);
}

torch::ScalarType stats_type(const torch::Tensor& x) {
  return x.scalar_type() == torch::kDouble ? torch::kDouble : torch::kFloat;
}

// Forward: local (mean, biased var) from LibTorch's fused statistics kernel, one allgather, Chan's combination,
// then inference-mode batch_norm with the global statistics (one fused pass).
// Backward: inference-mode batch_norm backward with the global statistics gives, in one fused kernel,
// w * invstd * dy and the local sums sum(dy) and sum(dy * xhat); one allreduce makes those global; the terms of the
// training-mode gradient that depend on them are affine in x per channel, added in place:
//   dx = w*invstd*(dy - S1/N - (x - mean)*invstd^2*S2/N) = w*invstd*dy + x*B + C,
//   B = -w*invstd^3*S2/N,  C = -w*invstd*S1/N - B*mean,  with S1 = sum(dy), S2 = sum(dy*(x - mean)) over all ranks.
// CPU kernels for contiguous NCHW input: the backward in two passes over the activations, like LibTorch's own
// BatchNorm backward (one to reduce, one to write), instead of a fused-op-per-term chain.
// The inner loops work in blocks of kLanes independent accumulators with a constant trip count: that is what
// lets GCC vectorise them at -O2 (a single float accumulator is a serial dependency chain, ~4 cycles per element,
// and its cheap cost model does not vectorise loops that need a remainder loop).
constexpr int64_t kLanes = 8;

// Per channel: sum(dy) and sum(dy * x).
template <typename T>
void channel_sums(const torch::Tensor& x, const torch::Tensor& dy, double* s1, double* sdx) {
  const int64_t n = x.size(0), c = x.size(1), hw = x.numel() / std::max<int64_t>(n * c, 1);
  const T* px = x.data_ptr<T>();
  const T* pd = dy.data_ptr<T>();
  at::parallel_for(0, c, 1, [&](int64_t begin, int64_t end) {
    for (int64_t ch = begin; ch < end; ++ch) {
      double a1 = 0, a2 = 0;
      for (int64_t i = 0; i < n; ++i) {
        const T* xr = px + (i * c + ch) * hw;
        const T* dr = pd + (i * c + ch) * hw;
        T l1[kLanes] = {}, l2[kLanes] = {};
        int64_t k = 0;
        for (; k + kLanes <= hw; k += kLanes) {
          for (int64_t j = 0; j < kLanes; ++j) {
            l1[j] += dr[k + j];
            l2[j] += dr[k + j] * xr[k + j];
          }
        }
        T r1 = 0, r2 = 0;
        for (; k < hw; ++k) {
          r1 += dr[k];
          r2 += dr[k] * xr[k];
        }
        for (int64_t j = 0; j < kLanes; ++j) {
          r1 += l1[j];
          r2 += l2[j];
        }
        a1 += r1;
        a2 += r2;
      }
      s1[ch] = a1;
      sdx[ch] = a2;
    }
  });
}

// sum(term(k)) for k in [0, hw), in kLanes independent accumulators.
template <typename T, typename Term>
T lane_sum(int64_t hw, Term term) {
  T l[kLanes] = {};
  int64_t k = 0;
  for (; k + kLanes <= hw; k += kLanes) {
    for (int64_t j = 0; j < kLanes; ++j) l[j] += term(k + j);
  }
  T r = 0;
  for (; k < hw; ++k) r += term(k);
  for (int64_t j = 0; j < kLanes; ++j) r += l[j];
  return r;
}

// Per channel: mean and M2 = sum((x - mean)^2), two passes (the one-pass sum of squares loses precision).
template <typename T>
void channel_moments(const torch::Tensor& x, double* mean, double* m2) {
  const int64_t n = x.size(0), c = x.size(1), hw = x.numel() / std::max<int64_t>(n * c, 1);
  const T* px = x.data_ptr<T>();
  const double count = static_cast<double>(n * hw);
  at::parallel_for(0, c, 1, [&](int64_t begin, int64_t end) {
    for (int64_t ch = begin; ch < end; ++ch) {
      double sum = 0;
      for (int64_t i = 0; i < n; ++i) {
        const T* xr = px + (i * c + ch) * hw;
        sum += lane_sum<T>(hw, [xr](int64_t k) { return xr[k]; });
      }
      const double mu = count > 0 ? sum / count : 0.0;
      const T m = static_cast<T>(mu);
      double acc = 0;
      for (int64_t i = 0; i < n; ++i) {
        const T* xr = px + (i * c + ch) * hw;
        acc += lane_sum<T>(hw, [xr, m](int64_t k) { return (xr[k] - m) * (xr[k] - m); });
      }
      mean[ch] = mu;
      m2[ch] = acc;
    }
  });
}

// out = a[c] * dy + b[c] * x + k[c]
template <typename T>
void affine_grad(const torch::Tensor& x, const torch::Tensor& dy, const double* a, const double* b, const double* k,
                 torch::Tensor& out) {
  const int64_t n = x.size(0), c = x.size(1), hw = x.numel() / std::max<int64_t>(n * c, 1);
  const T* px = x.data_ptr<T>();
  const T* pd = dy.data_ptr<T>();
  T* po = out.data_ptr<T>();
  at::parallel_for(0, n * c, 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t ch = row % c;
      const T ta = static_cast<T>(a[ch]), tb = static_cast<T>(b[ch]), tk = static_cast<T>(k[ch]);
      const T* __restrict xr = px + row * hw;
      const T* __restrict dr = pd + row * hw;
      T* __restrict orow = po + row * hw;
      int64_t i = 0;
      for (; i + kLanes <= hw; i += kLanes) {
        for (int64_t j = 0; j < kLanes; ++j) orow[i + j] = ta * dr[i + j] + tb * xr[i + j] + tk;
      }
      for (; i < hw; ++i) orow[i] = ta * dr[i] + tb * xr[i] + tk;
    }
  });
}

bool cpu_fast_path(const torch::Tensor& x) {
  return x.is_cpu() && x.is_contiguous() && (x.scalar_type() == torch::kFloat || x.scalar_type() == torch::kDouble);
}

struct SyncBatchNormFunction : public torch::autograd::Function<SyncBatchNormFunction> {
  static torch::Tensor forward(AutogradContext* ctx, torch::Tensor x, torch::Tensor weight, torch::Tensor bias,
                               torch::Tensor running_mean, torch::Tensor running_var, Communicator* comm, double eps,
                               double momentum) {
    const int64_t channels = x.size(1);
    const auto st = stats_type(x);
    const int64_t count = channels > 0 ? x.numel() / channels : 0;
    auto opts = x.options().dtype(st);
    torch::Tensor local = torch::zeros({2 * channels + 1}, opts);
    if (count > 0 && cpu_fast_path(x)) {
      // (mean, M2) per channel in two vectorised passes; LibTorch's batch_norm_update_stats takes ~8x longer.
      std::vector<double> mean(static_cast<size_t>(channels)), m2(static_cast<size_t>(channels));
      AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "sync_bn_moments",
                                 [&] { channel_moments<scalar_t>(x, mean.data(), m2.data()); });
      auto l = local.to(torch::kDouble);
      double* pl = l.data_ptr<double>();
      for (int64_t ch = 0; ch < channels; ++ch) {
        pl[ch] = mean[static_cast<size_t>(ch)];
        pl[channels + ch] = m2[static_cast<size_t>(ch)];
      }
      local.copy_(l);
    } else if (count > 0) {
      auto stats = torch::batch_norm_update_stats(x, c10::nullopt, c10::nullopt, 0.0);
      local.narrow(0, 0, channels).copy_(std::get<0>(stats));
      local.narrow(0, channels, channels).copy_(std::get<1>(stats) * static_cast<double>(count));
    }
    local[2 * channels].fill_(static_cast<double>(count));
    auto all = torch::empty({comm->size(), 2 * channels + 1}, opts);
    comm->allgather_now(local, all);
    // Chan et al.: combine (count, mean, M2) of every rank.
    torch::Tensor mean, var;
    double total = 0;
    if (x.is_cpu()) {
      // A few thousand numbers: plain loops beat a dozen tiny tensor ops per layer.
      auto a = all.to(torch::kDouble).contiguous();
      const double* p = a.data_ptr<double>();
      const int64_t row = 2 * channels + 1, ranks = comm->size();
      for (int64_t r = 0; r < ranks; ++r) total += p[r * row + 2 * channels];
      if (total < 1) throw Error("SyncBatchNorm: no rank has any sample in this batch");
      auto mv = torch::empty({3, channels}, torch::kDouble);
      double* out = mv.data_ptr<double>();
      for (int64_t ch = 0; ch < channels; ++ch) {
        double m = 0;
        for (int64_t r = 0; r < ranks; ++r) m += p[r * row + 2 * channels] * p[r * row + ch];
        m /= total;
        double m2 = 0;
        for (int64_t r = 0; r < ranks; ++r) {
          const double d = p[r * row + ch] - m;
          m2 += p[r * row + channels + ch] + p[r * row + 2 * channels] * d * d;
        }
        out[ch] = m;
        out[channels + ch] = m2 / total;
        out[2 * channels + ch] = total > 1 ? m2 / (total - 1) : m2 / total;
      }
      mean = mv[0];
      var = mv[1];
      if (running_mean.defined()) {
        torch::NoGradGuard no_grad;
        running_mean.mul_(1.0 - momentum).add_(mv[0].to(running_mean.scalar_type()), momentum);
        running_var.mul_(1.0 - momentum).add_(mv[2].to(running_var.scalar_type()), momentum);
      }
    } else {
      auto counts = all.select(1, 2 * channels).unsqueeze(1);
      total = counts.sum().item<double>();
      if (total < 1) throw Error("SyncBatchNorm: no rank has any sample in this batch");
      auto means = all.narrow(1, 0, channels);
      mean = (means * counts).sum(0) / total;
      auto m2 = all.narrow(1, channels, channels).sum(0) + (counts * (means - mean).pow(2)).sum(0);
      var = m2 / total;
      if (running_mean.defined()) {
        torch::NoGradGuard no_grad;
        running_mean.mul_(1.0 - momentum).add_(mean.to(running_mean.scalar_type()), momentum);
        const auto unbiased = total > 1 ? m2 / (total - 1) : var;
        running_var.mul_(1.0 - momentum).add_(unbiased.to(running_var.scalar_type()), momentum);
      }
    }
    auto mean_w = mean.to(weight.scalar_type()), var_w = var.to(weight.scalar_type());
    ctx->save_for_backward({x, weight, mean_w, var_w});
    ctx->saved_data["total"] = total;
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["comm"] = static_cast<int64_t>(reinterpret_cast<intptr_t>(comm));
    const char* layer = OriginScope::current().name;  // SyncBatchNorm::forward set it
    ctx->saved_data["layer"] = std::string(layer ? layer : "");
    return torch::batch_norm(x, weight, bias, mean_w, var_w, /*training=*/false, 0.0, eps, /*cudnn_enabled=*/true);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    auto saved = ctx->get_saved_variables();
    const auto &x = saved[0], &weight = saved[1], &mean = saved[2], &var = saved[3];
    const double total = ctx->saved_data["total"].toDouble();
    const double eps = ctx->saved_data["eps"].toDouble();
    auto* comm = reinterpret_cast<Communicator*>(static_cast<intptr_t>(ctx->saved_data["comm"].toInt()));
    const std::string layer = ctx->saved_data["layer"].toStringRef();
    const OriginScope origin(OriginKind::kSyncBn, /*backward*/ 1, layer.c_str());  // the flight recorder's origin
    const int64_t channels = x.size(1);
    auto g = grad_outputs[0].contiguous(x.suggest_memory_format());
    torch::Tensor grad_input, grad_weight, grad_bias;
    if (cpu_fast_path(x)) {
      auto sums = torch::zeros({2 * channels}, torch::kDouble);  // [sum(dy), sum(dy * x)]
      double* ps = sums.data_ptr<double>();
      if (x.numel() > 0) {
        AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "sync_bn_sums",
                                   [&] { channel_sums<scalar_t>(x, g, ps, ps + channels); });
      }
      auto w = weight.to(torch::kDouble).contiguous(), m = mean.to(torch::kDouble).contiguous(),
           v = var.to(torch::kDouble).contiguous();
      const double *pw = w.data_ptr<double>(), *pm = m.data_ptr<double>(), *pv = v.data_ptr<double>();
      // Local parameter gradients before the sums become global.
      auto gw = torch::empty({channels}, torch::kDouble), gb = torch::empty({channels}, torch::kDouble);
      for (int64_t ch = 0; ch < channels; ++ch) {
        const double invstd = 1.0 / std::sqrt(pv[ch] + eps);
        gb.data_ptr<double>()[ch] = ps[ch];
        gw.data_ptr<double>()[ch] = (ps[channels + ch] - pm[ch] * ps[ch]) * invstd;
      }
      comm->allreduce_now(sums, ReduceOp::kSum);
      auto coef = torch::empty({3, channels}, torch::kDouble);
      double *pa = coef.data_ptr<double>(), *pb = pa + channels, *pk = pb + channels;
      for (int64_t ch = 0; ch < channels; ++ch) {
        const double invstd = 1.0 / std::sqrt(pv[ch] + eps);
        const double s1 = ps[ch], s2 = ps[channels + ch] - pm[ch] * s1;  // global sum(dy), sum(dy * (x - mean))
        pa[ch] = pw[ch] * invstd;
        pb[ch] = -pw[ch] * invstd * invstd * invstd * s2 / total;
        pk[ch] = -pw[ch] * invstd * s1 / total - pb[ch] * pm[ch];
      }
      grad_input = torch::empty_like(x);
      if (x.numel() > 0) {
        AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "sync_bn_grad",
                                   [&] { affine_grad<scalar_t>(x, g, pa, pb, pk, grad_input); });
      }
      grad_weight = gw.to(weight.scalar_type());
      grad_bias = gb.to(weight.scalar_type());
    } else {
      if (x.numel() > 0) {
        // Inference-mode backward: dx = w * invstd * dy, dw = sum(dy * xhat), db = sum(dy), in one fused kernel.
        std::tie(grad_input, grad_weight, grad_bias) = torch::native_batch_norm_backward(
            g, x, weight, mean, var, c10::nullopt, c10::nullopt, /*train=*/false, eps, {true, true, true});
      } else {
        grad_input = torch::empty_like(x);
        grad_weight = torch::zeros_like(weight);
        grad_bias = torch::zeros_like(weight);
      }
      auto sums = torch::cat({grad_bias, grad_weight}).to(stats_type(x));
      comm->allreduce_now(sums, ReduceOp::kSum);
      auto invstd = (var + eps).rsqrt();
      auto s1 = sums.narrow(0, 0, channels);                  // sum(dy) over all ranks
      auto s2 = sums.narrow(0, channels, channels) / invstd;  // sum(dy * (x - mean)) over all ranks
      auto w = weight.to(sums.scalar_type());
      auto b = -w * invstd.pow(3) * s2 / total;
      auto c = -w * invstd * s1 / total - b * mean;
      if (x.numel() > 0) {
        grad_input.addcmul_(x, per_channel(b.to(x.scalar_type()), x)).add_(per_channel(c.to(x.scalar_type()), x));
      }
    }
    return {grad_input,      grad_weight,     grad_bias,       torch::Tensor(),
            torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor SyncBatchNorm::forward(const torch::Tensor& x, models::Norm2dImpl& bn) {
  const auto& o = bn.options;
  STRIDE_CHECK(o.affine(), "SyncBatchNorm needs affine BatchNorm layers");
  STRIDE_CHECK_EQ(x.size(1), o.num_features(), "SyncBatchNorm input channels");
  const double momentum = bn.next_average_factor();
  torch::Tensor running_mean, running_var;
  if (o.track_running_stats()) {
    running_mean = bn.running_mean;
    running_var = bn.running_var;
  }
  const auto name = names_.find(&bn);
  const OriginScope origin(OriginKind::kSyncBn, /*forward*/ 0, name == names_.end() ? "" : name->second.c_str());
  if (x.is_cpu() && (x.scalar_type() == torch::kBFloat16 || x.scalar_type() == torch::kHalf)) {
    // Under CPU autocast the activations arrive in bfloat16. Statistics, the allgather/allreduce payloads and
    // the normalisation run in float32 (the vectorised kernels above), and the output goes back to the input's
    // dtype, as CUDA SyncBN does with half inputs. The casts are differentiable, so backward is the float32 one.
    return SyncBatchNormFunction::apply(x.to(torch::kFloat), bn.weight, bn.bias, running_mean, running_var, comm_.get(),
                                        o.eps(), momentum)
        .to(x.scalar_type());
  }
  return SyncBatchNormFunction::apply(x, bn.weight, bn.bias, running_mean, running_var, comm_.get(), o.eps(), momentum);
}

int convert_sync_batchnorm(torch::nn::Module& module, std::shared_ptr<Communicator> comm) {
  std::shared_ptr<SyncBatchNorm> sync = comm ? std::make_shared<SyncBatchNorm>(std::move(comm)) : nullptr;
  int n = 0;
  for (auto& item : module.named_modules()) {
    if (auto* norm = dynamic_cast<models::Norm2dImpl*>(item.value().get())) {
      if (sync) sync->set_layer_name(*norm, item.key());
      norm->set_sync(sync);
      ++n;
    }
  }
  return n;
}

}  // namespace stride::comm
