#pragma once
// What every all-reduce algorithm shares (internal to collectives/): the caller's buffer, the fp32
// data being reduced, restore-on-abort, the reductions and the choice of algorithm.
//
// f32 buffers are reduced in place; the bytes the caller passed are kept in a backup, copied on
// the caller's thread before the operation starts, and copied back if it fails. f16/bf16
// buffers are converted to an fp32 copy, and the caller's buffer is written only at the commit,
// so it needs no backup.

#include <cstddef>
#include <memory>

#include "collectives/buffer_pool.h"
#include "collectives/codec.h"
#include "collectives/descriptor.h"
#include "collectives/op_engine.h"

namespace loco::collectives {

struct AllReduceArgs {
  void* data = nullptr;
  std::size_t count = 0;
  DType dtype = DType::kF32;
  ReduceOp op = ReduceOp::kSum;
  Wire wire = Wire::kRaw;
  std::size_t quant_block = kQuantBlock;
};

class AllReduce : public Collective {
 public:
  // Caller's thread: takes the backup (f32) or the fp32 copy (f16/bf16).
  AllReduce(BufferPool& pool, const AllReduceArgs& args, Algorithm algorithm);
  void commit() override;
  void restore() override;
  void release() override;

 protected:
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
  BufferPool& pool_;
};

// Which algorithm an all-reduce of `count` elements of `wire` over `world` peers uses. A pure
// function of its arguments, so every peer that agrees on them picks the same.
Algorithm chooseAlgorithm(const AllReduceArgs& args, std::size_t world);

// Builds the operation for `algorithm` (caller's thread).
std::shared_ptr<AllReduce> makeAllReduce(BufferPool& pool, const AllReduceArgs& args,
                                         Algorithm algorithm);

}  // namespace loco::collectives
