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
