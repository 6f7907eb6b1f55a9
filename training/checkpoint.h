#pragma once
// Checkpoints: everything a peer needs to resume a run and continue with exactly the losses of an
// uninterrupted run (batches are a pure function of (seed, rank, step), so no sampler state is
// stored). No LibTorch.
//
// File format (little-endian), version 3:
//   "LOCOCKPT" · u32 version · u32 reserved(0)
//   u32 width, layers, heads, context, vocab
//   u64 seed, step, outer_step, adam_steps
//   5 sections, each u64 count then count fp32: params, outer_params, outer_momentum, adam_m,
//   adam_v
//     (count is 0 or the model's parameter count)
//   u64 batch, schedule_samples (the adaptive batch's shared state; 0 and 0: none)
//   u64 local_step, pending_steps, pending_losses, f64 pending_loss_sum (Streaming DiLoCo's
//     steps past the last fragment sync; 0: none)
//   u64 XXH3-64 of every byte before it
// Versions 1 (no batch fields) and 2 (no streaming fields) are still read, with zeros there.
// Writes are atomic: a temporary file in the same directory, fsync, rename over the target,
// fsync of the directory. A crash leaves either the old checkpoint or the new one, never a mix.
//
// Blocking: file I/O. Thread-safe (no shared state); two writers of one path race on rename
// only, and the last rename wins whole.

#include <cstdint>
#include <string>
#include <vector>

#include "p2p/base/status.h"
#include "training/model_config.h"

namespace loco::training {

struct TrainingState {
  ModelConfig model;
  std::uint64_t seed = 0;
  std::uint64_t step = 0;             // inner steps done = the next step to run (schedule position)
  std::uint64_t outer_step = 0;       // outer rounds done
  std::vector<float> params;          // this peer's (inner) parameters θ_m
  std::vector<float> outer_params;    // global parameters θ (empty: none, e.g. DDP)
  std::vector<float> outer_momentum;  // outer momentum b (empty: no outer step yet, or μ = 0)
  std::uint64_t adam_steps = 0;       // inner AdamW state; empty moments: not stored
  std::vector<float> adam_m;
  std::vector<float> adam_v;
  // Adaptive batch (batch_state.h): the group's per-peer batch and the learning-rate schedule's
  // position in samples per peer when the checkpoint was written. 0: not an adaptive run (or a
  // version-1 file).
  std::uint64_t batch = 0;
  std::uint64_t schedule_samples = 0;
  // Streaming DiLoCo: `params` have trained on past `step` (the fragment sync's step) up to
  // local_step, overlapped with that sync; the next round reports those steps' losses too.
  // 0: no such steps (other methods, or a version-1/2 file).
  std::uint64_t local_step = 0;
  std::uint64_t pending_steps = 0;
  std::uint64_t pending_losses = 0;
  double pending_loss_sum = 0;
};

// Errors: kInvalidArgument (invalid model, or a vector that is neither empty nor paramCount
// long), kIoError (naming the path and the system error).
Status saveCheckpoint(const std::string& path, const TrainingState& state);

// Errors: kNotFound (no such file), kDataLoss (not a loco checkpoint, unknown version,
// truncated, trailing bytes, checksum mismatch — each said so), kIoError.
Result<TrainingState> loadCheckpoint(const std::string& path);

// As above, and kInvalidArgument when the stored model differs from `expected`, naming each
// differing field ("width 256 (found) vs 128 (expected)").
Result<TrainingState> loadCheckpoint(const std::string& path, const ModelConfig& expected);

}  // namespace loco::training
