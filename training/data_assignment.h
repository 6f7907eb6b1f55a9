#pragma once
// Which samples a peer draws when nobody chose a data rank for it (issue: two volunteers who join
// with default flags must not train on identical batches).
//
// Without --rank a peer's data position is derived from the group, not from a flag:
//   - its random stream (i.i.d. sharding) is a hash of its peer id, so it differs from every other
//     peer's and stays the same across restarts that keep the identity file (--identity);
//   - its rank is its position in the sorted list of member ids and the world is the member count,
//     so contiguous slices cover the corpus and are re-cut whenever the membership changes.
// Every member sees the same membership in an epoch, so every member computes the same cut.
//
// --rank stays an override (reproducible runs, `loco local`). Two live peers that chose the same
// rank draw the same batches: each peer marks its explicit rank in a few slots of the round's
// statistics all-reduce (a bucket count and a bucket sum), and both warn.
//
// Pure functions; no threads, no I/O.

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>

namespace loco::training {

struct DataAssignment {
  std::uint32_t rank = 0;    // position among the members (contiguous slice index)
  std::uint32_t world = 1;   // members
  std::uint64_t stream = 0;  // i.i.d. sampling stream
  bool operator==(const DataAssignment&) const = default;
};

// A 64-bit stream key for a peer id (FNV-1a then splitmix64: well mixed, stable across builds).
std::uint64_t streamOf(std::string_view peer_id);

// The assignment of `self` in a group of `members` (any order; duplicates ignored). When `self`
// is not among them (not admitted yet) it is placed as if it were.
DataAssignment assignData(std::span<const std::string> members, std::string_view self);

// Slots of the statistics all-reduce used to find duplicate explicit ranks: kRankBuckets buckets
// of (count, sum of ranks). The stats are summed in fp32, exact for ranks below 2^20 and
// fewer than 16 peers per bucket.
inline constexpr std::size_t kRankBuckets = 12;
inline constexpr std::size_t kRankSlots = 2 * kRankBuckets;

// Adds this peer's explicit rank to `slots` (kRankSlots long, zero before the first peer).
void markExplicitRank(std::span<float> slots, std::uint32_t rank);
// After the all-reduce: whether another peer marked the same rank. A bucket holding `rank` twice
// sums to exactly 2·rank with count 2; other ranks in the bucket make the test fail except in
// contrived cases (r−k and r+k with r itself absent), which can only cause a spurious warning.
bool sharesExplicitRank(std::span<const float> slots, std::uint32_t rank);

}  // namespace loco::training
