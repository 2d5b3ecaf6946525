// --bucket-cap-mb auto's parts over the local back-end (ranks as threads): GradientReducer::rebuild, the candidate
// caps, the tuning schedule and the decision every rank shares (Note [Bucket cap tuning] in comm/bucket_tuner.h).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "comm/bucket_tuner.h"
#include "comm/reducer.h"
#include "models/registry.h"
#include "models/state_dict.h"
#include "tests/common/local_ranks.h"

namespace stride::testing {
namespace {

constexpr int64_t kMiB = int64_t{1} << 20;

// A deterministic input that differs between ranks (no shared RNG between the rank threads).
torch::Tensor rank_input(int rank, int step) {
  return torch::sin(torch::arange(2 * 3 * 32 * 32).to(torch::kFloat) * (0.001 * (rank + 1) + 0.0007 * step))
      .reshape({2, 3, 32, 32});
}

void backward_step(comm::GradientReducer& reducer, models::ResNet& model, int rank, int step) {
  reducer.prepare();
  model->forward(rank_input(rank, step)).pow(2).sum().backward();
  reducer.finish();
}

// A reducer rebuilt at another cap between steps is the reducer a fresh one with that cap would be: the same
// buckets, the same collectives, and bitwise the same averaged gradients (3 ranks).
TEST(BucketRebuild, GivesTheBucketsAndGradientsOfAFreshReducer) {
  run_ranks(3, [&](int r, std::shared_ptr<comm::Communicator> c) {
    auto model = models::make_model("resnet20", {});
    auto fresh_model = models::make_model("resnet20", {});
    comm::broadcast_module_state(*model, *c);
    models::load_state_dict(*fresh_model, models::state_dict(*model));
    comm::ReducerOptions o;
    o.first_bucket_bytes = 16 << 10;
    o.bucket_cap_bytes = 256 << 10;
    comm::GradientReducer reducer(model->named_parameters().pairs(), c, o);
    const auto before = reducer.bucket_names();
    backward_step(reducer, model, r, 0);  // a step at the first cap, as the tuner's trial steps are
    for (auto& p : model->parameters()) p.mutable_grad().zero_();  // as the optimizer's zero_grad does
    reducer.rebuild(48 << 10);
    EXPECT_EQ(reducer.bucket_cap_bytes(), 48 << 10);

    o.bucket_cap_bytes = 48 << 10;
    comm::GradientReducer fresh(fresh_model->named_parameters().pairs(), c, o);
    EXPECT_NE(reducer.bucket_names(), before) << "the caps should cut resnet20 differently";
    EXPECT_EQ(reducer.bucket_names(), fresh.bucket_names());
    EXPECT_EQ(reducer.bucket_bytes(), fresh.bucket_bytes());
    EXPECT_EQ(reducer.bucket_names(), comm::plan_buckets(model->named_parameters().pairs(), 48 << 10, 16 << 10));

    backward_step(reducer, model, r, 1);
    backward_step(fresh, fresh_model, r, 1);
    EXPECT_EQ(reducer.stats().buckets, static_cast<int64_t>(fresh.bucket_names().size()));
    EXPECT_EQ(reducer.timeline().buckets.size(), fresh.bucket_names().size());
    const auto got = model->named_parameters(), want = fresh_model->named_parameters();
    for (const auto& p : got) {
      SCOPED_TRACE(p.key());
      ASSERT_TRUE(p.value().grad().defined());
      EXPECT_TRUE(torch::equal(p.value().grad(), want[p.key()].grad()));
    }
    // The averages are the same on every rank, and differ from this rank's own gradient.
    auto fc = got["fc.weight"].grad().clone();
    auto sum = fc.clone();
    c->allreduce(sum, comm::ReduceOp::kSum)->wait();
    EXPECT_TRUE(torch::allclose(sum, fc * 3, 1e-5, 1e-6));
  });
}

TEST(BucketRebuild, RefusedDuringBackwardAndWithPowerSgd) {
  run_ranks(2, [&](int r, std::shared_ptr<comm::Communicator> c) {
    auto model = models::make_model("resnet20", {});
    comm::broadcast_module_state(*model, *c);
    comm::ReducerOptions o;
    o.first_bucket_bytes = 16 << 10;
    o.bucket_cap_bytes = 64 << 10;
    comm::GradientReducer reducer(model->named_parameters().pairs(), c, o);
    reducer.prepare();
    auto loss = model->forward(rank_input(r, 0)).sum();
    loss.backward();
    EXPECT_ANY_THROW(reducer.rebuild(128 << 10));  // gradients are in flight until finish()
    reducer.finish();
    reducer.rebuild(128 << 10);
    o.compression = comm::Compression::kPowerSgd;
    auto other = models::make_model("resnet20", {});
    comm::GradientReducer psgd(other->named_parameters().pairs(), c, o);
    EXPECT_THROW(psgd.rebuild(128 << 10), UsageError);
  });
}

TEST(BucketCapTuner, MedianChoiceAndCandidates) {
  EXPECT_EQ(comm::median({3, 1, 2}), 2);
  EXPECT_EQ(comm::median({4, 1, 3, 2}), 2.5);
  EXPECT_EQ(comm::median({}), 0);
  // Lowest median wins; a tie goes to the larger cap.
  EXPECT_EQ(comm::choose_bucket_cap({{kMiB, 0.03, 5}, {4 * kMiB, 0.02, 5}, {16 * kMiB, 0.025, 5}}), 1u);
  EXPECT_EQ(comm::choose_bucket_cap({{kMiB, 0.02, 5}, {4 * kMiB, 0.02, 5}, {16 * kMiB, 0.03, 5}}), 1u);
  EXPECT_EQ(comm::format_mib(25 * kMiB), "25 MiB");
  EXPECT_EQ(comm::format_mib(kMiB / 2), "0.5 MiB");
  const auto all = comm::default_bucket_cap_candidates();
  EXPECT_EQ(all, (std::vector<int64_t>{kMiB, 4 * kMiB, 16 * kMiB, 25 * kMiB, 64 * kMiB}));
  // resnet20's 1.1 MB of gradients: a 1 MiB first bucket and the rest, whatever the cap; one layout, measured once
  // (the largest cap stands for it).
  auto small = models::make_model("resnet20", {});
  EXPECT_EQ(comm::distinct_bucket_caps(small->named_parameters().pairs(), all), std::vector<int64_t>{64 * kMiB});
  // resnet56 (3.4 MB): 1 MiB buckets, or the first and one more.
  auto mid = models::make_model("resnet56", {});
  const auto params = mid->named_parameters().pairs();
  const auto caps = comm::distinct_bucket_caps(params, all);
  EXPECT_EQ(caps, (std::vector<int64_t>{kMiB, 64 * kMiB}));
  EXPECT_NE(comm::plan_buckets(params, caps[0]), comm::plan_buckets(params, caps[1]));
  EXPECT_EQ(comm::plan_buckets(params, 4 * kMiB), comm::plan_buckets(params, 64 * kMiB));
}

// Every rank follows the same schedule and ends on rank 0's choice, although each rank's own timings favour
// another cap (rank r's are fastest at candidate r): without the broadcast the ranks would split onto different
// bucket layouts. Rank 0's choice is by median, so one slow step does not sway it.
TEST(BucketCapTuner, EveryRankTakesRankZerosDecision) {
  const std::vector<int64_t> candidates{kMiB, 4 * kMiB, 16 * kMiB};
  std::vector<std::vector<int64_t>> schedules(3);
  std::vector<int64_t> chosen(3, 0);
  std::vector<size_t> own(3, 99);
  run_ranks(3, [&](int r, std::shared_ptr<comm::Communicator> c) {
    comm::BucketTunerOptions o;
    o.candidates = candidates;
    o.warmup_steps = 2;
    o.settle_steps = 1;
    o.steps_per_candidate = 3;
    comm::BucketCapTuner tuner(o);
    EXPECT_EQ(tuner.total_steps(), 2 + 2 * 1 + 3 * 3);
    EXPECT_EQ(tuner.initial_cap(), kMiB);
    int64_t cap = tuner.initial_cap();
    int timed_at_1 = 0;
    for (int step = 0; step < tuner.total_steps(); ++step) {
      EXPECT_FALSE(tuner.done()) << "step " << step;
      const size_t index =
          static_cast<size_t>(std::find(candidates.begin(), candidates.end(), cap) - candidates.begin());
      ASSERT_LT(index, candidates.size());
      double seconds = index == static_cast<size_t>(r) ? 0.010 : 0.020;
      if (r == 0) {
        // Rank 0: candidate 1 fastest by median (4 ms) despite one 500 ms step; the untimed steps are slow.
        seconds = index == 0 ? 0.005 : index == 1 ? (++timed_at_1 == 3 ? 0.5 : 0.004) : 0.006;
        if (step < 2 || step == 5 || step == 9) seconds = 10.0;  // warm-up and settling: not timed
      }
      cap = tuner.after_step(seconds, *c);
      schedules[static_cast<size_t>(r)].push_back(cap);
    }
    EXPECT_TRUE(tuner.done());
    EXPECT_EQ(tuner.after_step(1.0, *c), tuner.chosen_cap());  // decided: no more collectives, no change
    chosen[static_cast<size_t>(r)] = tuner.chosen_cap();
    own[static_cast<size_t>(r)] = comm::choose_bucket_cap(tuner.results());
    if (r == 0) {
      const auto res = tuner.results();
      ASSERT_EQ(res.size(), 3u);
      EXPECT_EQ(res[0].steps, 3);
      EXPECT_DOUBLE_EQ(res[0].median_s, 0.005);
      EXPECT_DOUBLE_EQ(res[1].median_s, 0.004);
      EXPECT_DOUBLE_EQ(res[2].median_s, 0.006);
      EXPECT_EQ(tuner.describe(), "1 MiB 5.0 ms, 4 MiB 4.0 ms, 16 MiB 6.0 ms per step -> 4 MiB");
    }
  });
  // The schedule: 2 warm-up + 3 timed at 1 MiB, 1 + 3 at 4 MiB, 1 + 3 at 16 MiB, then the choice.
  const std::vector<int64_t> expected{kMiB,     kMiB,      kMiB,      kMiB,      4 * kMiB,  4 * kMiB, 4 * kMiB,
                                      4 * kMiB, 16 * kMiB, 16 * kMiB, 16 * kMiB, 16 * kMiB, 4 * kMiB};
  for (int r = 0; r < 3; ++r) {
    SCOPED_TRACE(r);
    EXPECT_EQ(schedules[static_cast<size_t>(r)], expected);
    EXPECT_EQ(chosen[static_cast<size_t>(r)], 4 * kMiB);
  }
  EXPECT_EQ(own[1], 1u);
  EXPECT_EQ(own[2], 2u) << "rank 2's own timings favour 16 MiB: only the broadcast makes it agree";
}

}  // namespace
}  // namespace stride::testing
