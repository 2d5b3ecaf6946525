// Global order, rank slicing, exact resume, determinism, corrupt data, transforms and MixUp/CutMix.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <tuple>

#include "common/error.h"
#include "data/codec.h"
#include "data/http_fetch.h"
#include "data/loader.h"
#include "data/mix.h"
#include "data/shard_index.h"
#include "data/shard_source.h"
#include "data/shard_writer.h"
#include "data/transforms.h"
#include "test_util.h"

namespace stride::data {
namespace {

using testing::ScratchDir;

// A dataset of n 6x6 grey images whose first two pixels encode the sample number; labels i % 5.
std::string make_dataset(const ScratchDir& dir, int n, int per_shard, const std::string& name = "ds") {
  const std::string path = dir.file(name);
  ShardWriter w(path, name, static_cast<uint64_t>(per_shard));
  for (int i = 0; i < n; ++i) {
    Image img(6, 6, 1);
    std::fill(img.pixels.begin(), img.pixels.end(), 200);
    img.pixels[0] = static_cast<uint8_t>(i % 256);
    img.pixels[1] = static_cast<uint8_t>(i / 256);
    w.add(concat("s", i), {{"npy", encode_npy(img)}, {"cls", std::to_string(i % 5)}}, i % 5);
  }
  w.finish(5, {});
  return path;
}

LoaderOptions base(const std::string& path, uint64_t batch, uint64_t rank = 0, uint64_t world = 1) {
  LoaderOptions o;
  o.path = path;
  o.batch_size = batch;
  o.rank = rank;
  o.world_size = world;
  o.seed = 17;
  o.window_shards = 3;
  o.workers = 2;
  o.float_output = false;
  return o;
}

// Every batch of an epoch (from `cursor`) for one rank.
std::vector<Batch> drain(ShardedLoader& loader, const Cursor& cursor) {
  loader.start(cursor);
  std::vector<Batch> out;
  while (auto b = loader.next()) out.push_back(std::move(*b));
  return out;
}

std::vector<int64_t> ids_of(const Batch& b) {
  return std::vector<int64_t>(b.sample_ids.data_ptr<int64_t>(),
                              b.sample_ids.data_ptr<int64_t>() + b.sample_ids.numel());
}

// The job's sequence: for each step, rank 0's slice, then rank 1's, ...
std::vector<int64_t> job_sequence(const std::string& path, uint64_t per_rank, uint64_t world, const Cursor& c,
                                  bool train = true, int workers = 2) {
  std::vector<std::vector<Batch>> per_rank_batches;
  for (uint64_t r = 0; r < world; ++r) {
    auto o = base(path, per_rank, r, world);
    o.train = train;
    o.workers = workers;
    ShardedLoader loader(o);
    per_rank_batches.push_back(drain(loader, c));
  }
  std::vector<int64_t> seq;
  for (size_t step = 0; step < per_rank_batches[0].size(); ++step) {
    for (uint64_t r = 0; r < world; ++r) {
      EXPECT_EQ(per_rank_batches[r].size(), per_rank_batches[0].size()) << "every rank gets the same batch count";
      for (auto id : ids_of(per_rank_batches[r][step])) seq.push_back(id);
    }
  }
  return seq;
}

TEST(GlobalOrder, IsAPermutationThatDependsOnSeedAndEpochOnly) {
  const std::vector<uint64_t> sizes{10, 10, 7, 10, 3};
  auto a = epoch_order(sizes, 1, 0), b = epoch_order(sizes, 1, 0), c = epoch_order(sizes, 1, 1),
       d = epoch_order(sizes, 2, 0);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  EXPECT_NE(a, d);
  std::vector<uint64_t> sorted = a;
  std::sort(sorted.begin(), sorted.end());
  for (uint64_t i = 0; i < sorted.size(); ++i) EXPECT_EQ(sorted[i], i);
  // Windows: with window_shards = 2 the first 2 shuffled shards' samples come first, as one block.
  OrderOptions w2;
  w2.window_shards = 2;
  auto o = epoch_order({5, 5, 5, 5}, 3, 0, w2);
  std::set<uint64_t> first_shards;
  for (int i = 0; i < 10; ++i) first_shards.insert(o[i] / 5);
  EXPECT_EQ(first_shards.size(), 2u);
  OrderOptions none;
  none.shuffle = false;
  auto seq = epoch_order({3, 2}, 9, 4, none);
  EXPECT_EQ(seq, (std::vector<uint64_t>{0, 1, 2, 3, 4}));
}

TEST(ShardedLoader, RanksCoverTheEpochExactlyOnceForOneToFourRanks) {
  ScratchDir dir("cover");
  const auto path = make_dataset(dir, 97, 10);
  for (uint64_t world = 1; world <= 4; ++world) {
    SCOPED_TRACE(world);
    // Training: floor(97 / (4 * world)) global batches, no sample twice.
    auto seq = job_sequence(path, 4, world, {0, 0, 17});
    EXPECT_EQ(seq.size(), 97 / (4 * world) * 4 * world);
    EXPECT_EQ(std::set<int64_t>(seq.begin(), seq.end()).size(), seq.size());
    // ... and it is the same sequence as one rank with the whole global batch.
    auto single = job_sequence(path, 4 * world, 1, {0, 0, 17});
    EXPECT_EQ(seq, single);
    // Evaluation: every sample exactly once among the valid slots.
    std::multiset<int64_t> valid_ids;
    for (uint64_t r = 0; r < world; ++r) {
      auto o = base(path, 4, r, world);
      o.train = false;
      ShardedLoader loader(o);
      auto batches = drain(loader, {0, 0, 17});
      EXPECT_EQ(batches.size(), (97 + 4 * world - 1) / (4 * world));
      for (const auto& b : batches) {
        auto ids = ids_of(b);
        for (size_t i = 0; i < ids.size(); ++i) {
          if (b.valid[static_cast<int64_t>(i)].item<bool>()) valid_ids.insert(ids[i]);
        }
      }
    }
    EXPECT_EQ(valid_ids.size(), 97u);
    EXPECT_EQ(std::set<int64_t>(valid_ids.begin(), valid_ids.end()).size(), 97u);
  }
}

TEST(ShardedLoader, ImagesAndLabelsMatchTheirSampleIds) {
  ScratchDir dir("content");
  const auto path = make_dataset(dir, 30, 7);
  ShardedLoader loader(base(path, 5));
  for (const auto& b : drain(loader, {0, 0, 17})) {
    auto ids = ids_of(b);
    for (size_t i = 0; i < ids.size(); ++i) {
      const auto img = b.images[static_cast<int64_t>(i)];
      EXPECT_EQ(img.flatten()[0].item<int>() + 256 * img.flatten()[1].item<int>(), ids[i]);
      EXPECT_EQ(b.labels[static_cast<int64_t>(i)].item<int64_t>(), ids[i] % 5);
    }
  }
}

TEST(ShardedLoader, ResumeAtAnyCursorWithSameOrDifferentWorldSize) {
  ScratchDir dir("resume");
  const auto path = make_dataset(dir, 100, 9);
  const Cursor start{2, 0, 17};
  const auto full = job_sequence(path, 6, 2, start);  // global batch 12
  for (uint64_t consumed : {12u, 36u, 60u, 84u}) {
    for (auto [per_rank, world] : {std::pair<uint64_t, uint64_t>{6, 2}, {12, 1}, {4, 3}, {3, 4}}) {
      SCOPED_TRACE(concat("consumed ", consumed, " -> ", world, " ranks x ", per_rank));
      auto resumed = job_sequence(path, per_rank, world, {2, consumed, 17});
      ASSERT_LE(consumed + resumed.size(), full.size() + 0);
      EXPECT_TRUE(std::equal(resumed.begin(), resumed.end(), full.begin() + static_cast<std::ptrdiff_t>(consumed)));
      EXPECT_EQ(consumed + resumed.size(), full.size());
    }
  }
  // The cursor a batch reports is where the next run must start.
  ShardedLoader loader(base(path, 6, 1, 2));
  auto batches = drain(loader, start);
  EXPECT_EQ(batches[2].cursor, (Cursor{2, 36, 17}));
  EXPECT_EQ(batches[2].step, 2u);
}

TEST(ShardedLoader, AugmentationIsTheSameForAnyWorkerCountAndWorldSize) {
  ScratchDir dir("determinism");
  const auto path = make_dataset(dir, 48, 8);
  auto run = [&](int workers, uint64_t per_rank, uint64_t world, bool augment = true) {
    std::vector<torch::Tensor> images;
    for (uint64_t r = 0; r < world; ++r) {
      auto o = base(path, per_rank, r, world);
      o.workers = workers;
      if (augment) {
        o.augment.crop = AugmentOptions::Crop::kPadCrop;
        o.augment.pad = 2;
        o.augment.hflip = true;
      }
      ShardedLoader loader(o);
      auto batches = drain(loader, {1, 0, 17});
      for (size_t s = 0; s < batches.size(); ++s) {
        if (images.size() <= s) images.resize(batches.size());
        images[s] = images[s].defined() ? torch::cat({images[s], batches[s].images}) : batches[s].images;
      }
    }
    return torch::cat(images);
  };
  auto reference = run(1, 8, 1);
  EXPECT_TRUE(torch::equal(reference, run(3, 8, 1)));
  EXPECT_TRUE(torch::equal(reference, run(2, 4, 2)));
  // The equalities above mean something only if augmentation happened: against the same samples loaded without
  // it, nearly every one must differ (a sample comes through unchanged only with crop offset (2, 2) and no flip,
  // 1 in 50).
  const auto plain = run(1, 8, 1, /*augment=*/false);
  ASSERT_EQ(plain.sizes(), reference.sizes());
  int changed = 0;
  for (int64_t i = 0; i < plain.size(0); ++i) changed += torch::equal(plain[i], reference[i]) ? 0 : 1;
  EXPECT_GE(changed, 40) << "of " << plain.size(0) << " samples";
}

TEST(ShardedLoader, FloatOutputIsNormalised) {
  ScratchDir dir("norm");
  const auto path = make_dataset(dir, 8, 8);
  auto o = base(path, 8);
  o.float_output = true;
  o.mean = {0.5};
  o.std = {0.25};
  ShardedLoader floats(o);
  ShardedLoader bytes(base(path, 8));
  auto f = drain(floats, {0, 0, 17})[0];
  auto u = drain(bytes, {0, 0, 17})[0];
  EXPECT_EQ(f.images.scalar_type(), torch::kFloat32);
  EXPECT_TRUE(torch::allclose(f.images, (u.images.to(torch::kFloat32) / 255.0 - 0.5) / 0.25, 1e-5, 1e-6));
}

TEST(ShardedLoader, CorruptSamplesAreSkippedCountedAndBounded) {
  ScratchDir dir("corrupt");
  const auto path = make_dataset(dir, 20, 10);
  const auto index = read_index(path);
  // Flip a byte inside sample 3's image data and sample 12's.
  for (int id : {3, 12}) {
    const auto& shard = index.shards(id / 10);
    const auto& member = shard.samples(id % 10).members(0);
    std::fstream f(path + "/" + shard.file(), std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(member.offset() + member.size() - 1));
    f.put('\x01');
  }
  auto o = base(path, 20);
  o.train = false;
  ShardedLoader loader(o);
  auto batches = drain(loader, {0, 0, 17});
  ASSERT_EQ(batches.size(), 1u);
  auto ids = ids_of(batches[0]);
  for (size_t i = 0; i < ids.size(); ++i) {
    EXPECT_EQ(batches[0].valid[static_cast<int64_t>(i)].item<bool>(), ids[i] != 3 && ids[i] != 12) << ids[i];
  }
  auto reports = loader.corrupt_samples();
  ASSERT_EQ(reports.size(), 2u);
  std::set<std::string> keys{reports[0].key, reports[1].key};
  EXPECT_EQ(keys, (std::set<std::string>{"s3", "s12"}));
  EXPECT_NE(reports[0].reason.find("CRC32C"), std::string::npos);
  // Over the budget: a clear error from next().
  o.max_corrupt = 1;
  ShardedLoader strict(o);
  strict.start({0, 0, 17});
  try {
    strict.next();
    FAIL() << "expected the corrupt budget to stop the run";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("budget of 1"), std::string::npos) << e.what();
  }
}

TEST(ShardedLoader, UndecodableImageIsSkipped) {
  ScratchDir dir("undecodable");
  const std::string path = dir.file("ds");
  ShardWriter w(path, "ds", 10);
  Image img(8, 8, 3);
  for (int i = 0; i < 4; ++i) {
    w.add(concat("s", i), {{"jpg", i == 2 ? std::string("not a jpeg at all") : encode_jpeg(img)}, {"cls", "0"}}, 0);
  }
  w.finish(1, {});
  auto o = base(path, 4);
  o.train = false;
  ShardedLoader loader(o);
  auto b = drain(loader, {0, 0, 0})[0];
  EXPECT_EQ(b.valid.sum().item<int64_t>(), 3);
  ASSERT_EQ(loader.corrupt_samples().size(), 1u);
  EXPECT_EQ(loader.corrupt_samples()[0].key, "s2");
  EXPECT_NE(loader.corrupt_samples()[0].reason.find("decode failed"), std::string::npos);
}

TEST(ShardedLoader, MissingOrTruncatedInputsAreClearErrors) {
  ScratchDir dir("missing");
  EXPECT_THROW(ShardedLoader(base(dir.file("nowhere"), 4)), Error);
  const auto path = make_dataset(dir, 20, 10);
  std::filesystem::resize_file(path + "/shard-000001.tar", 1024);
  try {
    ShardedLoader loader(base(path, 4));
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("shard-000001.tar"), std::string::npos) << e.what();
  }
  const auto small = make_dataset(dir, 5, 10, "small");
  EXPECT_THROW(ShardedLoader(base(small, 4, 0, 2)), UsageError);  // fewer samples than one global batch
}

// ---------------------------------------------------------------------------------------------------------
// Transforms
// ---------------------------------------------------------------------------------------------------------
Image ramp(int h, int w, int c) {
  Image img(h, w, c);
  for (int y = 0; y < h; ++y) {
    for (int x = 0; x < w; ++x) {
      for (int ch = 0; ch < c; ++ch) img.row(y)[x * c + ch] = static_cast<uint8_t>(10 * x + y + ch);
    }
  }
  return img;
}

// PIL's Image.resize(BILINEAR, box) of a greyscale image (tests/python/pil_resize.py, run with python3-pil).
std::vector<uint8_t> pil_resize(const Image& img, const Box& box, int out_w, int out_h) {
  std::string command =
      concat(STRIDE_REFERENCE_PYTHON, " ", STRIDE_SOURCE_DIR, "/tests/python/pil_resize.py ", img.width, " ",
             img.height, " ", box.x, " ", box.y, " ", box.x + box.w, " ", box.y + box.h, " ", out_w, " ", out_h);
  for (uint8_t v : img.pixels) command += concat(" ", static_cast<int>(v));
  const auto r = testing::run_command(command);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  std::istringstream in(r.output);
  std::vector<uint8_t> out;
  for (int v; in >> v;) out.push_back(static_cast<uint8_t>(v));
  EXPECT_EQ(out.size(), static_cast<size_t>(out_w * out_h)) << r.output;
  return out;
}

TEST(Transforms, FlipAndPadCropGeometry) {
  auto img = ramp(4, 5, 2);
  auto f = img;
  hflip(f);
  for (int y = 0; y < 4; ++y) {
    for (int x = 0; x < 5; ++x) EXPECT_EQ(f.row(y)[x * 2 + 1], img.row(y)[(4 - x) * 2 + 1]);
  }
  // Crop at the padded origin: the image shifted right/down by `pad`, zeros around.
  auto c = pad_crop(img, 2, 5, 0, 0);
  EXPECT_EQ(c.row(0)[0], 0);
  EXPECT_EQ(c.row(2)[2 * 2], img.row(0)[0]);
  EXPECT_EQ(c.row(3)[4 * 2 + 1], img.row(1)[2 * 2 + 1]);
  // Crop at offset (pad, pad) is the identity for a square image of the crop size.
  auto sq = ramp(5, 5, 1);
  EXPECT_EQ(pad_crop(sq, 2, 5, 2, 2).pixels, sq.pixels);
}

TEST(Transforms, ResizeIdentityConstantAndCenterBox) {
  auto img = ramp(9, 12, 3);
  EXPECT_EQ(resize_box(img, {0, 0, 12, 9}, 12, 9).pixels, img.pixels);
  Image flat(50, 40, 3);
  std::fill(flat.pixels.begin(), flat.pixels.end(), 77);
  for (auto v : resize_box(flat, {3.5, 2.25, 30, 41}, 17, 13).pixels) EXPECT_EQ(v, 77);
  auto box = center_box(500, 375, 224, 256);
  EXPECT_NEAR(box.w, 224 * 375 / 256.0, 1e-9);
  EXPECT_NEAR(box.x, (500 - box.w) / 2, 1e-9);
  // The reference is PIL itself, run live: Image.resize(..., BILINEAR, box) on the same pixels (antialiased
  // triangle filter), through tests/python/pil_resize.py.
  Image r(1, 4, 1);
  r.pixels = {0, 100, 200, 250};
  EXPECT_EQ(resize_box(r, {0, 0, 4, 1}, 2, 1).pixels, pil_resize(r, {0, 0, 4, 1}, 2, 1));
  Image g(9, 12, 1);
  for (int y = 0; y < 9; ++y) {
    for (int x = 0; x < 12; ++x) g.row(y)[x] = static_cast<uint8_t>(10 * x + y);
  }
  // Downscaling from a fractional box, and a larger irregular image shrunk by ~3x and stretched.
  Image n(40, 50, 1);
  for (size_t i = 0; i < n.pixels.size(); ++i) n.pixels[i] = static_cast<uint8_t>((i * i * 7 + i * 13) % 251);
  for (const auto& [img, box, w, h] : std::vector<std::tuple<Image, Box, int, int>>{
           {g, {1.5, 2, 10, 6.5}, 5, 4}, {n, {3.5, 2.25, 30, 37}, 11, 13}, {n, {0, 0, 50, 40}, 17, 9}}) {
    SCOPED_TRACE(concat(box.x, ",", box.y, " ", box.w, "x", box.h, " -> ", w, "x", h));
    const auto pil = pil_resize(img, box, w, h);
    const auto mine = resize_box(img, box, w, h).pixels;
    ASSERT_EQ(mine.size(), pil.size());
    for (size_t i = 0; i < pil.size(); ++i) EXPECT_NEAR(mine[i], pil[i], 1) << i;
  }
}

TEST(Transforms, RandomResizedBoxStaysInsideAndRespectsScale) {
  AugmentOptions o;
  o.crop = AugmentOptions::Crop::kRandomResized;
  Rng rng(5);
  for (int i = 0; i < 2000; ++i) {
    auto b = random_resized_box(500, 375, o, rng);
    ASSERT_GE(b.x, 0);
    ASSERT_GE(b.y, 0);
    ASSERT_LE(b.x + b.w, 500);
    ASSERT_LE(b.y + b.h, 375);
    const double area = b.w * b.h / (500.0 * 375.0);
    ASSERT_GE(area, 0.07);
    ASSERT_LE(area, 1.0);
  }
}

TEST(Transforms, ScaledJpegDecodeGivesTheSameCropQuality) {
  Image img(375, 500, 3);
  for (int y = 0; y < 375; ++y) {
    for (int x = 0; x < 500; ++x) {
      for (int c = 0; c < 3; ++c) img.row(y)[x * 3 + c] = static_cast<uint8_t>(128 + 100 * std::sin(x / 40.0 + c));
    }
  }
  const auto jpg = encode_jpeg(img, 95);
  AugmentOptions o;
  o.crop = AugmentOptions::Crop::kCenter;
  o.size = 64;
  o.resize = 73;
  Rng r1(1), r2(1);
  auto scaled = augment(reinterpret_cast<const uint8_t*>(jpg.data()), jpg.size(), Codec::kJpeg, o, r1);
  o.jpeg_scaled_decode = false;
  auto full = augment(reinterpret_cast<const uint8_t*>(jpg.data()), jpg.size(), Codec::kJpeg, o, r2);
  ASSERT_EQ(scaled.pixels.size(), full.pixels.size());
  double err = 0;
  for (size_t i = 0; i < full.pixels.size(); ++i) err += std::abs(scaled.pixels[i] - full.pixels[i]);
  EXPECT_LT(err / full.pixels.size(), 3.0) << "mean abs difference between scaled and full decode";
}

TEST(Transforms, ColorJitterIdentityAndCutout) {
  auto img = ramp(6, 6, 3);
  auto same = img;
  color_jitter(same, 1.0, 1.0, 1.0);
  EXPECT_EQ(same.pixels, img.pixels);
  auto dark = img;
  color_jitter(dark, 0.5, 1.0, 1.0);
  EXPECT_EQ(dark.row(3)[3 * 3], static_cast<uint8_t>(std::lround(img.row(3)[3 * 3] * 0.5)));
  auto gray = img;
  color_jitter(gray, 1.0, 1.0, 0.0);
  EXPECT_NEAR(gray.row(2)[0], gray.row(2)[1], 1);
  fill_rect(img, -2, 4, 4, 10, 0);
  EXPECT_EQ(img.row(5)[0], 0);
  EXPECT_EQ(img.row(5)[1 * 3 + 2], 0);
  EXPECT_NE(img.row(5)[2 * 3], 0);
  EXPECT_NE(img.row(3)[0 * 3 + 1], 0);
}

TEST(Mix, MixUpAndCutMixConserveLabelMass) {
  auto images = torch::rand({6, 3, 10, 10});
  auto labels = torch::tensor({0, 1, 2, 3, 4, 0}, torch::kLong);
  MixOptions mixup{0.4, 0.0};
  auto m = mix_batch(images, labels, 5, mixup, 3);
  EXPECT_FALSE(m.cutmix);
  EXPECT_TRUE(torch::allclose(m.targets.sum(1), torch::ones({6})));
  const double l = m.lambda;
  EXPECT_TRUE(torch::allclose(m.images[1], images[1] * l + images[0] * (1 - l), 1e-5, 1e-6));
  EXPECT_NEAR(m.targets[1][1].item<double>(), l, 1e-6);
  EXPECT_NEAR(m.targets[1][0].item<double>(), 1 - l, 1e-6);
  MixOptions cutmix{0.0, 1.0};
  for (uint64_t seed = 0; seed < 5; ++seed) {
    auto c = mix_batch(images, labels, 5, cutmix, seed);
    EXPECT_TRUE(c.cutmix);
    EXPECT_TRUE(torch::allclose(c.targets.sum(1), torch::ones({6})));
    // lambda is the fraction of pixels kept from the original sample.
    const double kept = (c.images[2] == images[2]).all(0).to(torch::kDouble).mean().item<double>();
    EXPECT_NEAR(kept, c.lambda, 1e-9);
    EXPECT_NEAR(c.targets[2][2].item<double>(), c.lambda, 1e-6);
  }
  auto none = mix_batch(images, labels, 5, MixOptions{}, 0);
  EXPECT_TRUE(torch::equal(none.images, images));
  EXPECT_TRUE(torch::equal(none.targets.argmax(1), labels));
}

TEST(Mix, LoaderEmitsSoftTargets) {
  ScratchDir dir("mixloader");
  const auto path = make_dataset(dir, 16, 8);
  auto o = base(path, 8);
  o.float_output = true;
  o.mix = {0.2, 1.0};
  ShardedLoader loader(o);
  auto b = drain(loader, {0, 0, 17})[0];
  ASSERT_TRUE(b.targets.defined());
  EXPECT_EQ(b.targets.sizes(), (std::vector<int64_t>{8, 5}));
  EXPECT_TRUE(torch::allclose(b.targets.sum(1), torch::ones({8})));
}

// Channels-last batches come out of the collate in NHWC memory: the same values as the NCHW batch, strides that
// make `contiguous(ChannelsLast)` a no-op (the training loop copies nothing), for uint8 and normalised float
// output, and still after MixUp/CutMix.
TEST(ShardedLoader, ChannelsLastBatchesAreCollatedNhwcWithoutACopy) {
  ScratchDir dir("nhwc");
  const std::string path = dir.file("rgb");
  {
    ShardWriter w(path, "rgb", 8);
    for (int i = 0; i < 16; ++i) {
      Image img(5, 4, 3);
      for (size_t k = 0; k < img.pixels.size(); ++k) img.pixels[k] = static_cast<uint8_t>((k * 13 + i * 7) % 256);
      w.add(concat("s", i), {{"npy", encode_npy(img)}, {"cls", std::to_string(i % 5)}}, i % 5);
    }
    w.finish(5, {});
  }
  for (int variant = 0; variant < 3; ++variant) {  // uint8, normalised float, float + MixUp/CutMix
    SCOPED_TRACE(variant);
    auto o = base(path, 8);
    o.float_output = variant > 0;
    if (variant > 0) {
      o.mean = {0.5, 0.4, 0.3};
      o.std = {0.2, 0.25, 0.3};
    }
    if (variant == 2) o.mix = {0.4, 1.0};
    auto cl = o;
    cl.channels_last = true;
    ShardedLoader nchw_loader(o), nhwc_loader(cl);
    const auto a = drain(nchw_loader, {0, 0, 17}), b = drain(nhwc_loader, {0, 0, 17});
    ASSERT_EQ(a.size(), b.size());
    for (size_t i = 0; i < a.size(); ++i) {
      const auto& x = b[i].images;
      EXPECT_EQ(x.sizes(), (std::vector<int64_t>{8, 3, 5, 4}));
      EXPECT_TRUE(a[i].images.is_contiguous());
      EXPECT_TRUE(x.is_contiguous(torch::MemoryFormat::ChannelsLast));
      EXPECT_FALSE(x.is_contiguous());
      EXPECT_EQ(x.contiguous(torch::MemoryFormat::ChannelsLast).data_ptr(), x.data_ptr());
      EXPECT_TRUE(torch::equal(x, a[i].images)) << "batch " << i;
    }
  }
}

// Remote sources (data/shard_source.h). HTTP runs against a real nginx in tests/system/remote_data_test.sh; here
// `pipe:` commands stand in for the server, which exercises the same cache.

TEST(RemoteSource, LocationsOfSplits) {
  EXPECT_EQ(split_location("/d/fm", "train"), "/d/fm/train");
  EXPECT_EQ(split_location("http://h:81/fm/", "train"), "http://h:81/fm/train");
  EXPECT_EQ(split_location("pipe:aws s3 cp s3://b/{split}/{shard} -", "test"), "pipe:aws s3 cp s3://b/test/{shard} -");
  EXPECT_THROW(split_location("pipe:cat /x/{shard}", "train"), UsageError);
  EXPECT_TRUE(is_remote("http://h/x") && is_remote("pipe:cat") && !is_remote("/http/x"));
  const auto u = parse_http_url("http://127.0.0.1:8080/a/b");
  EXPECT_EQ(u.host, "127.0.0.1");
  EXPECT_EQ(u.port, "8080");
  EXPECT_EQ(u.target, "/a/b");
  EXPECT_EQ(parse_http_url("http://example.org").port, "80");
  const auto tls = parse_http_url("https://example.org/x");
  EXPECT_TRUE(tls.tls);
  EXPECT_FALSE(u.tls);
  EXPECT_EQ(tls.port, "443");
  EXPECT_EQ(tls.target, "/x");
  try {
    parse_http_url("ftp://example.org/x");
    FAIL() << "ftp accepted";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("not an http:// or https:// URL"), std::string::npos) << e.what();
  }
}

TEST(RemoteSource, PipeCommandOutputAndItsStderrOnFailure) {
  EXPECT_EQ(run_pipe("printf 'a\\0b'", 10), std::string("a\0b", 3));
  try {
    run_pipe("echo partial; echo 'no such object' >&2; exit 3", 100, "rank 2");
    FAIL() << "a failing command succeeded";
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("rank 2: `echo partial; echo 'no such object' >&2; exit 3` failed with exit code 3; stderr: "
                        "no such object"),
              std::string::npos)
        << what;
  }
  EXPECT_THROW(run_pipe("head -c 100 /dev/zero", 10), Error);  // more than the index says
}

// Through pipe:cat with a cache limit of the order window plus one shard: the batches are the local ones, the
// cache never holds more than the limit, and shards are evicted and fetched again only a little: a finished
// window's shards go first (their next use is an epoch away); batches in flight across a window boundary may
// need more shards than fit, which costs a few re-fetches (28-30 of 24 in 2 epochs were seen), not thrashing.
TEST(RemoteSource, BoundedCacheGivesTheLocalBatchesWithinItsLimit) {
  ScratchDir dir("remote");
  const auto path = make_dataset(dir, 96, 8);  // 12 shards; window 3
  const std::string log = dir.file("fetches.log");
  uint64_t shard_bytes = 0;
  for (const auto& e : std::filesystem::directory_iterator(path)) {
    if (e.path().extension() == ".tar") shard_bytes = std::max<uint64_t>(shard_bytes, e.file_size());
  }
  const uint64_t limit = 4 * shard_bytes + std::filesystem::file_size(std::filesystem::path(path) / kIndexFile);
  for (int world : {1, 2}) {
    SCOPED_TRACE(world);
    std::filesystem::remove(log);
    for (int rank = 0; rank < world; ++rank) {
      auto local = base(path, 8, rank, world);
      auto remote = local;
      remote.path = concat("pipe:echo {shard} >> ", log, "; cat ", path, "/{shard}");
      remote.source.cache_dir = dir.file(concat("cache-", world, "-", rank));
      remote.source.cache_limit = limit;
      remote.source.prefetch_shards = 2;
      ShardedLoader a(local), b(remote);
      for (uint64_t epoch = 0; epoch < 2; ++epoch) {
        a.start({epoch, 0, 17});
        b.start({epoch, 0, 17});
        while (auto x = a.next()) {
          auto y = b.next();
          ASSERT_TRUE(y.has_value());
          EXPECT_TRUE(torch::equal(x->sample_ids, y->sample_ids));
          EXPECT_TRUE(torch::equal(x->images, y->images));
          uint64_t used = 0;
          for (const auto& e : std::filesystem::recursive_directory_iterator(remote.source.cache_dir)) {
            std::error_code ec;  // the prefetch thread may evict a file between listing and stat
            const auto size = e.is_regular_file(ec) ? e.file_size(ec) : 0;
            if (!ec) used += size;
          }
          EXPECT_LE(used, limit);
        }
        EXPECT_FALSE(b.next().has_value());
      }
      const auto s = b.source_stats();
      EXPECT_EQ(s.refetches, 0u);
      EXPECT_GT(s.evictions, 0u);
      EXPECT_GE(s.shards_fetched, 12u);
      EXPECT_LE(s.shards_fetched, 2u * 12u * 3u / 2u) << "the bounded cache thrashes";
    }
  }
}

}  // namespace
}  // namespace stride::data
