// Correctness checks shared by the in-process tests (ranks as threads over the local back-end) and the MPI tests
// (real ranks under mpirun). Each function runs on one rank and asserts with gtest macros; every rank generates
// the same data from fixed seeds, so each can compute the single-process reference itself.
#pragma once

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <ATen/CPUGeneratorImpl.h>

#include <numeric>

#include "comm/communicator.h"
#include "comm/reducer.h"
#include "comm/sync_batch_norm.h"
#include "models/registry.h"
#include "models/state_dict.h"
#include "trainer/amp.h"
#include "trainer/loss.h"
#include "trainer/sgd.h"

namespace stride::testing {

inline at::Generator seeded(uint64_t seed) { return at::make_generator<at::CPUGeneratorImpl>(seed); }

inline double max_abs_diff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kDouble) - b.to(torch::kDouble)).abs().max().item<double>();
}

// allreduce (sum, avg, max, min) in several dtypes, broadcast from every root, allgather, barrier.
inline void check_collectives(comm::Communicator& c) {
  const int n = c.size(), r = c.rank();
  for (auto dtype : {torch::kFloat, torch::kDouble, torch::kLong, torch::kHalf, torch::kBFloat16}) {
    auto t = torch::full({1000}, r + 1, torch::TensorOptions().dtype(dtype));
    c.allreduce(t, comm::ReduceOp::kSum)->wait();
    EXPECT_EQ(t[999].item<double>(), n * (n + 1) / 2.0) << "sum of " << dtype;
  }
  auto avg = torch::arange(10, torch::kFloat) * (r + 1);
  c.allreduce(avg, comm::ReduceOp::kAvg)->wait();
  EXPECT_NEAR(avg[3].item<double>(), 3.0 * (n + 1) / 2.0, 1e-5);
  auto mx = torch::tensor({static_cast<float>(r), static_cast<float>(-r)});
  c.allreduce(mx, comm::ReduceOp::kMax)->wait();
  EXPECT_EQ(mx[0].item<float>(), n - 1);
  EXPECT_EQ(mx[1].item<float>(), 0);
  auto mn = torch::tensor({static_cast<int64_t>(r)});
  c.allreduce(mn, comm::ReduceOp::kMin)->wait();
  EXPECT_EQ(mn.item<int64_t>(), 0);
  for (int root = 0; root < n; ++root) {
    auto b = torch::full({5, 7}, r * 10 + 1, torch::kFloat);
    c.broadcast(b, root)->wait();
    EXPECT_EQ(b.sum().item<double>(), 35.0 * (root * 10 + 1)) << "broadcast from " << root;
  }
  auto in = torch::full({3}, r, torch::kLong);
  auto out = torch::empty({3 * n}, torch::kLong);
  c.allgather(in, out)->wait();
  for (int k = 0; k < n; ++k) EXPECT_EQ(out[3 * k + 2].item<int64_t>(), k);
  // sendrecv: a shift by one and by two around the ranks, messages of different sizes (and an empty one).
  for (int shift : {1, 2}) {
    const int dst = (r + shift) % n, src = ((r - shift) % n + n) % n;
    auto bytes_of = [](int rank) { return rank == 1 ? int64_t{0} : int64_t{1000 + 37 * rank}; };
    auto send = torch::full({bytes_of(r)}, r + 1, torch::kUInt8);
    auto recv = torch::full({bytes_of(src)}, 255, torch::kUInt8);
    c.sendrecv(send, dst, recv, src)->wait();
    EXPECT_EQ(recv.numel(), bytes_of(src));
    if (recv.numel() > 0) {
      EXPECT_EQ(recv.min().item<int64_t>(), src + 1) << "sendrecv shift " << shift;
      EXPECT_EQ(recv.max().item<int64_t>(), src + 1) << "sendrecv shift " << shift;
    }
  }
  // Several collectives in flight at once complete in order.
  std::vector<comm::WorkPtr> works;
  std::vector<torch::Tensor> ts;
  for (int k = 0; k < 8; ++k) {
    ts.push_back(torch::full({100 + k}, k + r, torch::kFloat));
    works.push_back(c.allreduce(ts.back(), comm::ReduceOp::kSum));
  }
  for (int k = 0; k < 8; ++k) {
    works[static_cast<size_t>(k)]->wait();
    EXPECT_EQ(ts[static_cast<size_t>(k)][0].item<float>(), n * k + n * (n - 1) / 2.0);
  }
  c.barrier()->wait();
}

// Same weights after SGD steps: N ranks with per-rank batch b vs one process on the whole batch.
// With SyncBN the reference is plain BatchNorm on the concatenated batch of N*b (statistics over the global batch).
// With plain BN each rank normalises its own b samples, so the reference is one process running the same N
// chunks through the model separately and averaging their losses (what the global-batch gradient of per-rank BN
// is).
// Precision: the gradient of a ReLU network is discontinuous in the weights (a unit whose pre-activation sits within
// rounding distance of 0 switches on or off), so float32 rounding differences (summation order of N > 2 terms) can
// move a few gradients by O(1e-3) after one update; that is not an error of the reducer. The exact comparison runs in
// float64, where rounding is ~1e-16 and three steps agree to ~1e-12; we allow 1e-9. With 16-bit gradient compression
// we compare one step in float32: each gradient is rounded twice to 11 significant bits (relative error <= 2^-10),
// gradients here are below 1, so with lr 0.1 the weights agree to 1e-4.
inline void check_data_parallel_equivalence(std::shared_ptr<comm::Communicator> c, bool sync_bn,
                                            const std::string& compression = "none") {
  const int n = c->size(), r = c->rank();
  const int64_t b = 4;
  const bool exact = compression == "none";
  const auto dtype = exact ? torch::kDouble : torch::kFloat;
  const int steps = exact ? 3 : 1;
  models::ModelOptions mo;
  mo.num_classes = 10;
  mo.in_channels = 1;
  auto model = models::make_model("resnet20", mo);
  model->to(dtype);
  comm::broadcast_module_state(*model, *c);
  auto ref = models::make_model("resnet20", mo);
  ref->to(dtype);
  models::load_state_dict(*ref, models::state_dict(*model));
  if (sync_bn) comm::convert_sync_batchnorm(*model, c);
  comm::ReducerOptions ro;
  ro.bucket_cap_bytes = 64 << 10;  // several buckets for a 0.27M-parameter model
  ro.first_bucket_bytes = 16 << 10;
  ro.compression = comm::parse_compression(compression);
  comm::GradientReducer reducer(model->named_parameters().pairs(), c, ro);
  trainer::Sgd sgd(trainer::weight_decay_groups(model->named_parameters().pairs(), 5e-4, 0.0), 0.9, false);
  trainer::Sgd sgd_ref(trainer::weight_decay_groups(ref->named_parameters().pairs(), 5e-4, 0.0), 0.9, false);
  model->train();
  ref->train();
  for (int step = 0; step < steps; ++step) {
    auto gen = seeded(1000 + static_cast<uint64_t>(step));
    auto x = torch::randn({n * b, 1, 16, 16}, gen, dtype);
    auto y = torch::randint(10, {n * b}, gen, torch::kLong);
    reducer.prepare();
    auto loss = trainer::cross_entropy(model->forward(x.narrow(0, r * b, b)), y.narrow(0, r * b, b), 0.0);
    loss.backward();
    reducer.finish();
    sgd.step(0.1);
    sgd.zero_grad();
    if (sync_bn) {
      trainer::cross_entropy(ref->forward(x), y, 0.0).backward();
    } else {
      torch::Tensor total;
      for (int k = 0; k < n; ++k) {
        auto l = trainer::cross_entropy(ref->forward(x.narrow(0, k * b, b)), y.narrow(0, k * b, b), 0.0) / n;
        total = total.defined() ? total + l : l;
      }
      total.backward();
    }
    sgd_ref.step(0.1);
    sgd_ref.zero_grad();
  }
  // Replicas stay bit-identical: every rank applies the same averaged gradients.
  {
    std::vector<torch::Tensor> flat;
    for (auto& p : model->parameters()) flat.push_back(p.detach().reshape({-1}));
    auto mine_flat = torch::cat(flat), root_flat = mine_flat.clone();
    c->broadcast(root_flat, 0)->wait();
    EXPECT_TRUE(torch::equal(mine_flat, root_flat))
        << "rank " << r << " diverged from rank 0 by " << max_abs_diff(mine_flat, root_flat);
  }
  const double tol = exact ? 1e-9 : 1e-4;
  auto mine = model->named_parameters();
  for (const auto& p : ref->named_parameters()) {
    EXPECT_LE(max_abs_diff(mine[p.key()], p.value()), tol) << "parameter " << p.key() << " on rank " << r;
  }
  if (sync_bn) {
    auto bufs = model->named_buffers();
    for (const auto& p : ref->named_buffers()) {
      EXPECT_LE(max_abs_diff(bufs[p.key()], p.value()), tol) << "buffer " << p.key() << " on rank " << r;
    }
  }
}

// SyncBatchNorm over ranks with per-rank batch sizes `sizes` (some may be 0) equals BatchNorm2d on the
// concatenated batch: outputs, input gradients, weight/bias gradients (summed over ranks, since each rank's are
// local), running statistics.
inline void check_sync_batch_norm(std::shared_ptr<comm::Communicator> c, const std::vector<int64_t>& sizes) {
  const int n = c->size(), r = c->rank();
  ASSERT_EQ(static_cast<int>(sizes.size()), n);
  const int64_t channels = 6, total = std::accumulate(sizes.begin(), sizes.end(), int64_t{0});
  const int64_t offset = std::accumulate(sizes.begin(), sizes.begin() + r, int64_t{0});
  auto gen = seeded(7);
  auto x = torch::randn({total, channels, 5, 4}, gen, torch::kFloat) * 3 + 1.5;
  auto weights = torch::randn({total, channels, 5, 4}, gen, torch::kFloat);
  auto gamma = torch::rand({channels}, gen, torch::kFloat) + 0.5;
  auto beta = torch::randn({channels}, gen, torch::kFloat);

  auto make_bn = [&] {
    models::Norm2d bn(channels);
    torch::NoGradGuard no_grad;
    bn->weight.copy_(gamma);
    bn->bias.copy_(beta);
    return bn;
  };
  // Reference: plain BN on everything.
  auto ref = make_bn();
  auto xr = x.clone().requires_grad_(true);
  (ref->forward(xr) * weights).sum().backward();
  auto ref_out = ref->forward(x.clone());  // second forward: running stats updated twice, same as below

  auto bn = make_bn();
  comm::convert_sync_batchnorm(*bn, c);
  auto xl = x.narrow(0, offset, sizes[static_cast<size_t>(r)]).clone().requires_grad_(true);
  auto out = bn->forward(xl);
  (out * weights.narrow(0, offset, sizes[static_cast<size_t>(r)])).sum().backward();
  auto out2 = bn->forward(x.narrow(0, offset, sizes[static_cast<size_t>(r)]).clone());

  if (sizes[static_cast<size_t>(r)] > 0) {
    EXPECT_LE(max_abs_diff(out2, ref_out.narrow(0, offset, sizes[static_cast<size_t>(r)])), 1e-4) << "output";
    EXPECT_LE(max_abs_diff(xl.grad(), xr.grad().narrow(0, offset, sizes[static_cast<size_t>(r)])), 1e-4)
        << "input gradient";
  }
  auto wg = bn->weight.grad().clone(), bg = bn->bias.grad().clone();
  c->allreduce(wg, comm::ReduceOp::kSum)->wait();
  c->allreduce(bg, comm::ReduceOp::kSum)->wait();
  EXPECT_LE(max_abs_diff(wg, ref->weight.grad()), 1e-3) << "weight gradient";
  EXPECT_LE(max_abs_diff(bg, ref->bias.grad()), 1e-3) << "bias gradient";
  EXPECT_LE(max_abs_diff(bn->running_mean, ref->running_mean), 1e-5) << "running mean";
  EXPECT_LE(max_abs_diff(bn->running_var, ref->running_var), 1e-4) << "running var";
  EXPECT_EQ(bn->num_batches_tracked.item<int64_t>(), ref->num_batches_tracked.item<int64_t>());
  // Eval mode: no communication, running statistics.
  bn->eval();
  ref->eval();
  auto probe = torch::randn({2, channels, 3, 3}, gen, torch::kFloat);
  EXPECT_LE(max_abs_diff(bn->forward(probe), ref->forward(probe)), 1e-4) << "eval output";
}

// SyncBatchNorm on bfloat16 activations (CPU autocast): statistics in float32, so the output, the input gradient,
// the parameter gradients and the running statistics equal float32 BatchNorm on the whole batch of the same
// (bf16-rounded) values, up to the output's bf16 rounding. The data sit far from zero (mean 100, std 3): a mean or
// variance accumulated in bf16 (8 significant bits, a step of 0.5 at 100) would miss the running mean by ~0.1.
inline void check_sync_batch_norm_bf16(std::shared_ptr<comm::Communicator> c, const std::vector<int64_t>& sizes) {
  const int n = c->size(), r = c->rank();
  ASSERT_EQ(static_cast<int>(sizes.size()), n);
  const int64_t channels = 5, total = std::accumulate(sizes.begin(), sizes.end(), int64_t{0});
  const int64_t offset = std::accumulate(sizes.begin(), sizes.begin() + r, int64_t{0}), mine = sizes[r];
  auto gen = seeded(11);
  const auto x16 = (torch::randn({total, channels, 6, 5}, gen, torch::kFloat) * 3 + 100).to(torch::kBFloat16);
  const auto weights = torch::randn({total, channels, 6, 5}, gen, torch::kFloat);
  auto make_bn = [&] {
    models::Norm2d bn(channels);
    torch::NoGradGuard no_grad;
    bn->weight.copy_(torch::rand({channels}, gen, torch::kFloat) + 0.5);
    bn->bias.copy_(torch::randn({channels}, gen, torch::kFloat));
    return bn;
  };
  auto ref = make_bn();
  auto bn = make_bn();
  {
    torch::NoGradGuard no_grad;
    bn->weight.copy_(ref->weight);
    bn->bias.copy_(ref->bias);
  }
  auto xr = x16.to(torch::kFloat).requires_grad_(true);
  auto ref_out = ref->forward(xr);
  (ref_out * weights).sum().backward();

  comm::convert_sync_batchnorm(*bn, c);
  auto xl = x16.narrow(0, offset, mine).clone().requires_grad_(true);
  auto out = bn->forward(xl);
  EXPECT_EQ(out.scalar_type(), torch::kBFloat16);
  (out.to(torch::kFloat) * weights.narrow(0, offset, mine)).sum().backward();
  if (mine > 0) {
    // Normalised outputs lie within a few units: one bf16 rounding is at most 2^-8 relative.
    const auto expect = ref_out.detach().narrow(0, offset, mine);
    EXPECT_LE(max_abs_diff(out, expect), 4.0 / 256) << "output";
    EXPECT_EQ(xl.grad().scalar_type(), torch::kBFloat16);
    const auto gref = xr.grad().narrow(0, offset, mine);
    EXPECT_LE(max_abs_diff(xl.grad(), gref), gref.abs().max().item<double>() / 128) << "input gradient";
  }
  auto wg = bn->weight.grad().clone(), bg = bn->bias.grad().clone();
  EXPECT_EQ(wg.scalar_type(), torch::kFloat32);
  c->allreduce(wg, comm::ReduceOp::kSum)->wait();
  c->allreduce(bg, comm::ReduceOp::kSum)->wait();
  EXPECT_LE(max_abs_diff(wg, ref->weight.grad()), 1e-2 * ref->weight.grad().abs().max().item<double>() + 1e-3)
      << "weight gradient";
  EXPECT_LE(max_abs_diff(bg, ref->bias.grad()), 1e-2 * ref->bias.grad().abs().max().item<double>() + 1e-3)
      << "bias gradient";
  EXPECT_EQ(bn->running_mean.scalar_type(), torch::kFloat32);
  EXPECT_LE(max_abs_diff(bn->running_mean, ref->running_mean), 1e-4) << "running mean";
  EXPECT_LE(max_abs_diff(bn->running_var, ref->running_var), 1e-3) << "running var";
}

// Data parallel under CPU bf16 autocast with SyncBN and bf16 gradient compression, as `--amp --sync-bn
// --grad-compression bf16` trains: gradients arrive in float32 (the reducer's buckets are the float32 ones),
// replicas stay bit-identical, and one step lands close to float32 training on the whole batch in one process.
inline void check_bf16_data_parallel(std::shared_ptr<comm::Communicator> c) {
  const int n = c->size(), r = c->rank();
  const int64_t b = 8;
  models::ModelOptions mo;
  mo.num_classes = 10;
  mo.in_channels = 1;
  auto model = models::make_model("resnet20", mo);
  comm::broadcast_module_state(*model, *c);
  auto ref = models::make_model("resnet20", mo);
  models::load_state_dict(*ref, models::state_dict(*model));
  std::map<std::string, torch::Tensor> before;
  for (const auto& p : model->named_parameters()) before[p.key()] = p.value().detach().clone();
  comm::convert_sync_batchnorm(*model, c);
  comm::ReducerOptions ro;
  ro.bucket_cap_bytes = 64 << 10;
  ro.first_bucket_bytes = 16 << 10;
  ro.compression = comm::Compression::kBf16;
  comm::GradientReducer reducer(model->named_parameters().pairs(), c, ro);
  trainer::Sgd sgd(trainer::weight_decay_groups(model->named_parameters().pairs(), 5e-4, 0.0), 0.9, false);
  trainer::Sgd sgd_ref(trainer::weight_decay_groups(ref->named_parameters().pairs(), 5e-4, 0.0), 0.9, false);
  model->train();
  ref->train();
  auto gen = seeded(2024);
  auto x = torch::randn({n * b, 1, 16, 16}, gen, torch::kFloat);
  auto y = torch::randint(10, {n * b}, gen, torch::kLong);
  torch::Tensor loss;
  reducer.prepare();
  {
    trainer::AutocastGuard autocast(torch::kCPU, torch::kBFloat16);
    auto logits = model->forward(x.narrow(0, r * b, b));
    EXPECT_EQ(logits.scalar_type(), torch::kBFloat16);
    loss = trainer::cross_entropy(logits, y.narrow(0, r * b, b), 0.0);
  }
  EXPECT_EQ(loss.scalar_type(), torch::kFloat32);
  loss.backward();
  reducer.finish();
  for (const auto& p : model->named_parameters()) {
    EXPECT_EQ(p.value().grad().scalar_type(), torch::kFloat32) << p.key();
  }
  sgd.step(0.1);
  trainer::cross_entropy(ref->forward(x), y, 0.0).backward();
  sgd_ref.step(0.1);
  {
    std::vector<torch::Tensor> flat;
    for (auto& p : model->parameters()) flat.push_back(p.detach().reshape({-1}));
    auto mine_flat = torch::cat(flat), root_flat = mine_flat.clone();
    c->broadcast(root_flat, 0)->wait();
    EXPECT_TRUE(torch::equal(mine_flat, root_flat)) << "rank " << r << " diverged from rank 0";
  }
  // The step taken (new - old weights) against float32's: bf16 forward/backward (Note [bf16 tolerance] in
  // tests/unit/precision_test.cpp) plus bf16 rounding of the averaged gradients.
  std::vector<torch::Tensor> step16, step32;
  auto now16 = model->named_parameters(), now32 = ref->named_parameters();
  for (const auto& p : now32) {
    step16.push_back((now16[p.key()].detach() - before.at(p.key())).reshape({-1}).to(torch::kDouble));
    step32.push_back((p.value().detach() - before.at(p.key())).reshape({-1}).to(torch::kDouble));
  }
  auto s16 = torch::cat(step16), s32 = torch::cat(step32);
  const double rel = ((s16 - s32).norm() / s32.norm()).item<double>();
  const double cosine = (s16.dot(s32) / (s16.norm() * s32.norm())).item<double>();
  EXPECT_GT(rel, 0.0);
  EXPECT_LT(rel, 0.3) << "rank " << r;
  EXPECT_GT(cosine, 0.97) << "rank " << r;
}

}  // namespace stride::testing
