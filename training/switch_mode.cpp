#include "training/switch_mode.h"

#include <fmt/format.h>

#include <algorithm>

namespace loco::training {

std::string_view switchModeName(SwitchMode m) {
  switch (m) {
    case SwitchMode::kNone:
      return "none";
    case SwitchMode::kThreshold:
      return "threshold";
    case SwitchMode::kAccumulate:
      return "accumulate";
    case SwitchMode::kLoader:
      return "loader";
  }
  return "?";
}

Result<SwitchMode> parseSwitchMode(std::string_view name) {
  for (SwitchMode m :
       {SwitchMode::kNone, SwitchMode::kThreshold, SwitchMode::kAccumulate, SwitchMode::kLoader}) {
    if (name == switchModeName(m)) return m;
  }
  return Status(
      StatusCode::kInvalidArgument,
      fmt::format("unknown switch mode '{}' (none, threshold, accumulate or loader)", name));
}

MicroPlan switchPlan(SwitchMode mode, std::uint32_t batch, const MicroLimits& limits,
                     std::uint32_t max_micro_batch) {
  const std::uint32_t b_max = limits.b_max;
  const std::uint32_t b_mem = limits.b_mem;
  const bool fits = b_mem == 0 || batch <= b_mem;
  switch (mode) {
    case SwitchMode::kNone:
      return microPlan(batch, max_micro_batch);
    case SwitchMode::kAccumulate:
      return microPlan(batch, b_max);
    case SwitchMode::kThreshold:
      if (b_max > 0 && batch > 2 * static_cast<std::uint64_t>(b_max))
        return microPlan(batch, b_max);
      return fits ? microPlan(batch, 0) : microPlan(batch, b_mem);
    case SwitchMode::kLoader:
      return fits ? microPlan(batch, 0) : microPlan(batch, b_mem);
  }
  return microPlan(batch, 0);
}

}  // namespace loco::training
