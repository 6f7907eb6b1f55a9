#pragma once
// Latency-optimal all-reduces for small buffers (ARCHITECTURE.md §5), chosen by size and, for
// the scatter-gather, only on one host (allreduce.h: chooseAlgorithm):
//
// - kDirect (tiny buffers): every peer sends its whole buffer, encoded once, to every other and
//   reduces all N contributions itself, in rank order, from the same decoded values (its own
//   included): one hop, and bit-identical because every peer computes the same sum in the same
//   order from the same bytes.
// - kScatterGather: peer j owns segment j. Step 1 sends each segment to its owner; the owner
//   reduces the N contributions in rank order, finishes the segment (÷N for avg), encodes it
//   once and takes the decoded value itself; step 2 sends it to every other peer. Two hops and
//   the ring's byte count (2(N-1)/N of the buffer per peer), instead of the ring's 2(N-1) hops.
//
// Both keep the ring's guarantees: restore on abort, commit only when every member is done.
// Gathered raw segments land straight in the buffer: the owner sends a segment back only after
// it has received this peer's contribution to it, so the bytes it overwrites were sent already.

#include "collectives/allreduce.h"

namespace loco::collectives {

// kDirect while a peer's bytes to all others stay within this.
inline constexpr std::size_t kDirectMaxBytes = 48u << 10;
// kScatterGather up to this many peers and bytes per peer, when every member is on one host;
// the ring above, and across hosts (allreduce.h: chooseAlgorithm).
inline constexpr std::size_t kScatterGatherMaxWorld = 16;
inline constexpr std::size_t kScatterGatherMaxBytes = 8u << 20;

class DirectAllReduce final : public AllReduce {
 public:
  DirectAllReduce(BufferPool& pool, const AllReduceArgs& args, Algorithm algorithm)
      : AllReduce(pool, args, algorithm) {}
  void start() override;
  void release() override;

 private:
  void startDirect();
  void startScatterGather();
  // Sends `data` to `peer` at `step`; `keep` holds the bytes until the send completes.
  void sendTo(std::size_t peer, std::size_t step, ByteSpan data, std::shared_ptr<Buffer> keep);
  void recvFrom(std::size_t peer, std::size_t step, MutableByteSpan dst,
                void (DirectAllReduce::*then)(std::size_t peer));
  void onDirectReceived(std::size_t peer);
  void onScattered(std::size_t peer);
  void finishOwnSegment();
  void onGathered(std::size_t peer);
  // dst[i] = c_0[i] ⊕ c_1[i] ⊕ … ⊕ c_{N-1}[i] (÷N for avg), in rank order.
  void reduceInRankOrder(std::span<float> dst, const std::vector<const float*>& contributions);
  // Pointers to each peer's decoded contribution to elements [begin, begin+len); `own` is this
  // peer's.
  std::vector<const float*> contributions(std::size_t len, const float* own);
  void maybeReduceDirect();
  void maybeComplete();

  std::size_t world_ = 1, rank_ = 0;
  std::vector<Buffer> in_;        // per peer: its contribution (direct) or segment (scatter)
  std::vector<Buffer> gathered_;  // per peer: its finished segment (quantized scatter-gather)
  std::vector<Buffer> decoded_;   // per peer: a quantized contribution, decoded
  Buffer own_bytes_;              // direct, quantized: this peer's contribution, encoded once
  std::size_t recvs_left_ = 0, gathers_left_ = 0, sends_in_flight_ = 0;
  bool starting_ = true;  // start() is still issuing transfers
  bool reduced_ = false, complete_ = false;
};

}  // namespace loco::collectives
