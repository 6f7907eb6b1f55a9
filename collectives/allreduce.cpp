#include "collectives/allreduce.h"

#include <algorithm>
#include <cstring>

#include "collectives/direct_allreduce.h"
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
    std::memcpy(backup_.data(), args.data, backup_.size());
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
  if (args_.dtype == DType::kF32 && !backup_.empty())
    std::memcpy(args_.data, backup_.data(), backup_.size());
}

void AllReduce::release() {
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
      const float* s = reinterpret_cast<const float*>(src.data());
      float* d = dst.data();
      for (std::size_t i = 0, n = dst.size(); i < n; ++i) d[i] += s[i];
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
  float* d = dst.data();
  if (op == ReduceOp::kMin) {
    for (std::size_t i = 0, n = dst.size(); i < n; ++i) d[i] = std::min(d[i], s[i]);
  } else {
    for (std::size_t i = 0, n = dst.size(); i < n; ++i) d[i] = std::max(d[i], s[i]);
  }
}

void AllReduce::accumulateFinal(std::span<float> dst, ByteSpan src, std::size_t world) {
  if (args_.op == ReduceOp::kAvg && wire_ == Wire::kRaw) {
    const float* s = reinterpret_cast<const float*>(src.data());
    float* d = dst.data();
    const float w = static_cast<float>(world);
    for (std::size_t i = 0, n = dst.size(); i < n; ++i) d[i] = (d[i] + s[i]) / w;
    return;
  }
  accumulate(dst, src);
  if (args_.op == ReduceOp::kAvg) {
    const float w = static_cast<float>(world);
    for (float& x : dst) x /= w;
  }
}

Buffer AllReduce::seal(std::span<float> segment) {
  if (wire_ == Wire::kRaw) return Buffer();
  Buffer bytes = pool_.take(encoded(segment.size()));
  encode(wire_, segment, bytes.span(), quant_block_);
  decode(wire_, bytes.span(), segment, quant_block_);
  return bytes;
}

Algorithm chooseAlgorithm(const AllReduceArgs& args, std::size_t world) {
  if (world <= 1) return Algorithm::kRing;
  const std::size_t bytes = encodedBytes(args.wire, args.count, args.quant_block);
  // Tiny buffers: one hop. Every peer sends its whole buffer to every other, so the bytes grow
  // with the world; beyond a few KiB per peer pair the scatter-gather's two hops win.
  if (bytes * (world - 1) <= kDirectMaxBytes) return Algorithm::kDirect;
  // Up to medium sizes on small groups: two hops (scatter to owners, gather from them) with
  // the ring's bandwidth-optimal byte count, instead of the ring's 2(N-1) hops.
  if (world <= kScatterGatherMaxWorld && bytes <= kScatterGatherMaxBytes)
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
