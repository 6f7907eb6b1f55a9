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
// - An id that is already registered (pending or member) cannot register again, unless it is the
//   same process reconnecting (same incarnation, a newer attempt): its old registration is
//   dropped (a member's removal is a new epoch) and it registers as pending.
// - Rebuild: a coordinator with no members that is joined by peers reporting a previous group
//   (last_members: a coordinator was lost and this one replaces it) admits nobody until every
//   member of the most recent group they report has registered again, or `rebuild_window` has
//   passed since the first of them did. The group then comes back as one epoch, above every
//   epoch the peers report, and no early peer runs a round alone.
// - Progress: the membership keeps the run's high-water mark, the most advanced state any peer
//   reported (registrations, and a ProgressMsg after every round a peer applies), also after
//   every peer that held it has gone. A group that forms from nobody (no members) out of pending
//   peers that all hold less than the mark would train the rounds after their state again, apart
//   from the run (a fork). So instead: if the mark says the run finished, each of them is told
//   (kCompleted) and removed; otherwise nobody is admitted until a peer that holds the mark's
//   progress registers, for at most `holder_wait`; after that they are admitted and the run goes
//   on from the best state they hold (kRolledBack, the mark comes down to it). A coordinator that
//   restarted knows only what the peers that register again report.
// - Quorum (on when the peers know more than one coordinator address, so two coordinators can be
//   alive at once): a group may train only while it holds a strict majority of its quorum base,
//   the member set of its last admission (a graceful leave shrinks the base; an eviction does
//   not, since an evicted peer may be alive behind a partition and join another coordinator).
//   - A group whose evictions leave it without that majority dissolves at once, as one epoch:
//     its members are evicted ("no quorum") and rejoin as pending, so the minority side of a
//     partition applies no round.
//   - With no members, pending peers form a group only with a strict majority of the reference
//     group: the latest group they report if it is newer than the base, else the base. With
//     none (the very start of a run), they are admitted at once as before. A 2-member group
//     needs both; a 1-member group needs its one member.
//   - Peers held without a majority for `rebuild_window` are sent away (kNoQuorum): they look
//     for the coordinator that holds the group (the client probes every address and prefers
//     the one with the most members), or come back here later.
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
  // kReplaced: the same process registered again over a new connection (its old registration
  // is gone; do not send it an Evicted). kRebuilt: a lost group came back at a rebuild barrier.
  // kCompleted: a pending peer behind a finished run was removed (tell it: Refused kCompleted).
  // kHeld: pending peers behind the high-water mark wait for a peer that holds it (no peer).
  // kRolledBack: nobody holding the mark came back in time; the run goes on from less.
  // kNoQuorum: a pending peer sent away because no majority of the reference group is here
  // (tell it: Refused kUnavailable), or (peer empty) pending peers are held for a majority.
  enum class Kind {
    kPending,
    kAdmitted,
    kLeft,
    kEvicted,
    kReordered,
    kReplaced,
    kRebuilt,
    kCompleted,
    kHeld,
    kRolledBack,
    kNoQuorum
  };
  Kind kind;
  std::string peer;
  std::uint64_t epoch;  // epoch after the event
  // kLeft / kEvicted / kReplaced / kCompleted / kNoQuorum: why; kReordered: the new ring;
  // kRebuilt: who came back and what state they report; kHeld / kRolledBack: what is missing.
  std::string reason;
};

// What a peer says when it registers (HelloMsg without the wire details; see messages.h).
struct JoinRequest {
  std::string id;
  std::string addr;
  std::uint32_t streams = 0;
  std::uint64_t last_epoch = 0;
  std::uint64_t incarnation = 0;  // 0 (an older peer): never replaces a registration
  std::uint64_t attempt = 0;
  std::vector<std::string> last_members;
  std::uint64_t state_revision = 0;
  std::uint64_t state_digest = 0;
  std::uint64_t progress = 0;
  PeerReach reach = PeerReach::kDirect;  // how others open connections to it
};

// Long enough for every live peer of a lost group to find the new coordinator: they notice the
// loss within a heartbeat timeout of each other and retry at most BackoffOptions::max apart.
Millis defaultRebuildWindow(Millis heartbeat_timeout);

// How long peers behind the high-water mark wait for a peer that holds it (see the rules): long
// enough for a supervisor to restart a dead holder from its checkpoint (loco local backs off
// 30 s at most).
inline constexpr Millis kDefaultHolderWait{60000};

// The most advanced state a peer of this run reported.
struct HighWaterMark {
  std::uint64_t progress = 0;
  std::uint64_t state_revision = 0;
  std::uint64_t state_digest = 0;
  bool finished = false;  // a peer that held it had reached the run's last step
  std::string peer;       // who reported it
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
  // `quorum`: apply the quorum rule (see above).
  explicit Membership(Millis heartbeat_timeout, std::optional<Millis> rebuild_window = {},
                      Millis holder_wait = kDefaultHolderWait, bool quorum = false)
      : heartbeat_timeout_(heartbeat_timeout),
        rebuild_window_(rebuild_window.value_or(defaultRebuildWindow(heartbeat_timeout))),
        holder_wait_(holder_wait),
        quorum_(quorum) {}

  // Registers a peer as pending. `last_epoch` is the highest epoch the peer has seen: after a
  // coordinator restart the epoch continues above it. Errors: kAlreadyExists if `id` is
  // registered by another process; kAborted for a stale attempt of a registered process.
  Result<MembershipEffects> join(const JoinRequest& request, TimePoint now);
  Result<MembershipEffects> join(const std::string& id, const std::string& addr,
                                 std::uint32_t streams, TimePoint now,
                                 std::uint64_t last_epoch = 0);
  void heartbeat(const std::string& id, TimePoint now);
  // What a registered peer holds now (ProgressMsg). Raises the high-water mark; with no members,
  // may admit peers that were held for it. Reports of unknown peers are ignored.
  MembershipEffects progress(const std::string& id, const ProgressMsg& report, TimePoint now);
  const HighWaterMark& highWater() const { return high_water_; }
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
  // clock restarts instead: the silence was ours, not theirs. Also ends a rebuild whose window
  // has passed.
  MembershipEffects tick(TimePoint now);
  // Waiting for the members of a lost group to come back (see the rules above).
  bool rebuilding() const;

  bool contains(const std::string& id) const;
  std::uint64_t epoch() const { return epoch_; }
  const std::vector<std::string>& ring() const { return ring_; }
  std::vector<std::string> registered() const;  // members then pending
  GroupView view(TimePoint now) const;
  bool lastTickWasStall() const { return last_tick_stalled_; }
  // The member set of the last admission that the quorum rule counts against (empty: none yet,
  // or the quorum rule is off).
  const std::vector<std::string>& quorumBase() const { return quorum_base_; }

 private:
  struct Peer {
    std::string id;
    std::string addr;
    std::uint32_t streams = 0;
    PeerState state = PeerState::kPending;
    TimePoint last_heard;
    TimePoint registered;
    JoinRequest report;  // what it said when it registered (progress: and since)
  };
  Peer* find(const std::string& id);
  const Peer* find(const std::string& id) const;
  MembershipEffects remove(const std::string& id, MembershipEvent::Kind kind,
                           const std::string& reason);
  // Completes the sync barrier if every member has synced (or there are no members and someone
  // is pending, and no rebuild is waiting): admits all pending peers.
  MembershipEffects maybeCompleteBarrier();
  // With no members: the pending peer whose report of a previous group is most recent.
  const Peer* latestReport() const;
  // With no members and someone pending: the progress rule (see above). nullopt: the pending
  // peers may form the group (a rollback event, if the wait ran out, goes into `fx`); else the
  // effects to stop with.
  std::optional<MembershipEffects> checkProgress(MembershipEffects& fx);
  void raiseHighWater(const std::string& id, const ProgressMsg& report);
  std::string describeRebuild() const;
  // With no members and someone pending, quorum on: nullopt if the pending peers hold a strict
  // majority of the reference group (or there is none); else the effects to stop with (held,
  // or sent away once the hold outlasts the rebuild window).
  std::optional<MembershipEffects> checkQuorum();
  // Quorum on and the ring no longer a strict majority of the base: every member is evicted.
  void dissolveWithoutQuorum(MembershipEffects& fx);
  // A strict majority of `of` is in `present` (true for an empty `of`).
  static bool holdsMajority(const std::vector<std::string>& present,
                            const std::vector<std::string>& of);

  Millis heartbeat_timeout_;
  Millis rebuild_window_;
  Millis holder_wait_;
  bool quorum_ = false;
  std::vector<std::string> quorum_base_;      // ids; see quorumBase()
  std::uint64_t group_epoch_ = 0;             // the last epoch of a group this coordinator ran
  std::optional<TimePoint> no_quorum_since_;  // pending peers are held for a majority
  HighWaterMark high_water_;
  std::optional<TimePoint> behind_since_;  // pending peers are held for the high-water mark
  TimePoint now_{};                        // the latest time any input carried
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
