#include "data/auto_augment.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <vector>

#include "common/error.h"
#include "common/suggest.h"

namespace stride::data {

AutoAugmentPolicy parse_auto_augment(const std::string& name) {
  if (name.empty() || name == "none") return AutoAugmentPolicy::kNone;
  if (name == "ra") return AutoAugmentPolicy::kRandAugment;
  if (name == "ta_wide") return AutoAugmentPolicy::kTrivialAugmentWide;
  if (name == "imagenet") return AutoAugmentPolicy::kImageNet;
  if (name == "cifar10") return AutoAugmentPolicy::kCifar10;
  if (name == "svhn") return AutoAugmentPolicy::kSvhn;
  if (name == "augmix") {
    throw UsageError("--auto-augment augmix is not supported; choose ra, ta_wide, imagenet, cifar10 or svhn");
  }
  throw UsageError(concat("--auto-augment must be one of ra, ta_wide, imagenet, cifar10, svhn (or none); got '", name,
                          "'", did_you_mean(name, {"ra", "ta_wide", "imagenet", "cifar10", "svhn", "none"})));
}

std::string auto_augment_name(AutoAugmentPolicy policy) {
  switch (policy) {
    case AutoAugmentPolicy::kNone:
      return "none";
    case AutoAugmentPolicy::kRandAugment:
      return "ra";
    case AutoAugmentPolicy::kTrivialAugmentWide:
      return "ta_wide";
    case AutoAugmentPolicy::kImageNet:
      return "imagenet";
    case AutoAugmentPolicy::kCifar10:
      return "cifar10";
    case AutoAugmentPolicy::kSvhn:
      return "svhn";
  }
  return "none";
}

namespace {

constexpr std::array<const char*, 15> kOpNames = {"Identity",  "ShearX",     "ShearY",       "TranslateX", "TranslateY",
                                                  "Rotate",    "Brightness", "Color",        "Contrast",   "Sharpness",
                                                  "Posterize", "Solarize",   "AutoContrast", "Equalize",   "Invert"};

// ------------------------------------------------------------------------------------------------------------
// Geometry: PIL's Image.transform(AFFINE, BILINEAR, fillcolor=0). Output pixel (x, y) reads the input at
// (a0 (x + .5) + a1 (y + .5) + a2, a3 (x + .5) + a4 (y + .5) + a5); points outside the input take the fill, points
// inside interpolate between the four nearest pixel centres, clamped to the edge (libImaging/Geometry.c).
void affine_pil(Image& img, const std::array<double, 6>& a) {
  const int w = img.width, h = img.height, c = img.channels;
  Image out(h, w, c);  // zero: the fill
  for (int y = 0; y < h; ++y) {
    uint8_t* o = out.row(y);
    for (int x = 0; x < w; ++x) {
      double xin = a[0] * (x + 0.5) + a[1] * (y + 0.5) + a[2];
      double yin = a[3] * (x + 0.5) + a[4] * (y + 0.5) + a[5];
      if (xin < 0.0 || xin >= w || yin < 0.0 || yin >= h) continue;
      xin -= 0.5;
      yin -= 0.5;
      const int xf = static_cast<int>(std::floor(xin)), yf = static_cast<int>(std::floor(yin));
      const double dx = xin - xf, dy = yin - yf;
      const int x0 = std::clamp(xf, 0, w - 1), x1 = std::clamp(xf + 1, 0, w - 1);
      const uint8_t* r0 = img.row(std::clamp(yf, 0, h - 1));
      const uint8_t* r1 = img.row(std::clamp(yf + 1, 0, h - 1));
      for (int ch = 0; ch < c; ++ch) {
        const double v1 = r0[x0 * c + ch] + (r0[x1 * c + ch] - r0[x0 * c + ch]) * dx;
        const double v2 = r1[x0 * c + ch] + (r1[x1 * c + ch] - r1[x0 * c + ch]) * dx;
        o[x * c + ch] = static_cast<uint8_t>(v1 + (v2 - v1) * dy);  // PIL truncates
      }
    }
  }
  img = std::move(out);
}

double radians(double degrees) { return degrees * (M_PI / 180.0); }  // as CPython's math.radians
double degrees(double radians) { return radians * (180.0 / M_PI); }

// torchvision.transforms.functional._get_inverse_affine_matrix (angle, shear in degrees; scale 1).
std::array<double, 6> inverse_affine(double cx, double cy, double angle, double tx, double ty, double shear_x,
                                     double shear_y) {
  const double rot = radians(angle), sx = radians(shear_x), sy = radians(shear_y);
  const double a = std::cos(rot - sy) / std::cos(sy);
  const double b = -std::cos(rot - sy) * std::tan(sx) / std::cos(sy) - std::sin(rot);
  const double c = std::sin(rot - sy) / std::cos(sy);
  const double d = -std::sin(rot - sy) * std::tan(sx) / std::cos(sy) + std::cos(rot);
  std::array<double, 6> m = {d, -b, 0.0, -c, a, 0.0};
  m[2] += m[0] * (-cx - tx) + m[1] * (-cy - ty);
  m[5] += m[3] * (-cx - tx) + m[4] * (-cy - ty);
  m[2] += cx;
  m[5] += cy;
  return m;
}

// PIL's Image.rotate(angle) about the centre, without expand: its own matrix, cosines rounded to 15 digits.
std::array<double, 6> rotate_matrix(int w, int h, double angle) {
  const double t = -radians(std::fmod(std::fmod(angle, 360.0) + 360.0, 360.0));
  auto r15 = [](double v) { return std::nearbyint(v * 1e15) / 1e15; };
  std::array<double, 6> m = {r15(std::cos(t)), r15(std::sin(t)), 0.0, r15(-std::sin(t)), r15(std::cos(t)), 0.0};
  const double cx = w / 2.0, cy = h / 2.0;
  m[2] = m[0] * -cx + m[1] * -cy + cx;
  m[5] = m[3] * -cx + m[4] * -cy + cy;
  return m;
}

// ------------------------------------------------------------------------------------------------------------
// Colour: PIL's ImageEnhance, i.e. Image.blend(degenerate, img, factor) in float with truncation.
void blend_into(Image& img, const Image& degenerate, double factor) {
  const float alpha = static_cast<float>(factor);  // libImaging's ImagingBlend takes a float
  for (size_t i = 0; i < img.pixels.size(); ++i) {
    const int a = degenerate.pixels[i], b = img.pixels[i];
    const float v = static_cast<float>(a + alpha * static_cast<float>(b - a));
    img.pixels[i] = v <= 0.0f ? 0 : v >= 255.0f ? 255 : static_cast<uint8_t>(v);
  }
}

// PIL's convert("L"): ITU-R 601 luma in 16-bit fixed point (libImaging/Convert.c).
uint8_t luma(const uint8_t* p, int c) {
  return c >= 3 ? static_cast<uint8_t>((p[0] * 19595 + p[1] * 38470 + p[2] * 7471 + 0x8000) >> 16) : p[0];
}

Image gray_like(const Image& img) {  // convert("L").convert(mode)
  Image g(img.height, img.width, img.channels);
  const size_t n = static_cast<size_t>(img.height) * img.width;
  const int c = img.channels;
  for (size_t i = 0; i < n; ++i) {
    const uint8_t l = luma(&img.pixels[i * c], c);
    for (int ch = 0; ch < c; ++ch) g.pixels[i * c + ch] = l;
  }
  return g;
}

void adjust_contrast(Image& img, double factor) {
  // ImageEnhance.Contrast: a flat image at int(mean luma + 0.5).
  const size_t n = static_cast<size_t>(img.height) * img.width;
  double sum = 0.0;
  for (size_t i = 0; i < n; ++i) sum += luma(&img.pixels[i * img.channels], img.channels);
  const int mean = static_cast<int>(sum / static_cast<double>(std::max<size_t>(n, 1)) + 0.5);
  Image flat(img.height, img.width, img.channels);
  std::fill(flat.pixels.begin(), flat.pixels.end(), static_cast<uint8_t>(mean));
  blend_into(img, flat, factor);
}

void adjust_sharpness(Image& img, double factor) {
  // ImageEnhance.Sharpness: the degenerate image is ImageFilter.SMOOTH (3x3, centre 5, others 1, / 13, float
  // kernel, rounded); the border rows and columns keep their pixels (libImaging/Filter.c).
  Image smooth = img;
  const int w = img.width, h = img.height, c = img.channels;
  const float k1 = 1.0f / 13.0f, k5 = 5.0f / 13.0f;
  for (int y = 1; y + 1 < h; ++y) {
    const uint8_t* r0 = img.row(y - 1);
    const uint8_t* r1 = img.row(y);
    const uint8_t* r2 = img.row(y + 1);
    uint8_t* o = smooth.row(y);
    for (int x = 1; x + 1 < w; ++x) {
      for (int ch = 0; ch < c; ++ch) {
        const int l = (x - 1) * c + ch, m = x * c + ch, r = (x + 1) * c + ch;
        float ss = 0.0f;
        ss += r2[l] * k1 + r2[m] * k1 + r2[r] * k1;
        ss += r1[l] * k1 + r1[m] * k5 + r1[r] * k1;
        ss += r0[l] * k1 + r0[m] * k1 + r0[r] * k1;
        o[m] = ss <= 0.0f ? 0 : ss >= 255.0f ? 255 : static_cast<uint8_t>(ss + 0.5f);
      }
    }
  }
  blend_into(img, smooth, factor);
}

void apply_lut(Image& img, const std::vector<std::array<uint8_t, 256>>& luts) {
  const int c = img.channels;
  for (size_t i = 0; i < img.pixels.size(); ++i) img.pixels[i] = luts[i % c][img.pixels[i]];
}

std::vector<std::array<int64_t, 256>> histograms(const Image& img) {
  std::vector<std::array<int64_t, 256>> h(img.channels);
  for (auto& b : h) b.fill(0);
  for (size_t i = 0; i < img.pixels.size(); ++i) ++h[i % img.channels][img.pixels[i]];
  return h;
}

void autocontrast(Image& img) {  // ImageOps.autocontrast(cutoff=0), per channel
  std::vector<std::array<uint8_t, 256>> luts(img.channels);
  const auto hist = histograms(img);
  for (int ch = 0; ch < img.channels; ++ch) {
    const auto& h = hist[ch];
    int lo = 0, hi = 255;
    while (lo < 255 && h[lo] == 0) ++lo;
    while (hi > 0 && h[hi] == 0) --hi;
    for (int i = 0; i < 256; ++i) {
      if (hi <= lo) {
        luts[ch][i] = static_cast<uint8_t>(i);
      } else {
        const double scale = 255.0 / (hi - lo), offset = -lo * scale;
        luts[ch][i] = static_cast<uint8_t>(std::clamp(static_cast<int>(i * scale + offset), 0, 255));
      }
    }
  }
  apply_lut(img, luts);
}

void equalize(Image& img) {  // ImageOps.equalize, per channel
  std::vector<std::array<uint8_t, 256>> luts(img.channels);
  const auto hist = histograms(img);
  for (int ch = 0; ch < img.channels; ++ch) {
    const auto& h = hist[ch];
    int64_t total = 0, last = 0, used = 0;
    for (int i = 0; i < 256; ++i) {
      if (h[i] == 0) continue;
      total += h[i];
      last = h[i];
      ++used;
    }
    const int64_t step = used <= 1 ? 0 : (total - last) / 255;
    int64_t n = step / 2;
    for (int i = 0; i < 256; ++i) {
      if (step == 0) {
        luts[ch][i] = static_cast<uint8_t>(i);
      } else {
        luts[ch][i] = static_cast<uint8_t>(std::min<int64_t>(n / step, 255));
        n += h[i];
      }
    }
  }
  apply_lut(img, luts);
}

// ------------------------------------------------------------------------------------------------------------
// Magnitudes: torchvision builds them with torch.linspace in float32 and reads one back as a Python float, so
// int() of a translation (16 vs 15.999999) and the solarize thresholds depend on the last bit. linspace_at
// reproduces torch 1.13's CPU kernel as Debian builds it for x86-64 (AVX2): 16 values at a time as two 8-lane
// arange(base, step) vectors (base and lanes rounded twice), the rest one by one with a fused multiply-add
// (the kernel's scalar lambda, contracted by the compiler). The unit test compares every table with torch's;
// this file is compiled with -ffp-contract=off so the two-rounding steps stay two roundings.
double linspace_at(double start_d, double end_d, int64_t steps, int64_t index) {
  const float start = static_cast<float>(start_d), end = static_cast<float>(end_d);
  const float step = (end - start) / static_cast<float>(steps - 1);
  const int64_t halfway = steps / 2;
  constexpr int64_t kLanes = 8, kBlock = 2 * kLanes;
  const int64_t vectorised = steps / kBlock * kBlock;
  if (index < vectorised) {
    const int64_t first = index / kLanes * kLanes;
    const float base =
        first < halfway ? start + step * static_cast<float>(first) : end - step * static_cast<float>(steps - first - 1);
    return static_cast<double>(base + static_cast<float>(index - first) * step);
  }
  return static_cast<double>(index < halfway ? std::fmaf(step, static_cast<float>(index), start)
                                             : std::fmaf(-step, static_cast<float>(steps - index - 1), end));
}

// torchvision's `8 - (arange(n) / ((n - 1) / k)).round().int()` (round half to even).
double posterize_bits(int64_t bins, double k, int64_t index) {
  const float q = static_cast<float>(index) / static_cast<float>((bins - 1) / k);
  return 8.0 - std::nearbyint(q);
}

struct OpSpace {
  AugmentOp op;
  bool has_magnitudes;
  bool is_signed;
};

// _augmentation_space's ops in dictionary order (RandAugment and TrivialAugmentWide share it; AutoAugment adds
// Invert and drops Identity, but picks ops by name from its policies).
constexpr std::array<OpSpace, 14> kRandSpace = {{
    {AugmentOp::kIdentity, false, false},
    {AugmentOp::kShearX, true, true},
    {AugmentOp::kShearY, true, true},
    {AugmentOp::kTranslateX, true, true},
    {AugmentOp::kTranslateY, true, true},
    {AugmentOp::kRotate, true, true},
    {AugmentOp::kBrightness, true, true},
    {AugmentOp::kColor, true, true},
    {AugmentOp::kContrast, true, true},
    {AugmentOp::kSharpness, true, true},
    {AugmentOp::kPosterize, true, false},
    {AugmentOp::kSolarize, true, false},
    {AugmentOp::kAutoContrast, false, false},
    {AugmentOp::kEqualize, false, false},
}};

bool is_signed(AugmentOp op) {
  for (const auto& s : kRandSpace) {
    if (s.op == op) return s.is_signed;
  }
  return false;  // Invert
}

// AutoAugment and RandAugment's _augmentation_space(num_bins, (h, w)): the magnitude of bin `index`.
double rand_magnitude(AugmentOp op, int64_t bins, int64_t index, int height, int width) {
  switch (op) {
    case AugmentOp::kShearX:
    case AugmentOp::kShearY:
      return linspace_at(0.0, 0.3, bins, index);
    case AugmentOp::kTranslateX:
      return linspace_at(0.0, 150.0 / 331.0 * width, bins, index);
    case AugmentOp::kTranslateY:
      return linspace_at(0.0, 150.0 / 331.0 * height, bins, index);
    case AugmentOp::kRotate:
      return linspace_at(0.0, 30.0, bins, index);
    case AugmentOp::kBrightness:
    case AugmentOp::kColor:
    case AugmentOp::kContrast:
    case AugmentOp::kSharpness:
      return linspace_at(0.0, 0.9, bins, index);
    case AugmentOp::kPosterize:
      return posterize_bits(bins, 4.0, index);
    case AugmentOp::kSolarize:
      return linspace_at(255.0, 0.0, bins, index);
    default:
      return 0.0;
  }
}

// TrivialAugmentWide's _augmentation_space(num_bins).
double wide_magnitude(AugmentOp op, int64_t bins, int64_t index) {
  switch (op) {
    case AugmentOp::kShearX:
    case AugmentOp::kShearY:
    case AugmentOp::kBrightness:
    case AugmentOp::kColor:
    case AugmentOp::kContrast:
    case AugmentOp::kSharpness:
      return linspace_at(0.0, 0.99, bins, index);
    case AugmentOp::kTranslateX:
    case AugmentOp::kTranslateY:
      return linspace_at(0.0, 32.0, bins, index);
    case AugmentOp::kRotate:
      return linspace_at(0.0, 135.0, bins, index);
    case AugmentOp::kPosterize:
      return posterize_bits(bins, 6.0, index);
    case AugmentOp::kSolarize:
      return linspace_at(255.0, 0.0, bins, index);
    default:
      return 0.0;
  }
}

struct PolicyOp {
  AugmentOp op;
  double probability;
  int bin;  // -1: no magnitude
};
using SubPolicy = std::array<PolicyOp, 2>;

#define OP(name, p, bin) \
  PolicyOp { AugmentOp::k##name, p, bin }
// torchvision's AutoAugment._get_policies, in order (index = the drawn sub-policy).
const std::vector<SubPolicy>& policies(AutoAugmentPolicy policy) {
  static const std::vector<SubPolicy> imagenet = {
      {OP(Posterize, 0.4, 8), OP(Rotate, 0.6, 9)},    {OP(Solarize, 0.6, 5), OP(AutoContrast, 0.6, -1)},
      {OP(Equalize, 0.8, -1), OP(Equalize, 0.6, -1)}, {OP(Posterize, 0.6, 7), OP(Posterize, 0.6, 6)},
      {OP(Equalize, 0.4, -1), OP(Solarize, 0.2, 4)},  {OP(Equalize, 0.4, -1), OP(Rotate, 0.8, 8)},
      {OP(Solarize, 0.6, 3), OP(Equalize, 0.6, -1)},  {OP(Posterize, 0.8, 5), OP(Equalize, 1.0, -1)},
      {OP(Rotate, 0.2, 3), OP(Solarize, 0.6, 8)},     {OP(Equalize, 0.6, -1), OP(Posterize, 0.4, 6)},
      {OP(Rotate, 0.8, 8), OP(Color, 0.4, 0)},        {OP(Rotate, 0.4, 9), OP(Equalize, 0.6, -1)},
      {OP(Equalize, 0.0, -1), OP(Equalize, 0.8, -1)}, {OP(Invert, 0.6, -1), OP(Equalize, 1.0, -1)},
      {OP(Color, 0.6, 4), OP(Contrast, 1.0, 8)},      {OP(Rotate, 0.8, 8), OP(Color, 1.0, 2)},
      {OP(Color, 0.8, 8), OP(Solarize, 0.8, 7)},      {OP(Sharpness, 0.4, 7), OP(Invert, 0.6, -1)},
      {OP(ShearX, 0.6, 5), OP(Equalize, 1.0, -1)},    {OP(Color, 0.4, 0), OP(Equalize, 0.6, -1)},
      {OP(Equalize, 0.4, -1), OP(Solarize, 0.2, 4)},  {OP(Solarize, 0.6, 5), OP(AutoContrast, 0.6, -1)},
      {OP(Invert, 0.6, -1), OP(Equalize, 1.0, -1)},   {OP(Color, 0.6, 4), OP(Contrast, 1.0, 8)},
      {OP(Equalize, 0.8, -1), OP(Equalize, 0.6, -1)},
  };
  static const std::vector<SubPolicy> cifar10 = {
      {OP(Invert, 0.1, -1), OP(Contrast, 0.2, 6)},         {OP(Rotate, 0.7, 2), OP(TranslateX, 0.3, 9)},
      {OP(Sharpness, 0.8, 1), OP(Sharpness, 0.9, 3)},      {OP(ShearY, 0.5, 8), OP(TranslateY, 0.7, 9)},
      {OP(AutoContrast, 0.5, -1), OP(Equalize, 0.9, -1)},  {OP(ShearY, 0.2, 7), OP(Posterize, 0.3, 7)},
      {OP(Color, 0.4, 3), OP(Brightness, 0.6, 7)},         {OP(Sharpness, 0.3, 9), OP(Brightness, 0.7, 9)},
      {OP(Equalize, 0.6, -1), OP(Equalize, 0.5, -1)},      {OP(Contrast, 0.6, 7), OP(Sharpness, 0.6, 5)},
      {OP(Color, 0.7, 7), OP(TranslateX, 0.5, 8)},         {OP(Equalize, 0.3, -1), OP(AutoContrast, 0.4, -1)},
      {OP(TranslateY, 0.4, 3), OP(Sharpness, 0.2, 6)},     {OP(Brightness, 0.9, 6), OP(Color, 0.2, 8)},
      {OP(Solarize, 0.5, 2), OP(Invert, 0.0, -1)},         {OP(Equalize, 0.2, -1), OP(AutoContrast, 0.6, -1)},
      {OP(Equalize, 0.2, -1), OP(Equalize, 0.6, -1)},      {OP(Color, 0.9, 9), OP(Equalize, 0.6, -1)},
      {OP(AutoContrast, 0.8, -1), OP(Solarize, 0.2, 8)},   {OP(Brightness, 0.1, 3), OP(Color, 0.7, 0)},
      {OP(Solarize, 0.4, 5), OP(AutoContrast, 0.9, -1)},   {OP(TranslateY, 0.9, 9), OP(TranslateY, 0.7, 9)},
      {OP(AutoContrast, 0.9, -1), OP(Solarize, 0.8, 3)},   {OP(Equalize, 0.8, -1), OP(Invert, 0.1, -1)},
      {OP(TranslateY, 0.7, 9), OP(AutoContrast, 0.9, -1)},
  };
  static const std::vector<SubPolicy> svhn = {
      {OP(ShearX, 0.9, 4), OP(Invert, 0.2, -1)},        {OP(ShearY, 0.9, 8), OP(Invert, 0.7, -1)},
      {OP(Equalize, 0.6, -1), OP(Solarize, 0.6, 6)},    {OP(Invert, 0.9, -1), OP(Equalize, 0.6, -1)},
      {OP(Equalize, 0.6, -1), OP(Rotate, 0.9, 3)},      {OP(ShearX, 0.9, 4), OP(AutoContrast, 0.8, -1)},
      {OP(ShearY, 0.9, 8), OP(Invert, 0.4, -1)},        {OP(ShearY, 0.9, 5), OP(Solarize, 0.2, 6)},
      {OP(Invert, 0.9, -1), OP(AutoContrast, 0.8, -1)}, {OP(Equalize, 0.6, -1), OP(Rotate, 0.9, 3)},
      {OP(ShearX, 0.9, 4), OP(Solarize, 0.3, 3)},       {OP(ShearY, 0.8, 8), OP(Invert, 0.7, -1)},
      {OP(Equalize, 0.9, -1), OP(TranslateY, 0.6, 6)},  {OP(Invert, 0.9, -1), OP(Equalize, 0.6, -1)},
      {OP(Contrast, 0.3, 3), OP(Rotate, 0.8, 4)},       {OP(Invert, 0.8, -1), OP(TranslateY, 0.0, 2)},
      {OP(ShearY, 0.7, 6), OP(Solarize, 0.4, 8)},       {OP(Invert, 0.6, -1), OP(Rotate, 0.8, 4)},
      {OP(ShearY, 0.3, 7), OP(TranslateX, 0.9, 3)},     {OP(ShearX, 0.1, 6), OP(Invert, 0.6, -1)},
      {OP(Solarize, 0.7, 2), OP(TranslateY, 0.6, 7)},   {OP(ShearY, 0.8, 4), OP(Invert, 0.8, -1)},
      {OP(ShearX, 0.7, 9), OP(TranslateY, 0.8, 3)},     {OP(ShearY, 0.8, 5), OP(AutoContrast, 0.7, -1)},
      {OP(ShearX, 0.7, 2), OP(Invert, 0.1, -1)},
  };
  switch (policy) {
    case AutoAugmentPolicy::kCifar10:
      return cifar10;
    case AutoAugmentPolicy::kSvhn:
      return svhn;
    default:
      return imagenet;
  }
}
#undef OP

}  // namespace

std::string augment_op_name(AugmentOp op) { return kOpNames[static_cast<size_t>(op)]; }

AugmentOp parse_augment_op(const std::string& name) {
  for (size_t i = 0; i < kOpNames.size(); ++i) {
    if (name == kOpNames[i]) return static_cast<AugmentOp>(i);
  }
  throw Error(concat("unknown augmentation op '", name, "'"));
}

double augment_magnitude(AutoAugmentPolicy policy, AugmentOp op, int bin, int height, int width) {
  switch (policy) {
    case AutoAugmentPolicy::kRandAugment:
      return rand_magnitude(op, 31, bin, height, width);
    case AutoAugmentPolicy::kTrivialAugmentWide:
      return wide_magnitude(op, 31, bin);
    default:
      return rand_magnitude(op, 10, bin, height, width);
  }
}

void apply_augment_op(Image& img, AugmentOp op, double magnitude) {
  const int w = img.width, h = img.height;
  switch (op) {
    case AugmentOp::kIdentity:
      return;
    case AugmentOp::kShearX:  // shear given as degrees(atan(m)) about the corner, as torchvision does
      affine_pil(img, inverse_affine(0, 0, 0.0, 0, 0, degrees(std::atan(magnitude)), 0.0));
      return;
    case AugmentOp::kShearY:
      affine_pil(img, inverse_affine(0, 0, 0.0, 0, 0, 0.0, degrees(std::atan(magnitude))));
      return;
    case AugmentOp::kTranslateX:  // int(): whole pixels, truncated toward zero
      affine_pil(img, inverse_affine(w * 0.5, h * 0.5, 0.0, std::trunc(magnitude), 0, 0.0, 0.0));
      return;
    case AugmentOp::kTranslateY:
      affine_pil(img, inverse_affine(w * 0.5, h * 0.5, 0.0, 0, std::trunc(magnitude), 0.0, 0.0));
      return;
    case AugmentOp::kRotate: {
      // PIL returns a plain copy for 0 and an exact transpose for 180 (and 90/270 when square).
      const double a = std::fmod(std::fmod(magnitude, 360.0) + 360.0, 360.0);
      if (a == 0.0) return;
      affine_pil(img, rotate_matrix(w, h, magnitude));
      return;
    }
    case AugmentOp::kBrightness:
      blend_into(img, Image(h, w, img.channels), 1.0 + magnitude);
      return;
    case AugmentOp::kColor:
      blend_into(img, gray_like(img), 1.0 + magnitude);
      return;
    case AugmentOp::kContrast:
      adjust_contrast(img, 1.0 + magnitude);
      return;
    case AugmentOp::kSharpness:
      adjust_sharpness(img, 1.0 + magnitude);
      return;
    case AugmentOp::kPosterize: {
      const int bits = std::clamp(static_cast<int>(magnitude), 0, 8);
      const uint8_t mask = static_cast<uint8_t>(~((1 << (8 - bits)) - 1));
      for (auto& v : img.pixels) v &= mask;
      return;
    }
    case AugmentOp::kSolarize:
      for (auto& v : img.pixels) {
        if (!(v < magnitude)) v = static_cast<uint8_t>(255 - v);
      }
      return;
    case AugmentOp::kAutoContrast:
      autocontrast(img);
      return;
    case AugmentOp::kEqualize:
      equalize(img);
      return;
    case AugmentOp::kInvert:
      for (auto& v : img.pixels) v = static_cast<uint8_t>(255 - v);
      return;
  }
}

void auto_augment(Image& img, const AutoAugmentOptions& o, Rng& rng) {
  switch (o.policy) {
    case AutoAugmentPolicy::kNone:
      return;
    case AutoAugmentPolicy::kRandAugment: {
      constexpr int64_t kBins = 31;
      for (int i = 0; i < o.num_ops; ++i) {
        const OpSpace& s = kRandSpace[rng.below(kRandSpace.size())];
        double m = s.has_magnitudes ? rand_magnitude(s.op, kBins, o.magnitude, img.height, img.width) : 0.0;
        if (s.is_signed && rng.below(2) == 1) m = -m;
        apply_augment_op(img, s.op, m);
      }
      return;
    }
    case AutoAugmentPolicy::kTrivialAugmentWide: {
      constexpr int64_t kBins = 31;
      const OpSpace& s = kRandSpace[rng.below(kRandSpace.size())];
      double m = s.has_magnitudes ? wide_magnitude(s.op, kBins, static_cast<int64_t>(rng.below(kBins))) : 0.0;
      if (s.is_signed && rng.below(2) == 1) m = -m;
      apply_augment_op(img, s.op, m);
      return;
    }
    default: {
      const auto& table = policies(o.policy);
      const SubPolicy& sub = table[rng.below(table.size())];
      const double u[2] = {rng.uniform(), rng.uniform()};
      const uint64_t sign[2] = {rng.below(2), rng.below(2)};
      for (int i = 0; i < 2; ++i) {
        if (!(u[i] <= sub[i].probability)) continue;
        double m = sub[i].bin >= 0 ? rand_magnitude(sub[i].op, 10, sub[i].bin, img.height, img.width) : 0.0;
        if (is_signed(sub[i].op) && sign[i] == 0) m = -m;
        apply_augment_op(img, sub[i].op, m);
      }
      return;
    }
  }
}

}  // namespace stride::data
