#include "p2p/topology.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

namespace loco::p2p {

std::string_view edgeSourceName(EdgeSource s) {
  return s == EdgeSource::kPassive ? "passive" : "probe";
}

bool BandwidthTable::update(const EdgeEstimate& e) {
  if (!(e.bytes_per_s > 0) || !std::isfinite(e.bytes_per_s) || e.from == e.to) return false;
  auto key = std::make_pair(e.from, e.to);
  auto it = edges_.find(key);
  if (it != edges_.end() && it->second.source == EdgeSource::kPassive &&
      e.source == EdgeSource::kProbe)
    return false;
  if (it != edges_.end() && it->second.source == e.source &&
      it->second.bytes_per_s == e.bytes_per_s)
    return false;
  edges_[key] = Entry{e.bytes_per_s, e.source};
  return true;
}

void BandwidthTable::erase(const std::string& peer) {
  for (auto it = edges_.begin(); it != edges_.end();) {
    it = (it->first.first == peer || it->first.second == peer) ? edges_.erase(it) : std::next(it);
  }
}

std::optional<double> BandwidthTable::rate(const std::string& from, const std::string& to) const {
  auto it = edges_.find({from, to});
  if (it == edges_.end()) return std::nullopt;
  return it->second.bytes_per_s;
}

std::vector<EdgeEstimate> BandwidthTable::edges() const {
  std::vector<EdgeEstimate> out;
  out.reserve(edges_.size());
  for (const auto& [key, e] : edges_)
    out.push_back(EdgeEstimate{key.first, key.second, e.bytes_per_s, e.source});
  return out;
}

double ringBottleneck(const std::vector<std::string>& order, const BandwidthTable& table) {
  if (order.size() < 2) return std::numeric_limits<double>::infinity();
  double worst = std::numeric_limits<double>::infinity();
  for (std::size_t i = 0; i < order.size(); ++i) {
    auto r = table.rate(order[i], order[(i + 1) % order.size()]);
    if (!r) return 0;
    worst = std::min(worst, *r);
  }
  return worst;
}

namespace {

struct Score {
  double bottleneck = -1, total = -1;
  bool operator>(const Score& o) const {
    return bottleneck > o.bottleneck || (bottleneck == o.bottleneck && total > o.total);
  }
};

// Over member indices, with a dense matrix: the search runs (n-1)! times.
Score scoreOf(const std::vector<int>& order, const std::vector<std::vector<double>>& m) {
  Score s{std::numeric_limits<double>::infinity(), 0};
  for (std::size_t i = 0; i < order.size(); ++i) {
    double r = m[order[i]][order[(i + 1) % order.size()]];
    s.bottleneck = std::min(s.bottleneck, r);
    s.total += r;
  }
  return s;
}

std::vector<int> exactBest(const std::vector<std::vector<double>>& m) {
  std::vector<int> order(m.size());
  std::iota(order.begin(), order.end(), 0);
  std::vector<int> best = order;
  Score best_score = scoreOf(order, m);
  while (std::next_permutation(order.begin() + 1, order.end())) {
    Score s = scoreOf(order, m);
    if (s > best_score) best_score = s, best = order;
  }
  return best;
}

std::vector<int> heuristicBest(const std::vector<std::vector<double>>& m) {
  const int n = static_cast<int>(m.size());
  std::vector<int> best;
  Score best_score;
  for (int start = 0; start < n; ++start) {
    std::vector<int> order{start};
    std::vector<bool> used(n, false);
    used[start] = true;
    for (int k = 1; k < n; ++k) {  // always take the widest edge onwards
      int cur = order.back(), pick = -1;
      for (int j = 0; j < n; ++j) {
        if (!used[j] && (pick < 0 || m[cur][j] > m[cur][pick])) pick = j;
      }
      used[pick] = true;
      order.push_back(pick);
    }
    // Move single peers elsewhere while that improves the ring (bounded passes).
    Score score = scoreOf(order, m);
    for (int pass = 0; pass < 4; ++pass) {
      bool improved = false;
      for (int i = 0; i < n; ++i) {
        for (int j = 0; j < n; ++j) {
          if (i == j) continue;
          std::vector<int> cand = order;
          int v = cand[i];
          cand.erase(cand.begin() + i);
          cand.insert(cand.begin() + j, v);
          Score s = scoreOf(cand, m);
          if (s > score) score = s, order = std::move(cand), improved = true;
        }
      }
      if (!improved) break;
    }
    if (best.empty() || score > best_score) best_score = score, best = order;
  }
  // Start at members[0], as the exact search does, so equal rings compare equal.
  std::rotate(best.begin(), std::find(best.begin(), best.end(), 0), best.end());
  return best;
}

}  // namespace

std::optional<std::vector<std::string>> bestRing(const std::vector<std::string>& members,
                                                 const BandwidthTable& table) {
  const std::size_t n = members.size();
  if (n < 3) return members;  // one ring only (both directions are used with two)
  std::vector<std::vector<double>> m(n, std::vector<double>(n, 0));
  for (std::size_t i = 0; i < n; ++i) {
    for (std::size_t j = 0; j < n; ++j) {
      if (i == j) continue;
      auto r = table.rate(members[i], members[j]);
      if (!r) return std::nullopt;
      m[i][j] = *r;
    }
  }
  std::vector<int> order = n <= 9 ? exactBest(m) : heuristicBest(m);
  std::vector<std::string> out;
  for (int i : order) out.push_back(members[static_cast<std::size_t>(i)]);
  return out;
}

}  // namespace loco::p2p
