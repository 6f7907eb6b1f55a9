#include "training/data_assignment.h"

#include <algorithm>
#include <vector>

namespace loco::training {

std::uint64_t streamOf(std::string_view peer_id) {
  std::uint64_t h = 1469598103934665603ull;
  for (unsigned char c : peer_id) {
    h ^= c;
    h *= 1099511628211ull;
  }
  // splitmix64 finalizer: FNV alone leaves short ids' high bits poorly mixed.
  h += 0x9e3779b97f4a7c15ull;
  h = (h ^ (h >> 30)) * 0xbf58476d1ce4e5b9ull;
  h = (h ^ (h >> 27)) * 0x94d049bb133111ebull;
  return h ^ (h >> 31);
}

DataAssignment assignData(std::span<const std::string> members, std::string_view self) {
  std::vector<std::string_view> ids(members.begin(), members.end());
  ids.emplace_back(self);
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  DataAssignment a;
  a.rank = static_cast<std::uint32_t>(std::lower_bound(ids.begin(), ids.end(), self) - ids.begin());
  a.world = static_cast<std::uint32_t>(ids.size());
  a.stream = streamOf(self);
  return a;
}

void markExplicitRank(std::span<float> slots, std::uint32_t rank) {
  if (slots.size() < kRankSlots) return;
  const std::size_t b = rank % kRankBuckets;
  slots[2 * b] += 1.0f;
  slots[2 * b + 1] += static_cast<float>(rank);
}

bool sharesExplicitRank(std::span<const float> slots, std::uint32_t rank) {
  if (slots.size() < kRankSlots) return false;
  const std::size_t b = rank % kRankBuckets;
  const double count = slots[2 * b];
  const double sum = slots[2 * b + 1];
  return count >= 2 && sum == count * static_cast<double>(rank);
}

}  // namespace loco::training
