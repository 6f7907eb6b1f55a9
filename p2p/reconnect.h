#pragma once
// How a peer finds a coordinator again after losing it (ARCHITECTURE.md §4), as pure code: no
// sockets, no clocks of its own, no threads. The membership client asks it which address to try
// next and how long to wait first; the unit tests drive it with fake time.
//
// - A round tries every coordinator address once, back to back, starting with the one the peer
//   was registered with (a restarted coordinator on the same address is found first; every peer
//   of a group starts from the same address, so they all prefer the same coordinator).
// - Between rounds the peer waits a jittered, exponentially growing delay: min(max, initial *
//   2^k) scaled by a random factor in [1 - jitter, 1], so peers that lost the coordinator at the
//   same moment do not all knock at the same instant, and nobody waits more than `max`.
// - The last attempt starts at the give-up time at the latest; after it none is planned and the
//   caller reports that no coordinator answered.
// Not thread-safe: the client calls it from its network thread.

#include <cstddef>
#include <cstdint>
#include <optional>
#include <random>

#include "p2p/base/clock.h"

namespace loco::p2p {

struct BackoffOptions {
  Millis initial{100};
  Millis max{2000};     // the cap; also bounds how late a peer notices a restarted coordinator
  double jitter = 0.5;  // the fraction of each delay that is random, 0..1
};

// Delays between rounds of attempts.
class Backoff {
 public:
  Backoff(BackoffOptions options, std::uint64_t seed);
  // The delay before the next round; grows until it reaches the cap.
  Millis next();
  void reset() { rounds_ = 0; }
  std::uint32_t rounds() const { return rounds_; }

 private:
  BackoffOptions options_;
  std::mt19937_64 rng_;
  std::uint32_t rounds_ = 0;
};

class ReconnectPlan {
 public:
  ReconnectPlan(std::size_t addresses, BackoffOptions options, std::uint64_t seed);

  struct Attempt {
    std::size_t address;  // index into the caller's address list
    Millis delay;         // wait this long before connecting
  };
  // Starts over: the coordinator was lost (or the first join starts) at `now`; attempts stop at
  // `give_up`. The first attempt goes to `first_address` after `first_delay`.
  Attempt begin(std::size_t first_address, TimePoint now, TimePoint give_up, Millis first_delay);
  // The attempt after a failed one (starting at the give-up time at the latest), or nullopt
  // once the give-up time has come.
  std::optional<Attempt> afterFailure(TimePoint now);

  std::size_t attempts() const { return attempts_; }
  std::size_t address() const { return address_; }
  TimePoint startedAt() const { return started_; }
  TimePoint giveUpAt() const { return give_up_; }

 private:
  std::size_t addresses_;
  Backoff backoff_;
  std::size_t first_ = 0;    // where the current round started
  std::size_t address_ = 0;  // the address of the attempt in progress
  std::size_t attempts_ = 0;
  TimePoint started_{};
  TimePoint give_up_{};
};

// At most one line per interval for a state that repeats (a peer waiting for a coordinator, for
// admission, for more peers): the first call says yes, then once per interval.
class LogThrottle {
 public:
  explicit LogThrottle(Millis interval) : interval_(interval) {}
  bool shouldLog(TimePoint now);
  void reset() { last_.reset(); }

 private:
  Millis interval_;
  std::optional<TimePoint> last_;
};

}  // namespace loco::p2p
