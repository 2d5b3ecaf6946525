// Shard format: tar, CRC32C, the index, codecs.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "common/error.h"
#include "data/codec.h"
#include "data/shard_index.h"
#include "data/shard_writer.h"
#include "data/tar.h"
#include "storage/crc32c.h"
#include "test_util.h"

namespace stride::data {
namespace {

using storage::crc32c;
using testing::run_command;
using testing::ScratchDir;

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}
void spit(const std::string& path, const std::string& bytes) { std::ofstream(path, std::ios::binary) << bytes; }

template <typename F>
void expect_error(F&& f, const std::vector<std::string>& needles) {
  try {
    f();
    FAIL() << "expected stride::Error";
  } catch (const Error& e) {
    for (const auto& n : needles) EXPECT_NE(std::string(e.what()).find(n), std::string::npos) << e.what();
  }
}

TEST(Crc32c, KnownVectorsAndContinuation) {
  EXPECT_EQ(crc32c("123456789", 9), 0xE3069283u);  // the standard check value
  EXPECT_EQ(crc32c("", 0), 0u);
  std::string zeros(32, '\0');
  EXPECT_EQ(crc32c(zeros.data(), zeros.size()), 0x8A9136AAu);  // RFC 3720 B.4
  std::string data(1000, 'x');
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>(i * 31 + 7);
  EXPECT_EQ(crc32c(data.data() + 300, 700, crc32c(data.data(), 300)), crc32c(data.data(), data.size()));
}

TEST(Tar, RoundTripAndGnuTarReadsIt) {
  ScratchDir dir("tar");
  const std::string path = dir.file("a.tar");
  const std::string long_name = std::string(120, 'd').insert(60, "/") + "/sample.jpg";
  {
    TarWriter w(path);
    w.add("k0.cls", "3", 1);
    w.add("k0.npy", std::string(700, 'z').data(), 700);
    w.add(long_name, "abc", 3);
    w.add("empty.txt", "", 0);
    w.finish();
  }
  auto members = scan_tar(path);
  ASSERT_EQ(members.size(), 4u);
  EXPECT_EQ(members[0].name, "k0.cls");
  EXPECT_EQ(members[2].name, long_name);
  const std::string bytes = slurp(path);
  EXPECT_EQ(bytes.substr(members[1].data_offset, members[1].size), std::string(700, 'z'));
  EXPECT_EQ(bytes.size() % 512, 0u);
  auto listed = run_command("tar tf " + path);
  ASSERT_EQ(listed.exit_code, 0) << listed.output;
  EXPECT_EQ(listed.output, "k0.cls\nk0.npy\n" + long_name + "\nempty.txt\n");
  auto content = run_command("tar xOf " + path + " k0.cls");
  EXPECT_EQ(content.output, "3");
}

TEST(Tar, ReadsPaxAndGnuLongNamesFromGnuTar) {
  ScratchDir dir("tarpax");
  const std::string name = std::string(150, 'n') + ".png";
  spit(dir.file(name), "PNGDATA");
  for (const char* format : {"pax", "gnu"}) {
    const auto r = run_command("cd " + dir.path().string() + " && tar --format=" + format + " -cf out.tar " + name);
    ASSERT_EQ(r.exit_code, 0) << r.output;
    auto members = scan_tar(dir.file("out.tar"));
    ASSERT_EQ(members.size(), 1u) << format;
    EXPECT_EQ(members[0].name, name) << format;
    EXPECT_EQ(slurp(dir.file("out.tar")).substr(members[0].data_offset, members[0].size), "PNGDATA");
  }
}

TEST(Tar, CorruptHeaderAndTruncationAreErrorsNamingTheFile) {
  ScratchDir dir("tarbad");
  const std::string path = dir.file("s.tar");
  {
    TarWriter w(path);
    w.add("a.cls", "1", 1);
    w.add("b.npy", std::string(2000, 'q').data(), 2000);
    w.finish();
  }
  std::string bytes = slurp(path);
  std::string bad = bytes;
  bad[3] ^= 0x55;  // inside the first header's name: checksum no longer matches
  spit(dir.file("bad.tar"), bad);
  expect_error([&] { scan_tar(dir.file("bad.tar")); }, {"bad.tar", "checksum", "offset 0"});
  spit(dir.file("short.tar"), bytes.substr(0, 1024 + 600));
  expect_error([&] { scan_tar(dir.file("short.tar")); }, {"short.tar", "past the end"});
  expect_error([&] { scan_tar(dir.file("missing.tar")); }, {"missing.tar"});
}

// pax size= overrides the ustar size field (which a writer sets to 0 past 8 GiB). The archives come from Python's
// tarfile (tests/python/make_pax_tar.py); its reader's view of each member is the reference.
const std::string kPaxScript = std::string(STRIDE_SOURCE_DIR) + "/tests/python/make_pax_tar.py";

void expect_scan_matches_python(const std::string& mode, const std::string& path) {
  const auto made = run_command(std::string(STRIDE_REFERENCE_PYTHON) + " " + kPaxScript + " " + mode + " " + path);
  ASSERT_EQ(made.exit_code, 0) << made.output;
  std::istringstream python(made.output);
  std::vector<TarMember> expected;
  TarMember m;
  while (python >> m.name >> m.size >> m.data_offset) expected.push_back(m);
  ASSERT_EQ(expected.size(), 2u) << made.output;
  const auto members = scan_tar(path);
  ASSERT_EQ(members.size(), expected.size());
  for (size_t i = 0; i < members.size(); ++i) {
    EXPECT_EQ(members[i].name, expected[i].name);
    EXPECT_EQ(members[i].size, expected[i].size) << members[i].name;
    EXPECT_EQ(members[i].data_offset, expected[i].data_offset) << members[i].name;
  }
}

TEST(Tar, PaxSizeRecordOverridesTheHeaderSize) {
  ScratchDir dir("paxsize");
  expect_scan_matches_python("override", dir.file("override.tar"));
  const std::string bytes = slurp(dir.file("override.tar"));
  const auto members = scan_tar(dir.file("override.tar"));
  ASSERT_EQ(members.size(), 2u);
  EXPECT_EQ(members[0].size, 1000u);
  EXPECT_EQ(static_cast<unsigned char>(bytes[members[0].data_offset + 999]), 999 % 251);
  EXPECT_EQ(bytes.substr(members[1].data_offset, members[1].size), "7");
}

TEST(Tar, PaxSizeRecordCarriesMembersOverEightGiB) {
  ScratchDir dir("paxhuge");  // a sparse 9 GiB archive: only its headers take disk space
  expect_scan_matches_python("huge", dir.file("huge.tar"));
  EXPECT_EQ(scan_tar(dir.file("huge.tar"))[0].size, uint64_t{9} << 30);
}

TEST(Tar, MalformedPaxSizeRecordIsAnErrorNamingTheShard) {
  ScratchDir dir("paxbad");
  for (const std::string value : {"12x", "-5", "", "99999999999999999999999", " 12"}) {
    SCOPED_TRACE(value);
    const std::string path = dir.file("shard-000.tar");
    const auto made =
        run_command(std::string(STRIDE_REFERENCE_PYTHON) + " " + kPaxScript + " bad " + path + " '" + value + "'");
    ASSERT_EQ(made.exit_code, 0) << made.output;
    expect_error([&] { scan_tar(path); }, {"shard-000.tar", "malformed pax size record 'size=" + value + "'"});
  }
  // A size that parses but runs past the end of the archive.
  const auto made = run_command(std::string(STRIDE_REFERENCE_PYTHON) + " " + kPaxScript + " bad " +
                                dir.file("long.tar") + " 18446744073709551615");
  ASSERT_EQ(made.exit_code, 0) << made.output;
  expect_error([&] { scan_tar(dir.file("long.tar")); }, {"long.tar", "runs past the end"});
  // Broken record framing (length field not matching the record) is an error too, not silently skipped.
  std::string bytes = slurp(dir.file("long.tar"));
  const size_t at = bytes.find(" size=");
  ASSERT_NE(at, std::string::npos);
  bytes[at - 1] = bytes[at - 1] == '1' ? '2' : '1';  // the record's length no longer matches it
  spit(dir.file("framing.tar"), bytes);
  expect_error([&] { scan_tar(dir.file("framing.tar")); }, {"framing.tar", "malformed pax extended header record"});
}

TEST(Tar, WebDatasetKeys) {
  std::string key, ext;
  split_key("dir.x/abc.seg.jpg", &key, &ext);
  EXPECT_EQ(key, "dir.x/abc");
  EXPECT_EQ(ext, "seg.jpg");
  split_key("plain", &key, &ext);
  EXPECT_EQ(key, "plain");
  EXPECT_EQ(ext, "");
}

Image pattern(int h, int w, int c, int seed) {
  Image img(h, w, c);
  for (size_t i = 0; i < img.pixels.size(); ++i) img.pixels[i] = static_cast<uint8_t>((i * 7 + seed * 13) % 251);
  return img;
}

TEST(Codec, NpyRoundTripAndNumpyReadsIt) {
  ScratchDir dir("npy");
  for (int c : {1, 3}) {
    auto img = pattern(5, 7, c, c);
    const auto bytes = encode_npy(img);
    EXPECT_EQ((bytes.size() - 5 * 7 * c) % 64, 0u);
    auto back = decode_image(Codec::kNpy, reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
    EXPECT_EQ(back.pixels, img.pixels);
    EXPECT_EQ(back.channels, c);
    spit(dir.file("x.npy"), bytes);
    const auto r = run_command(std::string(STRIDE_REFERENCE_PYTHON) + " -c \"import numpy as np; a=np.load('" +
                               dir.file("x.npy") + "'); print(a.shape, a.dtype, int(a.sum()))\"");
    long sum = 0;
    for (auto p : img.pixels) sum += p;
    const std::string shape = c == 1 ? "(5, 7)" : "(5, 7, 3)";
    EXPECT_EQ(r.output, shape + " uint8 " + std::to_string(sum) + "\n");
  }
  const std::string bad = "\x93NUMPY\x01\x00\x10\x00{'descr': '<f4'}";
  expect_error([&] { decode_image(Codec::kNpy, reinterpret_cast<const uint8_t*>(bad.data()), bad.size()); }, {"npy"});
}

TEST(Codec, PngAndJpegDecode) {
  auto img = pattern(40, 48, 3, 1);
  const auto png = encode_png(img);
  auto back = decode_image(Codec::kPng, reinterpret_cast<const uint8_t*>(png.data()), png.size());
  EXPECT_EQ(back.pixels, img.pixels);  // lossless
  Image flat(64, 80, 3);
  std::fill(flat.pixels.begin(), flat.pixels.end(), 120);
  const auto jpg = encode_jpeg(flat, 95);
  const auto* p = reinterpret_cast<const uint8_t*>(jpg.data());
  auto info = peek_image(Codec::kJpeg, p, jpg.size());
  EXPECT_EQ(info.width, 80);
  EXPECT_EQ(info.height, 64);
  auto full = decode_image(Codec::kJpeg, p, jpg.size());
  EXPECT_EQ(full.width, 80);
  for (auto v : full.pixels) EXPECT_NEAR(v, 120, 2);
  auto half = decode_image(Codec::kJpeg, p, jpg.size(), 4);
  EXPECT_EQ(half.width, 40);
  EXPECT_EQ(half.height, 32);
  auto gray = decode_image(Codec::kJpeg, p, jpg.size(), 8, 1);
  EXPECT_EQ(gray.channels, 1);
  std::string broken = jpg.substr(0, 20);
  expect_error([&] { decode_image(Codec::kJpeg, reinterpret_cast<const uint8_t*>(broken.data()), broken.size()); },
               {"jpeg"});
  expect_error([&] { decode_image(Codec::kPng, reinterpret_cast<const uint8_t*>(broken.data()), broken.size()); },
               {"png"});
}

TEST(ShardIndex, WriterIndexMatchesAScanOfTheTars) {
  ScratchDir dir("index");
  ShardWriter w(dir.path().string(), "toy", 4);
  for (int i = 0; i < 10; ++i) {
    w.add("s" + std::to_string(i), {{"npy", encode_npy(pattern(3, 3, 1, i))}, {"cls", std::to_string(i % 3)}}, i % 3);
  }
  auto written = w.finish(3, {"a", "b", "c"});
  EXPECT_EQ(written.shards_size(), 3);
  EXPECT_EQ(written.num_samples(), 10u);
  auto read = read_index(dir.path().string());
  EXPECT_EQ(read.SerializeAsString(), written.SerializeAsString());
  // Index-only mode over the same tars finds the same samples, offsets and checksums.
  auto scanned = index_webdataset_dir(dir.path().string(), "toy");
  ASSERT_EQ(scanned.shards_size(), 3);
  for (int s = 0; s < 3; ++s) {
    ASSERT_EQ(scanned.shards(s).samples_size(), written.shards(s).samples_size());
    EXPECT_EQ(scanned.shards(s).size(), written.shards(s).size());
    for (int i = 0; i < written.shards(s).samples_size(); ++i) {
      EXPECT_EQ(scanned.shards(s).samples(i).SerializeAsString(), written.shards(s).samples(i).SerializeAsString());
    }
  }
  EXPECT_EQ(scanned.num_classes(), 3);
  // Both read the shape from the images' headers.
  EXPECT_EQ(std::vector<int64_t>(written.image_shape().begin(), written.image_shape().end()),
            (std::vector<int64_t>{3, 3, 1}));
  EXPECT_EQ(written.channels(), 1);
  EXPECT_EQ(std::vector<int64_t>(scanned.image_shape().begin(), scanned.image_shape().end()),
            (std::vector<int64_t>{3, 3, 1}));
  EXPECT_EQ(scanned.channels(), 1);
  // No temporaries left behind.
  for (const auto& e : std::filesystem::directory_iterator(dir.path())) {
    EXPECT_NE(e.path().filename().string()[0], '.') << e.path();
  }
}

TEST(ShardIndex, DamageIsAClearError) {
  ScratchDir dir("indexbad");
  const std::string d = dir.path().string();
  expect_error([&] { read_index(d + "/nope"); }, {"nope", "does not exist"});
  expect_error([&] { read_index(d); }, {"index.pb", "stride shard"});
  ShardWriter w(d, "toy", 2);
  for (int i = 0; i < 3; ++i) w.add("k" + std::to_string(i), {{"cls", "1"}}, 1);
  auto index = w.finish(2, {});
  std::string bytes = slurp(dir.file("index.pb"));
  std::string flipped = bytes;
  flipped[bytes.size() - 3] ^= 1;
  spit(dir.file("index.pb"), flipped);
  expect_error([&] { read_index(d); }, {"index.pb", "checksum"});
  spit(dir.file("index.pb"), bytes.substr(0, bytes.size() - 5));
  expect_error([&] { read_index(d); }, {"index.pb", "truncated"});
  spit(dir.file("index.pb"), bytes);
  EXPECT_NO_THROW(verify_shard_files(d, index));
  const std::string shard = slurp(dir.file("shard-000001.tar"));
  spit(dir.file("shard-000001.tar"), shard.substr(0, shard.size() - 512));
  expect_error([&] { verify_shard_files(d, index); }, {"shard-000001.tar", "truncated"});
  std::filesystem::remove(dir.file("shard-000001.tar"));
  expect_error([&] { verify_shard_files(d, index); }, {"shard-000001.tar", "missing"});
}

}  // namespace
}  // namespace stride::data
