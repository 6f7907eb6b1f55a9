#include "training/optimizers.h"

#include <fmt/format.h>

#include <cmath>
#include <numbers>

namespace loco::training {
namespace {

Status bad(std::string msg) {
  return Status(StatusCode::kInvalidArgument, std::move(msg));
}

}  // namespace

float LrSchedule::at(std::uint64_t step) const {
  if (step < warmup_steps) {
    return lr *
           static_cast<float>(static_cast<double>(step + 1) / static_cast<double>(warmup_steps));
  }
  const double min_lr = static_cast<double>(lr) * min_lr_ratio;
  const std::uint64_t decay_steps = total_steps > warmup_steps ? total_steps - warmup_steps : 0;
  if (decay_steps == 0 || step >= total_steps) return static_cast<float>(min_lr);
  const double progress =
      static_cast<double>(step - warmup_steps) / static_cast<double>(decay_steps);
  return static_cast<float>(min_lr +
                            0.5 * (lr - min_lr) * (1.0 + std::cos(std::numbers::pi * progress)));
}

Status validateInner(const AdamWOptions& adam, const LrSchedule& s) {
  if (!std::isfinite(s.lr) || s.lr <= 0)
    return bad(fmt::format("inner optimizer: lr {} must be > 0", s.lr));
  if (!(s.min_lr_ratio >= 0 && s.min_lr_ratio <= 1)) {
    return bad(fmt::format("inner optimizer: min lr ratio {} is outside [0, 1]", s.min_lr_ratio));
  }
  if (s.total_steps == 0) return bad("inner optimizer: total steps must be > 0");
  if (s.warmup_steps > s.total_steps) {
    return bad(fmt::format("inner optimizer: warm-up of {} steps is longer than the {} total steps",
                           s.warmup_steps, s.total_steps));
  }
  if (!(adam.beta1 >= 0 && adam.beta1 < 1))
    return bad(fmt::format("inner optimizer: beta1 {} is outside [0, 1)", adam.beta1));
  if (!(adam.beta2 >= 0 && adam.beta2 < 1))
    return bad(fmt::format("inner optimizer: beta2 {} is outside [0, 1)", adam.beta2));
  if (!(adam.eps > 0 && std::isfinite(adam.eps)))
    return bad(fmt::format("inner optimizer: eps {} must be > 0", adam.eps));
  if (!(adam.weight_decay >= 0 && std::isfinite(adam.weight_decay))) {
    return bad(fmt::format("inner optimizer: weight decay {} must be >= 0", adam.weight_decay));
  }
  return Status::ok();
}

AdamW::AdamW(std::vector<std::uint8_t> decay_mask, AdamWOptions options)
    : decay_mask_(std::move(decay_mask)), options_(options) {
  state_.m.assign(decay_mask_.size(), 0.0f);
  state_.v.assign(decay_mask_.size(), 0.0f);
}

void AdamW::step(std::span<float> params, std::span<const float> grads, float lr) {
  const std::size_t n = decay_mask_.size();
  state_.steps += 1;
  const double t = static_cast<double>(state_.steps);
  const float b1 = options_.beta1;
  const float b2 = options_.beta2;
  const float bias1 = static_cast<float>(1.0 - std::pow(static_cast<double>(b1), t));
  const float bias2_sqrt =
      static_cast<float>(std::sqrt(1.0 - std::pow(static_cast<double>(b2), t)));
  const float step_size = lr / bias1;
  const float decay = 1.0f - lr * options_.weight_decay;
  const float eps = options_.eps;
  float* p = params.data();
  const float* g = grads.data();
  float* m = state_.m.data();
  float* v = state_.v.data();
  const std::uint8_t* mask = decay_mask_.data();
  // The same operation order as torch.optim.AdamW (foreach=False), element by element.
  for (std::size_t i = 0; i < n; ++i) {
    if (mask[i]) p[i] *= decay;
    m[i] = m[i] * b1 + g[i] * (1.0f - b1);
    v[i] = v[i] * b2 + g[i] * g[i] * (1.0f - b2);
    const float denom = std::sqrt(v[i]) / bias2_sqrt + eps;
    p[i] -= step_size * (m[i] / denom);
  }
}

Status AdamW::restore(AdamWState state) {
  if (state.m.size() != decay_mask_.size() || state.v.size() != decay_mask_.size()) {
    return bad(fmt::format("inner optimizer state holds {}/{} moments for {} parameters",
                           state.m.size(), state.v.size(), decay_mask_.size()));
  }
  state_ = std::move(state);
  return Status::ok();
}

double globalNorm(std::span<const float> values) {
  double sum = 0;
  for (float x : values) sum += static_cast<double>(x) * x;
  return std::sqrt(sum);
}

double clipGlobalNorm(std::span<float> grads, double max_norm) {
  const double norm = globalNorm(grads);
  if (!std::isfinite(norm) || max_norm <= 0) return norm;
  const double coef = max_norm / (norm + 1e-6);
  if (coef < 1.0) {
    const float c = static_cast<float>(coef);
    for (float& g : grads) g *= c;
  }
  return norm;
}

Status validateOuter(const OuterSgdOptions& o) {
  if (!std::isfinite(o.lr) || o.lr <= 0)
    return bad(fmt::format("outer optimizer: lr {} must be > 0", o.lr));
  if (!(o.momentum >= 0 && o.momentum < 1)) {
    return bad(fmt::format("outer optimizer: momentum {} is outside [0, 1)", o.momentum));
  }
  return Status::ok();
}

OuterSgd::OuterSgd(std::size_t num_params, OuterSgdOptions options)
    : num_params_(num_params), options_(options) {}

Status OuterSgd::step(std::span<float> global, std::span<const float> delta) {
  if (global.size() != num_params_ || delta.size() != num_params_) {
    return bad(
        fmt::format("outer step: buffers of {} and {} elements for an optimizer of {} parameters",
                    global.size(), delta.size(), num_params_));
  }
  const float lr = options_.lr;
  const float mu = options_.momentum;
  float* theta = global.data();
  const float* d = delta.data();
  if (mu == 0.0f) {
    for (std::size_t i = 0; i < num_params_; ++i) theta[i] -= lr * d[i];
    return Status::ok();
  }
  if (momentum_.empty()) {
    momentum_.assign(delta.begin(), delta.end());  // PyTorch: b = Δ on the first step
  } else {
    float* b = momentum_.data();
    for (std::size_t i = 0; i < num_params_; ++i) b[i] = mu * b[i] + d[i];
  }
  const float* b = momentum_.data();
  if (options_.nesterov) {
    for (std::size_t i = 0; i < num_params_; ++i) theta[i] -= lr * (d[i] + mu * b[i]);
  } else {
    for (std::size_t i = 0; i < num_params_; ++i) theta[i] -= lr * b[i];
  }
  return Status::ok();
}

Status OuterSgd::restoreMomentum(std::vector<float> momentum) {
  if (!momentum.empty() && momentum.size() != num_params_) {
    return bad(fmt::format("outer momentum of {} elements for an optimizer of {} parameters",
                           momentum.size(), num_params_));
  }
  momentum_ = std::move(momentum);
  return Status::ok();
}

void pseudoGradient(std::span<const float> global, std::span<const float> local,
                    std::span<float> delta) {
  const std::size_t n = delta.size();
  for (std::size_t i = 0; i < n; ++i) delta[i] = global[i] - local[i];
}

std::size_t findNonFinite(std::span<const float> values) {
  for (std::size_t i = 0; i < values.size(); ++i) {
    if (!std::isfinite(values[i])) return i;
  }
  return values.size();
}

bool allFinite(std::span<const float> values, std::size_t* first_bad) {
  const std::size_t i = findNonFinite(values);
  if (i == values.size()) return true;
  if (first_bad) *first_bad = i;
  return false;
}

}  // namespace loco::training
