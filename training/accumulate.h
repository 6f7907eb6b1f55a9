#pragma once
// One inner step over a batch that may be larger than one backward pass may hold: the batch is
// computed as plan.micro_batches micro-batches of plan.micro_size windows (gradient accumulation,
// batch_test.h's microPlan), and the result equals one backward pass over the whole batch up to
// fp32 rounding (the rows are the same windows: sampling does not depend on the batch size).
//
// Blocks for the computation; same thread rules as LocalTrainer. Errors: kDataLoss (a loss or
// the gradient norm is not finite; parameters unchanged), kInternal (LibTorch),
// kInvalidArgument (an empty plan).

#include <cstdint>
#include <optional>
#include <span>

#include "p2p/base/status.h"
#include "training/batch_test.h"
#include "training/local_trainer.h"

namespace loco::training {

// The mean gradient of `step`'s plan.total() windows into trainer.gradData() (the trainer's
// batch size must be plan.micro_size); returns the mean loss. May be non-finite.
Result<float> accumulateGradients(LocalTrainer& trainer, std::uint64_t step, const MicroPlan& plan);

// accumulateGradients, then (when `unclipped_grad` is not empty, numParams() long) a copy of the
// gradient before clipping — what the batch tests sample — then clipping and AdamW at the
// learning rate of schedule position `lr_step` (unset: `step`; batch_state.h counts samples).
Result<float> accumulatedInnerStep(LocalTrainer& trainer, std::uint64_t step, const MicroPlan& plan,
                                   std::span<float> unclipped_grad = {},
                                   std::optional<std::uint64_t> lr_step = std::nullopt);

}  // namespace loco::training
