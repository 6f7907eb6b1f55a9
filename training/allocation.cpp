#include "training/allocation.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

namespace loco::training {

std::string_view allocationName(Allocation a) {
  return a == Allocation::kSpeed ? "speed" : "equal";
}

Result<Allocation> parseAllocation(std::string_view name) {
  if (name == "equal") return Allocation::kEqual;
  if (name == "speed") return Allocation::kSpeed;
  return Status(StatusCode::kInvalidArgument,
                fmt::format("unknown allocation '{}' (speed or equal)", name));
}

std::uint32_t speedShare(std::uint32_t batch, double peers, double mine, double sum) {
  if (!(peers >= 1) || !(mine > 0) || !(sum > 0) || !std::isfinite(mine) || !std::isfinite(sum))
    return batch;
  const double total = static_cast<double>(batch) * std::floor(peers);
  const double share = std::round(total * std::min(1.0, mine / sum));
  return static_cast<std::uint32_t>(std::clamp(share, 1.0, total));
}

double smoothedSpeed(double previous, double measured) {
  if (!(measured > 0) || !std::isfinite(measured)) return previous;
  if (!(previous > 0)) return measured;
  return (1 - kSpeedSmoothing) * previous + kSpeedSmoothing * measured;
}

}  // namespace loco::training
