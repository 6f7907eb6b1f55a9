#pragma once
// Link bandwidth estimates between members and the ring order built from them (issue 4,
// "topology"). Pure: no sockets, no clocks. The coordinator keeps one BandwidthTable, fed by the
// peers' LinkReports, and proposes the ring order bestRing() returns; Membership applies it at
// the next sync point.
//
// Estimates are directed (a ring sends one way: rank r to rank r+1), in bytes per second.
// Passive estimates come from real ring traffic and replace probe estimates; a probe never
// replaces a passive estimate, because the short probe is the cruder of the two.
//
// Not thread-safe.

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace loco::p2p {

enum class EdgeSource : std::uint8_t { kProbe = 1, kPassive = 2 };
std::string_view edgeSourceName(EdgeSource s);

struct EdgeEstimate {
  std::string from, to;  // peer ids
  double bytes_per_s = 0;
  EdgeSource source = EdgeSource::kProbe;
};

class BandwidthTable {
 public:
  // Returns whether the table changed. Non-positive or non-finite rates are ignored.
  bool update(const EdgeEstimate& e);
  // Forgets every edge from or to `peer` (it left the group).
  void erase(const std::string& peer);
  std::optional<double> rate(const std::string& from, const std::string& to) const;
  std::vector<EdgeEstimate> edges() const;

 private:
  struct Entry {
    double bytes_per_s;
    EdgeSource source;
  };
  std::map<std::pair<std::string, std::string>, Entry> edges_;
};

// The slowest edge of the ring `order` (order[i] sends to order[i+1], the last to the first);
// 0 if any edge is unknown; +inf for rings of fewer than 2 peers.
double ringBottleneck(const std::vector<std::string>& order, const BandwidthTable& table);

// The ring over `members` whose slowest edge is fastest (ties: larger total rate), starting at
// members[0]; nullopt while any directed edge among them is unknown. Exact for up to 9 members
// (all (n-1)! orders); above that, widest-edge greedy tours from every start, improved by 2-opt
// style moves of single peers.
std::optional<std::vector<std::string>> bestRing(const std::vector<std::string>& members,
                                                 const BandwidthTable& table);

}  // namespace loco::p2p
