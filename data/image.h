// An 8-bit image in height x width x channels order, the currency between decode and transforms.
#pragma once

#include <cstdint>
#include <vector>

namespace stride::data {

struct Image {
  int height = 0;
  int width = 0;
  int channels = 0;
  std::vector<uint8_t> pixels;  // height * width * channels bytes, row-major HWC

  Image() = default;
  Image(int h, int w, int c) : height(h), width(w), channels(c), pixels(static_cast<size_t>(h) * w * c) {}
  uint8_t* row(int y) { return pixels.data() + static_cast<size_t>(y) * width * channels; }
  const uint8_t* row(int y) const { return pixels.data() + static_cast<size_t>(y) * width * channels; }
  bool empty() const { return pixels.empty(); }
};

}  // namespace stride::data
