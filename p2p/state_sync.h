#pragma once
// Shared-state sync as the coordinator runs it (ARCHITECTURE.md §5), as pure code: no sockets, no
// clocks, no threads. The coordinator sees layouts, revisions and 64-bit chunk hashes, never
// tensor bytes; peers move the bytes between themselves.
//
// One round:
//  1. Every member sends a StateManifestMsg (kStateManifest).
//  2. When all current members have sent one, electSharedState() decides per peer (kStatePlan):
//     - The group's layout is the most common one (ties: the one held at the highest revision,
//       then the one of the earliest peer in ring order). A peer with another layout gets an
//       error naming the first buffer that differs.
//     - Electors are the peers that are not receive-only and hold the highest revision among
//       those (revision 0 everywhere: everyone who holds something). For every chunk the hash
//       most electors hold wins (ties: a send-only peer's, then the smallest hash).
//     - A send-only peer that holds anything else gets an error and downloads nothing.
//     - Every other peer learns the winning hashes and, if it lacks some, which peers hold
//       which winning chunks (up to kMaxStateSources, those covering most of its needs first).
//     - The new revision is the electors' revision plus one.
//  3. Peers that need nothing (and peers with an error) count as done at once; a peer that
//     downloads reports kStateDone when it has verified everything (or failed).
//  4. When every participant still in the group is done, kStateComplete ends the round and
//     sources stop serving. A member that leaves or dies is dropped from the round, so a
//     dead joiner or a dead source never blocks it.
//
// Trust: a complaint (kStateComplaint) about a source that served corrupt chunks evicts the
// source; the coordinator believes members (as it believes their heartbeats).

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "p2p/messages.h"

namespace loco::p2p {

struct StateParticipant {
  PeerInfo peer;  // id, addr, streams
  StateManifestMsg manifest;
};

// One plan per participant, in input order (ring order).
std::vector<StatePlanMsg> electSharedState(const std::vector<StateParticipant>& in);

// Whether `plan` (for a peer holding `mine`) asks that peer to download anything.
bool planNeedsChunks(const StatePlanMsg& plan, const StateManifestMsg& mine);

struct StateSyncEffects {
  std::uint64_t round = 0;
  std::vector<std::pair<std::string, StatePlanMsg>>
      plans;                          // send each as kStatePlan(op_id = round)
  std::vector<std::string> complete;  // send each kStateComplete(op_id = complete_round)
  std::uint64_t complete_round = 0;
  void merge(StateSyncEffects other);
};

// The rounds, one at a time. Not thread-safe: the coordinator's network thread calls it.
class StateSyncRounds {
 public:
  // A manifest from `id`. `members`: the group's members in ring order. A manifest from a
  // non-member is answered with an error plan (round 0). A second manifest from a participant
  // of a planned round counts as its failure in that round and enters the next one.
  StateSyncEffects manifest(const std::string& id, StateManifestMsg m,
                            const std::vector<PeerInfo>& members);
  // `id` is done with `round` (ok or not). Round 0 withdraws its manifest (and, if a plan
  // crossed the withdrawal, ends its part in the planned round); the coordinator acknowledges a
  // withdrawal with kStateComplete(0), and the peer's failed sync returns only then.
  StateSyncEffects done(const std::string& id, std::uint64_t round,
                        const std::vector<PeerInfo>& members);
  // The member set changed: peers that left are dropped from the round.
  StateSyncEffects membersChanged(const std::vector<PeerInfo>& members);

  std::uint64_t round() const { return round_; }
  bool planned() const { return planned_; }
  std::size_t waitingManifests() const { return manifests_.size(); }

 private:
  StateSyncEffects maybePlan(const std::vector<PeerInfo>& members);
  StateSyncEffects maybeComplete(const std::vector<PeerInfo>& members);

  std::uint64_t round_ = 1;
  bool planned_ = false;
  std::map<std::string, StateManifestMsg> manifests_;  // the round being gathered
  std::map<std::string, StateManifestMsg> next_;       // arrived while a round was planned
  std::set<std::string> participants_, done_;          // the planned round
};

}  // namespace loco::p2p
