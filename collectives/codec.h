#pragma once
// Wire formats for reductions (ARCHITECTURE.md §5): what bytes a buffer travels as. Accumulation is
// always fp32; quantization happens only on the wire. For bit-identical results the owner of a
// reduced chunk encodes it once and every peer, the owner included, decodes those same bytes —
// decode is a pure function of the bytes, so equal bytes give equal floats everywhere.
//
// Formats:
//   raw   fp32, 4 bytes per element
//   fp16  IEEE half, round to nearest even; beyond ±65504 becomes ±Inf
//   bf16  bfloat16, round to nearest even
//   int8  blocks of kQuantBlock elements: bf16 scale = absmax/127, then one int8 per element
//   int4  blocks of kQuantBlock elements: bf16 scale = absmax/7, then two elements per byte
//         (low nibble first), values -7..7
// Blocks of 16: a ring all-reduce re-quantizes partial sums at each reduce-scatter hop, and
// small blocks keep the end-to-end error of 4 peers at int8 0.76%, int4 13.6% (N(0,1) data)
// while the wire carries 0.281x (int8) and 0.156x (int4) the bytes of fp32.
// int8/int4 round to nearest (ties to even). Non-finite input (NaN, ±Inf) in a block makes the
// whole block decode as NaN: corruption stays visible, and identical on every peer.
//
// Pure functions; thread-safe.

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

#include "p2p/base/bytes.h"
#include "p2p/base/status.h"

namespace loco::collectives {

enum class Wire : std::uint8_t { kRaw, kFp16, kBf16, kInt8, kInt4 };

// Elements per int8/int4 block, by default. A caller may choose larger blocks (up to
// kMaxQuantBlock) to trade accuracy for bytes: a block costs 2 bytes of scale, so int8 carries
// 4B/(B+2) times fewer bytes than fp32 and int4 8B/(B+4): 3.56x / 6.4x at 16, 3.99x / 7.97x at
// 1024.
inline constexpr std::size_t kQuantBlock = 16;
inline constexpr std::size_t kMaxQuantBlock = 1 << 16;

std::string_view wireName(Wire w);
// "raw", "fp16", "bf16", "int8", "int4"; kInvalidArgument names the bad value.
Result<Wire> parseWire(std::string_view name);

// Bytes that `n` elements take on the wire. `block_len` (int8/int4 only; 1..kMaxQuantBlock) must be
// the same in every call that handles the same bytes.
std::size_t encodedBytes(Wire w, std::size_t n, std::size_t block_len = kQuantBlock);

// `dst` must hold exactly encodedBytes(w, src.size(), block_len) bytes.
void encode(Wire w, std::span<const float> src, MutableByteSpan dst,
            std::size_t block_len = kQuantBlock);
// `src` must hold exactly encodedBytes(w, dst.size(), block_len) bytes. Overwrites `dst`.
void decode(Wire w, ByteSpan src, std::span<float> dst, std::size_t block_len = kQuantBlock);
// acc[i] += decoded[i], without a temporary buffer.
void decodeAdd(Wire w, ByteSpan src, std::span<float> acc, std::size_t block_len = kQuantBlock);

// Scalar conversions (also the in-memory f16/bf16 dtypes), round to nearest even.
std::uint16_t floatToHalf(float f);
float halfToFloat(std::uint16_t h);
std::uint16_t floatToBf16(float f);
float bf16ToFloat(std::uint16_t b);

}  // namespace loco::collectives
