// Per-sample decode + augmentation, on uint8 HWC images, run on loader worker threads. Every random choice
// comes from the Rng passed in (seeded per sample by the loader), so results do not depend on thread count,
// rank count or timing. Functions are thread-safe.
#pragma once

#include <cstdint>
#include <string>

#include "data/auto_augment.h"
#include "data/codec.h"
#include "data/image.h"
#include "data/rng.h"

namespace stride::data {

struct AugmentOptions {
  enum class Crop {
    kNone,           // keep the decoded image (all images must share a shape)
    kPadCrop,        // pad by `pad` pixels (zeros) and take a random size x size crop (CIFAR/Fashion-MNIST)
    kRandomResized,  // RandomResizedCrop(size, scale, ratio), bilinear with antialiasing (ImageNet training)
    kCenter,         // resize the shorter side to `resize`, centre crop size x size (ImageNet evaluation)
    kCenterPad,      // no resampling: the centre size x size, zero-padded where the image is smaller (the
                     // evaluation counterpart of kPadCrop)
  };
  Crop crop = Crop::kNone;
  int size = 0;  // output side; 0 with kNone/kPadCrop: the input's own size
  int pad = 4;
  double scale_min = 0.08, scale_max = 1.0;
  double ratio_min = 3.0 / 4.0, ratio_max = 4.0 / 3.0;
  int resize = 0;  // kCenter: shorter side before cropping; 0 = size * 256 / 224
  bool hflip = false;
  // torchvision's --auto-augment (data/auto_augment.h), applied after the crop and flip like the recipe's
  // ClassificationPresetTrain, before colour jitter, cutout and erasing.
  AutoAugmentOptions auto_augment;
  double brightness = 0.0, contrast = 0.0, saturation = 0.0;  // colour jitter strengths (0 = off)
  int cutout = 0;                  // side in pixels of a zeroed square (DeVries & Taylor 2017); 0 = off
  double erasing = 0.0;            // random erasing probability (Zhong et al. 2020); 0 = off
  int channels = 0;                // force 1 or 3 output channels; 0 = as decoded
  bool jpeg_scaled_decode = true;  // let libjpeg-turbo shrink in the DCT domain when the crop allows
};

// Parses "none" | "pad-crop" | "random-resized" | "center" | "center-pad"; throws UsageError otherwise.
AugmentOptions::Crop parse_crop(const std::string& name);
// The name parse_crop() reads.
std::string crop_name(AugmentOptions::Crop crop);

// Decodes `data` and applies `options`. Throws stride::Error when the bytes cannot be decoded.
Image augment(const uint8_t* data, size_t n, Codec codec, const AugmentOptions& options, Rng& rng);

// --- building blocks, exposed for tests ------------------------------------------------------------------
struct Box {
  double x = 0, y = 0, w = 0, h = 0;  // in source pixels
};
// torchvision's RandomResizedCrop.get_params: 10 tries of area/aspect sampling, then a centre-crop fallback.
Box random_resized_box(int width, int height, const AugmentOptions& options, Rng& rng);
// The box `resize` + centre crop covers, in source pixels.
Box center_box(int width, int height, int size, int resize);
// Resamples `box` of `src` to out_w x out_h with a separable triangle (bilinear) filter whose support widens
// when shrinking, like PIL's antialiased bilinear resize.
Image resize_box(const Image& src, const Box& box, int out_w, int out_h);
Image pad_crop(const Image& src, int pad, int size, int x0, int y0);  // x0, y0 in padded coordinates
void hflip(Image& img);
void color_jitter(Image& img, double brightness, double contrast, double saturation);  // factors, 1 = identity
void fill_rect(Image& img, int x0, int y0, int w, int h, uint8_t value);

}  // namespace stride::data
