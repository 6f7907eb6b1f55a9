#include "training/batch_state.h"

#include <limits>

namespace loco::training {

std::uint64_t scheduleStep(std::uint64_t samples, std::uint32_t base_batch) {
  return base_batch == 0 ? samples : samples / base_batch;
}

std::uint64_t scheduleStepOf(std::uint64_t step, std::uint64_t round_start,
                             std::uint64_t round_samples, std::uint32_t batch,
                             std::uint32_t base_batch) {
  const std::uint64_t into = step > round_start ? step - round_start : 0;
  return scheduleStep(advanceSamples(round_samples, into, batch), base_batch);
}

std::uint64_t advanceSamples(std::uint64_t samples, std::uint64_t steps, std::uint32_t batch) {
  constexpr std::uint64_t kMax = std::numeric_limits<std::uint64_t>::max();
  if (batch != 0 && steps > (kMax - samples) / batch) return kMax;
  return samples + steps * batch;
}

}  // namespace loco::training
