#pragma once
// The coordinator's membership state machine as a pure object: no sockets, no clocks of its own,
// no threads. The coordinator feeds it inputs (join, heartbeat, sync request, leave, connection
// loss, timer ticks) with the current time, and carries out the returned Effects. This is what the
// unit tests exercise directly.
//
// Rules (ARCHITECTURE.md §4):
// - A joiner is pending until every member has reached a sync point; then all pending peers are
//   admitted together and the epoch advances once. With no members, a joiner is admitted at once.
// - A member that leaves, loses its connection or misses heartbeats for `heartbeat_timeout` is
//   removed at once and the epoch advances (the ring changed); a sync barrier it was holding up
//   completes without it.
// - Epochs only increase; every change of the member set is exactly one new epoch.
// - An id that is already registered (pending or member) cannot register again.
// Not thread-safe: the coordinator calls it from its one network thread.

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "p2p/base/clock.h"
#include "p2p/base/status.h"
#include "p2p/messages.h"

namespace loco::p2p {

struct MembershipEvent {
  enum class Kind { kPending, kAdmitted, kLeft, kEvicted, kReordered };
  Kind kind;
  std::string peer;
  std::uint64_t epoch;  // epoch after the event
  std::string reason;   // for kLeft / kEvicted; the new ring for kReordered
};

// The coordinator's verdict on one collective operation: commit when every member of the
// operation's epoch reported it done, abort on a failure report or any membership change.
// Peers report success only after a commit, so no two survivors can disagree.
struct OpDecision {
  std::uint64_t epoch;
  std::uint64_t op_id;
  bool commit;
};

struct MembershipEffects {
  std::vector<MembershipEvent> events;
  std::vector<OpDecision> decisions;  // broadcast each to every member
  bool view_changed = false;          // broadcast the new view to every registered peer
  bool sync_done = false;             // send SyncDone(epoch) to every member: the barrier completed

  void merge(MembershipEffects other);
};

class Membership {
 public:
  explicit Membership(Millis heartbeat_timeout) : heartbeat_timeout_(heartbeat_timeout) {}

  // Registers a new peer as pending. kAlreadyExists if `id` is registered. `last_epoch` is the
  // highest epoch the peer has seen: after a coordinator restart the epoch continues above it.
  Result<MembershipEffects> join(const std::string& id, const std::string& addr,
                                 std::uint32_t streams, TimePoint now,
                                 std::uint64_t last_epoch = 0);
  void heartbeat(const std::string& id, TimePoint now);
  // A member reached a sync point. Requests from pending or unknown peers are ignored.
  MembershipEffects syncRequest(const std::string& id, TimePoint now);
  MembershipEffects leave(const std::string& id);
  // Connection lost or protocol violation: removed at once.
  MembershipEffects evict(const std::string& id, const std::string& reason);
  // A member finished (ok) or failed its part of operation `op_id` in `epoch`. A report for an
  // epoch other than the current one is answered with an abort at once. `members`: who takes
  // part (an exchange between a few members); empty: every member. The operation commits when
  // all of them reported it done; members that disagree on who takes part abort it.
  MembershipEffects opReport(const std::string& id, std::uint64_t epoch, std::uint64_t op_id,
                             bool ok, const std::vector<std::string>& members = {});
  std::size_t pendingOps() const { return ops_.size(); }
  // A better ring order (topology.h). It takes effect at the next completed sync barrier, as a
  // new epoch, if it is then still an order of exactly the members; otherwise it is dropped.
  void proposeRing(std::vector<std::string> order) { proposed_ring_ = std::move(order); }

  // Evicts peers silent for longer than the heartbeat timeout. If the caller itself was stalled
  // (ticks further apart than half the timeout, e.g. the coordinator was SIGSTOPped), everyone's
  // clock restarts instead: the silence was ours, not theirs.
  MembershipEffects tick(TimePoint now);

  bool contains(const std::string& id) const;
  std::uint64_t epoch() const { return epoch_; }
  const std::vector<std::string>& ring() const { return ring_; }
  std::vector<std::string> registered() const;  // members then pending
  GroupView view(TimePoint now) const;
  bool lastTickWasStall() const { return last_tick_stalled_; }

 private:
  struct Peer {
    std::string id;
    std::string addr;
    std::uint32_t streams = 0;
    PeerState state = PeerState::kPending;
    TimePoint last_heard;
  };
  Peer* find(const std::string& id);
  const Peer* find(const std::string& id) const;
  MembershipEffects remove(const std::string& id, MembershipEvent::Kind kind,
                           const std::string& reason);
  // Completes the sync barrier if every member has synced (or there are no members and someone
  // is pending): admits all pending peers.
  MembershipEffects maybeCompleteBarrier();

  Millis heartbeat_timeout_;
  std::uint64_t epoch_ = 0;
  std::vector<Peer> peers_;        // registration order
  std::vector<std::string> ring_;  // members in ring order
  std::set<std::string> synced_;   // members waiting at the current barrier
  struct OpState {
    std::set<std::string> done;
    std::vector<std::string> members;  // empty: every member
  };
  std::map<std::uint64_t, OpState> ops_;    // current epoch
  std::set<std::uint64_t> aborted_ops_;     // current epoch; late reports get an abort
  std::vector<std::string> proposed_ring_;  // applied at the next barrier
  // Aborts every operation still open (called when the member set changes).
  void abortOpenOps(MembershipEffects& fx, std::uint64_t old_epoch);
  std::optional<TimePoint> last_tick_;
  bool last_tick_stalled_ = false;
};

}  // namespace loco::p2p
