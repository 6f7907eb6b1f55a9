#pragma once
// Process-wide named counters ("p2p.frames_rejected", ...). Counters are created on first use and
// live until exit, so hot paths keep a reference: `static Counter& c = counter("x"); c.inc();`.
// Thread-safe.

#include <atomic>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace loco {

class Counter {
 public:
  void inc(std::uint64_t n = 1) { value_.fetch_add(n, std::memory_order_relaxed); }
  std::uint64_t value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<std::uint64_t> value_{0};
};

Counter& counter(std::string_view name);

// All counters, sorted by name.
std::vector<std::pair<std::string, std::uint64_t>> counterSnapshot();

}  // namespace loco
