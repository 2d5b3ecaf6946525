// Encoded image formats a shard member may hold: JPEG (libjpeg-turbo, with DCT-domain downscaling), PNG
// (libpng) and .npy (uint8, HxW or HxWxC). Functions are thread-safe; each call owns its decoder state.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "data/image.h"

namespace stride::data {

enum class Codec { kJpeg, kPng, kNpy, kUnknown };

// From a member extension: "jpg"/"jpeg" -> kJpeg, "png" -> kPng, "npy" -> kNpy.
Codec codec_for(const std::string& ext);

struct ImageInfo {
  int height = 0, width = 0, channels = 0;
};

// Reads only the header. Throws stride::Error on malformed data.
ImageInfo peek_image(Codec codec, const uint8_t* data, size_t n);

// Decodes. For JPEG, `scale_eighths` in 1..8 asks libjpeg-turbo to decode at (scale_eighths/8) of the size in
// the DCT domain, which is much cheaper than decoding full size and shrinking. Other codecs ignore it.
// `channels` 0 keeps the image's own (JPEG/PNG: gray stays 1, colour becomes 3), or forces 1 or 3.
Image decode_image(Codec codec, const uint8_t* data, size_t n, int scale_eighths = 8, int channels = 0);

// The size libjpeg-turbo produces at scale_eighths/8 (rounded up, as the library does).
int scaled_dimension(int dimension, int scale_eighths);

// .npy writing for shard creation: uint8 array of shape {h, w} (channels == 1 and squeeze) or {h, w, c}.
std::string encode_npy(const Image& image, bool squeeze_single_channel = true);

// Encoders, for shard creation, tools and tests. Throw stride::Error on failure.
std::string encode_jpeg(const Image& image, int quality = 90);
std::string encode_png(const Image& image);

}  // namespace stride::data
