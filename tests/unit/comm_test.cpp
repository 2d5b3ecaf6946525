// Communicator, reducer and SyncBatchNorm over the local back-end (ranks as threads). The same checks run over
// real MPI ranks in tests/mpi.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <numeric>
#include <thread>

#include "comm/local/local_communicator.h"
#ifdef STRIDE_WITH_MPI
#include "comm/mpi/mpi_communicator.h"
#endif
#include "common/env.h"
#include "tests/common/comm_checks.h"
#include "tests/common/local_ranks.h"

namespace stride::testing {
namespace {

// Records every collective a rank issues (for ordering and counting assertions).
class RecordingCommunicator : public comm::Communicator {
 public:
  explicit RecordingCommunicator(std::shared_ptr<comm::Communicator> inner) : inner_(std::move(inner)) {}
  int rank() const override { return inner_->rank(); }
  int size() const override { return inner_->size(); }
  std::string backend() const override { return inner_->backend(); }
  comm::WorkPtr allreduce(torch::Tensor t, comm::ReduceOp op) override {
    log("allreduce", t);
    return inner_->allreduce(t, op);
  }
  comm::WorkPtr broadcast(torch::Tensor t, int root) override {
    log("broadcast", t);
    return inner_->broadcast(t, root);
  }
  comm::WorkPtr allgather(torch::Tensor in, torch::Tensor out) override {
    log("allgather", in);
    return inner_->allgather(in, out);
  }
  comm::WorkPtr barrier() override { return inner_->barrier(); }
  std::vector<std::pair<std::string, int64_t>> calls() {
    std::lock_guard<std::mutex> lock(mu_);
    return calls_;
  }
  void clear() {
    std::lock_guard<std::mutex> lock(mu_);
    calls_.clear();
  }
  std::atomic<bool> backward_done{false};
  std::atomic<int> launched_during_backward{0};

 private:
  void log(const char* what, const torch::Tensor& t) {
    std::lock_guard<std::mutex> lock(mu_);
    calls_.emplace_back(what, t.numel());
    if (!backward_done) ++launched_during_backward;
  }
  std::shared_ptr<comm::Communicator> inner_;
  std::mutex mu_;
  std::vector<std::pair<std::string, int64_t>> calls_;
};

TEST(LocalComm, CollectivesFromOneToFourRanks) {
  for (int n = 1; n <= 4; ++n) {
    run_ranks(n, [](int, std::shared_ptr<comm::Communicator> c) { check_collectives(*c); });
  }
}

// sendrecv's bad arguments are errors naming the call and the rank, before anything is sent; a receive buffer
// of the wrong size is found once the sizes are known, on every rank.
TEST(LocalComm, SendrecvRefusesBadPeersDtypesAndSizes) {
  run_ranks(2, [](int r, std::shared_ptr<comm::Communicator> c) {
    auto expect_error = [&](const std::function<void()>& call, const std::string& what) {
      try {
        call();
        ADD_FAILURE() << "no error for " << what;
      } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("sendrecv on rank " + std::to_string(r)), std::string::npos) << e.what();
        EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
      }
    };
    const auto bytes = torch::zeros({4}, torch::kUInt8);
    expect_error([&] { c->sendrecv(bytes, 2, bytes.clone(), 0); }, "peers 2 and 0 outside 0..1");
    expect_error([&] { c->sendrecv(bytes, 1 - r, torch::zeros({4}, torch::kFloat), 1 - r); }, "dtypes differ");
    // Rank 1's buffer is one byte short of what rank 0 sends: both ranks fail, neither waits for the other.
    auto recv = torch::zeros({r == 1 ? 3 : 4}, torch::kUInt8);
    expect_error([&] { c->sendrecv(bytes, 1 - r, recv, 1 - r); },
                 "rank 0 sends 4 elements, rank 1's receive buffer holds 3");
  });
}

TEST(LocalComm, MismatchedCollectivesAreReportedNotHung) {
  EXPECT_THROW(run_ranks(2,
                         [](int r, std::shared_ptr<comm::Communicator> c) {
                           auto t = torch::ones({r == 0 ? 3 : 4});
                           c->allreduce(t, comm::ReduceOp::kSum)->wait();
                         }),
               comm::CommError);
}

TEST(LocalComm, DeadPeerFailsSurvivorsWithCommError) {
  auto world = comm::LocalWorld::create(3);
  std::atomic<int> comm_errors{0};
  const auto t0 = std::chrono::steady_clock::now();
  run_ranks(
      3,
      [&](int r, std::shared_ptr<comm::Communicator> c) {
        c->set_timeout(std::chrono::seconds(60));
        auto t = torch::ones({10});
        c->allreduce(t, comm::ReduceOp::kSum)->wait();  // all alive
        if (r == 2) {
          world->kill(2);  // dies before the second collective
          return;
        }
        try {
          c->allreduce(t, comm::ReduceOp::kSum)->wait();
        } catch (const comm::CommError& e) {
          EXPECT_NE(std::string(e.what()).find("rank 2 died"), std::string::npos) << e.what();
          ++comm_errors;
        }
      },
      world);
  EXPECT_EQ(comm_errors, 2);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(30)) << "survivors waited for the timeout";
}

TEST(LocalComm, MissingPeerTimesOutWithCommError) {
  auto world = comm::LocalWorld::create(2);
  auto c0 = world->communicator(0);
  c0->set_timeout(std::chrono::milliseconds(300));
  auto t = torch::ones({4});
  try {
    c0->allreduce(t, comm::ReduceOp::kSum)->wait();
    FAIL() << "no error";
  } catch (const comm::CommError& e) {
    EXPECT_NE(std::string(e.what()).find("timed out"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("rank(s) 1"), std::string::npos) << e.what();
  }
}

TEST(Reducer, BucketsFollowReverseRegistrationOrderWithSmallFirstBucket) {
  auto model = models::make_model("resnet20", {});
  auto c = comm::LocalWorld::create(1)->communicator(0);
  comm::ReducerOptions o;
  o.first_bucket_bytes = 4 << 10;
  o.bucket_cap_bytes = 256 << 10;
  comm::GradientReducer reducer(model->named_parameters().pairs(), c, o);
  auto names = reducer.bucket_names();
  auto bytes = reducer.bucket_bytes();
  ASSERT_GE(names.size(), 3u);
  EXPECT_EQ(names.front().front(), "fc.bias");  // the last registered parameter comes first
  EXPECT_EQ(names.back().back(), "conv1.weight");
  EXPECT_LE(bytes.front(), 4 << 10);
  int64_t total = 0;
  size_t count = 0;
  for (size_t i = 0; i < bytes.size(); ++i) {
    total += bytes[i];
    count += names[i].size();
    if (i > 0) {
      EXPECT_LE(bytes[i], 256 << 10);
    }
  }
  EXPECT_EQ(total, models::count_parameters(*model) * 4);
  EXPECT_EQ(count, model->parameters().size());
  // .grad of every parameter is a view into its bucket.
  for (auto& p : model->parameters()) EXPECT_TRUE(p.grad().defined());
}

TEST(Reducer, LaunchesBucketsDuringBackwardInTheSameOrderOnEveryRank) {
  std::vector<std::vector<std::pair<std::string, int64_t>>> calls(2);
  std::vector<int> during(2);
  run_ranks(2, [&](int r, std::shared_ptr<comm::Communicator> inner) {
    auto rec = std::make_shared<RecordingCommunicator>(inner);
    auto model = models::make_model("resnet20", {});
    comm::ReducerOptions o;
    o.first_bucket_bytes = 16 << 10;
    o.bucket_cap_bytes = 128 << 10;
    comm::GradientReducer reducer(model->named_parameters().pairs(), rec, o);
    auto x = torch::randn({2, 3, 32, 32});
    reducer.prepare();
    model->forward(x).sum().backward();
    rec->backward_done = true;
    reducer.finish();
    calls[static_cast<size_t>(r)] = rec->calls();
    during[static_cast<size_t>(r)] = rec->launched_during_backward;
    EXPECT_EQ(rec->calls().size(), reducer.bucket_names().size());
  });
  EXPECT_EQ(calls[0], calls[1]);
  EXPECT_GE(during[0], 2) << "buckets should be launched while backward runs";
}

TEST(Reducer, OverlapOffLaunchesEverythingAfterBackward) {
  run_ranks(2, [&](int, std::shared_ptr<comm::Communicator> inner) {
    auto rec = std::make_shared<RecordingCommunicator>(inner);
    auto model = models::make_model("resnet20", {});
    comm::ReducerOptions o;
    o.bucket_cap_bytes = 64 << 10;
    o.overlap = false;
    comm::GradientReducer reducer(model->named_parameters().pairs(), rec, o);
    reducer.prepare();
    model->forward(torch::randn({2, 3, 32, 32})).sum().backward();
    rec->backward_done = true;
    reducer.finish();
    EXPECT_EQ(rec->launched_during_backward, 0);
    EXPECT_EQ(rec->calls().size(), reducer.bucket_names().size());
  });
}

// Holds backward up once every parameter's gradient exists: its input is the model's input, so it runs last.
struct SleepInBackward : torch::autograd::Function<SleepInBackward> {
  static torch::Tensor forward(torch::autograd::AutogradContext*, torch::Tensor x) { return x.clone(); }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext*,
                                                 torch::autograd::variable_list grad) {
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    return {grad[0]};
  }
};

// Note [Overlap timeline]: every bucket is placed relative to backward; communication that ran while backward
// still worked (here: the 300 ms tail after the last gradient) counts as hidden, and with overlap off none does.
TEST(Reducer, TimelinePlacesEachBucketRelativeToBackward) {
  run_ranks(2, [&](int, std::shared_ptr<comm::Communicator> c) {
    auto model = models::make_model("resnet20", {});
    comm::ReducerOptions o;
    o.first_bucket_bytes = 16 << 10;
    o.bucket_cap_bytes = 128 << 10;
    comm::GradientReducer reducer(model->named_parameters().pairs(), c, o);
    EXPECT_EQ(reducer.timeline().step, 0);
    const auto step = [&] {
      reducer.prepare();
      auto x = SleepInBackward::apply(torch::randn({2, 3, 32, 32}).requires_grad_(true));
      model->forward(x).sum().backward();
      reducer.finish();
      return reducer.timeline();
    };
    const auto check_order = [&](const comm::StepTimeline& t) {
      ASSERT_EQ(t.buckets.size(), reducer.bucket_names().size());
      int64_t bytes = 0;
      for (size_t i = 0; i < t.buckets.size(); ++i) {
        const auto& b = t.buckets[i];
        SCOPED_TRACE(concat("bucket ", i));
        EXPECT_TRUE(b.communicated);
        EXPECT_EQ(b.parameters, static_cast<int64_t>(reducer.bucket_names()[i].size()));
        EXPECT_GE(b.ready_s, 0.0);
        EXPECT_LE(b.ready_s, b.launched_s);
        EXPECT_LE(b.launched_s, b.started_s);
        EXPECT_LE(b.started_s, b.done_s);
        EXPECT_LE(b.done_s, t.finished_s);
        EXPECT_LE(b.ready_s, t.backward_s);
        if (i > 0) {
          EXPECT_LE(t.buckets[i - 1].launched_s, b.launched_s) << "buckets launch in index order";
        }
        bytes += b.bytes;
      }
      const auto sizes = reducer.bucket_bytes();
      EXPECT_EQ(bytes, std::accumulate(sizes.begin(), sizes.end(), int64_t{0}));
    };
    const auto overlapped = step();
    EXPECT_EQ(overlapped.step, 1);
    check_order(overlapped);
    EXPECT_GE(overlapped.backward_s, 0.3);
    // Every bucket was ready before the 300 ms tail began, so the collectives ran during backward.
    EXPECT_GT(overlapped.hidden_fraction(), 0.9);
    for (const auto& b : overlapped.buckets) EXPECT_LT(b.launched_s, overlapped.backward_s - 0.2);
    reducer.set_overlap(false);
    const auto serial = step();
    EXPECT_EQ(serial.step, 2);
    check_order(serial);
    EXPECT_EQ(serial.hidden_fraction(), 0.0);
    for (const auto& b : serial.buckets) EXPECT_GE(b.launched_s, serial.backward_s);
  });
}

TEST(Reducer, AveragesGradientsAcrossRanks) {
  run_ranks(3, [&](int r, std::shared_ptr<comm::Communicator> c) {
    torch::nn::Linear lin(4, 2);
    comm::broadcast_module_state(*lin, *c);
    comm::GradientReducer reducer(lin->named_parameters().pairs(), c);
    reducer.prepare();
    (lin->forward(torch::full({1, 4}, static_cast<float>(r + 1)))).sum().backward();
    reducer.finish();
    // d/dW of sum(W x + b) = x: average of (1, 2, 3) = 2.
    EXPECT_NEAR(lin->weight.grad()[1][3].item<float>(), 2.0f, 1e-6);
    EXPECT_NEAR(lin->bias.grad()[0].item<float>(), 1.0f, 1e-6);
  });
}

TEST(Reducer, AccumulationCommunicatesOnlyOnTheLastMicroBatch) {
  run_ranks(2, [&](int r, std::shared_ptr<comm::Communicator> inner) {
    auto rec = std::make_shared<RecordingCommunicator>(inner);
    torch::nn::Linear lin(3, 1);
    comm::broadcast_module_state(*lin, *inner);
    comm::GradientReducer reducer(lin->named_parameters().pairs(), rec);
    reducer.prepare(false);
    lin->forward(torch::full({1, 3}, 1.0f)).sum().backward();
    reducer.finish();
    EXPECT_TRUE(rec->calls().empty());
    reducer.prepare(true);
    lin->forward(torch::full({1, 3}, static_cast<float>(2 + r))).sum().backward();
    reducer.finish();
    EXPECT_EQ(rec->calls().size(), 1u);
    // rank 0: 1 + 2 = 3, rank 1: 1 + 3 = 4 -> average 3.5
    EXPECT_NEAR(lin->weight.grad()[0][0].item<float>(), 3.5f, 1e-6);
  });
}

// A parameter that gets no gradient on one rank (a branch taken on the other only) neither hangs nor breaks the
// collective order; it is reported as unused and its average includes a zero from the rank that skipped it.
struct TwoHeads : torch::nn::Module {
  TwoHeads() {
    a = register_module("a", torch::nn::Linear(2, 1));
    b = register_module("b", torch::nn::Linear(2, 1));
  }
  torch::nn::Linear a{nullptr}, b{nullptr};
};

TEST(Reducer, UnusedParametersAreDetectedNotHungOn) {
  run_ranks(2, [&](int r, std::shared_ptr<comm::Communicator> c) {
    auto m = std::make_shared<TwoHeads>();
    comm::broadcast_module_state(*m, *c);
    comm::ReducerOptions o;
    o.first_bucket_bytes = 8;  // b's and a's parameters land in different buckets
    o.bucket_cap_bytes = 8;
    comm::GradientReducer reducer(m->named_parameters().pairs(), c, o);
    auto x = torch::ones({1, 2});
    reducer.prepare();
    auto out = m->a->forward(x);
    if (r == 1) out = out + m->b->forward(x);
    out.sum().backward();
    reducer.finish();
    auto unused = reducer.unused_parameters();
    if (r == 0) {
      EXPECT_EQ(unused, (std::vector<std::string>{"b.bias", "b.weight"}));
    } else {
      EXPECT_TRUE(unused.empty());
    }
    EXPECT_NEAR(m->b->bias.grad()[0].item<float>(), 0.5f, 1e-6);
    EXPECT_NEAR(m->a->bias.grad()[0].item<float>(), 1.0f, 1e-6);
  });
}

TEST(Reducer, Fp16CompressionStaysWithinHalfPrecision) {
  run_ranks(2, [&](int r, std::shared_ptr<comm::Communicator> c) {
    torch::nn::Linear lin(64, 64);
    comm::broadcast_module_state(*lin, *c);
    comm::ReducerOptions o;
    o.compression = comm::Compression::kFp16;
    comm::GradientReducer reducer(lin->named_parameters().pairs(), c, o);
    auto gen = seeded(static_cast<uint64_t>(r));
    auto x = torch::randn({8, 64}, gen, torch::kFloat);
    reducer.prepare();
    lin->forward(x).pow(2).sum().backward();
    // exact average, computed independently
    auto exact = lin->weight.grad().clone();
    c->allreduce(exact, comm::ReduceOp::kAvg)->wait();
    reducer.finish();
    const double scale = exact.abs().max().item<double>();
    // fp16 keeps 11 significant bits: relative rounding error <= 2^-11 per rounding; two roundings.
    EXPECT_LE(max_abs_diff(lin->weight.grad(), exact), scale * 2 * std::pow(2.0, -11));
    EXPECT_GT(max_abs_diff(lin->weight.grad(), exact), 0.0) << "compression did not happen";
  });
}

TEST(Reducer, DataParallelEqualsOneProcessForOneToFourRanks) {
  for (int n = 1; n <= 4; ++n) {
    SCOPED_TRACE(concat(n, " ranks"));
    run_ranks(n, [](int, std::shared_ptr<comm::Communicator> c) { check_data_parallel_equivalence(c, false); });
  }
}

TEST(SyncBatchNorm, EqualsBatchNormOnTheConcatenatedBatch) {
  run_ranks(1, [](int, std::shared_ptr<comm::Communicator> c) { check_sync_batch_norm(c, {5}); });
  run_ranks(2, [](int, std::shared_ptr<comm::Communicator> c) { check_sync_batch_norm(c, {4, 4}); });
  run_ranks(3, [](int, std::shared_ptr<comm::Communicator> c) { check_sync_batch_norm(c, {3, 5, 1}); });
  run_ranks(4, [](int, std::shared_ptr<comm::Communicator> c) { check_sync_batch_norm(c, {2, 0, 6, 3}); });
}

TEST(SyncBatchNorm, Bf16ActivationsKeepFloat32Statistics) {
  run_ranks(1, [](int, std::shared_ptr<comm::Communicator> c) { check_sync_batch_norm_bf16(c, {7}); });
  run_ranks(2, [](int, std::shared_ptr<comm::Communicator> c) { check_sync_batch_norm_bf16(c, {4, 5}); });
  run_ranks(3, [](int, std::shared_ptr<comm::Communicator> c) { check_sync_batch_norm_bf16(c, {3, 0, 6}); });
}

TEST(Reducer, Bf16AutocastDataParallelWithSyncBnAndBf16Compression) {
  run_ranks(2, [](int, std::shared_ptr<comm::Communicator> c) { check_bf16_data_parallel(c); });
}

TEST(Reducer, Fp16CompressedDataParallelStaysClose) {
  run_ranks(3, [](int, std::shared_ptr<comm::Communicator> c) { check_data_parallel_equivalence(c, false, "fp16"); });
}

TEST(SyncBatchNorm, DataParallelResNetEqualsOneProcessOnTheWholeBatch) {
  for (int n : {2, 3}) {
    SCOPED_TRACE(concat(n, " ranks"));
    run_ranks(n, [](int, std::shared_ptr<comm::Communicator> c) { check_data_parallel_equivalence(c, true); });
  }
}

TEST(SyncBatchNorm, ConvertsEveryNormLayerAndBack) {
  auto model = models::make_model("resnet20", {});
  model->train();
  auto recorder = std::make_shared<RecordingCommunicator>(comm::LocalWorld::create(1)->communicator(0));
  auto norms = [&] {
    std::vector<models::Norm2dImpl*> out;
    for (auto& m : model->modules()) {
      if (auto* norm = dynamic_cast<models::Norm2dImpl*>(m.get())) out.push_back(norm);
    }
    return out;
  };
  ASSERT_EQ(norms().size(), 19u);
  const auto x = torch::randn({2, 3, 32, 32});

  EXPECT_EQ(comm::convert_sync_batchnorm(*model, recorder), 19);
  for (auto* norm : norms()) EXPECT_NE(dynamic_cast<comm::SyncBatchNorm*>(norm->sync().get()), nullptr);
  model->forward(x);
  auto calls = recorder->calls();
  EXPECT_EQ(std::count_if(calls.begin(), calls.end(), [](const auto& c) { return c.first == "allgather"; }), 19)
      << "a training forward of a synchronised model gathers statistics once per norm layer";

  recorder->clear();
  EXPECT_EQ(comm::convert_sync_batchnorm(*model, nullptr), 19);
  for (auto* norm : norms()) EXPECT_EQ(norm->sync(), nullptr);
  model->forward(x);
  EXPECT_TRUE(recorder->calls().empty()) << "converted back, the layers must not communicate";
}

TEST(EnvInteger, AcceptsWholeNumbersInRangeAndNamesTheVariableOtherwise) {
  EXPECT_EQ(parse_env_integer("STRIDE_X", "256", 1, 1024), 256);
  EXPECT_EQ(parse_env_integer("STRIDE_X", "0", 0, 1), 0);
  EXPECT_EQ(parse_env_integer("STRIDE_X", "-3", -5, 5), -3);
  for (const std::string bad :
       {"abc", "12k", "1.5", " 3", "3 ", "+3", "-", "0x10", "2048", "0", "99999999999999999999"}) {
    SCOPED_TRACE(bad);
    try {
      parse_env_integer("STRIDE_X", bad, 1, 1024);
      ADD_FAILURE() << "accepted";
    } catch (const UsageError& e) {
      EXPECT_EQ(std::string(e.what()), "STRIDE_X must be a whole number from 1 to 1024, not '" + bad + "'");
    }
  }
  ::setenv("STRIDE_TEST_ENV_INTEGER", "", 1);
  EXPECT_EQ(env_integer("STRIDE_TEST_ENV_INTEGER", 0, 9), std::nullopt);
  ::setenv("STRIDE_TEST_ENV_INTEGER", "7", 1);
  EXPECT_EQ(env_integer("STRIDE_TEST_ENV_INTEGER", 0, 9), 7);
  ::setenv("STRIDE_TEST_ENV_INTEGER", "seven", 1);
  EXPECT_THROW(env_integer("STRIDE_TEST_ENV_INTEGER", 0, 9), UsageError);
  ::unsetenv("STRIDE_TEST_ENV_INTEGER");
  EXPECT_EQ(env_integer("STRIDE_TEST_ENV_INTEGER", 0, 9), std::nullopt);
}

TEST(EnvNumber, AcceptsDecimalNumbersInRangeAndNamesTheVariableOtherwise) {
  EXPECT_EQ(parse_env_number("STRIDE_X", "2", 0, 10), 2.0);
  EXPECT_EQ(parse_env_number("STRIDE_X", "0.5", 0, 10), 0.5);
  EXPECT_EQ(parse_env_number("STRIDE_X", "1e-3", 0, 10), 1e-3);
  for (const std::string bad : {"abc", "2s", " 1", "nan", "inf", "", "11", "-1", "1e999"}) {
    SCOPED_TRACE(bad);
    try {
      parse_env_number("STRIDE_X", bad, 0, 10);
      ADD_FAILURE() << "accepted";
    } catch (const UsageError& e) {
      EXPECT_EQ(std::string(e.what()), "STRIDE_X must be a number from 0 to 10, not '" + bad + "'");
    }
  }
  ::setenv("STRIDE_TEST_ENV_NUMBER", "0.25", 1);
  EXPECT_EQ(env_number("STRIDE_TEST_ENV_NUMBER", 0, 1), 0.25);
  ::setenv("STRIDE_TEST_ENV_NUMBER", "quarter", 1);
  EXPECT_THROW(env_number("STRIDE_TEST_ENV_NUMBER", 0, 1), UsageError);
  ::unsetenv("STRIDE_TEST_ENV_NUMBER");
  EXPECT_EQ(env_number("STRIDE_TEST_ENV_NUMBER", 0, 1), std::nullopt);
}

#ifdef STRIDE_WITH_MPI
// A malformed STRIDE_SHM* value stops the communicator before MPI starts, naming the variable (it used to be
// read with atoi: STRIDE_SHM_STAGING_KB=abc meant 0 bytes, and shared memory was silently off).
TEST(MpiEnvironment, MalformedShmVariablesStopTheCommunicatorNamingThem) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"STRIDE_SHM_STAGING_KB", "abc"},    {"STRIDE_SHM_STAGING_KB", "0"}, {"STRIDE_SHM_SPIN_US", "50us"},
      {"STRIDE_SHM_CALLER_SPIN_US", "-1"}, {"STRIDE_SHM", "no"},           {"STRIDE_SHM_WAIT", "spinn"}};
  for (const auto& [name, value] : cases) {
    SCOPED_TRACE(name + "=" + value);
    ::setenv(name.c_str(), value.c_str(), 1);
    try {
      comm::MpiCommunicator::create(1);
      ADD_FAILURE() << "the communicator started";
    } catch (const UsageError& e) {
      EXPECT_NE(std::string(e.what()).find(name), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("'" + value + "'"), std::string::npos) << e.what();
    }
    ::unsetenv(name.c_str());
  }
}
#endif

}  // namespace
}  // namespace stride::testing
