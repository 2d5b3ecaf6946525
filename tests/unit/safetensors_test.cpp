// safetensors encoding: round trips and every way a file can be broken.
#include "trainer/safetensors.h"

#include <gtest/gtest.h>

#include <fstream>

#include "common/error.h"
#include "test_util.h"

namespace stride::trainer {
namespace {

void expect_error_containing(const std::string& bytes, const std::string& needle) {
  try {
    decode_safetensors(bytes, "bad.safetensors");
    FAIL() << "expected an error containing '" << needle << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("bad.safetensors"), std::string::npos) << e.what();
  }
}

TEST(Safetensors, RoundTripEveryDtypeAndMetadata) {
  NamedTensors in{{"f32", torch::randn({3, 4})},
                  {"f64", torch::randn({2}, torch::kDouble)},
                  {"f16", torch::randn({5}).to(torch::kHalf)},
                  {"bf16", torch::randn({5}).to(torch::kBFloat16)},
                  {"i64", torch::arange(7)},
                  {"u8", torch::randint(0, 255, {2, 2, 3}, torch::kUInt8)},
                  {"b", torch::tensor({true, false})},
                  {"scalar", torch::tensor(3.5)},
                  {"empty", torch::zeros({0, 4})},
                  {"strided", torch::randn({4, 6}).t()}};
  auto file = decode_safetensors(encode_safetensors(in, {{"step", "42"}}), "mem");
  EXPECT_EQ(file.metadata.at("step"), "42");
  ASSERT_EQ(file.tensors.size(), in.size());
  for (const auto& [name, t] : in) {
    SCOPED_TRACE(name);
    EXPECT_EQ(file.tensors.at(name).scalar_type(), t.scalar_type());
    EXPECT_TRUE(torch::equal(file.tensors.at(name), t));
  }
}

TEST(Safetensors, DataSectionIsEightByteAligned) {
  auto bytes = encode_safetensors({{"x", torch::ones({3})}});
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<uint64_t>(static_cast<unsigned char>(bytes[i])) << (8 * i);
  EXPECT_EQ(n % 8, 0u);
  EXPECT_EQ(bytes.size(), 8 + n + 12);
}

TEST(Safetensors, RejectsBrokenFiles) {
  const auto good = encode_safetensors({{"w", torch::ones({4, 4})}});
  expect_error_containing("abc", "not a safetensors file");
  expect_error_containing(good.substr(0, good.size() - 3), "truncated");
  std::string huge = good;
  huge[7] = '\x7f';  // header length ~ 2^62
  expect_error_containing(huge, "header length");
  std::string garbage = good;
  garbage[9] = '#';
  expect_error_containing(garbage, "not valid JSON");
  auto lie = [](const std::string& header) {
    std::string h = header;
    std::string out(8, '\0');
    for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((h.size() >> (8 * i)) & 0xff);
    return out + h + std::string(16, '\0');
  };
  expect_error_containing(lie(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,12]}})"), "needs 16");
  expect_error_containing(lie(R"({"w":{"dtype":"Q7","shape":[4],"data_offsets":[0,16]}})"), "unsupported dtype");
  expect_error_containing(lie(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}})"), "outside the file");
  expect_error_containing(lie(R"({"w":{"dtype":"F32"}})"), "malformed header entry");
}

std::string with_header(const std::string& header, size_t data_bytes) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((header.size() >> (8 * i)) & 0xff);
  return out + header + std::string(data_bytes, '\0');
}

// A crafted header names any shape; the reader must check it against the bytes present before allocating, and
// must not let the element count or the byte count wrap around.
TEST(Safetensors, RejectsHugeAndOverflowingShapesBeforeAllocating) {
  // 2^30 x 2^30 floats: 4 EiB, never allocatable. The file holds 16 bytes.
  expect_error_containing(
      with_header(R"({"big":{"dtype":"F32","shape":[1073741824,1073741824],"data_offsets":[0,16]}})", 16),
      "tensor 'big' holds 16 bytes but shape [1073741824, 1073741824] of F32 needs "
      "4611686018427387904");
  // 2^32 x 2^32 elements wraps a 64-bit count to 0; 0 bytes would then "match" an empty data range.
  expect_error_containing(
      with_header(R"({"wrap":{"dtype":"U8","shape":[4294967296,4294967296],"data_offsets":[0,0]}})", 0),
      "tensor 'wrap' has shape [4294967296, 4294967296] whose element count overflows");
  // 2^62 doubles: the count fits, the byte count (2^65) wraps to 0.
  expect_error_containing(
      with_header(R"({"bytes":{"dtype":"F64","shape":[4611686018427387904],"data_offsets":[0,0]}})", 0),
      "tensor 'bytes' has shape [4611686018427387904] whose size in bytes overflows");
  // 3 x 2^62 x 2 wraps a signed 64-bit product to a small positive number under the old int64 arithmetic.
  expect_error_containing(
      with_header(R"({"signed":{"dtype":"U8","shape":[3,4611686018427387904,2],"data_offsets":[0,16]}})", 16),
      "whose element count overflows");
  // A plain size mismatch names the tensor, its shape and dtype.
  expect_error_containing(with_header(R"({"w":{"dtype":"F16","shape":[2,3],"data_offsets":[0,16]}})", 16),
                          "tensor 'w' holds 16 bytes but shape [2, 3] of F16 needs 12");
  // A zero dimension makes an empty tensor whatever the other dimensions say.
  auto empty =
      decode_safetensors(with_header(R"({"e":{"dtype":"F32","shape":[0,1073741824],"data_offsets":[0,0]}})", 0), "mem");
  EXPECT_EQ(empty.tensors.at("e").numel(), 0);
}

TEST(Safetensors, OverlappingTensorsAreAnError) {
  expect_error_containing(with_header(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                                      R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                                      12),
                          "tensors 'a' [0, 8) and 'b' [4, 12) overlap");
  // Adjacent ranges and empty tensors anywhere are fine.
  auto ok = decode_safetensors(with_header(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                                           R"("e":{"dtype":"F32","shape":[0],"data_offsets":[4,4]},)"
                                           R"("b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
                                           12),
                               "mem");
  EXPECT_EQ(ok.tensors.size(), 3u);
}

TEST(Safetensors, FileRoundTripAndMissingFile) {
  testing::ScratchDir dir("st");
  write_safetensors(dir.file("a.safetensors"), {{"x", torch::arange(10).to(torch::kFloat)}});
  auto back = read_safetensors(dir.file("a.safetensors"));
  EXPECT_TRUE(torch::equal(back.tensors.at("x"), torch::arange(10).to(torch::kFloat)));
  try {
    read_safetensors(dir.file("missing.safetensors"));
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("missing.safetensors"), std::string::npos);
  }
}

}  // namespace
}  // namespace stride::trainer
