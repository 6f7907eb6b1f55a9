#pragma once
// The entropy stage: zstd over encoded pieces (ARCHITECTURE.md §5). Quantized payloads are far
// from random (an int4 block's values cluster around zero), so zstd level 1 shrinks them at
// several hundred MB/s per core: time saved on a link slower than that, time lost on loopback.
//
// Lossless, and decided by the sender of each transfer: a piece goes compressed only when that
// makes it shorter, and the receiver tells by the length (shorter than the encoded size:
// compressed). The owner of a reduced segment compresses it once and the all-gather forwards
// those same bytes, so every peer decodes identical bytes (bit-identical results stay so).
// Applies to the ring's non-raw wires (fp16, bf16, int8, int4); raw fp32 and the small-message
// algorithms go uncompressed.
//
// Thread rules: every function may be called from any thread (each thread keeps its own zstd
// context).

#include <cstddef>
#include <string_view>

#include "collectives/codec.h"
#include "collectives/transport.h"
#include "p2p/base/bytes.h"
#include "p2p/base/status.h"

namespace loco::collectives {

enum class Compress : std::uint8_t {
  kOff,   // never
  kZstd,  // every non-raw piece (when it gets shorter)
  kAuto,  // kZstd on wide-area links slower than kAutoCompressBelowBps, kOff otherwise
};

// 1 Gbit/s: zstd level 1 compresses int8/int4 pieces at ~640 MB/s on one core of the development
// machine and decompresses at ~2 GB/s, so below this rate the bytes saved (8 % int8, 21 % int4)
// take longer on the link than the compression takes on the CPU.
inline constexpr double kAutoCompressBelowBps = 125e6;
// ... and only on links with a round trip of at least 2 ms: a wide-area path. On loopback or a LAN
// a low measured rate means busy CPUs, not a slow wire (loopback on the development machine at
// load 20-30 shows ~15 MB/s), and compressing there only adds CPU time (measured: +50 %).
inline constexpr double kAutoCompressMinRttSeconds = 0.002;

std::string_view compressName(Compress c);
// "off", "zstd", "auto"; kInvalidArgument names the bad value.
Result<Compress> parseCompress(std::string_view name);

// Whether pieces of `wire` sent over a link that has shown `link` go compressed. kAuto with an
// unmeasured link (the first operation) sends uncompressed.
bool compressOn(Compress c, Wire wire, const LinkStats& link);

// Compresses `src` into `dst`; returns the compressed length, or 0 when it would not be shorter
// than src.size() (send `src` as it is). dst.size() >= src.size().
std::size_t compressPiece(ByteSpan src, MutableByteSpan dst);

// Decompresses `src` into `dst`, which it must fill exactly; otherwise kProtocolError (a peer sent
// bytes that are not a compressed piece of this size).
Status decompressPiece(ByteSpan src, MutableByteSpan dst);

}  // namespace loco::collectives
