#include "p2p/base/metrics.h"

#include <map>
#include <memory>
#include <mutex>

namespace loco {
namespace {
struct Registry {
  std::mutex mu;
  std::map<std::string, std::unique_ptr<Counter>, std::less<>> counters;
};
Registry& registry() {
  static Registry* r = new Registry();  // never destroyed: counters may be touched during exit
  return *r;
}
}  // namespace

Counter& counter(std::string_view name) {
  auto& r = registry();
  std::lock_guard lock(r.mu);
  auto it = r.counters.find(name);
  if (it == r.counters.end()) {
    it = r.counters.emplace(std::string(name), std::make_unique<Counter>()).first;
  }
  return *it->second;
}

std::vector<std::pair<std::string, std::uint64_t>> counterSnapshot() {
  auto& r = registry();
  std::lock_guard lock(r.mu);
  std::vector<std::pair<std::string, std::uint64_t>> out;
  out.reserve(r.counters.size());
  for (auto& [name, c] : r.counters) out.emplace_back(name, c->value());
  return out;
}

}  // namespace loco
