// PowerSGD in the GradientReducer (comm/powersgd.h), ranks as threads over the local back-end: the reducer against
// a straightforward reference written here (every rank knows every rank's gradients, which come from seeds, so
// each computes the whole algorithm for all ranks itself), the uncompressed tensors and the warm-up against the
// plain average, the state round trip that makes resume exact, and bad options.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <ATen/CPUGeneratorImpl.h>

#include <map>
#include <thread>

#include "comm/local/local_communicator.h"
#include "comm/powersgd.h"
#include "comm/reducer.h"
#include "tests/common/local_ranks.h"

namespace stride::testing {
namespace {

// Registration order: w (16x24, compressed), conv (8x3x3x3 -> 8x27, compressed), small (3x4: the factors at rank 2
// would be larger than it), b (a vector). In double, so that the reference's summation order cannot matter.
struct Net : torch::nn::Module {
  Net() {
    auto o = torch::TensorOptions().dtype(torch::kDouble);
    w = register_parameter("w", torch::zeros({16, 24}, o));
    conv = register_parameter("conv", torch::zeros({8, 3, 3, 3}, o));
    small = register_parameter("small", torch::zeros({3, 4}, o));
    b = register_parameter("b", torch::zeros({16}, o));
  }
  torch::Tensor w, conv, small, b;
  std::vector<torch::Tensor> all() const { return {w, conv, small, b}; }
};

constexpr int64_t kRank = 2;
constexpr uint64_t kSeed = 5;

// Rank r's gradient of parameter k at step s.
torch::Tensor gradient(int r, int s, size_t k, const torch::Tensor& like) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(1000 * static_cast<uint64_t>(s) + 10 * k + r);
  return torch::randn(like.sizes(), gen, like.options());
}

// One step through autograd, so the reducer's hooks launch buckets during backward: d/dp sum(p * G) = G.
void backward_step(Net& net, comm::GradientReducer& reducer, int r, int s) {
  torch::Tensor loss = torch::zeros({}, torch::kDouble);
  const auto ps = net.all();
  for (size_t k = 0; k < ps.size(); ++k) loss = loss + (ps[k] * gradient(r, s, k, ps[k])).sum();
  reducer.prepare();
  loss.backward();
  reducer.finish();
}

comm::ReducerOptions powersgd_options(int64_t warmup) {
  comm::ReducerOptions o;
  o.compression = comm::Compression::kPowerSgd;
  o.powersgd_rank = kRank;
  o.powersgd_warmup_steps = warmup;
  o.powersgd_seed = kSeed;
  o.first_bucket_bytes = 1 << 10;  // two buckets: b and small, then conv and w
  return o;
}

// Gram-Schmidt on the columns, one at a time: col / |col|, then removed from every later column.
torch::Tensor orthonormal(torch::Tensor a) {
  a = a.clone();
  for (int64_t i = 0; i < a.size(1); ++i) {
    auto col = a.select(1, i);
    col.div_(col.norm().item<double>());
    for (int64_t j = i + 1; j < a.size(1); ++j) {
      auto other = a.select(1, j);
      other.sub_(col * col.dot(other));
    }
  }
  return a;
}

// The whole algorithm for all ranks at once (Note [PowerSGD]); returns, per step, the gradient every rank ends with.
struct Reference {
  int world;
  int64_t warmup;
  std::map<size_t, std::vector<torch::Tensor>> residual;  // per compressed parameter, per rank
  std::map<size_t, torch::Tensor> q;

  std::vector<torch::Tensor> step(int s, const Net& net) {
    const auto ps = net.all();
    std::vector<torch::Tensor> out;
    for (size_t k = 0; k < ps.size(); ++k) {
      const auto& p = ps[k];
      torch::Tensor sum = gradient(0, s, k, p);
      for (int r = 1; r < world; ++r) sum = sum + gradient(r, s, k, p);
      const bool compressed = k < 2;
      if (s < warmup || !compressed) {
        out.push_back(sum / world);
        continue;
      }
      const int64_t n = p.size(0), m = p.numel() / n;
      if (!q.count(k)) {
        // The documented initial draw: a CPU generator seeded with seed * 1000003 + the registration index.
        auto gen = at::make_generator<at::CPUGeneratorImpl>(kSeed * 1000003u + k);
        q[k] = torch::randn({m, kRank}, gen, p.options());
        residual[k].assign(static_cast<size_t>(world), torch::zeros({n, m}, p.options()));
      }
      std::vector<torch::Tensor> mats;
      for (int r = 0; r < world; ++r) mats.push_back(gradient(r, s, k, p).reshape({n, m}) + residual[k][r]);
      const auto qo = orthonormal(q[k]);
      torch::Tensor psum = mats[0].mm(qo);
      for (int r = 1; r < world; ++r) psum = psum + mats[r].mm(qo);
      const auto po = orthonormal(psum);
      torch::Tensor qsum = mats[0].t().mm(po);
      for (int r = 1; r < world; ++r) qsum = qsum + mats[r].t().mm(po);
      q[k] = qsum / world;
      const auto approx = po.mm(q[k].t());
      for (int r = 0; r < world; ++r) residual[k][r] = mats[r] - approx;
      out.push_back(approx.view(p.sizes()));
    }
    return out;
  }
};

double max_abs_diff(const torch::Tensor& a, const torch::Tensor& b) { return (a - b).abs().max().item<double>(); }

TEST(PowerSgd, MatchesAReferenceOverWarmupAndCompressedStepsWithErrorFeedback) {
  const int world = 3, steps = 4, warmup = 1;
  run_ranks(world, [&](int r, std::shared_ptr<comm::Communicator> c) {
    Net net;
    comm::GradientReducer reducer(net.named_parameters().pairs(), c, powersgd_options(warmup));
    ASSERT_GE(reducer.bucket_names().size(), 2u);
    Reference ref{world, warmup, {}, {}};
    for (int s = 0; s < steps; ++s) {
      SCOPED_TRACE(concat("rank ", r, " step ", s));
      backward_step(net, reducer, r, s);
      const auto expected = ref.step(s, net);
      const auto ps = net.all();
      for (size_t k = 0; k < ps.size(); ++k) {
        EXPECT_LE(max_abs_diff(ps[k].grad(), expected[k]), 1e-10) << "parameter " << k;
      }
      if (s >= warmup) {
        // It really compressed: rank 2 of a random 16x24 matrix is far from the matrix.
        torch::Tensor avg = gradient(0, s, 0, net.w);
        for (int o = 1; o < world; ++o) avg = avg + gradient(o, s, 0, net.w);
        EXPECT_GT(max_abs_diff(net.w.grad(), avg / world), 0.1);
      }
      net.zero_grad();
    }
    const auto st = reducer.stats();
    // [small | b | P of conv] + Q of conv, [P of w] + Q of w: in doubles.
    EXPECT_EQ(st.bytes, (12 + 16 + 8 * kRank + 27 * kRank + 16 * kRank + 24 * kRank) * 8);
  });
}

// Uncompressed tensors, and every tensor during the warm-up, equal the plain reducer's average bitwise.
TEST(PowerSgd, UncompressedTensorsAndWarmupEqualThePlainAverage) {
  run_ranks(2, [&](int r, std::shared_ptr<comm::Communicator> c) {
    Net a, plain;
    comm::GradientReducer ra(a.named_parameters().pairs(), c, powersgd_options(/*warmup=*/2));
    comm::GradientReducer rp(plain.named_parameters().pairs(), c);
    for (int s = 0; s < 4; ++s) {
      SCOPED_TRACE(concat("step ", s));
      backward_step(a, ra, r, s);
      backward_step(plain, rp, r, s);
      EXPECT_TRUE(torch::equal(a.small.grad(), plain.small.grad()));
      EXPECT_TRUE(torch::equal(a.b.grad(), plain.b.grad()));
      EXPECT_EQ(torch::equal(a.w.grad(), plain.w.grad()), s < 2) << "w is compressed from step 2 on only";
      EXPECT_EQ(torch::equal(a.conv.grad(), plain.conv.grad()), s < 2);
      a.zero_grad();
      plain.zero_grad();
    }
  });
}

// Saving the state after step 2 and loading it into a new reducer continues bitwise; a new reducer without it
// does not (so a checkpoint without the state would not resume exactly).
TEST(PowerSgd, StateRoundTripContinuesBitwise) {
  run_ranks(2, [&](int r, std::shared_ptr<comm::Communicator> c) {
    Net full, first, resumed, fresh;
    comm::GradientReducer rf(full.named_parameters().pairs(), c, powersgd_options(1));
    std::map<std::string, torch::Tensor> state;
    {
      comm::GradientReducer r1(first.named_parameters().pairs(), c, powersgd_options(1));
      for (int s = 0; s < 3; ++s) {
        backward_step(full, rf, r, s);
        backward_step(first, r1, r, s);
        full.zero_grad();
        first.zero_grad();
      }
      for (const auto& [k, v] : r1.compression_state()) state[k] = v.clone();
    }
    EXPECT_EQ(state.at("powersgd.steps").item<int64_t>(), 3);
    EXPECT_EQ(state.at("powersgd.rank").item<int64_t>(), kRank);
    EXPECT_TRUE(state.count("powersgd.residual.w") && state.count("powersgd.q.conv"));
    EXPECT_EQ(state.count("powersgd.residual.small"), 0u) << "uncompressed tensors have no error feedback";
    comm::GradientReducer rr(resumed.named_parameters().pairs(), c, powersgd_options(1));
    rr.load_compression_state(state);
    comm::GradientReducer rn(fresh.named_parameters().pairs(), c, powersgd_options(1));
    for (int s = 3; s < 5; ++s) {
      backward_step(full, rf, r, s);
      backward_step(resumed, rr, r, s);
      backward_step(fresh, rn, r, s);
      EXPECT_TRUE(torch::equal(full.w.grad(), resumed.w.grad()));
      EXPECT_TRUE(torch::equal(full.conv.grad(), resumed.conv.grad()));
      EXPECT_FALSE(torch::equal(full.w.grad(), fresh.w.grad()));
      for (Net* n : {&full, &resumed, &fresh}) n->zero_grad();
    }
    // Another rank cannot take this state: the error names the flag.
    auto other = powersgd_options(1);
    other.powersgd_rank = 3;
    Net net3;
    comm::GradientReducer r3(net3.named_parameters().pairs(), c, other);
    try {
      r3.load_compression_state(state);
      ADD_FAILURE() << "a rank-2 state loaded into a rank-3 reducer";
    } catch (const UsageError& e) {
      EXPECT_NE(std::string(e.what()).find("--powersgd-rank 3"), std::string::npos) << e.what();
    }
  });
}

TEST(PowerSgd, OneRankIsANoOpAndBadOptionsNameTheFlag) {
  run_ranks(1, [&](int, std::shared_ptr<comm::Communicator> c) {
    Net net;
    comm::GradientReducer reducer(net.named_parameters().pairs(), c, powersgd_options(0));
    backward_step(net, reducer, 0, 0);
    EXPECT_TRUE(torch::equal(net.w.grad(), gradient(0, 0, 0, net.w)));
  });
  run_ranks(2, [&](int, std::shared_ptr<comm::Communicator> c) {
    Net net;
    auto o = powersgd_options(0);
    o.powersgd_rank = 0;
    EXPECT_THROW(
        {
          try {
            comm::GradientReducer(net.named_parameters().pairs(), c, o);
          } catch (const UsageError& e) {
            EXPECT_NE(std::string(e.what()).find("--powersgd-rank"), std::string::npos);
            throw;
          }
        },
        UsageError);
    EXPECT_THROW(
        {
          try {
            comm::parse_compression("lowrank");
          } catch (const UsageError& e) {
            EXPECT_NE(std::string(e.what()).find("--grad-compression: unknown 'lowrank'"), std::string::npos);
            throw;
          }
        },
        UsageError);
  });
}

TEST(PowerSgd, OrthogonalizeGivesOrthonormalColumnsAndSurvivesAZeroColumn) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(3);
  auto m = torch::randn({20, 4}, gen, torch::kDouble);
  comm::orthogonalize(m);
  EXPECT_LE(max_abs_diff(m.t().mm(m), torch::eye(4, torch::kDouble)), 1e-7);
  // A vanished gradient: the zero column stays zero (no NaN), the other is normalised.
  auto z = torch::zeros({5, 2}, torch::kFloat);
  z[2][1] = 3.0f;
  comm::orthogonalize(z);
  EXPECT_TRUE(torch::isfinite(z).all().item<bool>());
  EXPECT_EQ(z.select(1, 0).abs().sum().item<float>(), 0.0f);
  EXPECT_FLOAT_EQ(z[2][1].item<float>(), 1.0f);
  EXPECT_TRUE(comm::powersgd_compresses(16, 24, 2, 2.0));
  EXPECT_FALSE(comm::powersgd_compresses(3, 4, 2, 2.0));
  EXPECT_FALSE(comm::powersgd_compresses(100, 1, 4, 1.0));  // a vector: (n + 1) * 1 >= n
}

}  // namespace
}  // namespace stride::testing
