#pragma once
// Pairwise / small-group exchange for gossip methods (ARCHITECTURE.md §5): two or three members
// of an epoch average or swap buffers, with the all-reduce's guarantees. Every member sends its
// contribution, encoded once, to the others it needs; the result is computed into a staging
// buffer and written to the caller's `recv` only when the coordinator has seen every member of
// the group finish (both sides apply or neither). A member that dies or stalls fails the
// exchange for the others (its link breaks, or the coordinator evicts it and the epoch moves on),
// and their `recv` buffers stay untouched.
//
// kAverage: recv = the mean of the members' contributions, summed in member order from the same
//   decoded bytes on every member (bit-identical).
// kSwap: recv = the contribution of the next member in member order (for two, the partner's).

#include <span>

#include "collectives/buffer_pool.h"
#include "collectives/codec.h"
#include "collectives/op_engine.h"

namespace loco::collectives {

struct ExchangeArgs {
  std::span<const float> send;
  std::span<float> recv;
  ExchangeMode mode = ExchangeMode::kAverage;
  Wire wire = Wire::kRaw;
  std::size_t quant_block = kQuantBlock;
};

class Exchange final : public Collective {
 public:
  // `members` (set before submit) must hold this peer and one or two others, sorted.
  explicit Exchange(const ExchangeArgs& args) : args_(args) {}
  void start() override;
  void commit() override;
  void restore() override {}  // recv is written only at the commit; send never
  void release() override;

 private:
  std::size_t epochRank(std::size_t member) const { return ranks_[member]; }
  void onReceived();
  void maybeComplete();

  const ExchangeArgs args_;
  std::vector<std::size_t> ranks_;  // members' ranks in the epoch's group
  std::size_t me_ = 0;              // this peer's index in `members`
  std::vector<Buffer> in_;          // per member: its encoded contribution
  Buffer own_bytes_;                // quantized: this peer's contribution, encoded once
  Buffer result_;                   // staged until the commit
  std::size_t recvs_left_ = 0, sends_in_flight_ = 0;
  bool starting_ = true;  // start() is still issuing transfers
  bool computed_ = false, complete_ = false;
};

}  // namespace loco::collectives
