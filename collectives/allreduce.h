#pragma once
// What every all-reduce algorithm shares (internal to collectives/): the caller's buffer, the fp32
// data being reduced, restore-on-abort, the reductions and the choice of algorithm.
//
// f32 buffers are reduced in place; the bytes the caller passed are kept in a backup and copied
// back if the operation fails. For large buffers the backup is copied by the caller's thread in
// allReduce() while the network thread already runs the ring: the ring claims (and copies
// itself, if the caller has not got there yet) each 1 MiB block before it first writes into it,
// so the copy costs no time of its own. f16/bf16 buffers are converted to an fp32 copy, and the
// caller's buffer is written only at the commit, so it needs no backup.

#include <atomic>
#include <cstddef>
#include <memory>

#include "collectives/buffer_pool.h"
#include "collectives/codec.h"
#include "collectives/compress.h"
#include "collectives/descriptor.h"
#include "collectives/op_engine.h"

namespace loco::collectives {

// f32 rings from this size on overlap their backup with the data phase.
inline constexpr std::size_t kOverlapBackupBytes = 4u << 20;

struct AllReduceArgs {
  void* data = nullptr;
  std::size_t count = 0;
  DType dtype = DType::kF32;
  ReduceOp op = ReduceOp::kSum;
  Wire wire = Wire::kRaw;
  std::size_t quant_block = kQuantBlock;
  Compress compress = Compress::kOff;  // the ring's entropy stage (compress.h)
};

class AllReduce : public Collective {
 public:
  // Caller's thread: takes the backup (f32) or the fp32 copy (f16/bf16).
  AllReduce(BufferPool& pool, const AllReduceArgs& args, Algorithm algorithm);
  void commit() override;
  void restore() override;
  void release() override;
  // Caller's thread, after submit: copies every backup block nobody has claimed yet, in the
  // order the ring of `world` peers will first write them at `rank` (as far as the caller's
  // view can tell; any order is correct).
  void backupOnCallerThread(std::size_t rank, std::size_t world);

 protected:
  // Before the operation writes elements [begin, begin+len) of the caller's buffer: makes sure
  // their backup exists, copying it here if the caller's thread has not yet (or waiting for the
  // block it is copying).
  void protect(std::size_t begin, std::size_t len);
  Descriptor descriptor() const;
  std::size_t encoded(std::size_t elems) const { return encodedBytes(wire_, elems, quant_block_); }
  // dst ⊕= the decoded `src` (⊕: +, min or max; avg accumulates with +).
  void accumulate(std::span<float> dst, ByteSpan src);
  // The owner's last step: dst ⊕= src, then / world for avg, in one pass over dst.
  void accumulateFinal(std::span<float> dst, ByteSpan src, std::size_t world);
  // The owner's finished segment: encode it once and take the decoded value itself, exactly as
  // every other peer will (bit-identical results). Returns the bytes to send (empty for raw:
  // raw sends go straight from `work_`).
  Buffer seal(std::span<float> segment);

  const AllReduceArgs args_;
  const Wire wire_;
  const std::size_t quant_block_;
  const std::size_t n_;
  const Algorithm algorithm_;
  float* work_ = nullptr;       // the fp32 data being reduced: the caller's buffer for f32
  Buffer work_storage_;         // f16/bf16
  Buffer backup_;               // f32: the caller's bytes before the operation
  std::vector<float> scratch_;  // min/max decode target

 private:
  enum BlockState : std::uint8_t { kTodo, kCopying, kDone, kAbandoned };
  static constexpr std::size_t kBlockBytes = std::size_t{1} << 20;
  // Claims block k for copying (true) or, if someone else holds it, waits until it is copied.
  bool claimBlock(std::size_t k);
  void copyBlock(std::size_t k);

  BufferPool& pool_;
  // Overlapped backup (large f32 rings): one state per block; null when the constructor copied
  // the whole backup.
  std::unique_ptr<std::atomic<std::uint8_t>[]> blocks_;
  std::size_t block_count_ = 0;
  std::uint8_t* backup_data_ = nullptr;
};

// Which algorithm an all-reduce of `count` elements of `wire` over `world` peers uses. A pure
// function of its arguments, so every peer that agrees on them picks the same. `one_host`: every
// member advertises the same host (from the epoch's view, so every peer knows the same), where
// all links are alike. Elsewhere links may differ tenfold (a WAN), and only the ring, whose order
// the topology measurement chooses (ARCHITECTURE.md §5), can go around a slow pair: the
// scatter-gather sends to every peer at once, so it runs at the slowest pair's rate.
Algorithm chooseAlgorithm(const AllReduceArgs& args, std::size_t world, bool one_host);

// Builds the operation for `algorithm` (caller's thread).
std::shared_ptr<AllReduce> makeAllReduce(BufferPool& pool, const AllReduceArgs& args,
                                         Algorithm algorithm);

}  // namespace loco::collectives
