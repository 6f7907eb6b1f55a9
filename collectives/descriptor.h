#pragma once
// What a peer believes a collective operation is. Each peer sends its descriptor to its ring
// successor before the operation's data, whatever the algorithm, and checks its predecessor's
// before reporting its part done: if any two peers disagree, some pair of ring neighbours does,
// and the operation fails everywhere with a message that names the difference. Encoded with
// ByteWriter like every other message, and fuzzed (tests/fuzz).

#include <cstddef>
#include <cstdint>
#include <vector>

#include "collectives/codec.h"
#include "collectives/types.h"
#include "p2p/base/bytes.h"
#include "p2p/base/status.h"

namespace loco::collectives {

// How an operation moves its data; chosen from (count, dtype, wire, world) alone, so every peer
// that agrees on those picks the same one.
enum class Algorithm : std::uint8_t {
  kRing = 1,           // pipelined ring: reduce-scatter, then all-gather (ring_allreduce.h)
  kDirect = 2,         // every peer sends its whole buffer to every other (direct_allreduce.h)
  kScatterGather = 3,  // each segment to its owner, reduced there, then sent to everyone
  kExchange = 4,       // a small group averages or swaps buffers (exchange.h)
};
std::string_view algorithmName(Algorithm a);

struct Descriptor {
  std::uint64_t count = 0;
  DType dtype = DType::kF32;
  ReduceOp op = ReduceOp::kSum;
  Wire wire = Wire::kRaw;
  Algorithm algorithm = Algorithm::kRing;
  std::uint8_t variant = 0;       // algorithm-specific (exchange: average or swap)
  std::uint8_t compression = 0;   // entropy stage on the wire (0: none)
  std::uint32_t world = 0;        // peers taking part
  std::uint32_t quant_block = 0;  // int8/int4 elements per scale

  bool operator==(const Descriptor&) const = default;
};

inline constexpr std::size_t kDescriptorBytes = 22;

std::vector<std::uint8_t> encodeDescriptor(const Descriptor& d);
// kProtocolError for a wrong size or a value outside its enum.
Result<Descriptor> decodeDescriptor(ByteSpan bytes);
// OK when equal; otherwise kInvalidArgument with both descriptors spelled out ("peers disagree
// on the operation: here ...; the previous peer has ...").
Status compareDescriptors(const Descriptor& mine, const Descriptor& previous);

}  // namespace loco::collectives
