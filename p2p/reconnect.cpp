#include "p2p/reconnect.h"

#include <algorithm>

namespace loco::p2p {

Backoff::Backoff(BackoffOptions options, std::uint64_t seed) : options_(options), rng_(seed) {
  options_.initial = std::max(options_.initial, Millis(1));
  options_.max = std::max(options_.max, options_.initial);
  options_.jitter = std::clamp(options_.jitter, 0.0, 1.0);
}

Millis Backoff::next() {
  // initial * 2^rounds, without overflowing for long outages.
  const std::uint32_t shift = std::min<std::uint32_t>(rounds_, 30);
  const double base = std::min(static_cast<double>(options_.max.count()),
                               static_cast<double>(options_.initial.count()) *
                                   static_cast<double>(std::uint64_t{1} << shift));
  ++rounds_;
  const double u = std::uniform_real_distribution<double>(0.0, 1.0)(rng_);
  const double scaled = base * (1.0 - options_.jitter * u);
  return Millis(std::max<std::int64_t>(1, static_cast<std::int64_t>(scaled)));
}

ReconnectPlan::ReconnectPlan(std::size_t addresses, BackoffOptions options, std::uint64_t seed)
    : addresses_(std::max<std::size_t>(addresses, 1)), backoff_(options, seed) {}

ReconnectPlan::Attempt ReconnectPlan::begin(std::size_t first_address, TimePoint now,
                                            TimePoint give_up, Millis first_delay) {
  first_ = first_address % addresses_;
  address_ = first_;
  attempts_ = 1;
  started_ = now;
  give_up_ = give_up;
  backoff_.reset();
  return Attempt{address_, first_delay};
}

std::optional<ReconnectPlan::Attempt> ReconnectPlan::afterFailure(TimePoint now) {
  if (now >= give_up_) return std::nullopt;
  address_ = (address_ + 1) % addresses_;
  // The rest of the round goes at once (the next address may be a standby that is up); a new
  // round waits.
  Millis delay = address_ == first_ ? backoff_.next() : Millis(0);
  // The last attempt starts at the give-up time, not a backoff step before it.
  if (now + delay > give_up_) delay = std::chrono::ceil<Millis>(give_up_ - now);
  ++attempts_;
  return Attempt{address_, delay};
}

bool LogThrottle::shouldLog(TimePoint now) {
  if (last_ && now - *last_ < interval_) return false;
  last_ = now;
  return true;
}

}  // namespace loco::p2p
