// torchvision's recipe augmentations: the auto-augment ops and magnitude tables against torchvision 0.14 itself
// (tests/python/autoaugment_reference.py runs as part of the test; no expected pixels are checked in), the
// policies' determinism, repeated augmentation's world-size independent order, exact resume with both, and the
// flags' errors.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <CLI/CLI.hpp>
#include <fstream>
#include <map>
#include <numeric>
#include <set>
#include <sstream>

#include "common/error.h"
#include "data/auto_augment.h"
#include "data/codec.h"
#include "data/loader.h"
#include "data/order.h"
#include "data/shard_writer.h"
#include "data/transforms.h"
#include "test_util.h"
#include "trainer/config.h"

namespace stride::data {
namespace {

using testing::run_command;
using testing::ScratchDir;

const std::string kScript = std::string(STRIDE_SOURCE_DIR) + "/tests/python/autoaugment_reference.py";

// Smooth ramps, a bright block and per-pixel noise: every op (geometry, histogram, blur) has something to change.
Image test_image(int h, int w, int c, uint64_t seed) {
  Image img(h, w, c);
  Rng rng(seed);
  for (int y = 0; y < h; ++y) {
    for (int x = 0; x < w; ++x) {
      for (int ch = 0; ch < c; ++ch) {
        int v = 20 + 5 * x + 3 * y + 40 * ch + static_cast<int>(rng.below(30));
        if (x > w / 3 && x < w / 2 && y > h / 4 && y < h / 2) v = 230 + static_cast<int>(rng.below(20));
        img.row(y)[x * c + ch] = static_cast<uint8_t>(std::clamp(v, 0, 255));
      }
    }
  }
  return img;
}

struct OpCase {
  std::string op;
  double magnitude;
};

// torchvision's results of `cases` applied one by one to `img`.
std::vector<Image> torchvision_ops(const Image& img, const std::vector<OpCase>& cases, const ScratchDir& dir) {
  {
    std::ofstream out(dir.file("in.raw"), std::ios::binary);
    out.write(reinterpret_cast<const char*>(img.pixels.data()), static_cast<std::streamsize>(img.pixels.size()));
  }
  std::string command = concat(STRIDE_REFERENCE_PYTHON, " ", kScript, " ops ", dir.file("in.raw"), " ", img.height, " ",
                               img.width, " ", img.channels, " ", dir.path().string());
  for (const auto& c : cases) {
    std::ostringstream m;
    m.precision(17);
    m << c.magnitude;
    command += concat(" ", c.op, ":", m.str());
  }
  const auto r = run_command(command);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  std::vector<Image> out;
  for (size_t i = 0; i < cases.size(); ++i) {
    Image o(img.height, img.width, img.channels);
    std::ifstream in(dir.file(concat(i, ".raw")), std::ios::binary);
    in.read(reinterpret_cast<char*>(o.pixels.data()), static_cast<std::streamsize>(o.pixels.size()));
    EXPECT_EQ(in.gcount(), static_cast<std::streamsize>(o.pixels.size())) << cases[i].op;
    out.push_back(std::move(o));
  }
  return out;
}

void expect_ops_match(const Image& img, const std::vector<OpCase>& cases, const ScratchDir& dir) {
  const auto reference = torchvision_ops(img, cases, dir);
  ASSERT_EQ(reference.size(), cases.size());
  for (size_t i = 0; i < cases.size(); ++i) {
    SCOPED_TRACE(concat(cases[i].op, " ", cases[i].magnitude, " on ", img.height, "x", img.width, "x", img.channels));
    Image ours = img;
    apply_augment_op(ours, parse_augment_op(cases[i].op), cases[i].magnitude);
    int max_diff = 0, differ = 0;
    for (size_t k = 0; k < ours.pixels.size(); ++k) {
      const int d = std::abs(int(ours.pixels[k]) - int(reference[i].pixels[k]));
      max_diff = std::max(max_diff, d);
      differ += d > 0 ? 1 : 0;
    }
    // The ops follow PIL's own arithmetic (float blends truncated, 16-bit fixed-point luma, the SMOOTH kernel in
    // float, bilinear sampling in double truncated): they match PIL bit for bit. One level is allowed for the
    // float rounding order of a compiler (PIL's C vs ours), on at most 1% of the values.
    EXPECT_LE(max_diff, 1);
    EXPECT_LE(differ, static_cast<int>(ours.pixels.size() / 100)) << "values off by one";
    // And the op did something where torchvision's did.
    if (reference[i].pixels != img.pixels) {
      EXPECT_NE(ours.pixels, img.pixels);
    }
  }
}

const std::vector<OpCase> kOpCases = {
    {"Identity", 0.0},     {"ShearX", 0.3},      {"ShearX", -0.99},     {"ShearY", 0.12},     {"ShearY", -0.3},
    {"TranslateX", 10.0},  {"TranslateX", -7.0}, {"TranslateY", 13.0},  {"TranslateY", -4.0}, {"Rotate", 9.0},
    {"Rotate", -30.0},     {"Rotate", 135.0},    {"Rotate", 90.0},      {"Rotate", 180.0},    {"Brightness", 0.9},
    {"Brightness", -0.45}, {"Color", 0.6},       {"Color", -0.99},      {"Contrast", 0.9},    {"Contrast", -0.5},
    {"Sharpness", 0.9},    {"Sharpness", -0.9},  {"Posterize", 4.0},    {"Posterize", 7.0},   {"Solarize", 178.5},
    {"Solarize", 0.0},     {"Solarize", 255.0},  {"AutoContrast", 0.0}, {"Equalize", 0.0},    {"Invert", 0.0},
};

TEST(AutoAugmentOps, MatchTorchvisionOnAnRgbImage) {
  ScratchDir dir("aa-rgb");
  expect_ops_match(test_image(29, 37, 3, 1), kOpCases, dir);
}

TEST(AutoAugmentOps, MatchTorchvisionOnASquareGreyImage) {
  ScratchDir dir("aa-grey");
  expect_ops_match(test_image(24, 24, 1, 2), kOpCases, dir);
}

TEST(AutoAugmentOps, MagnitudeTablesMatchTorchvision) {
  const int h = 29, w = 37;
  // torch's float32 linspace rounds differently in its AVX-512 kernel than in its AVX2 one (the last bit of a few
  // values); Stride's tables follow the AVX2 kernel, which Debian's torch uses by default. Pin it, so the reference
  // does not change with the machine's CPU (a CI runner with AVX-512 and a torch that dispatches to it).
  const auto r =
      run_command(concat("ATEN_CPU_CAPABILITY=avx2 ", STRIDE_REFERENCE_PYTHON, " ", kScript, " tables ", h, " ", w));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::istringstream in(r.output);
  std::string policy, op;
  int bin = 0, rows = 0;
  double value = 0.0;
  while (in >> policy >> op >> bin >> value) {
    ++rows;
    const auto p = policy == "ra"        ? AutoAugmentPolicy::kRandAugment
                   : policy == "ta_wide" ? AutoAugmentPolicy::kTrivialAugmentWide
                                         : AutoAugmentPolicy::kImageNet;
    // Exactly: int(translation) and the solarize threshold depend on the last bit of torch's float32 linspace.
    EXPECT_EQ(augment_magnitude(p, parse_augment_op(op), bin, h, w), value) << policy << " " << op << " " << bin;
  }
  // 11 ops with magnitudes: 31 bins each for RandAugment and TrivialAugmentWide, 10 for AutoAugment.
  EXPECT_EQ(rows, 11 * 31 * 2 + 11 * 10) << r.output.substr(0, 400);
}

TEST(AutoAugmentPolicies, DrawsAreFixedBySeedAndDifferAcrossSamplesAndEpochs) {
  const Image img = test_image(32, 32, 3, 3);
  for (auto policy : {AutoAugmentPolicy::kRandAugment, AutoAugmentPolicy::kTrivialAugmentWide,
                      AutoAugmentPolicy::kImageNet, AutoAugmentPolicy::kCifar10, AutoAugmentPolicy::kSvhn}) {
    SCOPED_TRACE(auto_augment_name(policy));
    AutoAugmentOptions o;
    o.policy = policy;
    std::set<std::vector<uint8_t>> distinct;
    int changed = 0;
    for (uint64_t sample = 0; sample < 40; ++sample) {
      const uint64_t seed = derive_seed(17, /*epoch=*/1, 3, sample);
      Image a = img, b = img;
      Rng ra(seed), rb(seed);
      auto_augment(a, o, ra);
      auto_augment(b, o, rb);
      EXPECT_EQ(a.pixels, b.pixels) << "sample " << sample;
      EXPECT_EQ(ra.next(), rb.next()) << "the same number of draws";
      distinct.insert(a.pixels);
      changed += a.pixels != img.pixels ? 1 : 0;
    }
    EXPECT_GE(distinct.size(), 12u) << "different samples draw different ops";
    EXPECT_GE(changed, 20);
    // The same position in another epoch draws afresh.
    int other_epoch = 0;
    for (uint64_t sample = 0; sample < 40; ++sample) {
      Image a = img, b = img;
      Rng ra(derive_seed(17, 1, 3, sample)), rb(derive_seed(17, 2, 3, sample));
      auto_augment(a, o, ra);
      auto_augment(b, o, rb);
      other_epoch += a.pixels != b.pixels ? 1 : 0;
    }
    EXPECT_GE(other_epoch, 20) << "of 40 positions differ between epochs 1 and 2";
  }
  // Off draws nothing, so runs without --auto-augment keep their augmentation streams.
  Image a = img;
  Rng r(5), untouched(5);
  auto_augment(a, {}, r);
  EXPECT_EQ(a.pixels, img.pixels);
  EXPECT_EQ(r.next(), untouched.next());
}

TEST(AutoAugmentPolicies, NamesAndErrors) {
  EXPECT_EQ(parse_auto_augment("ta_wide"), AutoAugmentPolicy::kTrivialAugmentWide);
  EXPECT_EQ(parse_auto_augment(""), AutoAugmentPolicy::kNone);
  for (auto p : {AutoAugmentPolicy::kRandAugment, AutoAugmentPolicy::kImageNet, AutoAugmentPolicy::kCifar10,
                 AutoAugmentPolicy::kSvhn}) {
    EXPECT_EQ(parse_auto_augment(auto_augment_name(p)), p);
  }
  try {
    parse_auto_augment("randaugment");
    ADD_FAILURE() << "no error";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("--auto-augment must be one of ra, ta_wide, imagenet"), std::string::npos)
        << e.what();
  }
  try {
    parse_auto_augment("augmix");
    ADD_FAILURE() << "no error";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("augmix is not supported"), std::string::npos) << e.what();
  }
}

// ---------------------------------------------------------------------------------------------------------
// Repeated augmentation
// ---------------------------------------------------------------------------------------------------------
TEST(RepeatedOrder, CopiesArePerGroupAndGPositionsApart) {
  std::vector<uint64_t> base(30);
  std::iota(base.begin(), base.end(), 100);
  const auto order = repeated_order(base, 12, 3);  // g = 4 distinct per group of 12
  ASSERT_EQ(order.size(), 30u);
  EXPECT_EQ(std::vector<uint64_t>(order.begin(), order.begin() + 12),
            (std::vector<uint64_t>{100, 101, 102, 103, 100, 101, 102, 103, 100, 101, 102, 103}));
  EXPECT_EQ(order[12], 104u);
  EXPECT_EQ(order[16], 104u);
  // A group that reps does not divide: g = ceil(10 / 3) = 4, the last row short.
  const auto odd = repeated_order(base, 10, 3);
  EXPECT_EQ(std::vector<uint64_t>(odd.begin(), odd.begin() + 10),
            (std::vector<uint64_t>{100, 101, 102, 103, 100, 101, 102, 103, 100, 101}));
}

// n 8x8 RGB images with content that every op changes; the first pixel encodes the sample number.
std::string make_rgb_dataset(const ScratchDir& dir, int n, int per_shard) {
  const std::string path = dir.file("rgb");
  ShardWriter w(path, "rgb", static_cast<uint64_t>(per_shard));
  for (int i = 0; i < n; ++i) {
    Image img = test_image(8, 8, 3, static_cast<uint64_t>(i) + 100);
    img.pixels[0] = static_cast<uint8_t>(i);
    w.add(concat("s", i), {{"npy", encode_npy(img)}, {"cls", std::to_string(i % 5)}}, i % 5);
  }
  w.finish(5, {});
  return path;
}

LoaderOptions ra_options(const std::string& path, uint64_t per_rank, uint64_t rank, uint64_t world) {
  LoaderOptions o;
  o.path = path;
  o.batch_size = per_rank;
  o.rank = rank;
  o.world_size = world;
  o.seed = 17;
  o.window_shards = 3;
  o.workers = 2;
  o.float_output = false;
  o.ra_reps = 3;
  o.ra_group = per_rank * world;
  o.augment.hflip = true;
  o.augment.auto_augment.policy = AutoAugmentPolicy::kTrivialAugmentWide;
  return o;
}

struct JobEpoch {
  std::vector<int64_t> ids;      // global order: step by step, rank 0's slice, then rank 1's, ...
  std::vector<int64_t> rank_of;  // the rank each position went to
  std::vector<torch::Tensor> images;
};

JobEpoch job_epoch(const std::string& path, uint64_t per_rank, uint64_t world, const Cursor& cursor) {
  std::vector<std::vector<Batch>> batches(world);
  for (uint64_t r = 0; r < world; ++r) {
    ShardedLoader loader(ra_options(path, per_rank, r, world));
    loader.start(cursor);
    while (auto b = loader.next()) batches[r].push_back(std::move(*b));
  }
  JobEpoch e;
  for (size_t s = 0; s < batches[0].size(); ++s) {
    for (uint64_t r = 0; r < world; ++r) {
      const auto& b = batches[r].at(s);
      for (int64_t i = 0; i < b.sample_ids.numel(); ++i) {
        e.ids.push_back(b.sample_ids[i].item<int64_t>());
        e.rank_of.push_back(static_cast<int64_t>(r));
        e.images.push_back(b.images[i]);
      }
    }
  }
  return e;
}

TEST(RepeatedAugmentation, GlobalOrderIsTheSameForOneTwoThreeRanksWithCopiesOnDifferentRanks) {
  ScratchDir dir("ra-world");
  const auto path = make_rgb_dataset(dir, 50, 8);
  const Cursor start{1, 0, 17};
  const auto one = job_epoch(path, 12, 1, start);  // global batch 12 each time
  const auto two = job_epoch(path, 6, 2, start);
  const auto three = job_epoch(path, 4, 3, start);
  ASSERT_EQ(one.ids.size(), 48u) << "4 whole global batches of an epoch of 50 positions";
  EXPECT_EQ(one.ids, two.ids);
  EXPECT_EQ(one.ids, three.ids);
  for (size_t p = 0; p < one.images.size(); ++p) {
    ASSERT_TRUE(torch::equal(one.images[p], three.images[p])) << "position " << p;
  }
  // Each global batch holds 4 distinct samples, each exactly 3 times; with 3 ranks every copy is on its own rank.
  std::map<int64_t, int> copies;
  for (size_t step = 0; step < 4; ++step) {
    std::map<int64_t, std::set<int64_t>> ranks;
    for (size_t p = step * 12; p < step * 12 + 12; ++p) {
      ++copies[one.ids[p]];
      ranks[three.ids[p]].insert(three.rank_of[p]);
    }
    EXPECT_EQ(ranks.size(), 4u) << "step " << step;
    for (const auto& [id, r] : ranks) EXPECT_EQ(r.size(), 3u) << "sample " << id << " at step " << step;
  }
  EXPECT_EQ(copies.size(), 16u);
  for (const auto& [id, n] : copies) EXPECT_EQ(n, 3) << "sample " << id;
  // The copies of a sample are augmented differently (their seeds are their positions).
  int same = 0;
  for (size_t p = 0; p < 12; ++p) same += torch::equal(one.images[p], one.images[(p + 4) % 12]) ? 1 : 0;
  EXPECT_LE(same, 2) << "copies with identical pixels";
  // Another epoch draws other samples.
  const auto next = job_epoch(path, 12, 1, {2, 0, 17});
  EXPECT_NE(next.ids, one.ids);
}

TEST(RepeatedAugmentation, ResumeMidEpochReproducesTheAugmentedBatches) {
  ScratchDir dir("ra-resume");
  const auto path = make_rgb_dataset(dir, 50, 8);
  const auto full = job_epoch(path, 6, 2, {3, 0, 17});
  for (auto [per_rank, world] : {std::pair<uint64_t, uint64_t>{6, 2}, {12, 1}, {4, 3}}) {
    SCOPED_TRACE(concat("resumed on ", world, " ranks x ", per_rank));
    const auto resumed = job_epoch(path, per_rank, world, {3, 24, 17});
    ASSERT_EQ(resumed.ids.size() + 24, full.ids.size());
    for (size_t p = 0; p < resumed.ids.size(); ++p) {
      ASSERT_EQ(resumed.ids[p], full.ids[p + 24]);
      ASSERT_TRUE(torch::equal(resumed.images[p], full.images[p + 24])) << "position " << p + 24;
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// Flags
// ---------------------------------------------------------------------------------------------------------
std::string config_error(std::vector<std::string> args, trainer::TrainConfig* out = nullptr) {
  trainer::TrainConfig c;
  CLI::App app;
  trainer::add_train_options(app, c);
  std::vector<const char*> argv{"train"};
  for (auto& a : args) argv.push_back(a.c_str());
  try {
    app.parse(static_cast<int>(argv.size()), const_cast<char**>(argv.data()));
    trainer::normalize_aliases(c);
    trainer::validate(c);
  } catch (const UsageError& e) {
    return e.what();
  }
  if (out) *out = c;
  return "";
}

TEST(AugmentFlags, ValidValuesAreKeptInTheConfigToml) {
  trainer::TrainConfig c;
  ASSERT_EQ(config_error({"--auto-augment", "ra", "--ra-magnitude", "12", "--ra-num-ops", "3", "--ra-sampler",
                          "--ra-reps", "4", "--color-jitter", "0.4,0.3"},
                         &c),
            "");
  EXPECT_EQ(c.auto_augment, "ra");
  EXPECT_EQ(c.ra_magnitude, 12);
  EXPECT_EQ(c.ra_num_ops, 3);
  EXPECT_TRUE(c.ra_sampler);
  EXPECT_EQ(c.ra_reps, 4);
  EXPECT_EQ(c.color_jitter, (std::vector<double>{0.4, 0.3}));
  // config.toml round trip: what resume and predict read back.
  trainer::TrainConfig back;
  trainer::parse_toml(trainer::to_toml(c), "config.toml", back);
  EXPECT_EQ(back.auto_augment, "ra");
  EXPECT_EQ(back.ra_magnitude, 12);
  EXPECT_TRUE(back.ra_sampler);
  EXPECT_EQ(back.ra_reps, 4);
  EXPECT_EQ(back.color_jitter, c.color_jitter);
}

TEST(AugmentFlags, BadValuesNameTheFlagAndTheChoices) {
  auto has = [](const std::string& error, const std::string& part) { return error.find(part) != std::string::npos; };
  auto e = config_error({"--auto-augment", "trivialaugment"});
  EXPECT_TRUE(has(e, "--auto-augment must be one of ra, ta_wide, imagenet, cifar10, svhn")) << e;
  e = config_error({"--auto-augment", "augmix"});
  EXPECT_TRUE(has(e, "--auto-augment augmix is not supported")) << e;
  e = config_error({"--ra-magnitude", "31"});
  EXPECT_TRUE(has(e, "--ra-magnitude must be a bin of RandAugment's 31, 0..30, got 31")) << e;
  e = config_error({"--ra-magnitude", "-1"});
  EXPECT_TRUE(has(e, "--ra-magnitude")) << e;
  e = config_error({"--ra-num-ops", "0"});
  EXPECT_TRUE(has(e, "--ra-num-ops must be at least 1")) << e;
  e = config_error({"--ra-sampler", "--ra-reps", "0"});
  EXPECT_TRUE(has(e, "--ra-reps must be at least 1")) << e;
  e = config_error({"--color-jitter", "0.4,0.4,0.4,0.1"});
  EXPECT_TRUE(has(e, "a hue term is not supported")) << e;
  e = config_error({"--color-jitter", "-0.2"});
  EXPECT_TRUE(has(e, "--color-jitter strengths must be >= 0")) << e;
}

}  // namespace
}  // namespace stride::data
