#include "training/accumulate.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

namespace loco::training {

Result<float> accumulateGradients(LocalTrainer& trainer, std::uint64_t step,
                                  const MicroPlan& plan) {
  if (plan.micro_batches == 0 || plan.micro_size == 0) {
    return Status(StatusCode::kInvalidArgument, "an empty micro-batch plan");
  }
  if (trainer.config().batch_size != plan.micro_size) {
    LOCO_RETURN_IF_ERROR(trainer.setBatchSize(plan.micro_size));
  }
  double loss_sum = 0;
  for (std::uint32_t i = 0; i < plan.micro_batches; ++i) {
    auto loss = trainer.computeBackward(step, i, plan.micro_batches);
    if (!loss) return loss.status();
    loss_sum += *loss;
  }
  return static_cast<float>(loss_sum / plan.micro_batches);
}

Result<float> accumulatedInnerStep(LocalTrainer& trainer, std::uint64_t step, const MicroPlan& plan,
                                   std::span<float> unclipped_grad,
                                   std::optional<std::uint64_t> lr_step) {
  auto loss = accumulateGradients(trainer, step, plan);
  if (!loss) return loss;
  if (!std::isfinite(*loss)) {
    return Status(
        StatusCode::kDataLoss,
        fmt::format("inner step {}: training loss is {}; parameters left unchanged", step, *loss));
  }
  if (unclipped_grad.size() == trainer.numParams()) {
    std::copy(trainer.gradData(), trainer.gradData() + trainer.numParams(), unclipped_grad.begin());
  }
  auto norm = trainer.applyGrads(lr_step.value_or(step));
  if (!norm) return norm.status();
  return loss;
}

}  // namespace loco::training
