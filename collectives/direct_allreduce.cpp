#include "collectives/direct_allreduce.h"

#include <cstring>

#include "collectives/kernels.h"
#include "collectives/ring_allreduce.h"

namespace loco::collectives {

void DirectAllReduce::start() {
  world_ = group.world();
  rank_ = group.rank;
  std::vector<std::size_t> others;
  for (std::size_t j = 0; j < world_; ++j) {
    if (j != rank_) others.push_back(j);
  }
  // Every peer receives from every other: each checks every other's descriptor.
  checkDescriptors(descriptor(), others, others);
  if (world_ == 1) {
    reduced_ = true;
    starting_ = false;
    return maybeComplete();
  }
  in_.resize(world_);
  decoded_.resize(world_);
  gathered_.resize(world_);
  if (algorithm_ == Algorithm::kDirect) {
    startDirect();
  } else {
    startScatterGather();
  }
  // Receives of bytes already here complete while they are posted: nothing may overwrite the
  // buffer or report done before every send has been issued.
  starting_ = false;
  if (ended) return;
  if (algorithm_ == Algorithm::kDirect) return maybeReduceDirect();
  if (recvs_left_ == 0 && !reduced_) return finishOwnSegment();
  maybeComplete();
}

void DirectAllReduce::startDirect() {
  ByteSpan own(reinterpret_cast<const std::uint8_t*>(work_), n_ * sizeof(float));
  if (wire_ != Wire::kRaw) {
    own_bytes_ = pool().take(encoded(n_));
    encode(wire_, std::span<const float>(work_, n_), own_bytes_.span(), quant_block_);
    own = own_bytes_.span();
  }
  recvs_left_ = world_ - 1;
  for (std::size_t j = 0; j < world_ && !ended; ++j) {
    if (j == rank_) continue;
    in_[j] = pool().take(encoded(n_));
    recvFrom(j, 1, in_[j].span(), &DirectAllReduce::onDirectReceived);
  }
  // Own bytes live in own_bytes_ (or the buffer) until release, which waits for the sends.
  for (std::size_t j = 0; j < world_ && !ended; ++j) {
    if (j != rank_) sendTo(j, 1, own, nullptr);
  }
}

void DirectAllReduce::onDirectReceived(std::size_t) {
  --recvs_left_;
  maybeReduceDirect();
}

void DirectAllReduce::maybeReduceDirect() {
  // The raw sends read the buffer this reduction overwrites: wait for them.
  if (starting_ || reduced_ || recvs_left_ != 0 || sends_in_flight_ != 0) return;
  const float* own = work_;
  if (wire_ != Wire::kRaw) {
    decoded_[rank_] = pool().take(n_ * sizeof(float));
    decode(wire_, own_bytes_.span(), std::span<float>(decoded_[rank_].floats(), n_), quant_block_);
    own = decoded_[rank_].floats();
  }
  reduceInRankOrder(std::span<float>(work_, n_), contributions(n_, own));
  reduced_ = true;
  maybeComplete();
}

void DirectAllReduce::startScatterGather() {
  auto [mb, ml] = RingAllReduce::segment(n_, world_, rank_);
  recvs_left_ = world_ - 1;
  gathers_left_ = world_ - 1;
  for (std::size_t j = 0; j < world_ && !ended; ++j) {
    if (j == rank_) continue;
    in_[j] = pool().take(encoded(ml));
    recvFrom(j, 1, in_[j].span(), &DirectAllReduce::onScattered);
    auto [jb, jl] = RingAllReduce::segment(n_, world_, j);
    MutableByteSpan dst(reinterpret_cast<std::uint8_t*>(work_ + jb), jl * sizeof(float));
    if (wire_ != Wire::kRaw) {
      gathered_[j] = pool().take(encoded(jl));
      dst = gathered_[j].span();
    }
    if (!ended) recvFrom(j, 2, dst, &DirectAllReduce::onGathered);
  }
  for (std::size_t j = 0; j < world_ && !ended; ++j) {
    if (j == rank_) continue;
    auto [jb, jl] = RingAllReduce::segment(n_, world_, j);
    if (wire_ == Wire::kRaw) {
      sendTo(j, 1, ByteSpan(reinterpret_cast<const std::uint8_t*>(work_ + jb), jl * 4), nullptr);
    } else {
      auto bytes = std::make_shared<Buffer>(pool().take(encoded(jl)));
      encode(wire_, std::span<const float>(work_ + jb, jl), bytes->span(), quant_block_);
      sendTo(j, 1, bytes->span(), bytes);
    }
  }
}

void DirectAllReduce::onScattered(std::size_t) {
  if (--recvs_left_ != 0 || starting_) return;
  finishOwnSegment();
}

// Every contribution to this peer's segment is here: reduce, finish and seal it once, and send
// it to everyone.
void DirectAllReduce::finishOwnSegment() {
  auto [mb, ml] = RingAllReduce::segment(n_, world_, rank_);
  std::span<float> seg(work_ + mb, ml);
  reduceInRankOrder(seg, contributions(ml, work_ + mb));
  auto bytes = std::make_shared<Buffer>(seal(seg));
  ByteSpan out = wire_ == Wire::kRaw
                     ? ByteSpan(reinterpret_cast<const std::uint8_t*>(seg.data()), ml * 4)
                     : ByteSpan(bytes->span());
  reduced_ = true;
  for (std::size_t j = 0; j < world_ && !ended; ++j) {
    if (j != rank_) sendTo(j, 2, out, bytes);
  }
  maybeComplete();
}

void DirectAllReduce::onGathered(std::size_t peer) {
  if (wire_ != Wire::kRaw) {
    auto [jb, jl] = RingAllReduce::segment(n_, world_, peer);
    decode(wire_, gathered_[peer].span(), std::span<float>(work_ + jb, jl), quant_block_);
  }
  --gathers_left_;
  maybeComplete();
}

std::vector<const float*> DirectAllReduce::contributions(std::size_t len, const float* own) {
  std::vector<const float*> c(world_);
  for (std::size_t j = 0; j < world_; ++j) {
    if (j == rank_) {
      c[j] = own;
    } else if (wire_ == Wire::kRaw) {
      c[j] = in_[j].floats();
    } else {
      decoded_[j] = pool().take(len * sizeof(float));
      decode(wire_, in_[j].span(), std::span<float>(decoded_[j].floats(), len), quant_block_);
      c[j] = decoded_[j].floats();
    }
  }
  return c;
}

void DirectAllReduce::reduceInRankOrder(std::span<float> dst,
                                        const std::vector<const float*>& contributions) {
  const std::size_t len = dst.size();
  Buffer acc_buf = pool().take(len * sizeof(float));
  float* a = acc_buf.floats();
  std::memcpy(a, contributions[0], len * sizeof(float));
  const ReduceOp op = args_.op;
  for (std::size_t j = 1; j < contributions.size(); ++j) {
    const float* c = contributions[j];
    if (op == ReduceOp::kSum || op == ReduceOp::kAvg) {
      addInto(a, c, len);
    } else if (op == ReduceOp::kMin) {
      minInto(a, c, len);
    } else {
      maxInto(a, c, len);
    }
  }
  if (op == ReduceOp::kAvg) divideBy(a, len, contributions.size());
  std::memcpy(dst.data(), a, len * sizeof(float));
  pool().give(std::move(acc_buf));
}

void DirectAllReduce::sendTo(std::size_t peer, std::size_t step, ByteSpan data,
                             std::shared_ptr<Buffer> keep) {
  ++sends_in_flight_;
  countSent(data.size());
  auto self = std::static_pointer_cast<DirectAllReduce>(shared_from_this());
  // `keep` (shared by the sends of one segment) frees the bytes when the last send is through.
  transport().send(peer, tag(step, 0), data, [self, keep](const Status& st) {
    if (self->ended) return;
    --self->sends_in_flight_;
    if (!st.isOk()) return self->fail(st);
    if (self->algorithm_ == Algorithm::kDirect) return self->maybeReduceDirect();
    self->maybeComplete();
  });
}

void DirectAllReduce::recvFrom(std::size_t peer, std::size_t step, MutableByteSpan dst,
                               void (DirectAllReduce::*then)(std::size_t peer)) {
  auto self = std::static_pointer_cast<DirectAllReduce>(shared_from_this());
  afterDescriptor(peer, [self, peer, step, dst, then] {
    self->transport().recv(peer, self->tag(step, 0), dst, [self, peer, then](const Status& st) {
      if (self->ended) return;
      if (!st.isOk()) return self->fail(st);
      ((*self).*then)(peer);
    });
  });
}

void DirectAllReduce::maybeComplete() {
  if (starting_ || complete_ || !reduced_ || gathers_left_ != 0 || sends_in_flight_ != 0) return;
  complete_ = true;
  dataComplete();
}

void DirectAllReduce::release() {
  for (auto* v : {&in_, &gathered_, &decoded_}) {
    for (Buffer& b : *v) pool().give(std::move(b));
  }
  pool().give(std::move(own_bytes_));
  AllReduce::release();
}

}  // namespace loco::collectives
