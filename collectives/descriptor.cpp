#include "collectives/descriptor.h"

#include <fmt/format.h>

namespace loco::collectives {

std::string_view algorithmName(Algorithm a) {
  switch (a) {
    case Algorithm::kRing:
      return "ring";
    case Algorithm::kDirect:
      return "direct";
    case Algorithm::kScatterGather:
      return "scatter-gather";
    case Algorithm::kExchange:
      return "exchange";
  }
  return "?";
}

std::vector<std::uint8_t> encodeDescriptor(const Descriptor& d) {
  std::vector<std::uint8_t> out;
  out.reserve(kDescriptorBytes);
  ByteWriter w(out);
  w.u64(d.count);
  w.u8(static_cast<std::uint8_t>(d.dtype));
  w.u8(static_cast<std::uint8_t>(d.op));
  w.u8(static_cast<std::uint8_t>(d.wire));
  w.u8(static_cast<std::uint8_t>(d.algorithm));
  w.u8(d.variant);
  w.u8(d.compression);
  w.u32(d.world);
  w.u32(d.quant_block);
  return out;
}

Result<Descriptor> decodeDescriptor(ByteSpan bytes) {
  if (bytes.size() != kDescriptorBytes) {
    return Status(StatusCode::kProtocolError,
                  fmt::format("operation descriptor of {} bytes (expected {})", bytes.size(),
                              kDescriptorBytes));
  }
  ByteReader r(bytes);
  Descriptor d;
  std::uint8_t dtype = 0, op = 0, wire = 0, algorithm = 0;
  if (!r.u64(d.count) || !r.u8(dtype) || !r.u8(op) || !r.u8(wire) || !r.u8(algorithm) ||
      !r.u8(d.variant) || !r.u8(d.compression) || !r.u32(d.world) || !r.u32(d.quant_block)) {
    return Status(StatusCode::kProtocolError, "truncated operation descriptor");
  }
  if (dtypeSize(static_cast<DType>(dtype)) == 0 || op > static_cast<std::uint8_t>(ReduceOp::kMax) ||
      wire > static_cast<std::uint8_t>(Wire::kInt4) || algorithm == 0 ||
      algorithm > static_cast<std::uint8_t>(Algorithm::kExchange)) {
    return Status(StatusCode::kProtocolError,
                  fmt::format("operation descriptor with dtype {}, op {}, wire {}, algorithm {} "
                              "out of range",
                              dtype, op, wire, algorithm));
  }
  d.dtype = static_cast<DType>(dtype);
  d.op = static_cast<ReduceOp>(op);
  d.wire = static_cast<Wire>(wire);
  d.algorithm = static_cast<Algorithm>(algorithm);
  return d;
}

namespace {
std::string describe(const Descriptor& d) {
  return fmt::format("{} elements, dtype {}, op {}, wire {} (block {}), {} over {} peers{}{}",
                     d.count, dtypeName(d.dtype), reduceOpName(d.op), wireName(d.wire),
                     d.quant_block, algorithmName(d.algorithm), d.world,
                     d.variant != 0 ? fmt::format(", variant {}", d.variant) : "",
                     d.compression != 0 ? fmt::format(", compression {}", d.compression) : "");
}
}  // namespace

Status compareDescriptors(const Descriptor& mine, const Descriptor& previous) {
  if (mine == previous) return Status();
  return Status(StatusCode::kInvalidArgument,
                fmt::format("peers disagree on the operation: here {}; the previous peer has {}",
                            describe(mine), describe(previous)));
}

}  // namespace loco::collectives
