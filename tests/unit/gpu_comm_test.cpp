// The NCCL communicator, the reducer and SyncBatchNorm on CUDA tensors. One GPU allows one NCCL rank (NCCL
// refuses two ranks on one device), so these check the CUDA code paths (streams, events, views, kernels) with
// world size 1; multi-rank semantics are covered by the local and MPI tests. Skipped without a GPU or without a
// build that can run NCCL (Debian's LibTorch is CPU-only).
#include <gtest/gtest.h>

#include "comm/build_info.h"
#include "comm/local/local_communicator.h"
#include "tests/common/comm_checks.h"
#ifdef STRIDE_WITH_NCCL
#include "comm/nccl/nccl_communicator.h"
#endif

namespace stride::testing {
namespace {

std::shared_ptr<comm::Communicator> nccl_or_skip() {
#ifdef STRIDE_WITH_NCCL
  if (!comm::torch_has_cuda_support()) return nullptr;
  if (!torch::cuda::is_available()) return nullptr;
  return comm::make_nccl_communicator(comm::LocalWorld::create(1)->communicator(0));
#else
  return nullptr;
#endif
}

#define NCCL_OR_SKIP(c)                                                                                               \
  auto c = nccl_or_skip();                                                                                            \
  if (!c)                                                                                                             \
  GTEST_SKIP() << "needs a CUDA device and a build with NCCL and a CUDA LibTorch (NCCL built: " << comm::nccl_built() \
               << ")"

TEST(Gpu, NcclCollectivesOnCudaTensors) {
  NCCL_OR_SKIP(c);
  EXPECT_EQ(c->backend(), "nccl");
  const auto cuda = torch::TensorOptions().device(torch::kCUDA, 0);
  auto t = torch::arange(1000, cuda.dtype(torch::kFloat));
  c->allreduce(t, comm::ReduceOp::kAvg)->wait();
  EXPECT_EQ(t.sum().item<double>(), 999.0 * 1000 / 2);
  auto h = torch::full({64}, 3.0, cuda.dtype(torch::kHalf));
  c->allreduce(h, comm::ReduceOp::kSum)->wait();
  EXPECT_EQ(h[5].item<float>(), 3.0f);
  auto b = torch::full({7}, 2.0, cuda.dtype(torch::kFloat));
  c->broadcast(b, 0)->wait();
  auto out = torch::empty({7}, cuda.dtype(torch::kFloat));
  c->allgather(b, out)->wait();
  EXPECT_EQ(out.sum().item<double>(), 14.0);
  c->barrier()->wait();
  EXPECT_THROW(c->allreduce(torch::ones({3}), comm::ReduceOp::kSum), Error) << "CPU tensors are refused";
}

TEST(Gpu, ReducerWithNcclLeavesTheGradientsOfPlainBackward) {
  NCCL_OR_SKIP(c);
  torch::manual_seed(1);
  auto model = models::make_model("resnet20", {});
  auto ref = models::make_model("resnet20", {});
  model->to(torch::kCUDA);
  ref->to(torch::kCUDA);
  models::load_state_dict(*ref, models::state_dict(*model));
  comm::ReducerOptions o;
  o.bucket_cap_bytes = 128 << 10;
  comm::GradientReducer reducer(model->named_parameters().pairs(), c, o);
  auto x = torch::randn({8, 3, 32, 32}, torch::TensorOptions().device(torch::kCUDA));
  reducer.prepare();
  model->forward(x).pow(2).mean().backward();
  reducer.finish();
  ref->forward(x).pow(2).mean().backward();
  auto mine = model->named_parameters();
  for (const auto& p : ref->named_parameters()) {
    EXPECT_LE(max_abs_diff(mine[p.key()].grad(), p.value().grad()), 1e-5) << p.key();
  }
  EXPECT_GE(reducer.bucket_names().size(), 2u);
}

TEST(Gpu, SyncBatchNormWithNcclEqualsBatchNorm) {
  NCCL_OR_SKIP(c);
  models::Norm2d a(8), b(8);
  a->to(torch::kCUDA);
  b->to(torch::kCUDA);
  comm::convert_sync_batchnorm(*a, c);
  auto x = (torch::randn({4, 8, 6, 6}) * 2 + 1).to(torch::kCUDA);
  auto xa = x.clone().requires_grad_(true), xb = x.clone().requires_grad_(true);
  auto w = torch::randn({4, 8, 6, 6}).to(torch::kCUDA);
  auto ya = a->forward(xa), yb = b->forward(xb);
  (ya * w).sum().backward();
  (yb * w).sum().backward();
  EXPECT_LE(max_abs_diff(ya, yb), 1e-4);
  EXPECT_LE(max_abs_diff(xa.grad(), xb.grad()), 1e-4);
  EXPECT_LE(max_abs_diff(a->weight.grad(), b->weight.grad()), 1e-3);
  EXPECT_LE(max_abs_diff(a->running_var, b->running_var), 1e-5);
}

}  // namespace
}  // namespace stride::testing
