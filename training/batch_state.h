#pragma once
// The adaptive batch as shared state, and the learning-rate schedule that counts samples.
//
// With a batch test on (batch_test.h), the group's per-peer batch changes during the run, so it is
// part of the shared state (collectives/shared_state.h): one I64 buffer "batch" of
// kBatchStateFields values, [the per-peer batch, the schedule position in samples per peer]. A
// joiner receives both with the rest of the state, a checkpoint stores both
// (TrainingState::batch, ::schedule_samples), and a peer resumed from its checkpoint holds, bit
// for bit, what the group held at that outer step.
//
// The schedule counts samples: once the batch can grow, a step of a large batch moves the
// learning rate further than a step of a small one. The position handed to LrSchedule::at is the
// number of samples one peer has drawn so far divided by the starting batch (--batch), in whole
// steps of that batch; warm-up and decay are therefore spent after warmup·--batch and
// total·--batch samples per peer. After that the learning rate stays at its minimum until the
// run's --steps are done. With a fixed batch b, the samples after step s are s·b, and the
// position is s exactly: the schedule gives the same values as one that counts steps.
//
// Pure functions; no threads, no I/O.

#include <cstddef>
#include <cstdint>

namespace loco::training {

enum BatchStateField : std::size_t { kBatchSize, kScheduleSamples, kBatchStateFields };

// The schedule position (whole steps of `base_batch`) after `samples` samples per peer;
// `samples` when base_batch is 0.
std::uint64_t scheduleStep(std::uint64_t samples, std::uint32_t base_batch);

// The schedule position of inner step `step` of a round that starts at inner step `round_start`
// with `round_samples` samples drawn before it and `batch` samples per step in it
// (step >= round_start; a smaller step is taken as round_start).
std::uint64_t scheduleStepOf(std::uint64_t step, std::uint64_t round_start,
                             std::uint64_t round_samples, std::uint32_t batch,
                             std::uint32_t base_batch);

// Samples per peer after `steps` more inner steps of `batch` (saturates instead of wrapping).
std::uint64_t advanceSamples(std::uint64_t samples, std::uint64_t steps, std::uint32_t batch);

}  // namespace loco::training
