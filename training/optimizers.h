#pragma once
// Optimizers over flat fp32 buffers (ARCHITECTURE.md §6). Plain C++ loops:
// the buffers are the same ones the collectives all-reduce, and the state is plain vectors that
// checkpoints write as they are. No LibTorch.
//
// Inner: AdamW in PyTorch's semantics (decoupled weight decay p ← p·(1 − lr·wd) before the
// Adam update, bias-corrected moments, eps added after the square root), global-norm gradient
// clipping as torch.nn.utils.clip_grad_norm_, and a learning-rate schedule of linear warm-up then
// cosine decay. Its state stays local to a peer (DiLoCo: syncing it triples traffic for no
// gain).
//
// Outer: SGD with Nesterov momentum in PyTorch's semantics over pseudo-gradients
// Δ = θ_global − θ_local (old minus new):
//   b ← Δ on the first step, b ← μ·b + Δ afterwards;  θ ← θ − lr·(Δ + μ·b)   (Nesterov)
//                                                      θ ← θ − lr·b          (plain momentum)
// DiLoCo uses lr 0.7, μ 0.9. FedAvg is lr 1, μ 0: θ ← θ − Δ̄ = mean of the peers' θ_local.
//
// Thread rules: an optimizer object belongs to one thread. Free functions are pure and
// thread-safe. Nothing here blocks.

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "p2p/base/status.h"

namespace loco::training {

// ---- inner optimizer ------------------------------------------------------------------------

struct AdamWOptions {
  float beta1 = 0.9f;
  float beta2 = 0.95f;
  float eps = 1e-8f;
  float weight_decay = 0.1f;  // applied only where the decay mask says so (matrices, embeddings)
};

// Linear warm-up from lr/warmup to lr over `warmup_steps`, then cosine decay to
// min_lr_ratio·lr at `total_steps`; constant min after that.
struct LrSchedule {
  float lr = 3e-3f;
  float min_lr_ratio = 0.1f;
  std::uint64_t warmup_steps = 20;
  std::uint64_t total_steps = 600;

  // Learning rate of 0-based step `step`. Pure.
  float at(std::uint64_t step) const;
};

// kInvalidArgument naming the bad field (non-finite or negative rates, betas outside [0, 1),
// warm-up longer than the whole schedule, zero total steps).
Status validateInner(const AdamWOptions& adam, const LrSchedule& schedule);

// Everything AdamW carries between steps; a checkpoint stores it as is.
struct AdamWState {
  std::uint64_t steps = 0;  // updates applied (bias correction)
  std::vector<float> m;     // first moment
  std::vector<float> v;     // second moment
};

class AdamW {
 public:
  // `decay_mask[i]` != 0: element i gets weight decay. Its size is the parameter count.
  AdamW(std::vector<std::uint8_t> decay_mask, AdamWOptions options);

  // One update of `params` from `grads` (both numParams() long) at learning rate `lr`.
  void step(std::span<float> params, std::span<const float> grads, float lr);

  std::size_t numParams() const { return decay_mask_.size(); }
  const AdamWState& state() const { return state_; }
  // kInvalidArgument when the moment vectors are not numParams() long.
  Status restore(AdamWState state);

 private:
  std::vector<std::uint8_t> decay_mask_;
  AdamWOptions options_;
  AdamWState state_;
};

// √Σg², accumulated in double in index order (deterministic for a given buffer).
double globalNorm(std::span<const float> values);

// Scales `grads` by max_norm / (norm + 1e-6) when their global norm exceeds max_norm (as
// torch.nn.utils.clip_grad_norm_). Returns the norm before clipping; a non-finite norm leaves
// `grads` untouched (the caller should skip the step). max_norm <= 0 disables clipping.
double clipGlobalNorm(std::span<float> grads, double max_norm);

// ---- outer optimizer ------------------------------------------------------------------------

struct OuterSgdOptions {
  float lr = 0.7f;
  float momentum = 0.9f;
  bool nesterov = true;  // ignored when momentum == 0

  static OuterSgdOptions diloco() { return {}; }
  static OuterSgdOptions fedAvg() { return {1.0f, 0.0f, false}; }
};

// kInvalidArgument for a non-finite or non-positive lr, or momentum outside [0, 1).
Status validateOuter(const OuterSgdOptions& o);

class OuterSgd {
 public:
  OuterSgd(std::size_t num_params, OuterSgdOptions options);

  // θ ← θ − lr·(Δ + μ·b) (see the top of this file). `global` and `delta` must be numParams()
  // long (kInvalidArgument otherwise, nothing changed). Check Δ with findNonFinite first: one
  // NaN would spread to every peer's θ.
  Status step(std::span<float> global, std::span<const float> delta);

  std::size_t numParams() const { return num_params_; }
  const OuterSgdOptions& options() const { return options_; }
  // Empty until the first step with momentum.
  const std::vector<float>& momentum() const { return momentum_; }
  // For resuming: empty (no step taken yet) or numParams() long; kInvalidArgument otherwise.
  Status restoreMomentum(std::vector<float> momentum);

 private:
  std::size_t num_params_;
  OuterSgdOptions options_;
  std::vector<float> momentum_;
};

// delta[i] = global[i] − local[i] (old minus new). All three the same length.
void pseudoGradient(std::span<const float> global, std::span<const float> local,
                    std::span<float> delta);

// Index of the first NaN or ±Inf in `values`, or values.size() when all are finite.
std::size_t findNonFinite(std::span<const float> values);
// True when every element is finite; otherwise false and *first_bad (if given) = its index.
bool allFinite(std::span<const float> values, std::size_t* first_bad = nullptr);

}  // namespace loco::training
