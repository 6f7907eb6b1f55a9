#include "p2p/membership.h"

#include <fmt/format.h>

#include <algorithm>
#include <map>

#include "p2p/reconnect.h"

#include "p2p/base/text.h"

namespace loco::p2p {

Millis defaultRebuildWindow(Millis heartbeat_timeout) {
  return heartbeat_timeout + 2 * BackoffOptions{}.max;
}

void MembershipEffects::merge(MembershipEffects other) {
  for (auto& e : other.events) events.push_back(std::move(e));
  for (auto& d : other.decisions) decisions.push_back(d);
  view_changed = view_changed || other.view_changed;
  sync_done = sync_done || other.sync_done;
}

Membership::Peer* Membership::find(const std::string& id) {
  auto it = std::find_if(peers_.begin(), peers_.end(), [&](const Peer& p) { return p.id == id; });
  return it == peers_.end() ? nullptr : &*it;
}
const Membership::Peer* Membership::find(const std::string& id) const {
  auto it = std::find_if(peers_.begin(), peers_.end(), [&](const Peer& p) { return p.id == id; });
  return it == peers_.end() ? nullptr : &*it;
}

bool Membership::contains(const std::string& id) const {
  return find(id) != nullptr;
}

Result<MembershipEffects> Membership::join(const std::string& id, const std::string& addr,
                                           std::uint32_t streams, TimePoint now,
                                           std::uint64_t last_epoch) {
  JoinRequest r;
  r.id = id;
  r.addr = addr;
  r.streams = streams;
  r.last_epoch = last_epoch;
  return join(r, now);
}

Result<MembershipEffects> Membership::join(const JoinRequest& request, TimePoint now) {
  now_ = std::max(now_, now);
  const std::string& id = request.id;
  MembershipEffects fx;
  if (const Peer* existing = find(id)) {
    const bool same_process =
        request.incarnation != 0 && existing->report.incarnation == request.incarnation;
    if (!same_process) {
      return Status(StatusCode::kAlreadyExists,
                    fmt::format("peer id {} is already registered as a {} from {}; another live "
                                "process uses the same identity file",
                                id, peerStateName(existing->state), existing->addr));
    }
    if (request.attempt <= existing->report.attempt) {
      return Status(StatusCode::kAborted,
                    fmt::format("a stale connection attempt ({}) of peer {}: attempt {} is "
                                "registered",
                                request.attempt, id, existing->report.attempt));
    }
    // The process lost its connection and came back before we noticed: its old registration
    // (and, for a member, its place in the ring) goes; it starts over as pending.
    fx.merge(remove(id, MembershipEvent::Kind::kReplaced, "reconnected over a new connection"));
  }
  epoch_ = std::max(epoch_, request.last_epoch);
  peers_.push_back(Peer{id, request.addr, request.streams, PeerState::kPending, now, now, request});
  // A coordinator that restarted learns how far the run got from the peers that come back.
  raiseHighWater(id, ProgressMsg{request.state_revision, request.state_digest, request.progress});
  fx.view_changed = true;
  fx.events.push_back({MembershipEvent::Kind::kPending, id, epoch_, ""});
  fx.merge(maybeCompleteBarrier());
  return fx;
}

void Membership::heartbeat(const std::string& id, TimePoint now) {
  now_ = std::max(now_, now);
  if (Peer* p = find(id)) p->last_heard = std::max(p->last_heard, now);
}

MembershipEffects Membership::progress(const std::string& id, const ProgressMsg& report,
                                       TimePoint now) {
  now_ = std::max(now_, now);
  Peer* p = find(id);
  if (p == nullptr) return {};
  p->last_heard = std::max(p->last_heard, now);
  p->report.state_revision = report.state_revision;
  p->report.state_digest = report.state_digest;
  p->report.progress = report.progress;
  raiseHighWater(id, report);
  // A pending peer that resumed from a checkpoint may hold what the others wait for.
  if (ring_.empty() && p->state == PeerState::kPending) return maybeCompleteBarrier();
  return {};
}

void Membership::raiseHighWater(const std::string& id, const ProgressMsg& report) {
  if (report.progress > high_water_.progress) {
    high_water_ = HighWaterMark{report.progress, report.state_revision, report.state_digest,
                                report.finished, id};
  } else if (report.progress == high_water_.progress && report.finished && !high_water_.finished) {
    high_water_.finished = true;
  }
}

MembershipEffects Membership::syncRequest(const std::string& id, TimePoint now) {
  now_ = std::max(now_, now);
  Peer* p = find(id);
  if (p == nullptr || p->state != PeerState::kMember) return {};
  p->last_heard = std::max(p->last_heard, now);
  synced_.insert(id);
  return maybeCompleteBarrier();
}

MembershipEffects Membership::leave(const std::string& id) {
  return remove(id, MembershipEvent::Kind::kLeft, "left");
}

MembershipEffects Membership::evict(const std::string& id, const std::string& reason) {
  return remove(id, MembershipEvent::Kind::kEvicted, reason);
}

MembershipEffects Membership::remove(const std::string& id, MembershipEvent::Kind kind,
                                     const std::string& reason) {
  auto it = std::find_if(peers_.begin(), peers_.end(), [&](const Peer& p) { return p.id == id; });
  if (it == peers_.end()) return {};
  bool was_member = it->state == PeerState::kMember;
  peers_.erase(it);
  MembershipEffects fx;
  fx.view_changed = true;
  if (was_member) {
    ring_.erase(std::remove(ring_.begin(), ring_.end(), id), ring_.end());
    synced_.erase(id);
    abortOpenOps(fx, epoch_);
    // A peer that says it leaves joins no other group: the base shrinks with it.
    if (kind == MembershipEvent::Kind::kLeft) {
      quorum_base_.erase(std::remove(quorum_base_.begin(), quorum_base_.end(), id),
                         quorum_base_.end());
    }
    ++epoch_;
    fx.events.push_back({kind, id, epoch_, reason});
    // One epoch for the whole change: the minority view is never broadcast.
    if (quorum_ && !ring_.empty() && !holdsMajority(ring_, quorum_base_)) dissolveWithoutQuorum(fx);
    if (quorum_ && !quorum_base_.empty()) group_epoch_ = epoch_;
  } else {
    fx.events.push_back({kind, id, epoch_, reason});
  }
  // The leaver may have been the last member the barrier waited for.
  fx.merge(maybeCompleteBarrier());
  return fx;
}

MembershipEffects Membership::maybeCompleteBarrier() {
  bool any_pending = std::any_of(peers_.begin(), peers_.end(),
                                 [](const Peer& p) { return p.state == PeerState::kPending; });
  std::string rebuilt;
  MembershipEffects fx;
  if (ring_.empty()) {
    // Nobody to wait for: admit whoever is pending, unless they are all behind the run, or the
    // members of a lost group are still on their way back.
    if (!any_pending) {
      behind_since_.reset();
      no_quorum_since_.reset();
      return {};
    }
    if (auto stop = checkProgress(fx)) return std::move(*stop);
    if (quorum_) {
      if (auto stop = checkQuorum()) {
        fx.merge(std::move(*stop));
        return fx;
      }
    }
    if (rebuilding()) return fx;
    if (latestReport() != nullptr) rebuilt = describeRebuild();
  } else if (synced_.size() < ring_.size()) {
    return {};
  }
  if (any_pending) {
    abortOpenOps(fx, epoch_);  // none should be open at a sync point; never let one straddle epochs
    ++epoch_;
    for (Peer& p : peers_) {
      if (p.state != PeerState::kPending) continue;
      p.state = PeerState::kMember;
      ring_.push_back(p.id);
      fx.events.push_back({MembershipEvent::Kind::kAdmitted, p.id, epoch_, ""});
    }
    fx.view_changed = true;
    if (!rebuilt.empty())
      fx.events.push_back({MembershipEvent::Kind::kRebuilt, "", epoch_, rebuilt});
    if (quorum_) {
      // Every admission keeps (or, from nobody, reached) a majority of the old base.
      quorum_base_ = ring_;
      group_epoch_ = epoch_;
      no_quorum_since_.reset();
    }
  }
  if (!proposed_ring_.empty()) {
    std::vector<std::string> a = proposed_ring_, b = ring_;
    std::sort(a.begin(), a.end());
    std::sort(b.begin(), b.end());
    if (a == b && proposed_ring_ != ring_) {
      abortOpenOps(fx, epoch_);
      ++epoch_;
      ring_ = proposed_ring_;
      std::string order;
      for (const auto& id : ring_) order += (order.empty() ? "" : " ") + shortId(id);
      fx.events.push_back({MembershipEvent::Kind::kReordered, "", epoch_, order});
      fx.view_changed = true;
    }
    proposed_ring_.clear();
  }
  fx.sync_done = true;
  synced_.clear();
  return fx;
}

void Membership::abortOpenOps(MembershipEffects& fx, std::uint64_t old_epoch) {
  for (auto& [op_id, done] : ops_) fx.decisions.push_back({old_epoch, op_id, false});
  ops_.clear();
  aborted_ops_.clear();
}

MembershipEffects Membership::opReport(const std::string& id, std::uint64_t epoch,
                                       std::uint64_t op_id, bool ok,
                                       const std::vector<std::string>& members) {
  Peer* p = find(id);
  if (p == nullptr || p->state != PeerState::kMember) return {};
  MembershipEffects fx;
  if (epoch != epoch_) {
    fx.decisions.push_back({epoch, op_id, false});  // the member set has changed since
    return fx;
  }
  auto abort = [&] {
    ops_.erase(op_id);
    aborted_ops_.insert(op_id);
    fx.decisions.push_back({epoch, op_id, false});
    return fx;
  };
  if (!ok || aborted_ops_.count(op_id) != 0) return abort();
  auto [it, fresh] = ops_.try_emplace(op_id);
  OpState& op = it->second;
  if (fresh) {
    op.members = members;
    for (const auto& m : members) {
      const Peer* mp = find(m);
      if (mp == nullptr || mp->state != PeerState::kMember) return abort();
    }
  } else if (op.members != members) {
    return abort();
  }
  if (!op.members.empty() &&
      std::find(op.members.begin(), op.members.end(), id) == op.members.end()) {
    return abort();
  }
  op.done.insert(id);
  if (op.done.size() == (op.members.empty() ? ring_.size() : op.members.size())) {
    ops_.erase(op_id);
    fx.decisions.push_back({epoch, op_id, true});
  }
  return fx;
}

MembershipEffects Membership::tick(TimePoint now) {
  now_ = std::max(now_, now);
  last_tick_stalled_ = last_tick_.has_value() && now - *last_tick_ > heartbeat_timeout_ / 2;
  last_tick_ = now;
  if (last_tick_stalled_) {
    for (Peer& p : peers_) p.last_heard = std::max(p.last_heard, now);
    return {};
  }
  // Silent pending peers go first: evicting a member can complete a barrier, which must not
  // admit a peer that is itself about to be evicted.
  std::vector<std::pair<std::string, std::int64_t>> expired;
  for (PeerState state : {PeerState::kPending, PeerState::kMember}) {
    for (const Peer& p : peers_) {
      if (p.state == state && now - p.last_heard > heartbeat_timeout_) {
        expired.emplace_back(p.id, toMillis(now - p.last_heard));
      }
    }
  }
  MembershipEffects fx;
  for (auto& [id, silent_ms] : expired) {
    fx.merge(evict(id, fmt::format("no heartbeat for {} ms (timeout {} ms)", silent_ms,
                                   heartbeat_timeout_.count())));
  }
  // A rebuild whose window has passed admits whoever came back.
  if (ring_.empty()) fx.merge(maybeCompleteBarrier());
  return fx;
}

std::optional<MembershipEffects> Membership::checkProgress(MembershipEffects& fx) {
  const Peer* best = nullptr;
  for (const Peer& p : peers_) {
    if (p.state == PeerState::kPending &&
        (best == nullptr || p.report.progress > best->report.progress))
      best = &p;
  }
  if (best == nullptr || best->report.progress >= high_water_.progress) {
    behind_since_.reset();
    return std::nullopt;
  }
  const HighWaterMark& hw = high_water_;
  const std::string mark =
      fmt::format("progress {} (shared-state revision {}, digest {:016x}; peer {})", hw.progress,
                  hw.state_revision, hw.state_digest, hw.peer.substr(0, 8));
  if (hw.finished) {
    // Training these rounds again could only fork the run's result.
    MembershipEffects done;
    done.view_changed = true;
    for (auto it = peers_.begin(); it != peers_.end();) {
      if (it->state != PeerState::kPending) {
        ++it;
        continue;
      }
      done.events.push_back(
          {MembershipEvent::Kind::kCompleted, it->id, epoch_,
           fmt::format("the run completed at {} while this peer was away; it holds progress {}, "
                       "and nothing is left for it to do",
                       mark, it->report.progress)});
      it = peers_.erase(it);
    }
    behind_since_.reset();
    return done;
  }
  if (!behind_since_) {
    behind_since_ = now_;
    MembershipEffects held;
    held.events.push_back(
        {MembershipEvent::Kind::kHeld, "", epoch_,
         fmt::format("the pending peers hold progress {} at most, the run reached {}: admitting "
                     "nobody until a peer that holds it registers (at most {} ms)",
                     best->report.progress, mark, holder_wait_.count())});
    return held;
  }
  if (now_ - *behind_since_ < holder_wait_) return MembershipEffects{};
  fx.events.push_back(
      {MembershipEvent::Kind::kRolledBack, best->id, epoch_,
       fmt::format("no peer holding {} registered within {} ms; the run goes on from progress {} "
                   "(peer {}): the rounds after it are trained again",
                   mark, holder_wait_.count(), best->report.progress, best->id.substr(0, 8))});
  high_water_ = HighWaterMark{best->report.progress, best->report.state_revision,
                              best->report.state_digest, false, best->id};
  behind_since_.reset();
  return std::nullopt;
}

bool Membership::holdsMajority(const std::vector<std::string>& present,
                               const std::vector<std::string>& of) {
  std::size_t here = 0;
  for (const std::string& id : of)
    here += std::find(present.begin(), present.end(), id) != present.end() ? 1 : 0;
  return of.empty() || here * 2 > of.size();
}

void Membership::dissolveWithoutQuorum(MembershipEffects& fx) {
  const std::string reason = fmt::format(
      "lost the quorum: {} of the {} members of the group admitted at epoch {} are left, a "
      "strict majority is {}; the others may be training with another coordinator, so this "
      "side applies no round (rejoin as pending)",
      ring_.size(), quorum_base_.size(), group_epoch_, quorum_base_.size() / 2 + 1);
  for (const std::string& id : ring_) {
    peers_.erase(
        std::remove_if(peers_.begin(), peers_.end(), [&](const Peer& p) { return p.id == id; }),
        peers_.end());
    fx.events.push_back({MembershipEvent::Kind::kEvicted, id, epoch_, reason});
  }
  ring_.clear();
  synced_.clear();
  abortOpenOps(fx, epoch_);
}

std::optional<MembershipEffects> Membership::checkQuorum() {
  // A report newer than any group this coordinator ran comes from another coordinator's group;
  // otherwise our own base is the better judge (a dissolved group's peers report the last view
  // they saw, which still held a majority of a base that has since lost it).
  std::vector<std::string> reference = quorum_base_;
  std::uint64_t reference_epoch = group_epoch_;
  if (const Peer* latest = latestReport();
      latest != nullptr && (reference.empty() || latest->report.last_epoch > group_epoch_)) {
    reference = latest->report.last_members;
    reference_epoch = latest->report.last_epoch;
  }
  std::vector<std::string> pending;
  for (const Peer& p : peers_) {
    if (p.state == PeerState::kPending) pending.push_back(p.id);
  }
  if (holdsMajority(pending, reference)) {
    no_quorum_since_.reset();
    return std::nullopt;
  }
  std::size_t here = 0;
  for (const std::string& id : reference)
    here += std::find(pending.begin(), pending.end(), id) != pending.end() ? 1 : 0;
  const std::string what =
      fmt::format("{} of the {} members of epoch {} are here, a strict majority is {}", here,
                  reference.size(), reference_epoch, reference.size() / 2 + 1);
  MembershipEffects fx;
  if (!no_quorum_since_) {
    no_quorum_since_ = now_;
    fx.events.push_back(
        {MembershipEvent::Kind::kNoQuorum, "", epoch_,
         fmt::format("no quorum: {}; admitting nobody (the rest may train with another "
                     "coordinator), sending the pending peers away after {} ms",
                     what, rebuild_window_.count())});
    return fx;
  }
  if (now_ - *no_quorum_since_ < rebuild_window_) return fx;
  no_quorum_since_.reset();
  fx.view_changed = true;
  for (auto it = peers_.begin(); it != peers_.end();) {
    if (it->state != PeerState::kPending) {
      ++it;
      continue;
    }
    fx.events.push_back(
        {MembershipEvent::Kind::kNoQuorum, it->id, epoch_,
         fmt::format("no quorum here for {} ms: {}; look for the coordinator that holds the "
                     "group",
                     rebuild_window_.count(), what)});
    it = peers_.erase(it);
  }
  return fx;
}

const Membership::Peer* Membership::latestReport() const {
  if (!ring_.empty()) return nullptr;
  const Peer* best = nullptr;
  for (const Peer& p : peers_) {
    if (p.state != PeerState::kPending || p.report.last_members.empty()) continue;
    if (best == nullptr || p.report.last_epoch > best->report.last_epoch) best = &p;
  }
  return best;
}

bool Membership::rebuilding() const {
  const Peer* latest = latestReport();
  if (latest == nullptr) return false;
  TimePoint first = latest->registered;
  for (const Peer& p : peers_) {
    if (p.state == PeerState::kPending && !p.report.last_members.empty())
      first = std::min(first, p.registered);
  }
  if (now_ - first >= rebuild_window_) return false;
  return std::any_of(latest->report.last_members.begin(), latest->report.last_members.end(),
                     [&](const std::string& id) {
                       const Peer* p = find(id);
                       return p == nullptr || p->state != PeerState::kPending;
                     });
}

std::string Membership::describeRebuild() const {
  const Peer* latest = latestReport();
  if (latest == nullptr) return "";
  const auto& expected = latest->report.last_members;
  std::size_t back = 0;
  for (const std::string& id : expected) back += find(id) != nullptr ? 1 : 0;
  // Who holds what: the next shared-state sync elects (most peers at the highest revision).
  std::map<std::pair<std::uint64_t, std::uint64_t>, std::pair<std::size_t, std::uint64_t>> states;
  std::size_t pending = 0;
  for (const Peer& p : peers_) {
    if (p.state != PeerState::kPending) continue;
    ++pending;
    auto& s = states[{p.report.state_revision, p.report.state_digest}];
    ++s.first;
    s.second = std::max(s.second, p.report.progress);
  }
  std::string held;
  for (auto it = states.rbegin(); it != states.rend(); ++it) {
    held += fmt::format("{}revision {} digest {:016x} (progress {}): {} peer(s)",
                        held.empty() ? "" : "; ", it->first.first, it->first.second,
                        it->second.second, it->second.first);
  }
  return fmt::format(
      "{} of the {} members of epoch {} came back ({} peer(s) in all){}; they hold "
      "{}{}",
      back, expected.size(), latest->report.last_epoch, pending,
      back < expected.size() ? " before the rebuild window closed" : "", held,
      states.size() > 1 ? "; the next shared-state sync elects the state" : "");
}

std::vector<std::string> Membership::registered() const {
  std::vector<std::string> out = ring_;
  for (const Peer& p : peers_) {
    if (p.state == PeerState::kPending) out.push_back(p.id);
  }
  return out;
}

GroupView Membership::view(TimePoint now) const {
  GroupView v;
  v.epoch = epoch_;
  for (const std::string& id : registered()) {
    const Peer* p = find(id);
    v.peers.push_back(PeerInfo{p->id, p->addr, p->state,
                               std::max<std::int64_t>(0, toMillis(now - p->last_heard)), p->streams,
                               p->report.reach});
  }
  return v;
}

}  // namespace loco::p2p
