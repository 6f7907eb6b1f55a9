#include "training/multi_instance.h"

#include <fmt/format.h>

#include <algorithm>
#include <numeric>

namespace loco::training {

std::string_view mergePolicyName(MergePolicy p) {
  return p == MergePolicy::kBestWithWorst ? "best-with-worst" : "worst-with-worst";
}

Result<MergePolicy> parseMergePolicy(std::string_view name) {
  if (name == "worst-with-worst") return MergePolicy::kWorstWithWorst;
  if (name == "best-with-worst") return MergePolicy::kBestWithWorst;
  return Status(
      StatusCode::kInvalidArgument,
      fmt::format("--merge-policy takes worst-with-worst or best-with-worst, got '{}'", name));
}

Status validateMultiInstanceConfig(const MultiInstanceConfig& c) {
  if (c.instances < 1 || c.instances > kMaxInstances) {
    return Status(StatusCode::kInvalidArgument,
                  fmt::format("--instances {} is outside 1..{}", c.instances, kMaxInstances));
  }
  if (c.merge_every < 1) {
    return Status(StatusCode::kInvalidArgument, "--merge-every must be at least 1 round");
  }
  return Status();
}

std::uint32_t activeInstances(const MultiInstanceConfig& c, std::uint64_t rounds) {
  std::uint32_t k = std::max<std::uint32_t>(c.instances, 1);
  if (c.merge_every == 0) return k;
  for (std::uint64_t merges = rounds / c.merge_every; merges > 0 && k > 1; --merges) {
    k = (k + 1) / 2;
  }
  return k;
}

std::vector<MergeGroup> mergePlan(std::span<const double> losses, MergePolicy policy) {
  const auto n = static_cast<std::uint32_t>(losses.size());
  std::vector<std::uint32_t> worst_first(n);
  std::iota(worst_first.begin(), worst_first.end(), 0u);
  // Higher loss first; a NaN (an instance nobody trained) counts as the worst.
  auto worse = [&](std::uint32_t a, std::uint32_t b) {
    const bool na = !(losses[a] == losses[a]), nb = !(losses[b] == losses[b]);
    if (na != nb) return na;
    if (!na && losses[a] != losses[b]) return losses[a] > losses[b];
    return a < b;
  };
  std::sort(worst_first.begin(), worst_first.end(), worse);
  std::vector<MergeGroup> groups;
  if (policy == MergePolicy::kWorstWithWorst) {
    for (std::uint32_t i = 0; i + 1 < n; i += 2) {
      groups.push_back({worst_first[i], worst_first[i + 1], true});
    }
    if (n % 2 == 1) groups.push_back({worst_first[n - 1], worst_first[n - 1], false});
  } else {
    for (std::uint32_t i = 0; i < n / 2; ++i) {
      groups.push_back({worst_first[n - 1 - i], worst_first[i], true});
    }
    if (n % 2 == 1) groups.push_back({worst_first[n / 2], worst_first[n / 2], false});
  }
  auto lowest = [](const MergeGroup& g) { return g.pair ? std::min(g.first, g.second) : g.first; };
  std::sort(groups.begin(), groups.end(),
            [&](const MergeGroup& a, const MergeGroup& b) { return lowest(a) < lowest(b); });
  return groups;
}

void mergeWeighted(std::span<const float> a, double wa, std::span<const float> b, double wb,
                   std::span<float> out) {
  if (!(wa > 0) || !(wb > 0)) wa = wb = 1;
  const double sum = wa + wb;
  for (std::size_t i = 0; i < out.size(); ++i) {
    out[i] = static_cast<float>((wa * a[i] + wb * b[i]) / sum);
  }
}

std::uint64_t instanceStream(std::uint64_t base, std::uint32_t k) {
  if (k == 0) return base;
  // splitmix64 of the base mixed with the instance: unrelated to every other peer's stream.
  std::uint64_t z = base ^ (0x9E3779B97F4A7C15ull * k) ^ 0xD1B54A32D192ED03ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

}  // namespace loco::training
