#include "comm/powersgd.h"

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>

namespace stride::comm {

void orthogonalize(torch::Tensor matrix, double epsilon) {
  const int64_t cols = matrix.size(1);
  for (int64_t i = 0; i < cols; ++i) {
    auto col = matrix.narrow(1, i, 1);
    auto norm = col.norm();
    if (epsilon > 0) {
      col.div_(norm + epsilon);
    } else {
      // An all-zero column (a gradient that vanished) stays zero rather than NaN; no host synchronisation.
      col.div_(torch::where(norm > 0, norm, torch::ones_like(norm)));
    }
    if (i + 1 < cols) {
      auto rest = matrix.narrow(1, i + 1, cols - i - 1);
      rest.sub_((col * rest).sum(0) * col);
    }
  }
}

bool powersgd_compresses(int64_t n, int64_t m, int64_t rank, double min_compression_rate) {
  const int64_t r = std::min({n, m, rank});
  return static_cast<double>((n + m) * r) * min_compression_rate < static_cast<double>(n * m);
}

PowerSgdBucket::PowerSgdBucket(std::vector<Gradient> gradients, const PowerSgdOptions& options, Communicator& comm) {
  STRIDE_CHECK(!gradients.empty(), "an empty PowerSGD bucket");
  STRIDE_CHECK_GT(options.rank, 0, "PowerSGD rank");
  int64_t p_numel = 0, q_numel = 0;
  for (auto& g : gradients) {
    const int64_t n = g.grad.dim() == 0 ? 1 : g.grad.size(0);
    const int64_t m = n == 0 ? 0 : g.grad.numel() / n;
    if (g.grad.dim() <= 1 || !powersgd_compresses(n, m, options.rank, options.min_compression_rate)) {
      uncompressed_.push_back(g.grad);
      uncompressed_numel_ += g.grad.numel();
      continue;
    }
    Matrix x;
    x.name = std::move(g.name);
    x.grad = g.grad;
    x.index = g.index;
    x.n = n;
    x.m = m;
    x.r = std::min({n, m, options.rank});
    x.residual = torch::zeros({n, m}, g.grad.options());
    p_numel += n * x.r;
    q_numel += m * x.r;
    compressed_.push_back(std::move(x));
  }
  const auto opts = gradients.front().grad.options().requires_grad(false);
  packed_ = comm.alloc_buffer(uncompressed_numel_ + p_numel, opts);
  if (q_numel > 0) q_ = comm.alloc_buffer(q_numel, opts);
  int64_t p_off = uncompressed_numel_, q_off = 0;
  for (auto& x : compressed_) {
    x.p = packed_.narrow(0, p_off, x.n * x.r).view({x.n, x.r});
    x.q = q_.narrow(0, q_off, x.m * x.r).view({x.m, x.r});
    p_off += x.n * x.r;
    q_off += x.m * x.r;
  }
  // The initial Q: the same draw on every rank, from the seed and the gradient's index alone.
  for (auto& x : compressed_) {
    auto gen = at::make_generator<at::CPUGeneratorImpl>(options.seed * 1000003u + static_cast<uint64_t>(x.index));
    x.q.copy_(torch::randn({x.m, x.r}, gen, opts.device(torch::kCPU)));
  }
}

WorkPtr PowerSgdBucket::start(Communicator& comm) {
  int64_t off = 0;
  for (const auto& g : uncompressed_) {
    packed_.narrow(0, off, g.numel()).view(g.sizes()).copy_(g);
    off += g.numel();
  }
  for (auto& x : compressed_) {
    x.residual.add_(x.grad.reshape({x.n, x.m}));  // M = residual + gradient
    orthogonalize(x.q);                           // warm start: last step's Q (or the initial draw)
    at::mm_out(x.p, x.residual, x.q);
  }
  // P needs no division by the world size: it is orthonormalised next.
  return comm.allreduce(packed_, ReduceOp::kSum);
}

WorkPtr PowerSgdBucket::middle(Communicator& comm) {
  const double world = comm.size();
  auto averaged = packed_.narrow(0, 0, uncompressed_numel_);
  averaged.div_(world);
  int64_t off = 0;
  for (auto& g : uncompressed_) {
    g.copy_(averaged.narrow(0, off, g.numel()).view(g.sizes()));
    off += g.numel();
  }
  if (compressed_.empty()) return nullptr;
  for (auto& x : compressed_) {
    orthogonalize(x.p);
    at::mm_out(x.q, x.residual.t(), x.p);
  }
  return comm.allreduce(q_, ReduceOp::kSum);
}

void PowerSgdBucket::finish(Communicator& comm) {
  if (compressed_.empty()) return;
  q_.div_(static_cast<double>(comm.size()));
  for (auto& x : compressed_) {
    auto approx = at::mm(x.p, x.q.t());
    x.grad.copy_(approx.view(x.grad.sizes()));
    x.residual.sub_(approx);  // what this rank's gradient lost, fed back next step
  }
  q_ready_ = true;
}

int64_t PowerSgdBucket::bytes() const {
  const int64_t es = static_cast<int64_t>(packed_.element_size());
  return (packed_.numel() + (q_.defined() ? q_.numel() : 0)) * es;
}

void PowerSgdBucket::save(std::map<std::string, torch::Tensor>& out) const {
  if (!q_ready_) return;  // nothing compressed yet: the residuals are zero and Q is the initial draw
  for (const auto& x : compressed_) {
    out["powersgd.residual." + x.name] = x.residual;
    out["powersgd.q." + x.name] = x.q;
  }
}

void PowerSgdBucket::load(const std::map<std::string, torch::Tensor>& in) {
  bool all = !compressed_.empty();
  for (auto& x : compressed_) {
    const auto r = in.find("powersgd.residual." + x.name), q = in.find("powersgd.q." + x.name);
    if (r == in.end() || q == in.end()) {
      all = false;
      continue;
    }
    if (!r->second.sizes().equals(x.residual.sizes()) || !q->second.sizes().equals(x.q.sizes())) {
      throw Error(concat("PowerSGD state of ", x.name, ": residual ", r->second.sizes(), " and Q ", q->second.sizes(),
                         " do not fit ", x.residual.sizes(), " and ", x.q.sizes()));
    }
    x.residual.copy_(r->second);
    x.q.copy_(q->second);
  }
  if (all) q_ready_ = true;
}

}  // namespace stride::comm
