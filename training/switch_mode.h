#pragma once
// Switch mode (AdLoCo): how an inner step of b windows is computed once the batch may outgrow
// what one backward pass should hold. Each peer measures, at start (calibrate.h), two limits of
// its own machine:
//   b_mem: the largest micro-batch whose backward pass fits the memory budget
//          (--memory-budget-mib; 0 = no budget, unbounded);
//   b_max: the largest micro-batch worth running: it fits (b_max <= b_mem) and beyond it tokens/s
//          stop improving (doubling the micro-batch gains less than 10 %).
// Then, per inner step of b windows:
//   threshold:  one pass while b <= 2·b_max (and b <= b_mem); above, ⌈b/b_max⌉ micro-batches;
//   accumulate: ⌈b/b_max⌉ micro-batches as soon as b > b_max;
//   loader:     one pass of the whole batch while it fits (b <= b_mem); beyond, ⌈b/b_mem⌉
//               micro-batches: accumulation only where memory forces it;
//   none:       no measurement; --max-micro-batch as given (0: never split).
// Accumulated micro-batches give the big batch's gradient to fp32 rounding (accumulate.h), so
// peers with different limits still compute the same thing; only the time and memory differ.
// The limits are this peer's own: they are not shared state and not part of any decision the
// group must take alike.
//
// Pure functions; no threads, no I/O.

#include <cstdint>
#include <string_view>

#include "p2p/base/status.h"
#include "training/batch_test.h"

namespace loco::training {

enum class SwitchMode : std::uint8_t { kNone, kThreshold, kAccumulate, kLoader };
std::string_view switchModeName(SwitchMode m);
// "none", "threshold", "accumulate" or "loader"; kInvalidArgument otherwise.
Result<SwitchMode> parseSwitchMode(std::string_view name);

// What calibration measured on this peer (calibrate.h). 0 in b_mem: no memory budget.
struct MicroLimits {
  std::uint32_t b_max = 0;
  std::uint32_t b_mem = 0;
};

// How one inner step of `batch` windows is computed (see the top of this file).
// `max_micro_batch` is --max-micro-batch, used by kNone only; b_max 0 is taken as unlimited.
MicroPlan switchPlan(SwitchMode mode, std::uint32_t batch, const MicroLimits& limits,
                     std::uint32_t max_micro_batch);

}  // namespace loco::training
