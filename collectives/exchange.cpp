#include "collectives/exchange.h"

#include "collectives/kernels.h"

#include <algorithm>
#include <cstring>

namespace loco::collectives {

void Exchange::start() {
  const std::size_t k = members.size();
  ranks_.resize(k);
  for (std::size_t m = 0; m < k; ++m) {
    auto it = std::find(group.ids.begin(), group.ids.end(), members[m]);
    ranks_[m] = static_cast<std::size_t>(it - group.ids.begin());  // begin() checked membership
    if (ranks_[m] == group.rank) me_ = m;
  }
  Descriptor d;
  d.count = args_.send.size();
  d.dtype = DType::kF32;
  d.op = ReduceOp::kAvg;
  d.wire = args_.wire;
  d.algorithm = Algorithm::kExchange;
  d.variant = static_cast<std::uint8_t>(args_.mode);
  d.world = static_cast<std::uint32_t>(k);
  d.quant_block = static_cast<std::uint32_t>(args_.quant_block);
  std::vector<std::size_t> others;
  for (std::size_t m = 0; m < k; ++m) {
    if (m != me_) others.push_back(epochRank(m));
  }
  checkDescriptors(d, others, others);

  const std::size_t n = args_.send.size();
  const std::size_t bytes = encodedBytes(args_.wire, n, args_.quant_block);
  ByteSpan own(reinterpret_cast<const std::uint8_t*>(args_.send.data()), n * sizeof(float));
  if (args_.wire != Wire::kRaw) {
    own_bytes_ = pool().take(bytes);
    encode(args_.wire, args_.send, own_bytes_.span(), args_.quant_block);
    own = own_bytes_.span();
  }
  // Average: everyone sends to everyone. Swap: member m sends to m-1 and takes from m+1.
  std::vector<std::size_t> to, from;
  for (std::size_t m = 0; m < k; ++m) {
    if (m == me_) continue;
    const bool swap = args_.mode == ExchangeMode::kSwap;
    if (!swap || m == (me_ + k - 1) % k) to.push_back(m);
    if (!swap || m == (me_ + 1) % k) from.push_back(m);
  }
  in_.resize(k);
  recvs_left_ = from.size();
  auto self = std::static_pointer_cast<Exchange>(shared_from_this());
  for (std::size_t m : from) {
    in_[m] = pool().take(bytes);
    const std::size_t peer = epochRank(m);
    MutableByteSpan dst = in_[m].span();
    afterDescriptor(peer, [self, peer, dst] {
      self->transport().recv(peer, self->tag(1, 0), dst, [self](const Status& st) {
        if (self->ended) return;
        if (!st.isOk()) return self->fail(st);
        --self->recvs_left_;
        self->onReceived();
      });
    });
    if (ended) return;
  }
  for (std::size_t m : to) {
    ++sends_in_flight_;
    countSent(own.size());
    transport().send(epochRank(m), tag(1, 0), own, [self](const Status& st) {
      if (self->ended) return;
      --self->sends_in_flight_;
      if (!st.isOk()) return self->fail(st);
      self->maybeComplete();
    });
    if (ended) return;
  }
  starting_ = false;
  onReceived();
}

void Exchange::onReceived() {
  if (starting_ || computed_ || recvs_left_ != 0) return;
  const std::size_t n = args_.send.size();
  result_ = pool().take(n * sizeof(float));
  std::span<float> out(result_.floats(), n);
  if (args_.mode == ExchangeMode::kSwap) {
    const std::size_t m = (me_ + 1) % members.size();
    decode(args_.wire, in_[m].span(), out, args_.quant_block);
  } else {
    // Member order, from decoded bytes only (this peer's own included): every member computes
    // the same floats in the same order.
    for (std::size_t m = 0; m < members.size(); ++m) {
      ByteSpan bytes = m != me_ ? ByteSpan(in_[m].span())
                       : args_.wire == Wire::kRaw
                           ? ByteSpan(reinterpret_cast<const std::uint8_t*>(args_.send.data()),
                                      n * sizeof(float))
                           : ByteSpan(own_bytes_.span());
      if (m == 0) {
        decode(args_.wire, bytes, out, args_.quant_block);
      } else {
        decodeAdd(args_.wire, bytes, out, args_.quant_block);
      }
    }
    divideBy(out.data(), n, members.size());
  }
  computed_ = true;
  maybeComplete();
}

void Exchange::maybeComplete() {
  // The sends read `send`, which may be `recv` itself: complete (and so commit) after them.
  if (complete_ || !computed_ || sends_in_flight_ != 0) return;
  complete_ = true;
  dataComplete();
}

void Exchange::commit() {
  std::memcpy(args_.recv.data(), result_.data(), args_.recv.size() * sizeof(float));
}

void Exchange::release() {
  for (Buffer& b : in_) pool().give(std::move(b));
  pool().give(std::move(own_bytes_));
  pool().give(std::move(result_));
}

}  // namespace loco::collectives
