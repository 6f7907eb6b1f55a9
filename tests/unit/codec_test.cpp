#include "collectives/codec.h"

#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

namespace loco::collectives {
namespace {

std::vector<float> gaussian(std::size_t n, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

std::vector<float> roundTrip(Wire w, const std::vector<float>& x, std::size_t block = kQuantBlock) {
  std::vector<std::uint8_t> bytes(encodedBytes(w, x.size(), block));
  encode(w, x, bytes, block);
  std::vector<float> out(x.size());
  decode(w, bytes, out, block);
  return out;
}

// Every decoded int8/int4 element lies within half a step of its input, the step being its
// block's absmax / qmax as stored (bf16; rounding it down can clamp the largest element a little).
void expectWithinHalfAStep(Wire w, std::span<const float> src, std::span<const float> got,
                           std::size_t block) {
  const float qmax = w == Wire::kInt8 ? 127.0f : 7.0f;
  for (std::size_t b = 0; b < src.size(); b += block) {
    const std::size_t end = std::min(src.size(), b + block);
    float absmax = 0;
    for (std::size_t i = b; i < end; ++i) absmax = std::max(absmax, std::fabs(src[i]));
    const float step = bf16ToFloat(floatToBf16(absmax / qmax));
    const float bound = std::max(step / 2, absmax - qmax * step) * 1.0001f + 1e-7f;
    for (std::size_t i = b; i < end; ++i) {
      ASSERT_LE(std::fabs(got[i] - src[i]), bound) << wireName(w) << " element " << i;
    }
  }
}

double relRms(const std::vector<float>& ref, const std::vector<float>& got) {
  double err = 0, norm = 0;
  for (std::size_t i = 0; i < ref.size(); ++i) {
    err += (double(got[i]) - ref[i]) * (double(got[i]) - ref[i]);
    norm += double(ref[i]) * ref[i];
  }
  return std::sqrt(err / norm);
}

constexpr Wire kAll[] = {Wire::kRaw, Wire::kFp16, Wire::kBf16, Wire::kInt8, Wire::kInt4};

TEST(Codec, WireNamesParseBackAndUnknownNamesAreRefused) {
  for (Wire w : kAll) {
    auto parsed = parseWire(wireName(w));
    ASSERT_TRUE(parsed.isOk());
    EXPECT_EQ(*parsed, w);
  }
  auto bad = parseWire("int3");
  ASSERT_FALSE(bad.isOk());
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("int3"), std::string::npos);
}

TEST(Codec, EncodedSizesAreExact) {
  EXPECT_EQ(encodedBytes(Wire::kRaw, 1000), 4000u);
  EXPECT_EQ(encodedBytes(Wire::kFp16, 1000), 2000u);
  EXPECT_EQ(encodedBytes(Wire::kBf16, 1000), 2000u);
  const std::size_t B = kQuantBlock;
  // int8: a 2-byte (bf16) scale per block, then 1 byte per element.
  EXPECT_EQ(encodedBytes(Wire::kInt8, 2 * B), 2 * (2 + B));
  EXPECT_EQ(encodedBytes(Wire::kInt8, B + 2), (2 + B) + (2 + 2));
  // int4: a 2-byte scale per block, then half a byte per element (rounded up per block).
  EXPECT_EQ(encodedBytes(Wire::kInt4, 2 * B), 2 * (2 + B / 2));
  EXPECT_EQ(encodedBytes(Wire::kInt4, B + 3), (2 + B / 2) + (2 + 2));
  // What travels, relative to fp32: the bandwidth the quantized formats save.
  EXPECT_LE(double(encodedBytes(Wire::kInt8, 1 << 20)) / encodedBytes(Wire::kRaw, 1 << 20), 0.29);
  EXPECT_LE(double(encodedBytes(Wire::kInt4, 1 << 20)) / encodedBytes(Wire::kRaw, 1 << 20), 0.16);
  for (Wire w : kAll) EXPECT_EQ(encodedBytes(w, 0), 0u) << wireName(w);
}

TEST(Codec, LargeBlocksCarryFourAndEightTimesFewerBytesToWithinAPerMille) {
  const std::size_t n = 1 << 20;
  EXPECT_EQ(encodedBytes(Wire::kInt8, 2048, 1024), 2 * (2 + 1024u));
  EXPECT_EQ(encodedBytes(Wire::kInt4, 1030, 1024), (2 + 512u) + (2 + 3u));
  EXPECT_GT(double(encodedBytes(Wire::kRaw, n)) / encodedBytes(Wire::kInt8, n, 1024), 3.99);
  EXPECT_GT(double(encodedBytes(Wire::kRaw, n)) / encodedBytes(Wire::kInt4, n, 1024), 7.96);
  // Round trip with a block that divides nothing, partial last block included: every element
  // within half a step of its block's scale.
  auto x = gaussian(4993, 11);
  for (Wire w : {Wire::kInt8, Wire::kInt4})
    expectWithinHalfAStep(w, x, roundTrip(w, x, 1000), 1000);
}

TEST(Codec, RawIsBitExact) {
  auto x = gaussian(1000, 1);
  x[3] = std::numeric_limits<float>::quiet_NaN();
  auto y = roundTrip(Wire::kRaw, x);
  EXPECT_EQ(std::memcmp(x.data(), y.data(), 4 * x.size()), 0);
}

TEST(Codec, HalfAndBf16KnownValuesRoundToNearestEven) {
  EXPECT_EQ(floatToHalf(1.0f), 0x3C00);
  EXPECT_EQ(floatToHalf(-2.0f), 0xC000);
  EXPECT_EQ(floatToHalf(65504.0f), 0x7BFF);
  EXPECT_EQ(floatToHalf(1e6f), 0x7C00) << "beyond the fp16 range is +Inf";
  EXPECT_TRUE(std::isnan(halfToFloat(floatToHalf(std::nanf("")))));
  // 1 + 2^-11 is exactly between 1 and the next half (1 + 2^-10): ties to even -> 1.
  EXPECT_EQ(floatToHalf(1.0f + std::ldexp(1.0f, -11)), 0x3C00);
  EXPECT_EQ(bf16ToFloat(floatToBf16(1.0f)), 1.0f);
  // 0x3F808000 is a tie between 0x3F80 and 0x3F81: even wins. 0x3F818000 ties 0x3F81/0x3F82:
  // 0x3F82.
  EXPECT_EQ(floatToBf16(std::bit_cast<float>(0x3F808000u)), 0x3F80);
  EXPECT_EQ(floatToBf16(std::bit_cast<float>(0x3F818000u)), 0x3F82);
  EXPECT_EQ(floatToBf16(std::bit_cast<float>(0x3F808001u)), 0x3F81) << "above the tie rounds up";
  EXPECT_TRUE(std::isnan(bf16ToFloat(floatToBf16(std::nanf("")))));
  EXPECT_TRUE(std::isinf(bf16ToFloat(floatToBf16(std::numeric_limits<float>::infinity()))));
}

// Single-encode errors on N(0,1) data, against the targets the all-reduce must meet end to end.
TEST(Codec, SingleEncodeErrorOnGaussianDataIsWithinTheAllReduceTargets) {
  auto x = gaussian(1 << 18, 7);
  const double fp16 = relRms(x, roundTrip(Wire::kFp16, x)),
               bf16 = relRms(x, roundTrip(Wire::kBf16, x));
  const double int8 = relRms(x, roundTrip(Wire::kInt8, x)),
               int4 = relRms(x, roundTrip(Wire::kInt4, x));
  std::printf(
      "single-encode relative RMS error on N(0,1): fp16 %.5f%%, bf16 %.4f%%, int8 %.3f%%, int4 "
      "%.2f%%\n",
      100 * fp16, 100 * bf16, 100 * int8, 100 * int4);
  EXPECT_LT(fp16, 0.0005);
  EXPECT_LT(bf16, 0.005);
  EXPECT_LT(int8, 0.010);
  EXPECT_LT(int4, 0.15);
}

TEST(Codec, QuantizedElementsAreWithinHalfAStepOfTheInput) {
  auto x = gaussian(1000, 3);
  for (Wire w : {Wire::kInt8, Wire::kInt4}) {
    expectWithinHalfAStep(w, x, roundTrip(w, x), kQuantBlock);
  }
}

TEST(Codec, Int4UsesTheFullSignedRangeAndPartialBlocks) {
  std::vector<float> x = {-7, -3, 0, 1, 7, 6, -6};  // one partial block with an odd count
  auto y = roundTrip(Wire::kInt4, x);
  for (std::size_t i = 0; i < x.size(); ++i) EXPECT_EQ(y[i], x[i]) << i;
}

TEST(Codec, AllZeroBlockDecodesToZeros) {
  std::vector<float> x(300, 0.0f);
  for (Wire w : kAll) {
    auto y = roundTrip(w, x);
    for (float v : y) ASSERT_EQ(v, 0.0f) << wireName(w);
  }
}

// Documented behaviour: a non-finite value poisons its whole block (decoded as NaN), other
// blocks are untouched, and every peer decodes the same bytes the same way.
TEST(Codec, NonFiniteInputPoisonsOnlyItsBlock) {
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                    -std::numeric_limits<float>::infinity()}) {
    for (Wire w : {Wire::kInt8, Wire::kInt4}) {
      auto x = gaussian(3 * kQuantBlock, 5);
      x[kQuantBlock + kQuantBlock / 2] = bad;  // inside the second block
      auto y = roundTrip(w, x);
      for (std::size_t i = 0; i < x.size(); ++i) {
        const bool in_bad_block = i >= kQuantBlock && i < 2 * kQuantBlock;
        if (in_bad_block) {
          ASSERT_TRUE(std::isnan(y[i])) << wireName(w) << " element " << i;
        } else {
          ASSERT_TRUE(std::isfinite(y[i])) << wireName(w) << " element " << i;
        }
      }
    }
  }
}

TEST(Codec, DecodingTheSameBytesGivesBitIdenticalFloats) {
  auto x = gaussian(5000, 11);
  for (Wire w : kAll) {
    std::vector<std::uint8_t> bytes(encodedBytes(w, x.size()));
    encode(w, x, bytes);
    std::vector<std::uint8_t> again(bytes.size());
    encode(w, x, again);
    EXPECT_EQ(bytes, again) << wireName(w) << ": encoding is deterministic";
    std::vector<float> a(x.size()), b(x.size());
    decode(w, bytes, a);
    decode(w, bytes, b);
    EXPECT_EQ(std::memcmp(a.data(), b.data(), 4 * a.size()), 0) << wireName(w);
  }
}

TEST(Codec, DecodeAddAccumulatesWhatDecodeWouldWrite) {
  auto x = gaussian(777, 13);
  auto base = gaussian(777, 17);
  for (Wire w : kAll) {
    std::vector<std::uint8_t> bytes(encodedBytes(w, x.size()));
    encode(w, x, bytes);
    std::vector<float> decoded(x.size());
    decode(w, bytes, decoded);
    std::vector<float> acc = base;
    decodeAdd(w, bytes, acc);
    for (std::size_t i = 0; i < x.size(); ++i)
      ASSERT_EQ(acc[i], base[i] + decoded[i]) << wireName(w) << " " << i;
  }
}

TEST(Codec, EveryHalfSurvivesARoundTripThroughFloat) {
  for (std::uint32_t h = 0; h <= 0xFFFF; ++h) {
    float f = halfToFloat(static_cast<std::uint16_t>(h));
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(halfToFloat(floatToHalf(f)))) << std::hex << h;
    } else {
      ASSERT_EQ(floatToHalf(f), h) << std::hex << h;
    }
  }
}

#if defined(__GNUC__) && !defined(__clang__)
// GCC's _Float16 is the reference where it exists.
TEST(Codec, HalfConversionMatchesTheCompilersFloat16) {
  std::mt19937 rng(21);
  std::uniform_int_distribution<std::uint32_t> bits;
  for (int i = 0; i < 2000000; ++i) {
    // Random bit patterns cover subnormals, huge values and NaNs; the exponent is biased
    // towards the half range half of the time.
    std::uint32_t u = bits(rng);
    if (i % 2) u = (u & 0x807FFFFF) | ((100u + u % 48) << 23);
    float f = std::bit_cast<float>(u);
    if (std::isnan(f)) continue;
    ASSERT_EQ(floatToHalf(f), std::bit_cast<std::uint16_t>(static_cast<_Float16>(f)))
        << std::hex << u;
  }
}
#endif

}  // namespace
}  // namespace loco::collectives
