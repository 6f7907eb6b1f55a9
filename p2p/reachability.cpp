// Reachability at admission: the coordinator dials back every joiner's advertised link address
// (the check `loco doctor` asks for, dial_back.cpp, done unasked) and records the outcome, so
// `loco status` shows which peers nobody can dial (behind a NAT, a firewall, a wrong
// --advertise) before an operation fails on them. The outcome is informational for membership:
// a peer is admitted either way, and links to it take another path (p2p/relay.h).
#include <fmt/format.h>

#include "p2p/base/log.h"
#include "p2p/base/metrics.h"
#include "p2p/base/text.h"
#include "p2p/coordinator.h"

namespace loco::p2p {
namespace {
constexpr Millis kReachTimeout{3000};
}  // namespace

std::string Reachability::describe() const {
  switch (state) {
    case kChecking:
      return "checking";
    case kReachable:
      return "reachable";
    case kUnreachable:
      return "unreachable: " + detail;
  }
  return "?";
}

void Coordinator::checkReachable(const std::string& id, const std::string& addr) {
  auto it = reachability_.find(id);
  if (it != reachability_.end() && it->second.addr == addr &&
      it->second.state != Reachability::kChecking)
    return;  // the same process re-registering at the same address: known already
  // Bounded: entries of peers that are gone make room (peers_ is bounded by max_peers).
  for (auto r = reachability_.begin(); r != reachability_.end();) {
    r = (r->first != id && !peers_.count(r->first)) ? reachability_.erase(r) : std::next(r);
  }
  Reachability& entry = reachability_[id];
  entry = Reachability{addr, Reachability::kChecking, ""};
  const std::uint64_t generation = ++entry_generation_;
  entry.generation = generation;
  auto target = parseHostPort(addr);
  if (!target) {
    entry.state = Reachability::kUnreachable;
    entry.detail = target.status().message();
    return;
  }
  std::error_code ec;
  auto ip = asio::ip::make_address(target->host, ec);
  if (ec) {
    // A name: resolving blocks, and the coordinator's thread must not. Links resolve it.
    entry.state = Reachability::kUnreachable;
    entry.detail = "not checked (a name, not an address)";
    return;
  }
  asio::ip::tcp::endpoint ep(ip, target->port);
  const TimePoint started = Clock::now();
  asyncConnect(io_, {ep}, Deadline::after(kReachTimeout),
               [this, alive = lifetime_.watch(), id, generation, ep,
                started](Result<std::shared_ptr<asio::ip::tcp::socket>> sock) {
                 if (alive.expired()) return;
                 auto e = reachability_.find(id);
                 if (e == reachability_.end() || e->second.generation != generation) return;
                 const double ms =
                     std::chrono::duration<double, std::milli>(Clock::now() - started).count();
                 if (sock) {
                   std::error_code ignored;
                   sock.value()->close(ignored);
                   e->second.state = Reachability::kReachable;
                   counter("coord.peers_reachable").inc();
                   LOG_INFO(kLogCoord, "peer {} is reachable at {} ({:.0f} ms)", shortId(id),
                            endpointString(ep), ms);
                   return;
                 }
                 e->second.state = Reachability::kUnreachable;
                 e->second.detail = sock.status().message();
                 counter("coord.peers_unreachable").inc();
                 LOG_WARN(kLogCoord,
                          "peer {} is not reachable at its advertised address {}: {}; links to it "
                          "need a relay (loco join --relay HOST:PORT, README \"Joining from behind "
                          "a router\")",
                          shortId(id), endpointString(ep), sock.status().message());
               });
}

std::vector<std::pair<std::string, std::string>> Coordinator::reachabilityView() const {
  std::vector<std::pair<std::string, std::string>> out;
  for (const auto& [id, r] : reachability_) {
    if (peers_.count(id)) out.emplace_back(id, r.describe());
  }
  return out;
}

}  // namespace loco::p2p
