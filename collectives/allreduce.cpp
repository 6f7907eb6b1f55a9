#include "collectives/allreduce.h"

#include <algorithm>
#include <cstring>

#include "collectives/direct_allreduce.h"
#include "collectives/kernels.h"
#include "collectives/ring_allreduce.h"

namespace loco::collectives {

AllReduce::AllReduce(BufferPool& pool, const AllReduceArgs& args, Algorithm algorithm)
    : args_(args),
      wire_(args.wire),
      quant_block_(args.quant_block),
      n_(args.count),
      algorithm_(algorithm),
      pool_(pool) {
  if (args.dtype == DType::kF32) {
    work_ = static_cast<float*>(args.data);
    backup_ = pool_.take(n_ * sizeof(float));
    backup_data_ = backup_.data();
    if (algorithm == Algorithm::kRing && backup_.size() >= kOverlapBackupBytes) {
      block_count_ = (backup_.size() + kBlockBytes - 1) / kBlockBytes;
      blocks_ = std::make_unique<std::atomic<std::uint8_t>[]>(block_count_);
      for (std::size_t k = 0; k < block_count_; ++k) blocks_[k].store(kTodo);
    } else {
      std::memcpy(backup_.data(), args.data, backup_.size());
    }
  } else {
    work_storage_ = pool_.take(n_ * sizeof(float));
    work_ = work_storage_.floats();
    const auto* h = static_cast<const std::uint16_t*>(args.data);
    const bool half = args.dtype == DType::kF16;
    for (std::size_t i = 0; i < n_; ++i) work_[i] = half ? halfToFloat(h[i]) : bf16ToFloat(h[i]);
  }
}

void AllReduce::commit() {
  if (args_.dtype == DType::kF32) return;
  auto* h = static_cast<std::uint16_t*>(args_.data);
  const bool half = args_.dtype == DType::kF16;
  for (std::size_t i = 0; i < n_; ++i) h[i] = half ? floatToHalf(work_[i]) : floatToBf16(work_[i]);
}

void AllReduce::restore() {
  if (args_.dtype != DType::kF32 || backup_.empty()) return;
  if (!blocks_) return (void)std::memcpy(args_.data, backup_.data(), backup_.size());
  // Only blocks with a backup can have been written.
  auto* user = static_cast<std::uint8_t*>(args_.data);
  for (std::size_t k = 0; k < block_count_; ++k) {
    if (blocks_[k].load(std::memory_order_acquire) != kDone) continue;
    const std::size_t off = k * kBlockBytes, len = std::min(kBlockBytes, backup_.size() - off);
    std::memcpy(user + off, backup_data_ + off, len);
  }
}

bool AllReduce::claimBlock(std::size_t k) {
  std::uint8_t expected = kTodo;
  if (blocks_[k].compare_exchange_strong(expected, kCopying, std::memory_order_acq_rel))
    return true;
  while (expected == kCopying) {  // the other thread copies it: a memcpy of at most 1 MiB
    blocks_[k].wait(kCopying, std::memory_order_acquire);
    expected = blocks_[k].load(std::memory_order_acquire);
  }
  return false;
}

void AllReduce::copyBlock(std::size_t k) {
  const std::size_t off = k * kBlockBytes, len = std::min(kBlockBytes, n_ * 4 - off);
  copyStreaming(backup_data_ + off, static_cast<const std::uint8_t*>(args_.data) + off, len);
  blocks_[k].store(kDone, std::memory_order_release);
  blocks_[k].notify_all();
}

void AllReduce::backupOnCallerThread(std::size_t rank, std::size_t world) {
  if (!blocks_) return;
  auto copy = [&](std::size_t k) {
    std::uint8_t expected = kTodo;
    if (blocks_[k].compare_exchange_strong(expected, kCopying, std::memory_order_acq_rel))
      copyBlock(k);
  };
  // The ring first writes the segment it receives at step 1, then step 2's, ...: copy those
  // first, so the network thread rarely has to copy a block itself.
  if (world >= 2 && rank < world) {
    for (std::size_t step = 1; step <= 2 * world - 2; ++step) {
      auto [b, len] =
          RingAllReduce::segment(n_, world, RingAllReduce::recvSegment(world, rank, step));
      if (len == 0) continue;
      for (std::size_t k = b * 4 / kBlockBytes; k <= ((b + len) * 4 - 1) / kBlockBytes; ++k)
        copy(k);
    }
  }
  for (std::size_t k = 0; k < block_count_; ++k) copy(k);
}

void AllReduce::protect(std::size_t begin, std::size_t len) {
  if (!blocks_ || len == 0) return;
  const std::size_t first = begin * 4 / kBlockBytes, last = ((begin + len) * 4 - 1) / kBlockBytes;
  for (std::size_t k = first; k <= last; ++k) {
    if (blocks_[k].load(std::memory_order_acquire) == kDone) continue;
    if (claimBlock(k)) copyBlock(k);
  }
}

void AllReduce::release() {
  if (blocks_) {
    // The caller's thread may still be copying a block into the backup: wait for it, and keep
    // it from starting another, before the backup goes back to the pool.
    for (std::size_t k = 0; k < block_count_; ++k) {
      std::uint8_t expected = kTodo;
      if (blocks_[k].compare_exchange_strong(expected, kAbandoned, std::memory_order_acq_rel))
        continue;
      while (expected == kCopying) {
        blocks_[k].wait(kCopying, std::memory_order_acquire);
        expected = blocks_[k].load(std::memory_order_acquire);
      }
    }
  }
  pool_.give(std::move(backup_));
  pool_.give(std::move(work_storage_));
  scratch_ = {};
}

Descriptor AllReduce::descriptor() const {
  Descriptor d;
  d.count = n_;
  d.dtype = args_.dtype;
  d.op = args_.op;
  d.wire = wire_;
  d.algorithm = algorithm_;
  d.world = static_cast<std::uint32_t>(group.world());
  d.quant_block = static_cast<std::uint32_t>(quant_block_);
  return d;
}

void AllReduce::accumulate(std::span<float> dst, ByteSpan src) {
  const ReduceOp op = args_.op;
  if (op == ReduceOp::kSum || op == ReduceOp::kAvg) {
    if (wire_ == Wire::kRaw) {
      addInto(dst.data(), reinterpret_cast<const float*>(src.data()), dst.size());
    } else {
      decodeAdd(wire_, src, dst, quant_block_);
    }
    return;
  }
  const float* s;
  if (wire_ == Wire::kRaw) {
    s = reinterpret_cast<const float*>(src.data());
  } else {
    scratch_.resize(dst.size());
    decode(wire_, src, scratch_, quant_block_);
    s = scratch_.data();
  }
  if (op == ReduceOp::kMin) {
    minInto(dst.data(), s, dst.size());
  } else {
    maxInto(dst.data(), s, dst.size());
  }
}

void AllReduce::accumulateFinal(std::span<float> dst, ByteSpan src, std::size_t world) {
  if (args_.op == ReduceOp::kAvg && wire_ == Wire::kRaw) {
    return addDivideInto(dst.data(), reinterpret_cast<const float*>(src.data()), dst.size(), world);
  }
  accumulate(dst, src);
  if (args_.op == ReduceOp::kAvg) divideBy(dst.data(), dst.size(), world);
}

Buffer AllReduce::seal(std::span<float> segment) {
  if (wire_ == Wire::kRaw) return Buffer();
  Buffer bytes = pool_.take(encoded(segment.size()));
  encode(wire_, segment, bytes.span(), quant_block_);
  decode(wire_, bytes.span(), segment, quant_block_);
  return bytes;
}

Algorithm chooseAlgorithm(const AllReduceArgs& args, std::size_t world, bool one_host) {
  if (world <= 1) return Algorithm::kRing;
  const std::size_t bytes = encodedBytes(args.wire, args.count, args.quant_block);
  // Tiny buffers: one hop. Every peer sends its whole buffer to every other, so the bytes grow
  // with the world; beyond a few KiB per peer pair the scatter-gather's two hops win.
  if (bytes * (world - 1) <= kDirectMaxBytes) return Algorithm::kDirect;
  // Up to medium sizes on small groups on one host: two hops (scatter to owners, gather from
  // them) with the ring's bandwidth-optimal byte count, instead of the ring's 2(N-1) hops. Across
  // hosts a slow pair would carry 1/N of the buffer each way (lab, 100 Mbit/s with two 10
  // Mbit/s pairs, 8 MiB, N = 4: 4.0 s, against 1.25 s for the ring routed around them).
  if (one_host && world <= kScatterGatherMaxWorld && bytes <= kScatterGatherMaxBytes)
    return Algorithm::kScatterGather;
  return Algorithm::kRing;
}

std::shared_ptr<AllReduce> makeAllReduce(BufferPool& pool, const AllReduceArgs& args,
                                         Algorithm algorithm) {
  switch (algorithm) {
    case Algorithm::kDirect:
    case Algorithm::kScatterGather:
      return std::make_shared<DirectAllReduce>(pool, args, algorithm);
    case Algorithm::kRing:
    case Algorithm::kExchange:
      break;
  }
  return std::make_shared<RingAllReduce>(pool, args);
}

}  // namespace loco::collectives
