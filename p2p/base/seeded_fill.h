#pragma once
// Deterministic floats in [-1, 1) from a seed (SplitMix64). `loco bench join` gives its sources
// this content and the shared-state tests compare against it, so in-process peers and worker
// processes hold the same bytes.

#include <cstdint>
#include <span>

namespace loco {

inline void fillSeeded(std::span<float> values, std::uint64_t seed) {
  std::uint64_t x = seed;
  for (float& f : values) {
    x += 0x9E3779B97F4A7C15ull;
    std::uint64_t z = x;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    f = static_cast<float>(static_cast<std::int64_t>(z >> 11) - (std::int64_t{1} << 52)) * 0x1p-52f;
  }
}

}  // namespace loco
