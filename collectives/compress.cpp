#include "collectives/compress.h"

#include <fmt/format.h>
#include <zstd.h>

#include <memory>

namespace loco::collectives {
namespace {
// Level 1: the fastest of the standard levels; higher ones gain a few percent on quantized data
// for several times the CPU.
constexpr int kLevel = 1;

struct CCtxFree {
  void operator()(ZSTD_CCtx* c) const { ZSTD_freeCCtx(c); }
};
struct DCtxFree {
  void operator()(ZSTD_DCtx* d) const { ZSTD_freeDCtx(d); }
};

// One context per thread, reused: creating one per piece costs more than compressing 256 KiB.
ZSTD_CCtx* cctx() {
  thread_local std::unique_ptr<ZSTD_CCtx, CCtxFree> ctx(ZSTD_createCCtx());
  return ctx.get();
}
ZSTD_DCtx* dctx() {
  thread_local std::unique_ptr<ZSTD_DCtx, DCtxFree> ctx(ZSTD_createDCtx());
  return ctx.get();
}
}  // namespace

std::string_view compressName(Compress c) {
  switch (c) {
    case Compress::kOff:
      return "off";
    case Compress::kZstd:
      return "zstd";
    case Compress::kAuto:
      return "auto";
  }
  return "?";
}

Result<Compress> parseCompress(std::string_view name) {
  for (Compress c : {Compress::kOff, Compress::kZstd, Compress::kAuto}) {
    if (name == compressName(c)) return c;
  }
  return Status(StatusCode::kInvalidArgument,
                fmt::format("unknown compression '{}' (use auto, zstd or off)", name));
}

bool compressOn(Compress c, Wire wire, const LinkStats& link) {
  if (wire == Wire::kRaw || c == Compress::kOff) return false;
  if (c == Compress::kZstd) return true;
  return link.rate_Bps > 0 && link.rate_Bps < kAutoCompressBelowBps &&
         link.rtt_s >= kAutoCompressMinRttSeconds;
}

std::size_t compressPiece(ByteSpan src, MutableByteSpan dst) {
  if (src.size() < 2 || dst.size() < src.size()) return 0;
  // At most src.size() - 1 bytes: a result as long as the input would read as uncompressed.
  const std::size_t n =
      ZSTD_compressCCtx(cctx(), dst.data(), src.size() - 1, src.data(), src.size(), kLevel);
  return ZSTD_isError(n) ? 0 : n;  // dstSize_tooSmall: it does not get shorter
}

Status decompressPiece(ByteSpan src, MutableByteSpan dst) {
  const std::size_t n = ZSTD_decompressDCtx(dctx(), dst.data(), dst.size(), src.data(), src.size());
  if (ZSTD_isError(n) || n != dst.size()) {
    return Status(StatusCode::kProtocolError,
                  fmt::format("a compressed piece of {} bytes does not decompress to {} bytes ({})",
                              src.size(), dst.size(),
                              ZSTD_isError(n) ? ZSTD_getErrorName(n) : "wrong length"));
  }
  return Status();
}

}  // namespace loco::collectives
