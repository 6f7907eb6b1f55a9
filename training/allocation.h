#pragma once
// Speed-aware work split (--allocation speed): the group's samples per inner step (peers × the
// per-peer batch, which the batch test may grow) are divided in proportion to each peer's
// measured throughput (tokens/s of its local phases, averaged: smoothedSpeed), so a slow peer
// computes fewer windows per step and all peers finish their H steps at about the same time.
// The round's average then weighs each peer's Δ (DDP: gradient) by the windows it processed:
// Σ n_m·Δ_m / Σ n_m.
//
// Every peer computes its own share from its own throughput and the group's sum (carried by the
// round's statistics), so the split needs no extra message. A peer with no measurement yet (a
// joiner) takes the group's mean share. Throughput is a wall-clock measurement: runs with
// --allocation speed are not bit-reproducible, which is why `equal` stays the default.
//
// Pure functions; no threads, no I/O.

#include <cstdint>
#include <string_view>

#include "p2p/base/status.h"

namespace loco::training {

enum class Allocation : std::uint8_t { kEqual, kSpeed };
std::string_view allocationName(Allocation a);
// "equal" or "speed"; kInvalidArgument otherwise.
Result<Allocation> parseAllocation(std::string_view name);

// This peer's windows per inner step: round(batch·peers·mine/sum), at least 1 and at most
// batch·peers; `batch` when there is nothing to go by (mine or sum not positive, peers < 1).
std::uint32_t speedShare(std::uint32_t batch, double peers, double mine, double sum);

// The throughput the split goes by: an exponential average over rounds of the measured tokens/s,
// the newest round weighted kSpeedSmoothing. One round's figure is noisy where peers share
// cores, and a split that follows it oscillates: a peer given less work one round looks slow the
// next (measured in the lab, one host at cpu=0.33: its share swung between 8 and 14 windows of
// 64). previous <= 0 (no history): the measurement as it is; a measurement <= 0 keeps previous.
inline constexpr double kSpeedSmoothing = 0.25;
double smoothedSpeed(double previous, double measured);

}  // namespace loco::training
