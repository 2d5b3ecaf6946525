#include "data/codec.h"

#include <png.h>
#include <turbojpeg.h>

#include <cstring>
#include <memory>

#include "common/error.h"

namespace stride::data {
namespace {

// One decompressor per thread: creating one costs more than decoding a small image.
tjhandle jpeg_handle() {
  struct Deleter {
    void operator()(void* h) const { tjDestroy(h); }
  };
  thread_local std::unique_ptr<void, Deleter> handle(tjInitDecompress());
  if (!handle) throw Error("tjInitDecompress failed");
  return handle.get();
}

std::string tj_error(tjhandle h) { return tjGetErrorStr2(h); }

struct NpyHeader {
  std::vector<int64_t> shape;
  size_t data_offset = 0;
};

NpyHeader parse_npy(const uint8_t* data, size_t n) {
  if (n < 10 || std::memcmp(data, "\x93NUMPY", 6) != 0) throw Error("npy: bad magic");
  const int major = data[6];
  size_t header_len, start;
  if (major == 1) {
    header_len = data[8] | (static_cast<size_t>(data[9]) << 8);
    start = 10;
  } else if (major == 2 || major == 3) {
    if (n < 12) throw Error("npy: truncated header");
    header_len = data[8] | (static_cast<size_t>(data[9]) << 8) | (static_cast<size_t>(data[10]) << 16) |
                 (static_cast<size_t>(data[11]) << 24);
    start = 12;
  } else {
    throw Error(concat("npy: unsupported version ", major));
  }
  if (start + header_len > n) throw Error("npy: truncated header");
  const std::string h(reinterpret_cast<const char*>(data) + start, header_len);
  auto value_of = [&](const std::string& key) {
    const size_t k = h.find("'" + key + "'");
    if (k == std::string::npos) throw Error(concat("npy: header lacks '", key, "'"));
    size_t v = h.find(':', k);
    if (v == std::string::npos) throw Error("npy: malformed header");
    ++v;
    while (v < h.size() && h[v] == ' ') ++v;
    return v;
  };
  const size_t d = value_of("descr");
  const std::string descr = h.substr(d, h.find(',', d) - d);
  if (descr != "'|u1'" && descr != "'<u1'" && descr != "'>u1'") {
    throw Error(concat("npy: dtype ", descr, " is not uint8"));
  }
  if (h.compare(value_of("fortran_order"), 5, "False") != 0) throw Error("npy: fortran order is not supported");
  size_t s = value_of("shape");
  if (h[s] != '(') throw Error("npy: malformed shape");
  NpyHeader out;
  ++s;
  while (s < h.size() && h[s] != ')') {
    while (s < h.size() && (h[s] == ' ' || h[s] == ',')) ++s;
    if (h[s] == ')') break;
    char* end = nullptr;
    const long long dim = std::strtoll(h.c_str() + s, &end, 10);
    if (end == h.c_str() + s || dim < 0) throw Error("npy: malformed shape");
    out.shape.push_back(dim);
    s = static_cast<size_t>(end - h.c_str());
  }
  if (out.shape.size() != 2 && out.shape.size() != 3) {
    throw Error(concat("npy: image arrays must be HxW or HxWxC, got ", out.shape.size(), " dimensions"));
  }
  out.data_offset = start + header_len;
  size_t bytes = 1;
  for (int64_t dim : out.shape) bytes *= static_cast<size_t>(dim);
  if (out.data_offset + bytes != n) {
    throw Error(concat("npy: data is ", n - out.data_offset, " bytes, shape needs ", bytes));
  }
  return out;
}

Image convert_channels(Image img, int channels) {
  if (channels == 0 || channels == img.channels) return img;
  Image out(img.height, img.width, channels);
  const size_t pixels = static_cast<size_t>(img.height) * img.width;
  if (img.channels == 1 && channels == 3) {
    for (size_t i = 0; i < pixels; ++i) std::memset(&out.pixels[3 * i], img.pixels[i], 3);
  } else if (img.channels >= 3 && channels == 1) {
    for (size_t i = 0; i < pixels; ++i) {
      const uint8_t* p = &img.pixels[img.channels * i];
      out.pixels[i] = static_cast<uint8_t>((299 * p[0] + 587 * p[1] + 114 * p[2] + 500) / 1000);
    }
  } else if (img.channels == 4 && channels == 3) {
    for (size_t i = 0; i < pixels; ++i) std::memcpy(&out.pixels[3 * i], &img.pixels[4 * i], 3);
  } else {
    throw Error(concat("cannot convert a ", img.channels, "-channel image to ", channels, " channels"));
  }
  return out;
}

}  // namespace

Codec codec_for(const std::string& ext) {
  if (ext == "jpg" || ext == "jpeg" || ext == "JPG" || ext == "JPEG") return Codec::kJpeg;
  if (ext == "png" || ext == "PNG") return Codec::kPng;
  if (ext == "npy") return Codec::kNpy;
  return Codec::kUnknown;
}

int scaled_dimension(int dimension, int scale_eighths) { return (dimension * scale_eighths + 7) / 8; }

ImageInfo peek_image(Codec codec, const uint8_t* data, size_t n) {
  ImageInfo info;
  switch (codec) {
    case Codec::kJpeg: {
      tjhandle h = jpeg_handle();
      int subsamp = 0, colorspace = 0;
      if (tjDecompressHeader3(h, data, static_cast<unsigned long>(n), &info.width, &info.height, &subsamp,
                              &colorspace) != 0) {
        throw Error(concat("jpeg: ", tj_error(h)));
      }
      info.channels = colorspace == TJCS_GRAY ? 1 : 3;
      return info;
    }
    case Codec::kPng: {
      png_image image;
      std::memset(&image, 0, sizeof(image));
      image.version = PNG_IMAGE_VERSION;
      if (!png_image_begin_read_from_memory(&image, data, n)) throw Error(concat("png: ", image.message));
      info.width = static_cast<int>(image.width);
      info.height = static_cast<int>(image.height);
      info.channels = (image.format & PNG_FORMAT_FLAG_COLOR) ? 3 : 1;
      png_image_free(&image);
      return info;
    }
    case Codec::kNpy: {
      const auto h = parse_npy(data, n);
      info.height = static_cast<int>(h.shape[0]);
      info.width = static_cast<int>(h.shape[1]);
      info.channels = h.shape.size() == 3 ? static_cast<int>(h.shape[2]) : 1;
      return info;
    }
    case Codec::kUnknown:
      break;
  }
  throw Error("unknown image format");
}

Image decode_image(Codec codec, const uint8_t* data, size_t n, int scale_eighths, int channels) {
  switch (codec) {
    case Codec::kJpeg: {
      STRIDE_CHECK(scale_eighths >= 1 && scale_eighths <= 8, "scale ", scale_eighths, "/8 out of range");
      const ImageInfo info = peek_image(codec, data, n);
      const int c = channels ? channels : info.channels;
      Image img(scaled_dimension(info.height, scale_eighths), scaled_dimension(info.width, scale_eighths), c);
      tjhandle h = jpeg_handle();
      if (tjDecompress2(h, data, static_cast<unsigned long>(n), img.pixels.data(), img.width, 0, img.height,
                        c == 1 ? TJPF_GRAY : TJPF_RGB, TJFLAG_FASTDCT) != 0) {
        // Warnings (e.g. extraneous bytes) still produce an image; only hard errors are corrupt data.
        if (tjGetErrorCode(h) == TJERR_FATAL) throw Error(concat("jpeg: ", tj_error(h)));
      }
      return img;
    }
    case Codec::kPng: {
      png_image image;
      std::memset(&image, 0, sizeof(image));
      image.version = PNG_IMAGE_VERSION;
      if (!png_image_begin_read_from_memory(&image, data, n)) throw Error(concat("png: ", image.message));
      const bool color = channels ? channels == 3 : (image.format & PNG_FORMAT_FLAG_COLOR) != 0;
      image.format = color ? PNG_FORMAT_RGB : PNG_FORMAT_GRAY;
      Image img(static_cast<int>(image.height), static_cast<int>(image.width), color ? 3 : 1);
      if (!png_image_finish_read(&image, nullptr, img.pixels.data(), 0, nullptr)) {
        const std::string msg = image.message;
        png_image_free(&image);
        throw Error(concat("png: ", msg));
      }
      return img;
    }
    case Codec::kNpy: {
      const auto h = parse_npy(data, n);
      Image img(static_cast<int>(h.shape[0]), static_cast<int>(h.shape[1]),
                h.shape.size() == 3 ? static_cast<int>(h.shape[2]) : 1);
      std::memcpy(img.pixels.data(), data + h.data_offset, img.pixels.size());
      return convert_channels(std::move(img), channels);
    }
    case Codec::kUnknown:
      break;
  }
  throw Error("unknown image format");
}

std::string encode_npy(const Image& image, bool squeeze_single_channel) {
  std::string shape = concat("(", image.height, ", ", image.width);
  if (!(squeeze_single_channel && image.channels == 1)) shape += concat(", ", image.channels);
  shape += ")";
  std::string header = concat("{'descr': '|u1', 'fortran_order': False, 'shape': ", shape, ", }");
  // Pad so that magic + version + length + header is a multiple of 64, ending in '\n' (format spec).
  const size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header += '\n';
  std::string out("\x93NUMPY\x01\x00", 8);
  out += static_cast<char>(header.size() & 0xff);
  out += static_cast<char>((header.size() >> 8) & 0xff);
  out += header;
  out.append(reinterpret_cast<const char*>(image.pixels.data()), image.pixels.size());
  return out;
}

std::string encode_jpeg(const Image& image, int quality) {
  STRIDE_CHECK(image.channels == 1 || image.channels == 3, "JPEG needs 1 or 3 channels, got ", image.channels);
  struct Deleter {
    void operator()(void* h) const { tjDestroy(h); }
  };
  std::unique_ptr<void, Deleter> h(tjInitCompress());
  unsigned char* out = nullptr;
  unsigned long size = 0;
  const bool gray = image.channels == 1;
  if (tjCompress2(h.get(), image.pixels.data(), image.width, 0, image.height, gray ? TJPF_GRAY : TJPF_RGB, &out, &size,
                  gray ? TJSAMP_GRAY : TJSAMP_420, quality, 0) != 0) {
    const std::string msg = tjGetErrorStr2(h.get());
    tjFree(out);
    throw Error(concat("jpeg encode: ", msg));
  }
  std::string bytes(reinterpret_cast<const char*>(out), size);
  tjFree(out);
  return bytes;
}

std::string encode_png(const Image& image) {
  STRIDE_CHECK(image.channels == 1 || image.channels == 3, "PNG needs 1 or 3 channels, got ", image.channels);
  png_image p;
  std::memset(&p, 0, sizeof(p));
  p.version = PNG_IMAGE_VERSION;
  p.width = static_cast<png_uint_32>(image.width);
  p.height = static_cast<png_uint_32>(image.height);
  p.format = image.channels == 1 ? PNG_FORMAT_GRAY : PNG_FORMAT_RGB;
  png_alloc_size_t size = 0;
  if (!png_image_write_to_memory(&p, nullptr, &size, 0, image.pixels.data(), 0, nullptr)) {
    throw Error(concat("png encode: ", p.message));
  }
  std::string bytes(size, '\0');
  if (!png_image_write_to_memory(&p, bytes.data(), &size, 0, image.pixels.data(), 0, nullptr)) {
    throw Error(concat("png encode: ", p.message));
  }
  bytes.resize(size);
  return bytes;
}

}  // namespace stride::data
