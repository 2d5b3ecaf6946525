#include "data/transforms.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "common/error.h"

namespace stride::data {

AugmentOptions::Crop parse_crop(const std::string& name) {
  if (name == "none") return AugmentOptions::Crop::kNone;
  if (name == "pad-crop") return AugmentOptions::Crop::kPadCrop;
  if (name == "random-resized") return AugmentOptions::Crop::kRandomResized;
  if (name == "center") return AugmentOptions::Crop::kCenter;
  if (name == "center-pad") return AugmentOptions::Crop::kCenterPad;
  throw UsageError(concat("unknown crop '", name, "' (none, pad-crop, random-resized, center, center-pad)"));
}

std::string crop_name(AugmentOptions::Crop crop) {
  switch (crop) {
    case AugmentOptions::Crop::kNone:
      return "none";
    case AugmentOptions::Crop::kPadCrop:
      return "pad-crop";
    case AugmentOptions::Crop::kRandomResized:
      return "random-resized";
    case AugmentOptions::Crop::kCenter:
      return "center";
    case AugmentOptions::Crop::kCenterPad:
      return "center-pad";
  }
  return "none";
}

Box random_resized_box(int width, int height, const AugmentOptions& o, Rng& rng) {
  const double area = static_cast<double>(width) * height;
  const double log_lo = std::log(o.ratio_min), log_hi = std::log(o.ratio_max);
  for (int attempt = 0; attempt < 10; ++attempt) {
    const double target = area * rng.uniform(o.scale_min, o.scale_max);
    const double ratio = std::exp(rng.uniform(log_lo, log_hi));
    const int w = static_cast<int>(std::lround(std::sqrt(target * ratio)));
    const int h = static_cast<int>(std::lround(std::sqrt(target / ratio)));
    if (w > 0 && h > 0 && w <= width && h <= height) {
      const int x = static_cast<int>(rng.below(static_cast<uint64_t>(width - w + 1)));
      const int y = static_cast<int>(rng.below(static_cast<uint64_t>(height - h + 1)));
      return {double(x), double(y), double(w), double(h)};
    }
  }
  // Fallback: the largest centred crop with an aspect ratio inside the range.
  const double in_ratio = static_cast<double>(width) / height;
  double w = width, h = height;
  if (in_ratio < o.ratio_min) {
    h = std::round(w / o.ratio_min);
  } else if (in_ratio > o.ratio_max) {
    w = std::round(h * o.ratio_max);
  }
  return {std::floor((width - w) / 2), std::floor((height - h) / 2), w, h};
}

Box center_box(int width, int height, int size, int resize) {
  const double scale = static_cast<double>(resize) / std::min(width, height);
  const double side = size / scale;
  return {(width - side) / 2.0, (height - side) / 2.0, std::min<double>(side, width), std::min<double>(side, height)};
}

namespace {

// Filter taps for every output coordinate, flattened with a fixed count per output (zero-padded) so the inner
// loops have a constant trip count the compiler can unroll.
struct Taps {
  int ksize = 0;
  std::vector<int> first;      // [out]
  std::vector<float> weights;  // [out * ksize]
};

Taps make_taps(double start, double length, int in_size, int out_size) {
  const double scale = length / out_size;
  const double support = std::max(1.0, scale);  // triangle radius in source pixels
  Taps t;
  // Every tap lies in [0, in_size), so a window wider than the input is never needed (and must not be read).
  t.ksize = std::min(static_cast<int>(std::ceil(support)) * 2 + 1, in_size);
  t.first.resize(out_size);
  t.weights.assign(static_cast<size_t>(out_size) * t.ksize, 0.0f);
  std::vector<double> w(t.ksize);
  for (int i = 0; i < out_size; ++i) {
    const double center = start + (i + 0.5) * scale;
    const int lo = std::max(static_cast<int>(std::floor(center - support)), 0);
    const int hi = std::min(static_cast<int>(std::ceil(center + support)), in_size);
    // Start at lo, but never so late that lo + ksize runs past the input.
    const int first = std::max(0, std::min(lo, in_size - t.ksize));
    double total = 0.0;
    for (int k = 0; k < t.ksize; ++k) {
      const int s = first + k;
      w[k] = (s >= lo && s < hi && s < in_size) ? std::max(0.0, 1.0 - std::abs((s + 0.5 - center) / support)) : 0.0;
      total += w[k];
    }
    if (total <= 0.0) {  // box outside the image (cannot happen for valid boxes): nearest pixel
      std::fill(w.begin(), w.end(), 0.0);
      const int nearest = std::clamp(static_cast<int>(center), 0, in_size - 1);
      if (nearest - first < t.ksize) w[nearest - first] = 1.0;
      total = 1.0;
    }
    t.first[i] = first;
    for (int k = 0; k < t.ksize; ++k)
      t.weights[static_cast<size_t>(i) * t.ksize + k] = static_cast<float>(w[k] / total);
  }
  return t;
}

// One row: out[x * C + ch] = sum_k w[x, k] * in[(first[x] + k) * C + ch].
template <int C>
void horizontal_pass(const uint8_t* in, const Taps& t, float* out) {
  const int ks = t.ksize;
  for (size_t x = 0; x < t.first.size(); ++x) {
    const uint8_t* p = in + static_cast<size_t>(t.first[x]) * C;
    const float* w = &t.weights[x * ks];
    float acc[C] = {};
    for (int k = 0; k < ks; ++k) {
      for (int ch = 0; ch < C; ++ch) acc[ch] += w[k] * p[k * C + ch];
    }
    for (int ch = 0; ch < C; ++ch) out[x * C + ch] = acc[ch];
  }
}

void horizontal_pass_any(const uint8_t* in, const Taps& t, float* out, int c) {
  const int ks = t.ksize;
  for (size_t x = 0; x < t.first.size(); ++x) {
    for (int ch = 0; ch < c; ++ch) {
      float acc = 0.0f;
      const uint8_t* p = in + static_cast<size_t>(t.first[x]) * c + ch;
      for (int k = 0; k < ks; ++k) acc += t.weights[x * ks + k] * p[k * c];
      out[x * c + ch] = acc;
    }
  }
}

inline uint8_t to_u8(float v) { return static_cast<uint8_t>(std::clamp(v + 0.5f, 0.0f, 255.0f)); }

}  // namespace

Image resize_box(const Image& src, const Box& box, int out_w, int out_h) {
  STRIDE_CHECK(out_w > 0 && out_h > 0 && box.w > 0 && box.h > 0, "empty resize");
  const int c = src.channels;
  const Taps xt = make_taps(box.x, box.w, src.width, out_w);
  const Taps yt = make_taps(box.y, box.h, src.height, out_h);
  const int row_lo = yt.first.front();
  const int row_hi = std::min(src.height, yt.first.back() + yt.ksize);
  // Horizontal pass over the rows the vertical pass needs.
  const size_t row = static_cast<size_t>(out_w) * c;
  std::vector<float> mid(static_cast<size_t>(row_hi - row_lo) * row);
  for (int y = row_lo; y < row_hi; ++y) {
    float* out = &mid[static_cast<size_t>(y - row_lo) * row];
    switch (c) {
      case 1:
        horizontal_pass<1>(src.row(y), xt, out);
        break;
      case 3:
        horizontal_pass<3>(src.row(y), xt, out);
        break;
      default:
        horizontal_pass_any(src.row(y), xt, out, c);
    }
  }
  Image dst(out_h, out_w, c);
  std::vector<float> acc(row);
  for (int y = 0; y < out_h; ++y) {
    std::fill(acc.begin(), acc.end(), 0.0f);
    for (int k = 0; k < yt.ksize; ++k) {
      const float w = yt.weights[static_cast<size_t>(y) * yt.ksize + k];
      const int sy = yt.first[y] + k;
      if (w == 0.0f || sy >= row_hi) continue;
      const float* in = &mid[static_cast<size_t>(sy - row_lo) * row];
      for (size_t i = 0; i < row; ++i) acc[i] += w * in[i];
    }
    uint8_t* out = dst.row(y);
    for (size_t i = 0; i < row; ++i) out[i] = to_u8(acc[i]);
  }
  return dst;
}

Image pad_crop(const Image& src, int pad, int size, int x0, int y0) {
  Image dst(size, size, src.channels);  // zero-initialised: the padding
  const int c = src.channels;
  for (int y = 0; y < size; ++y) {
    const int sy = y0 + y - pad;
    if (sy < 0 || sy >= src.height) continue;
    const int x_begin = std::max(0, pad - x0), x_end = std::min(size, src.width + pad - x0);
    if (x_end <= x_begin) continue;
    std::memcpy(dst.row(y) + static_cast<size_t>(x_begin) * c,
                src.row(sy) + static_cast<size_t>(x0 + x_begin - pad) * c, static_cast<size_t>(x_end - x_begin) * c);
  }
  return dst;
}

void hflip(Image& img) {
  const int c = img.channels;
  for (int y = 0; y < img.height; ++y) {
    uint8_t* r = img.row(y);
    for (int a = 0, b = img.width - 1; a < b; ++a, --b) {
      for (int ch = 0; ch < c; ++ch) std::swap(r[a * c + ch], r[b * c + ch]);
    }
  }
}

void color_jitter(Image& img, double brightness, double contrast, double saturation) {
  const size_t n = static_cast<size_t>(img.height) * img.width;
  const int c = img.channels;
  std::vector<float> px(img.pixels.begin(), img.pixels.end());
  for (auto& v : px) v = std::min(255.0f, static_cast<float>(v * brightness));
  auto gray = [&](size_t i) {
    return c >= 3 ? 0.299f * px[i * c] + 0.587f * px[i * c + 1] + 0.114f * px[i * c + 2] : px[i * c];
  };
  if (contrast != 1.0) {
    double mean = 0.0;
    for (size_t i = 0; i < n; ++i) mean += gray(i);
    const float m = static_cast<float>(mean / std::max<size_t>(n, 1));
    for (auto& v : px) v = std::clamp(static_cast<float>((v - m) * contrast + m), 0.0f, 255.0f);
  }
  if (saturation != 1.0 && c >= 3) {
    for (size_t i = 0; i < n; ++i) {
      const float g = gray(i);
      for (int ch = 0; ch < 3; ++ch) {
        float& v = px[i * c + ch];
        v = std::clamp(static_cast<float>((v - g) * saturation + g), 0.0f, 255.0f);
      }
    }
  }
  for (size_t i = 0; i < px.size(); ++i) img.pixels[i] = to_u8(px[i]);
}

void fill_rect(Image& img, int x0, int y0, int w, int h, uint8_t value) {
  const int xa = std::max(0, x0), xb = std::min(img.width, x0 + w);
  const int ya = std::max(0, y0), yb = std::min(img.height, y0 + h);
  if (xa >= xb) return;
  for (int y = ya; y < yb; ++y) {
    std::memset(img.row(y) + static_cast<size_t>(xa) * img.channels, value,
                static_cast<size_t>(xb - xa) * img.channels);
  }
}

Image augment(const uint8_t* data, size_t n, Codec codec, const AugmentOptions& o, Rng& rng) {
  using Crop = AugmentOptions::Crop;
  Image img;
  if (o.crop == Crop::kRandomResized || o.crop == Crop::kCenter) {
    STRIDE_CHECK(o.size > 0, "crop size must be set");
    const ImageInfo info = peek_image(codec, data, n);
    Box box = o.crop == Crop::kRandomResized
                  ? random_resized_box(info.width, info.height, o, rng)
                  : center_box(info.width, info.height, o.size, o.resize > 0 ? o.resize : o.size * 256 / 224);
    // Note [Scaled JPEG decode]
    // libjpeg-turbo can decode at M/8 of full size for M in 1..8 doing less IDCT work. Pick the smallest M
    // that keeps the crop at least as large as the output, so quality is the same as decoding at full size
    // and shrinking, and map the crop box into the smaller image.
    int eighths = 8;
    if (codec == Codec::kJpeg && o.jpeg_scaled_decode) {
      while (eighths > 1 && box.w * (eighths - 1) / 8.0 >= o.size && box.h * (eighths - 1) / 8.0 >= o.size) {
        --eighths;
      }
    }
    img = decode_image(codec, data, n, eighths, o.channels);
    if (eighths != 8) {
      const double sx = static_cast<double>(img.width) / info.width;
      const double sy = static_cast<double>(img.height) / info.height;
      box = {box.x * sx, box.y * sy, box.w * sx, box.h * sy};
    }
    img = resize_box(img, box, o.size, o.size);
  } else {
    img = decode_image(codec, data, n, 8, o.channels);
    if (o.crop == Crop::kPadCrop) {
      const int size = o.size > 0 ? o.size : std::min(img.width, img.height);
      const int x0 = static_cast<int>(rng.below(static_cast<uint64_t>(img.width + 2 * o.pad - size + 1)));
      const int y0 = static_cast<int>(rng.below(static_cast<uint64_t>(img.height + 2 * o.pad - size + 1)));
      img = pad_crop(img, o.pad, size, x0, y0);
    } else if (o.crop == Crop::kCenterPad) {
      STRIDE_CHECK(o.size > 0, "crop size must be set");
      const int pad = std::max(0, (o.size - std::min(img.width, img.height) + 1) / 2);
      img = pad_crop(img, pad, o.size, (img.width + 2 * pad - o.size) / 2, (img.height + 2 * pad - o.size) / 2);
    }
  }
  if (o.hflip && rng.bernoulli(0.5)) hflip(img);
  auto_augment(img, o.auto_augment, rng);  // draws nothing when off, so other streams stay as they were
  if (o.brightness > 0 || o.contrast > 0 || o.saturation > 0) {
    auto factor = [&](double s) { return s > 0 ? rng.uniform(std::max(0.0, 1.0 - s), 1.0 + s) : 1.0; };
    const double b = factor(o.brightness), c = factor(o.contrast), s = factor(o.saturation);
    color_jitter(img, b, c, s);
  }
  if (o.cutout > 0) {
    const int cx = static_cast<int>(rng.below(static_cast<uint64_t>(img.width)));
    const int cy = static_cast<int>(rng.below(static_cast<uint64_t>(img.height)));
    fill_rect(img, cx - o.cutout / 2, cy - o.cutout / 2, o.cutout, o.cutout, 0);
  }
  if (o.erasing > 0 && rng.bernoulli(o.erasing)) {
    const double area = static_cast<double>(img.width) * img.height;
    for (int attempt = 0; attempt < 10; ++attempt) {
      const double target = area * rng.uniform(0.02, 0.33);
      const double ratio = std::exp(rng.uniform(std::log(0.3), std::log(3.3)));
      const int h = static_cast<int>(std::lround(std::sqrt(target * ratio)));
      const int w = static_cast<int>(std::lround(std::sqrt(target / ratio)));
      if (w < img.width && h < img.height && w > 0 && h > 0) {
        const int x = static_cast<int>(rng.below(static_cast<uint64_t>(img.width - w + 1)));
        const int y = static_cast<int>(rng.below(static_cast<uint64_t>(img.height - h + 1)));
        for (int yy = y; yy < y + h; ++yy) {
          uint8_t* r = img.row(yy) + static_cast<size_t>(x) * img.channels;
          for (int i = 0; i < w * img.channels; ++i) r[i] = static_cast<uint8_t>(rng.below(256));
        }
        break;
      }
    }
  }
  return img;
}

}  // namespace stride::data
