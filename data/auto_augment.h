// Learned and random augmentation policies of torchvision 0.14 (transforms/autoaugment.py) on uint8 HWC
// images: AutoAugment (the ImageNet, CIFAR-10 and SVHN policies), RandAugment and TrivialAugmentWide, with
// torchvision's op set, magnitude bins and signed-magnitude rule. The ops reproduce what torchvision's
// functional ops do to a PIL image (the backend of torchvision's train.py recipe), with bilinear resampling
// and zero fill for the geometric ops (the recipe's --interpolation default). Every random choice comes from
// the Rng passed in. Functions are thread-safe.
//
// Note [Auto-augment draws]
// torchvision draws from torch's global generator; Stride draws the same quantities, in the same order, from
// the per-sample Rng (data/rng.h), so a sample's policy choice depends on (seed, epoch, position) only:
//   AutoAugment:        sub-policy = below(25); u0, u1 = uniform() (op i runs when u_i <= p_i); sign bits
//                       below(2) x 2 (bit 0 negates a signed magnitude).
//   RandAugment:        num_ops times: op = below(14); then, for a signed op only, one bit (1 negates).
//   TrivialAugmentWide: op = below(14); bin = below(31) for ops with magnitudes; for a signed op one bit.
#pragma once

#include <string>

#include "data/image.h"
#include "data/rng.h"

namespace stride::data {

enum class AutoAugmentPolicy { kNone, kRandAugment, kTrivialAugmentWide, kImageNet, kCifar10, kSvhn };

// torchvision train.py's --auto-augment names: ra | ta_wide | imagenet | cifar10 | svhn ("" or "none": off).
// Throws UsageError naming the flag and the choices otherwise (augmix says it is not supported).
AutoAugmentPolicy parse_auto_augment(const std::string& name);
std::string auto_augment_name(AutoAugmentPolicy policy);

struct AutoAugmentOptions {
  AutoAugmentPolicy policy = AutoAugmentPolicy::kNone;
  int magnitude = 9;  // RandAugment: the bin of 31 (0..30), torchvision's --ra-magnitude
  int num_ops = 2;    // RandAugment: ops per image, torchvision's --ra-num-ops
};

// Applies the policy to `img` (1 or 3 channels) in place.
void auto_augment(Image& img, const AutoAugmentOptions& options, Rng& rng);

// --- the ops, exposed for tests ----------------------------------------------------------------------------
enum class AugmentOp {
  kIdentity,
  kShearX,
  kShearY,
  kTranslateX,
  kTranslateY,
  kRotate,
  kBrightness,
  kColor,
  kContrast,
  kSharpness,
  kPosterize,
  kSolarize,
  kAutoContrast,
  kEqualize,
  kInvert,
};
// torchvision's op names ("ShearX", ...); parse throws stride::Error on an unknown name.
std::string augment_op_name(AugmentOp op);
AugmentOp parse_augment_op(const std::string& name);
// The magnitude of `bin` in the policy's _augmentation_space for an image of height x width (RandAugment and
// TrivialAugmentWide: 31 bins; AutoAugment: 10), before the sign.
double augment_magnitude(AutoAugmentPolicy policy, AugmentOp op, int bin, int height, int width);
// torchvision's _apply_op(img, op_name, magnitude) with bilinear interpolation and fill 0.
void apply_augment_op(Image& img, AugmentOp op, double magnitude);

}  // namespace stride::data
