#include "data/sources.h"

#include <zlib.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "common/error.h"
#include "data/codec.h"

namespace stride::data {
namespace fs = std::filesystem;
namespace {

// Reads a whole file, transparently gunzipping.
std::string read_maybe_gz(const std::string& path) {
  gzFile f = gzopen(path.c_str(), "rb");
  if (!f) throw Error(concat("cannot open ", path));
  std::string out;
  char buf[1 << 16];
  int n;
  while ((n = gzread(f, buf, sizeof(buf))) > 0) out.append(buf, static_cast<size_t>(n));
  int err = 0;
  const char* msg = gzerror(f, &err);
  const std::string what = (n < 0 && msg) ? msg : "";
  gzclose(f);
  if (n < 0) throw Error(concat("cannot read ", path, ": ", what, " (corrupt or truncated gzip?)"));
  return out;
}

std::string find_one(const std::string& dir, const std::vector<std::string>& names) {
  for (const auto& n : names) {
    const auto p = fs::path(dir) / n;
    if (fs::exists(p)) return p.string();
  }
  throw Error(concat("none of ", names.front(), " (or variants) found in ", dir));
}

uint32_t be32(const std::string& s, size_t at) {
  return (static_cast<uint32_t>(static_cast<unsigned char>(s[at])) << 24) |
         (static_cast<uint32_t>(static_cast<unsigned char>(s[at + 1])) << 16) |
         (static_cast<uint32_t>(static_cast<unsigned char>(s[at + 2])) << 8) |
         static_cast<uint32_t>(static_cast<unsigned char>(s[at + 3]));
}

std::string key_for(uint64_t i) {
  char k[16];
  std::snprintf(k, sizeof(k), "%08llu", static_cast<unsigned long long>(i));
  return k;
}

void check_input_dir(const std::string& dir) {
  if (!fs::is_directory(dir)) throw Error(concat("input directory ", dir, " does not exist"));
}

}  // namespace

std::vector<std::string> shard_fashion_mnist(const ShardJob& job) {
  check_input_dir(job.input);
  static const std::vector<std::string> kClasses = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                                    "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};
  std::vector<std::string> written;
  for (const auto& [split, prefix] : {std::pair{"train", "train"}, {"test", "t10k"}}) {
    const auto img_path = find_one(
        job.input, {std::string(prefix) + "-images-idx3-ubyte.gz", std::string(prefix) + "-images-idx3-ubyte"});
    const auto lbl_path = find_one(
        job.input, {std::string(prefix) + "-labels-idx1-ubyte.gz", std::string(prefix) + "-labels-idx1-ubyte"});
    const std::string images = read_maybe_gz(img_path), labels = read_maybe_gz(lbl_path);
    if (images.size() < 16 || be32(images, 0) != 0x803) throw Error(concat(img_path, ": not an IDX image file"));
    if (labels.size() < 8 || be32(labels, 0) != 0x801) throw Error(concat(lbl_path, ": not an IDX label file"));
    const uint32_t n = be32(images, 4), rows = be32(images, 8), cols = be32(images, 12);
    if (be32(labels, 4) != n) throw Error(concat(lbl_path, ": ", be32(labels, 4), " labels for ", n, " images"));
    if (images.size() != 16 + static_cast<size_t>(n) * rows * cols || labels.size() != 8 + static_cast<size_t>(n)) {
      throw Error(concat(img_path, ": size does not match its header (truncated?)"));
    }
    const std::string out = (fs::path(job.output) / split).string();
    ShardWriter writer(out, std::string("fashion-mnist/") + split, job.samples_per_shard, job.progress);
    Image img(static_cast<int>(rows), static_cast<int>(cols), 1);
    for (uint32_t i = 0; i < n; ++i) {
      std::memcpy(img.pixels.data(), images.data() + 16 + static_cast<size_t>(i) * rows * cols, img.pixels.size());
      const int label = static_cast<unsigned char>(labels[8 + i]);
      writer.add(key_for(i), {{"npy", encode_npy(img)}, {"cls", std::to_string(label)}}, label);
    }
    writer.finish(10, kClasses);
    written.push_back(out);
  }
  return written;
}

std::vector<std::string> shard_cifar10(const ShardJob& job) {
  check_input_dir(job.input);
  std::string dir = job.input;
  if (fs::is_directory(fs::path(dir) / "cifar-10-batches-bin")) dir = (fs::path(dir) / "cifar-10-batches-bin").string();
  std::vector<std::string> classes = {"airplane", "automobile", "bird",  "cat",  "deer",
                                      "dog",      "frog",       "horse", "ship", "truck"};
  std::vector<std::string> written;
  const std::vector<std::pair<std::string, std::vector<std::string>>> splits = {
      {"train", {"data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin", "data_batch_5.bin"}},
      {"test", {"test_batch.bin"}}};
  constexpr size_t kRecord = 1 + 3 * 32 * 32;
  for (const auto& [split, files] : splits) {
    const std::string out = (fs::path(job.output) / split).string();
    ShardWriter writer(out, "cifar10/" + split, job.samples_per_shard, job.progress);
    uint64_t i = 0;
    Image img(32, 32, 3);
    for (const auto& f : files) {
      const std::string path = (fs::path(dir) / f).string();
      const std::string bytes = read_maybe_gz(path);
      if (bytes.size() % kRecord != 0) throw Error(concat(path, ": size is not a multiple of 3073 (truncated?)"));
      for (size_t r = 0; r < bytes.size() / kRecord; ++r) {
        const char* rec = bytes.data() + r * kRecord;
        const int label = static_cast<unsigned char>(rec[0]);
        if (label > 9) throw Error(concat(path, ": record ", r, " has label ", label));
        for (int c = 0; c < 3; ++c) {  // CHW -> HWC
          for (int p = 0; p < 1024; ++p) img.pixels[p * 3 + c] = static_cast<uint8_t>(rec[1 + c * 1024 + p]);
        }
        writer.add(key_for(i++), {{"npy", encode_npy(img)}, {"cls", std::to_string(label)}}, label);
      }
    }
    writer.finish(10, classes);
    written.push_back(out);
  }
  return written;
}

std::vector<std::string> shard_image_folder(const ShardJob& job) {
  check_input_dir(job.input);
  std::vector<std::pair<std::string, std::string>> splits;  // (name, dir)
  for (const char* s : {"train", "val", "test"}) {
    if (fs::is_directory(fs::path(job.input) / s)) splits.emplace_back(s, (fs::path(job.input) / s).string());
  }
  if (splits.empty()) splits.emplace_back("train", job.input);
  std::vector<std::string> written;
  for (const auto& [split, dir] : splits) {
    std::vector<std::string> classes;
    for (const auto& e : fs::directory_iterator(dir)) {
      if (e.is_directory()) classes.push_back(e.path().filename().string());
    }
    std::sort(classes.begin(), classes.end());
    if (classes.empty()) throw Error(concat(dir, ": no class folders (expected ", dir, "/<class>/<image>)"));
    const std::string out = (fs::path(job.output) / split).string();
    ShardWriter writer(out, fs::path(job.input).filename().string() + "/" + split, job.samples_per_shard, job.progress);
    uint64_t i = 0;
    for (size_t c = 0; c < classes.size(); ++c) {
      std::vector<fs::path> files;
      for (const auto& e : fs::directory_iterator(fs::path(dir) / classes[c])) {
        std::string ext = e.path().extension().string();
        std::transform(ext.begin(), ext.end(), ext.begin(), ::tolower);
        if (e.is_regular_file() && (ext == ".jpg" || ext == ".jpeg" || ext == ".png")) files.push_back(e.path());
      }
      std::sort(files.begin(), files.end());
      for (const auto& f : files) {
        std::ifstream in(f, std::ios::binary);
        std::ostringstream buf;
        buf << in.rdbuf();
        std::string ext = f.extension().string().substr(1);
        std::transform(ext.begin(), ext.end(), ext.begin(), ::tolower);
        if (ext == "jpeg") ext = "jpg";
        writer.add(key_for(i++), {{ext, buf.str()}, {"cls", std::to_string(c)}}, static_cast<int64_t>(c));
      }
    }
    writer.finish(static_cast<int32_t>(classes.size()), classes);
    written.push_back(out);
  }
  return written;
}

}  // namespace stride::data
