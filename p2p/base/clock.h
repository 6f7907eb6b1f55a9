#pragma once
// Monotonic time and deadlines. Every blocking call in loco takes a Deadline (ARCHITECTURE.md §2).

#include <chrono>
#include <cstdint>

namespace loco {

using Clock = std::chrono::steady_clock;
using TimePoint = Clock::time_point;
using Millis = std::chrono::milliseconds;

inline std::int64_t toMillis(Clock::duration d) {
  return std::chrono::duration_cast<Millis>(d).count();
}

inline double toSeconds(Clock::duration d) {
  return std::chrono::duration<double>(d).count();
}

// Wall-clock time (for logs, reports and clock-skew checks; never for deadlines).
inline double unixSeconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}
inline std::int64_t unixMillis() {
  return std::chrono::duration_cast<Millis>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

class Deadline {
 public:
  explicit Deadline(TimePoint at) : at_(at) {}
  static Deadline after(Millis d) { return Deadline(Clock::now() + d); }
  static Deadline never() { return Deadline(TimePoint::max()); }
  TimePoint at() const { return at_; }
  bool expired() const { return Clock::now() >= at_; }
  Millis remaining() const {
    auto now = Clock::now();
    if (now >= at_) return Millis(0);
    if (at_ == TimePoint::max()) return Millis(std::chrono::hours(24 * 365));
    return std::chrono::duration_cast<Millis>(at_ - now);
  }

 private:
  TimePoint at_;
};

}  // namespace loco
