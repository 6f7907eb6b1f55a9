#pragma once
// Multi-instance training (AdLoCo's MIT; README "Several instances per peer"): every peer trains
// K model instances, each its own DiLoCo trajectory. Instance k of every peer is one trajectory:
// its θ_k, outer momentum and (under a batch test) its batch are group state, and each round
// all-reduces the K instances' Δ side by side in one buffer. Every --merge-every rounds the
// instances are merged pairwise, by an average weighted by each one's batch demand, until one
// remains; from then on the run is plain (adaptive-batch) DiLoCo, with switch mode as set.
//
// All instances start from the same θ_0 (the run's seed): averaging two independently initialized
// networks would average unrelated features. They differ by their data: instance k of a peer
// draws from its own sampling stream (instanceStream).
//
// Which rounds merge is a pure function of the outer step, so every member (and a joiner that
// received the shared state) knows how many instances are active without a message; which
// instances pair up follows from the round's summed training losses, which every member holds bit
// for bit. Pure functions; no threads, no I/O.

#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "p2p/base/status.h"

namespace loco::training {

// How the instances pair up at a merge, by their mean training loss in the round (higher is
// worse): kWorstWithWorst pairs the two worst, then the next two; kBestWithWorst pairs the best
// with the worst, the second best with the second worst.
enum class MergePolicy : std::uint8_t { kWorstWithWorst, kBestWithWorst };
std::string_view mergePolicyName(MergePolicy p);
Result<MergePolicy> parseMergePolicy(std::string_view name);

// The statistics all-reduce carries a few values per instance: at most this many instances.
inline constexpr std::uint32_t kMaxInstances = 8;

struct MultiInstanceConfig {
  std::uint32_t instances = 1;    // K (--instances); 1: plain DiLoCo
  std::uint32_t merge_every = 5;  // R (--merge-every): rounds between merges
  MergePolicy policy = MergePolicy::kWorstWithWorst;
};

// kInvalidArgument naming the flag.
Status validateMultiInstanceConfig(const MultiInstanceConfig& c);

// Instances still active after `rounds` applied rounds: K, halved (rounding up) after every
// merge_every rounds, down to 1.
std::uint32_t activeInstances(const MultiInstanceConfig& c, std::uint64_t rounds);

// One instance after a merge: made of `first` alone, or of `first` and `second` averaged.
struct MergeGroup {
  std::uint32_t first = 0;
  std::uint32_t second = 0;
  bool pair = false;
};

// How `losses.size()` instances merge into ceil(n/2) (an odd one out stays as it is). Ties go to
// the lower index; the groups come in the order of their lowest member, which is the slot each
// merged instance takes.
std::vector<MergeGroup> mergePlan(std::span<const double> losses, MergePolicy policy);

// out = (wa·a + wb·b) / (wa + wb), in double per element; equal weights when both are <= 0.
// `out` may alias `a` or `b`. All three the same length.
void mergeWeighted(std::span<const float> a, double wa, std::span<const float> b, double wb,
                   std::span<float> out);

// The sampling stream of instance k of a peer whose own stream is `base` (instance 0: `base`).
std::uint64_t instanceStream(std::uint64_t base, std::uint32_t k);

}  // namespace loco::training
