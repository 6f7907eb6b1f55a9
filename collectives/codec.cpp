#include "collectives/codec.h"

#include <fmt/format.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>

namespace loco::collectives {
namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

template <typename T>
T load(const std::uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}
template <typename T>
void store(std::uint8_t* p, T v) {
  std::memcpy(p, &v, sizeof(T));
}

// A block: its scale as bf16 (2 bytes: fp32's range, enough precision for a scale), then the
// quantized values.
constexpr std::size_t kScaleBytes = 2;

std::size_t blockBytes(Wire w, std::size_t m) {
  return kScaleBytes + (w == Wire::kInt8 ? m : (m + 1) / 2);
}

// The scale of one block: absmax / qmax; NaN if the block holds a non-finite value.
float blockScale(std::span<const float> block, float qmax) {
  float absmax = 0;
  for (float x : block) {
    if (!std::isfinite(x)) return kNaN;
    absmax = std::max(absmax, std::fabs(x));
  }
  return absmax / qmax;
}

int quantize(float x, float scale, int qmax) {
  if (!(scale > 0)) return 0;  // all-zero block, or NaN scale
  int q = static_cast<int>(std::nearbyint(x / scale));
  return std::clamp(q, -qmax, qmax);
}

void encodeBlocks(Wire w, std::span<const float> src, std::uint8_t* out, std::size_t block_len) {
  const int qmax = w == Wire::kInt8 ? 127 : 7;
  for (std::size_t b = 0; b < src.size(); b += block_len) {
    auto block = src.subspan(b, std::min(block_len, src.size() - b));
    // Quantize with the scale as stored, so encode and decode agree exactly.
    const std::uint16_t stored = floatToBf16(blockScale(block, static_cast<float>(qmax)));
    const float scale = bf16ToFloat(stored);
    store(out, stored);
    std::uint8_t* q = out + kScaleBytes;
    if (w == Wire::kInt8) {
      for (std::size_t i = 0; i < block.size(); ++i)
        q[i] = static_cast<std::uint8_t>(static_cast<std::int8_t>(quantize(block[i], scale, qmax)));
    } else {
      for (std::size_t i = 0; i < block.size(); i += 2) {
        int lo = quantize(block[i], scale, qmax);
        int hi = i + 1 < block.size() ? quantize(block[i + 1], scale, qmax) : 0;
        q[i / 2] = static_cast<std::uint8_t>((lo & 0xF) | ((hi & 0xF) << 4));
      }
    }
    out += blockBytes(w, block.size());
  }
}

// Calls sink(i, value) for every element, in order.
template <typename Sink>
void decodeWith(Wire w, ByteSpan src, std::size_t n, std::size_t block_len, Sink&& sink) {
  const std::uint8_t* p = src.data();
  switch (w) {
    case Wire::kRaw:
      for (std::size_t i = 0; i < n; ++i) sink(i, load<float>(p + 4 * i));
      return;
    case Wire::kFp16:
      for (std::size_t i = 0; i < n; ++i) sink(i, halfToFloat(load<std::uint16_t>(p + 2 * i)));
      return;
    case Wire::kBf16:
      for (std::size_t i = 0; i < n; ++i) sink(i, bf16ToFloat(load<std::uint16_t>(p + 2 * i)));
      return;
    case Wire::kInt8:
    case Wire::kInt4:
      for (std::size_t b = 0; b < n; b += block_len) {
        const std::size_t m = std::min(block_len, n - b);
        const float scale = bf16ToFloat(load<std::uint16_t>(p));
        const std::uint8_t* q = p + kScaleBytes;
        for (std::size_t i = 0; i < m; ++i) {
          int v;
          if (w == Wire::kInt8) {
            v = static_cast<std::int8_t>(q[i]);
          } else {
            int nibble = (q[i / 2] >> (4 * (i % 2))) & 0xF;
            v = nibble >= 8 ? nibble - 16 : nibble;  // sign-extend 4 bits
          }
          // NaN scale (non-finite block): NaN * 0 and NaN * v are both NaN, as documented.
          sink(b + i, std::isnan(scale) ? kNaN : static_cast<float>(v) * scale);
        }
        p += blockBytes(w, m);
      }
      return;
  }
}

}  // namespace

std::string_view wireName(Wire w) {
  switch (w) {
    case Wire::kRaw:
      return "raw";
    case Wire::kFp16:
      return "fp16";
    case Wire::kBf16:
      return "bf16";
    case Wire::kInt8:
      return "int8";
    case Wire::kInt4:
      return "int4";
  }
  return "?";
}

Result<Wire> parseWire(std::string_view name) {
  for (Wire w : {Wire::kRaw, Wire::kFp16, Wire::kBf16, Wire::kInt8, Wire::kInt4}) {
    if (name == wireName(w)) return w;
  }
  return Status(StatusCode::kInvalidArgument,
                fmt::format("unknown wire format '{}' (use raw, fp16, bf16, int8 or int4)", name));
}

std::size_t encodedBytes(Wire w, std::size_t n, std::size_t block_len) {
  switch (w) {
    case Wire::kRaw:
      return 4 * n;
    case Wire::kFp16:
    case Wire::kBf16:
      return 2 * n;
    case Wire::kInt8:
    case Wire::kInt4: {
      std::size_t full = n / block_len, rest = n % block_len;
      return full * blockBytes(w, block_len) + (rest ? blockBytes(w, rest) : 0);
    }
  }
  return 0;
}

void encode(Wire w, std::span<const float> src, MutableByteSpan dst, std::size_t block_len) {
  std::uint8_t* p = dst.data();
  switch (w) {
    case Wire::kRaw:
      if (!src.empty()) std::memcpy(p, src.data(), 4 * src.size());
      return;
    case Wire::kFp16:
      for (std::size_t i = 0; i < src.size(); ++i) store(p + 2 * i, floatToHalf(src[i]));
      return;
    case Wire::kBf16:
      for (std::size_t i = 0; i < src.size(); ++i) store(p + 2 * i, floatToBf16(src[i]));
      return;
    case Wire::kInt8:
    case Wire::kInt4:
      encodeBlocks(w, src, p, block_len);
      return;
  }
}

void decode(Wire w, ByteSpan src, std::span<float> dst, std::size_t block_len) {
  if (w == Wire::kRaw) {
    if (!dst.empty()) std::memcpy(dst.data(), src.data(), 4 * dst.size());
    return;
  }
  decodeWith(w, src, dst.size(), block_len, [&](std::size_t i, float v) { dst[i] = v; });
}

void decodeAdd(Wire w, ByteSpan src, std::span<float> acc, std::size_t block_len) {
  decodeWith(w, src, acc.size(), block_len, [&](std::size_t i, float v) { acc[i] += v; });
}

// Software conversions: _Float16 is not available on every compiler loco builds with.
std::uint16_t floatToHalf(float f) {
  std::uint32_t u = std::bit_cast<std::uint32_t>(f);
  const auto sign = static_cast<std::uint16_t>((u >> 16) & 0x8000);
  u &= 0x7FFFFFFF;
  if (u >= 0x7F800000) {  // Inf, or NaN (kept quiet and non-zero)
    return sign | 0x7C00 | (u > 0x7F800000 ? 0x200 | ((u >> 13) & 0x3FF) : 0);
  }
  if (u >= 0x477FF000) return sign | 0x7C00;  // >= 65520 rounds (ties to even) past 65504
  if (u < 0x38800000) {
    // Below the smallest normal half: a multiple of 2^-24. Scaling by 2^24 is exact in float.
    float scaled = std::bit_cast<float>(u) * 16777216.0f;
    return sign | static_cast<std::uint16_t>(std::nearbyint(scaled));
  }
  // Normal: drop 13 mantissa bits, nearest even; a carry correctly bumps the exponent.
  std::uint32_t r = u + 0xFFF + ((u >> 13) & 1);
  return sign | static_cast<std::uint16_t>((r >> 13) - (112u << 10));
}

float halfToFloat(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000) << 16;
  const std::uint32_t exp = (h >> 10) & 0x1F;
  const std::uint32_t mant = h & 0x3FF;
  if (exp == 0) {  // zero or subnormal: mant * 2^-24, exact
    return std::bit_cast<float>(
        sign | std::bit_cast<std::uint32_t>(static_cast<float>(mant) * 5.9604644775390625e-8f));
  }
  if (exp == 31) return std::bit_cast<float>(sign | 0x7F800000 | (mant << 13));
  return std::bit_cast<float>(sign | ((exp + 112) << 23) | (mant << 13));
}

std::uint16_t floatToBf16(float f) {
  auto u = std::bit_cast<std::uint32_t>(f);
  if (std::isnan(f))
    return static_cast<std::uint16_t>((u >> 16) | 0x0040);  // stay NaN after truncation
  u += 0x7FFF + ((u >> 16) & 1);                            // round to nearest, ties to even
  return static_cast<std::uint16_t>(u >> 16);
}

float bf16ToFloat(std::uint16_t b) {
  return std::bit_cast<float>(static_cast<std::uint32_t>(b) << 16);
}

}  // namespace loco::collectives
