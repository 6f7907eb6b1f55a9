#include "p2p/state_sync.h"

#include <fmt/format.h>

#include <algorithm>
#include <unordered_map>

namespace loco::p2p {
namespace {

bool sameLayout(const StateManifestMsg& a, const StateManifestMsg& b) {
  return a.chunk_bytes == b.chunk_bytes && a.buffers == b.buffers;
}

std::string describeBuffer(const StateBufferInfo& b) {
  return fmt::format("{} elements of dtype {} ({} bytes each)", b.count, b.dtype, b.elem_bytes);
}

// Names the first thing in `mine` that differs from the group's layout.
std::string describeMismatch(const StateManifestMsg& mine, const StateManifestMsg& group) {
  const auto& a = mine.buffers;
  const auto& g = group.buffers;
  for (std::size_t i = 0; i < std::max(a.size(), g.size()); ++i) {
    if (i >= a.size()) {
      return fmt::format(
          "buffer '{}' (#{}) of the group's shared state is missing here: this peer registered {} "
          "buffers, the group {}",
          g[i].name, i, a.size(), g.size());
    }
    if (i >= g.size()) {
      return fmt::format("buffer '{}' (#{}) is not part of the group's shared state ({} buffers)",
                         a[i].name, i, g.size());
    }
    if (a[i].name != g[i].name) {
      return fmt::format(
          "buffer #{} is '{}' here but '{}' in the group's shared state (register buffers in the "
          "same "
          "order on every peer)",
          i, a[i].name, g[i].name);
    }
    if (!(a[i] == g[i])) {
      return fmt::format("buffer '{}' differs from the group's: here {}, the group has {}",
                         a[i].name, describeBuffer(a[i]), describeBuffer(g[i]));
    }
  }
  return fmt::format("chunk size {} differs from the group's ({})", mine.chunk_bytes,
                     group.chunk_bytes);
}

// Buffer name and chunk within it for a global chunk index.
std::string describeChunk(const StateManifestMsg& m, std::size_t chunk) {
  std::size_t base = 0;
  for (const auto& b : m.buffers) {
    const std::size_t n = (b.bytes() + m.chunk_bytes - 1) / m.chunk_bytes;
    if (chunk < base + n) return fmt::format("chunk {} of buffer '{}'", chunk - base, b.name);
    base += n;
  }
  return fmt::format("chunk {}", chunk);
}

StatePlanMsg errorPlan(StatusCode code, std::string reason) {
  StatePlanMsg p;
  p.code = code;
  p.reason = std::move(reason);
  return p;
}

bool isSource(const StateManifestMsg& m) {
  return m.strategy != StateStrategy::kReceiveOnly;
}

}  // namespace

void StateSyncEffects::merge(StateSyncEffects other) {
  if (!other.plans.empty()) {
    round = other.round;
    for (auto& p : other.plans) plans.push_back(std::move(p));
  }
  if (!other.complete.empty()) {
    complete_round = other.complete_round;
    for (auto& c : other.complete) complete.push_back(std::move(c));
  }
}

bool planNeedsChunks(const StatePlanMsg& plan, const StateManifestMsg& mine) {
  if (plan.code != StatusCode::kOk || plan.canonical.size() != mine.hashes.size()) return false;
  return plan.canonical != mine.hashes;
}

std::vector<StatePlanMsg> electSharedState(const std::vector<StateParticipant>& in) {
  const std::size_t n = in.size();
  std::vector<StatePlanMsg> out(n);
  if (n == 0) return out;

  // 1. The group's layout.
  struct Layout {
    std::size_t first;
    std::size_t votes = 0;
    std::uint64_t best_revision = 0;
  };
  std::vector<Layout> layouts;
  std::vector<std::size_t> layout_of(n);
  for (std::size_t i = 0; i < n; ++i) {
    const auto& m = in[i].manifest;
    std::size_t j = 0;
    while (j < layouts.size() && !sameLayout(in[layouts[j].first].manifest, m)) ++j;
    if (j == layouts.size()) layouts.push_back(Layout{i});
    ++layouts[j].votes;
    if (isSource(m)) layouts[j].best_revision = std::max(layouts[j].best_revision, m.revision);
    layout_of[i] = j;
  }
  std::size_t group_layout = 0;
  for (std::size_t j = 1; j < layouts.size(); ++j) {
    const Layout& a = layouts[j];
    const Layout& b = layouts[group_layout];
    if (a.votes > b.votes || (a.votes == b.votes && a.best_revision > b.best_revision))
      group_layout = j;
  }
  const StateManifestMsg& group = in[layouts[group_layout].first].manifest;
  std::vector<bool> failed(n, false);
  for (std::size_t i = 0; i < n; ++i) {
    if (layout_of[i] != group_layout) {
      out[i] =
          errorPlan(StatusCode::kInvalidArgument, "shared state layout differs from the group's: " +
                                                      describeMismatch(in[i].manifest, group));
      failed[i] = true;
    }
  }

  // 2. Electors: non-receive-only peers at the highest revision among them.
  bool any_source = false;
  std::uint64_t top = 0;
  for (std::size_t i = 0; i < n; ++i) {
    if (failed[i] || !isSource(in[i].manifest)) continue;
    any_source = true;
    top = std::max(top, in[i].manifest.revision);
  }
  if (!any_source) {
    for (std::size_t i = 0; i < n; ++i) {
      if (!failed[i]) {
        out[i] = errorPlan(
            StatusCode::kNotFound,
            "no peer holds the shared state: every peer synced receive-only (at least one must "
            "sync enforce-popular or send-only)");
      }
    }
    return out;
  }
  std::vector<std::size_t> electors;
  for (std::size_t i = 0; i < n; ++i) {
    if (!failed[i] && isSource(in[i].manifest) && in[i].manifest.revision == top)
      electors.push_back(i);
  }

  // 3. Per chunk, the most popular hash among the electors.
  const std::size_t chunks = group.hashes.size();
  std::vector<std::uint64_t> canonical(chunks);
  std::vector<std::uint32_t> votes(chunks);
  std::unordered_map<std::uint64_t, std::pair<std::uint32_t, bool>>
      tally;  // hash -> (votes, has send-only)
  for (std::size_t c = 0; c < chunks; ++c) {
    tally.clear();
    for (std::size_t e : electors) {
      auto& t = tally[in[e].manifest.hashes[c]];
      ++t.first;
      t.second = t.second || in[e].manifest.strategy == StateStrategy::kSendOnly;
    }
    bool have = false;
    std::pair<std::uint32_t, bool> best{};
    for (const auto& [hash, t] : tally) {
      if (!have || t.first > best.first || (t.first == best.first && t.second && !best.second) ||
          (t.first == best.first && t.second == best.second && hash < canonical[c])) {
        have = true;
        best = t;
        canonical[c] = hash;
      }
    }
    votes[c] = best.first;
  }

  // 4. Send-only peers that lost.
  for (std::size_t i = 0; i < n; ++i) {
    const auto& m = in[i].manifest;
    if (failed[i] || m.strategy != StateStrategy::kSendOnly) continue;
    for (std::size_t c = 0; c < chunks; ++c) {
      if (m.hashes[c] == canonical[c]) continue;
      out[i] = errorPlan(StatusCode::kAborted,
                         fmt::format("send-only sync lost the election: this peer's {} (revision "
                                     "{}) differs from the content "
                                     "{} peer(s) at revision {} hold; sync enforce-popular or "
                                     "receive-only to take the group's state",
                                     describeChunk(m, c), m.revision, votes[c], top));
      failed[i] = true;
      break;
    }
  }

  // 5. Plans.
  const std::uint64_t revision = top + 1;
  const std::size_t bitmap_bytes = (chunks + 7) / 8;
  for (std::size_t i = 0; i < n; ++i) {
    if (failed[i]) continue;
    StatePlanMsg& p = out[i];
    p.revision = revision;
    p.elected_revision = top;
    p.canonical = canonical;
    const auto& mine = in[i].manifest.hashes;
    std::vector<std::size_t> needs;
    for (std::size_t c = 0; c < chunks; ++c) {
      if (mine[c] != canonical[c]) needs.push_back(c);
    }
    if (needs.empty()) continue;
    struct Candidate {
      std::size_t index;
      std::size_t covers;
    };
    std::vector<Candidate> cands;
    for (std::size_t q = 0; q < n; ++q) {
      if (q == i || failed[q] || !isSource(in[q].manifest)) continue;
      std::size_t covers = 0;
      for (std::size_t c : needs) covers += in[q].manifest.hashes[c] == canonical[c] ? 1 : 0;
      if (covers > 0) cands.push_back({q, covers});
    }
    std::stable_sort(cands.begin(), cands.end(),
                     [](const Candidate& a, const Candidate& b) { return a.covers > b.covers; });
    if (cands.size() > kMaxStateSources) cands.resize(kMaxStateSources);
    for (const Candidate& cand : cands) {
      StateSource s;
      s.peer_id = in[cand.index].peer.id;
      s.addr = in[cand.index].peer.addr;
      s.streams = in[cand.index].peer.streams;
      s.holds.assign(bitmap_bytes, 0);
      const auto& theirs = in[cand.index].manifest.hashes;
      for (std::size_t c = 0; c < chunks; ++c) {
        if (theirs[c] == canonical[c]) s.holds[c / 8] |= static_cast<std::uint8_t>(1u << (c % 8));
      }
      p.sources.push_back(std::move(s));
    }
  }
  return out;
}

// ---- rounds
// --------------------------------------------------------------------------------------

namespace {
bool isMember(const std::vector<PeerInfo>& members, const std::string& id) {
  return std::any_of(members.begin(), members.end(), [&](const PeerInfo& p) { return p.id == id; });
}
}  // namespace

StateSyncEffects StateSyncRounds::manifest(const std::string& id, StateManifestMsg m,
                                           const std::vector<PeerInfo>& members) {
  StateSyncEffects fx;
  if (!isMember(members, id)) {
    fx.plans.emplace_back(id,
                          errorPlan(StatusCode::kInvalidArgument,
                                    "shared-state sync before this peer was admitted to the group "
                                    "(wait for membership first)"));
    fx.plans.back().second.sync_id = m.sync_id;
    return fx;
  }
  if (planned_) {
    if (participants_.count(id) != 0) {
      // It gave up on the planned round (deadline) and starts over: it failed that one.
      fx.merge(done(id, round_, members));
    }
    if (planned_) {
      next_[id] = std::move(m);
      return fx;
    }
  }
  manifests_[id] = std::move(m);
  fx.merge(maybePlan(members));
  return fx;
}

StateSyncEffects StateSyncRounds::done(const std::string& id, std::uint64_t round,
                                       const std::vector<PeerInfo>& members) {
  if (round == 0) {
    // Withdrawn (it gave up before it saw a plan): it no longer takes part until its next
    // manifest. If its plan crossed the withdrawal, it is done with that round too.
    manifests_.erase(id);
    next_.erase(id);
    if (!planned_) return maybePlan(members);
    if (participants_.count(id) == 0) return {};
    done_.insert(id);
    return maybeComplete(members);
  }
  if (!planned_ || round != round_ || participants_.count(id) == 0) return {};
  done_.insert(id);
  return maybeComplete(members);
}

StateSyncEffects StateSyncRounds::membersChanged(const std::vector<PeerInfo>& members) {
  for (auto* map : {&manifests_, &next_}) {
    for (auto it = map->begin(); it != map->end();)
      it = isMember(members, it->first) ? std::next(it) : map->erase(it);
  }
  if (planned_) return maybeComplete(members);
  return maybePlan(members);
}

StateSyncEffects StateSyncRounds::maybePlan(const std::vector<PeerInfo>& members) {
  StateSyncEffects fx;
  if (planned_ || manifests_.empty()) return fx;
  for (const PeerInfo& p : members) {
    if (manifests_.count(p.id) == 0) return fx;  // still waiting for this member
  }
  std::vector<StateParticipant> in;
  for (const PeerInfo& p : members) in.push_back({p, std::move(manifests_[p.id])});
  manifests_.clear();
  auto plans = electSharedState(in);
  for (std::size_t i = 0; i < in.size(); ++i) plans[i].sync_id = in[i].manifest.sync_id;
  planned_ = true;
  participants_.clear();
  done_.clear();
  fx.round = round_;
  for (std::size_t i = 0; i < in.size(); ++i) {
    participants_.insert(in[i].peer.id);
    // Nothing to download (or nothing it may do): done already, but it serves until the end.
    if (!planNeedsChunks(plans[i], in[i].manifest)) done_.insert(in[i].peer.id);
    fx.plans.emplace_back(in[i].peer.id, std::move(plans[i]));
  }
  fx.merge(maybeComplete(members));
  return fx;
}

StateSyncEffects StateSyncRounds::maybeComplete(const std::vector<PeerInfo>& members) {
  StateSyncEffects fx;
  if (!planned_) return fx;
  for (const std::string& id : participants_) {
    if (done_.count(id) == 0 && isMember(members, id)) return fx;
  }
  fx.complete_round = round_;
  for (const std::string& id : participants_) {
    if (isMember(members, id)) fx.complete.push_back(id);
  }
  planned_ = false;
  participants_.clear();
  done_.clear();
  ++round_;
  manifests_ = std::move(next_);
  next_.clear();
  fx.merge(maybePlan(members));
  return fx;
}

}  // namespace loco::p2p
