// The data plan of `stride train`: Note [One transform rule] (trainer/data_setup.h) applied to datasets of fixed
// and of varying image sizes, grayscale and colour, and the evaluation loader reusing the training loader's
// batch buffers.
#include <gtest/gtest.h>

#include <set>
#include <string>
#include <vector>

#include "common/error.h"
#include "data/codec.h"
#include "data/loader.h"
#include "data/shard_writer.h"
#include "test_util.h"
#include "trainer/data_setup.h"

namespace stride::trainer {
namespace {

using Crop = data::AugmentOptions::Crop;
using testing::ScratchDir;

// A split of `n` images; image i is h x w (or h+1 x w+1 for odd i when `mixed`), `channels` channels, PNG.
void write_split(const std::string& dir, int n, int h, int w, int channels, bool mixed = false) {
  data::ShardWriter writer(dir, "toy", 8);
  for (int i = 0; i < n; ++i) {
    const int grow = mixed && i % 2 ? 1 : 0;
    data::Image img(h + grow, w + grow, channels);
    for (size_t k = 0; k < img.pixels.size(); ++k) img.pixels[k] = static_cast<uint8_t>((k * 7 + i) % 251);
    writer.add(concat("s", i), {{"png", data::encode_png(img)}, {"cls", std::to_string(i % 3)}}, i % 3);
  }
  writer.finish(3, {});
}

TrainConfig config_for(const ScratchDir& dir) {
  TrainConfig c;
  c.data_path = dir.path().string();
  c.batch_size = 4;
  c.workers = 1;
  c.prefetch = 2;
  return c;
}

std::string usage_error(const TrainConfig& c) {
  try {
    plan_data(c);
  } catch (const UsageError& e) {
    return e.what();
  }
  return "";
}

TEST(DataPlan, FixedSizeGrayscaleTrainsAndEvaluatesAtItsOwnSize) {
  ScratchDir dir("plan");
  write_split(dir.file("train"), 16, 28, 28, 1);
  write_split(dir.file("test"), 8, 28, 28, 1);
  auto c = config_for(dir);
  const auto p = plan_data(c);
  EXPECT_EQ(p.in_channels, 1);
  EXPECT_EQ(p.train.augment.crop, Crop::kPadCrop);
  EXPECT_EQ(p.train.augment.size, 28);
  EXPECT_EQ(p.train.augment.channels, 1);
  EXPECT_EQ(p.eval.augment.crop, Crop::kNone);
  EXPECT_EQ(p.eval.augment.channels, 1);
  EXPECT_EQ(p.eval_transform, "none (28x28, the images' own size)");
  apply_resolved(p, c);
  EXPECT_EQ(c.image_size, 28);
  EXPECT_EQ(c.val_crop_size, 28);
  EXPECT_EQ(c.val_resize_size, 0);

  // A smaller training side: the evaluation takes the centre at the same side, without resampling.
  c = config_for(dir);
  c.image_size = 24;
  const auto q = plan_data(c);
  EXPECT_EQ(q.eval.augment.crop, Crop::kCenterPad);
  EXPECT_EQ(q.eval.augment.size, 24);

  // Both loaders then produce batches of one shape, and evaluation reuses the buffers training batches lived in
  // (it allocates none of its own).
  EXPECT_EQ(p.eval.pool, p.train.pool);
  // Training holds all four of its batches at once, so the pool ends up with at least as many buffers as the two
  // evaluation batches can ever need together, however the loader's threads happen to be scheduled.
  std::set<const void*> train_buffers;
  {
    data::ShardedLoader train(p.train);
    train.start({0, 0, 0});
    std::vector<torch::Tensor> held;
    while (auto tb = train.next()) {
      EXPECT_EQ(tb->images.sizes(), (std::vector<int64_t>{4, 1, 28, 28}));
      train_buffers.insert(tb->images.data_ptr());
      held.push_back(tb->images);
    }
    EXPECT_EQ(train_buffers.size(), 4u);
  }
  const uint64_t before = p.train.pool->allocations();
  data::ShardedLoader eval(p.eval);
  eval.start({0, 0, 0});
  int batches = 0;
  while (auto eb = eval.next()) {
    ++batches;
    EXPECT_EQ(eb->images.sizes(), (std::vector<int64_t>{4, 1, 28, 28}));
    EXPECT_TRUE(train_buffers.count(eb->images.data_ptr())) << "evaluation batch in a buffer of its own";
  }
  EXPECT_EQ(batches, 2);
  EXPECT_EQ(p.train.pool->allocations(), before);
}

TEST(DataPlan, VaryingSizesNeedRandomResizedAndEvaluateResizedToTheTrainingSide) {
  ScratchDir dir("plan");
  write_split(dir.file("train"), 16, 20, 30, 3, /*mixed=*/true);
  write_split(dir.file("test"), 8, 20, 30, 3, /*mixed=*/true);
  auto c = config_for(dir);
  const std::string error = usage_error(c);
  EXPECT_NE(error.find("images of different sizes"), std::string::npos) << error;
  EXPECT_NE(error.find("--crop random-resized"), std::string::npos) << error;

  c.crop = "random-resized";
  c.image_size = 16;
  const auto p = plan_data(c);
  EXPECT_EQ(p.in_channels, 3);
  EXPECT_EQ(p.train.augment.size, 16);
  EXPECT_EQ(p.eval.augment.crop, Crop::kCenter);
  EXPECT_EQ(p.eval.augment.size, 16);
  EXPECT_EQ(p.eval.augment.resize, 18);  // 16 x 256 / 224, rounded
  c.val_resize_size = 20;
  EXPECT_EQ(plan_data(c).eval.augment.resize, 20);
  // Images that are the side already are not resampled.
  ScratchDir fixed("plan-fixed");
  write_split(fixed.file("train"), 8, 32, 32, 3);
  write_split(fixed.file("test"), 8, 32, 32, 3);
  auto f = config_for(fixed);
  f.crop = "random-resized";
  f.image_size = 32;
  EXPECT_EQ(plan_data(f).eval.augment.crop, Crop::kNone);
}

TEST(DataPlan, MismatchedSplitsAndChannelsAreErrorsNamingTheFlags) {
  ScratchDir dir("plan");
  write_split(dir.file("train"), 8, 28, 28, 1);
  write_split(dir.file("test"), 8, 32, 32, 1);
  auto c = config_for(dir);
  std::string error = usage_error(c);
  EXPECT_NE(error.find("both splits must share one shape"), std::string::npos) << error;
  c.crop = "random-resized";
  c.image_size = 28;
  EXPECT_EQ(plan_data(c).eval.augment.crop, Crop::kCenter);

  c = config_for(dir);
  c.val_split = "train";
  c.mean = {0.5, 0.5, 0.5};
  c.std = {0.2, 0.2, 0.2};
  error = usage_error(c);
  EXPECT_NE(error.find("--mean/--std have 3 values but the images have 1 channel"), std::string::npos) << error;
  c.mean = {};
  c.std = {};
  c.crop = "none";
  c.image_size = 32;
  error = usage_error(c);
  EXPECT_NE(error.find("--crop none keeps the images' own size (28x28)"), std::string::npos) << error;
  c.image_size = 0;
  c.crop = "pad-crop";
  c.val_resize_size = 30;
  error = usage_error(c);
  EXPECT_NE(error.find("--val-resize-size applies to --crop random-resized"), std::string::npos) << error;
}

}  // namespace
}  // namespace stride::trainer
