#pragma once
// The pure math of the overlapped and partial synchronization methods (README "Overlapped and
// gossip synchronization"): the outer Nesterov step on a slice, the eager-overlap correction,
// Streaming DiLoCo's fragments and schedule, NoLoCo's pairing and update. No LibTorch, no
// network: training/distributed.cpp drives these between its collectives, and the unit tests
// check each rule against a hand computation.
//
// Sign conventions: DiLoCo and Streaming DiLoCo use Δ = θ_global − θ_local (old minus new, as
// optimizers.h); NoLoCo uses Δ = θ_local − φ (new minus old), as its authors' code does.
//
// Thread rules: every function is pure (or writes only its output arguments) and thread-safe.
// Nothing here blocks.

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "p2p/base/status.h"
#include "training/optimizers.h"

namespace loco::training {

struct ParamInfo;

// ---- whole-round overlap (DiLoCo) -----------------------------------------------------------

// none: the round's all-reduce blocks the training thread (DiLoCo as published).
// eager: the all-reduce of round t runs while round t+1 trains; round t+1 starts from the
//   consensus θ (all averages up to t−1 applied, equal on every peer) plus this peer's own
//   correction, which is what applying Δ_own^(t) + (Δ̄^(t−1) − Δ_own^(t−1)) every round gives
//   (see EagerCorrection).
// naive: round t+1 starts from the consensus θ alone: the average is applied one round late.
enum class Overlap : std::uint8_t { kNone, kEager, kNaive };
std::string_view overlapName(Overlap o);
Result<Overlap> parseOverlap(std::string_view name);

// PyTorch's SGD with Nesterov momentum on one slice, with the momentum b starting at zero (the
// same numbers as "b ← Δ on the first step": μ·0 + Δ = Δ exactly):
//   b ← μ·b + Δ;  θ ← θ − lr·(Δ + μ·b)  (nesterov)  or  θ ← θ − lr·b  (plain).
// All three spans the same length.
void outerNesterovStep(std::span<float> theta, std::span<float> momentum,
                       std::span<const float> delta, const OuterSgdOptions& o);

// The eager outer step applied every round to a peer's starting point,
//   θ_m^(t+1) = outer(θ_m^(t), Δ_own^(t) + Δ̄^(t−1) − Δ_own^(t−1)),
// is linear in its inputs, so θ_m = θ_c + c where θ_c is the consensus trajectory (the outer
// step over Δ̄^(0), Δ̄^(1), … alone: equal on every peer, kept in the shared state) and c is this
// peer's correction, the same outer step over d^(t) = Δ_own^(t) − Δ_own^(t−1) with its own
// momentum. Δ̄^(−1) = Δ_own^(−1) = 0. Keeping the consensus separate keeps the shared state
// (and its digest) equal on every peer.
class EagerCorrection {
 public:
  EagerCorrection(std::size_t n, OuterSgdOptions options);
  // d = own − last own; c ← outer(c, d); remembers `own`.
  void add(std::span<const float> own);
  // start = consensus + c.
  void startPoint(std::span<const float> consensus, std::span<float> start) const;
  // Forgets everything (this peer's Δ did not count, or it joined): c = 0, last own = 0.
  void reset();
  std::span<const float> correction() const { return c_; }

 private:
  OuterSgdOptions options_;
  std::vector<float> c_, momentum_, last_own_, d_;
};

// ---- Streaming DiLoCo -----------------------------------------------------------------------

// A contiguous run of elements of the flat parameter buffer.
struct Range {
  std::size_t offset = 0, count = 0;
};

// Fragment p holds the transformer blocks ℓ with ℓ mod P == p (strided, so every fragment
// spans the depth of the model); the token and position embeddings go with fragment 0 and
// everything else outside the blocks (the final LayerNorm) with fragment P−1. Adjacent ranges
// are merged. kInvalidArgument when P is 0 or exceeds the number of blocks.
Result<std::vector<std::vector<Range>>> fragmentRanges(const std::vector<ParamInfo>& layout,
                                                       std::uint32_t fragments);

std::size_t rangesSize(const std::vector<Range>& ranges);
// Copies the ranges of `all` into `out` (rangesSize long), in order, and back.
void gatherRanges(std::span<const float> all, const std::vector<Range>& ranges,
                  std::span<float> out);
void scatterRanges(std::span<const float> in, const std::vector<Range>& ranges,
                   std::span<float> all);

// The fragment synced by sync round r (0-based): round r takes its Δ at inner step
// (r+1)·H/P, and fragment p syncs at steps ≡ p·H/P (mod H), so every fragment syncs once
// every H steps and one sync is in flight at a time.
std::uint32_t streamingFragment(std::uint64_t round, std::uint32_t fragments);

// θ_m,p ← α·θ_m,p + (1−α)·θ̃_p.
void mergeFragment(std::span<float> local, std::span<const float> global, float alpha);

// ---- NoLoCo ---------------------------------------------------------------------------------

struct NolocoOptions {
  float alpha = 0.5f;  // momentum of δ
  float beta = 0.7f;   // weight of the group's mean Δ
  float gamma = 0.7f;  // pull toward the group's mean φ
};
Status validateNoloco(const NolocoOptions& o);

// The groups of round `round`: a permutation of `members` (sorted first, so the order they come
// in does not matter) seeded by the round and the member ids, cut into pairs; with an odd count
// the last group has three members. One member: one group of one. Identical on every peer that
// passes the same set and round; needs no communication.
std::vector<std::vector<std::string>> nolocoGroups(std::vector<std::string> members,
                                                   std::uint64_t round);
// The group holding `me` (empty when `me` is not a member).
std::vector<std::string> nolocoGroupOf(const std::vector<std::string>& members, std::uint64_t round,
                                       const std::string& me);

// NoLoCo's outer step for peer i, with Δ_i = θ_i − φ_i (new minus old):
//   δ ← α·δ + β·mean_G(Δ) − γ·(φ − mean_G(φ));  φ ← φ + δ.
// mean_delta and mean_phi are the group's means (for a group of one, this peer's own Δ and φ).
void nolocoStep(std::span<float> phi, std::span<float> delta_momentum,
                std::span<const float> mean_delta, std::span<const float> mean_phi,
                const NolocoOptions& o);

}  // namespace loco::training
