// Unit tests for the coordinator's pure membership state machine (p2p/membership.h, ARCHITECTURE.md
// §4). Time is fake: TimePoints built from a fixed origin, advanced by ticks every 100 ms so that
// the stall detection (tick gap > timeout / 2) only triggers where a test wants it.

#include "p2p/membership.h"
#include "p2p/reconnect.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

namespace loco::p2p {
namespace {

using Kind = MembershipEvent::Kind;
using std::chrono::milliseconds;

constexpr Millis kTimeout{1000};
constexpr Millis kTickEvery{100};

std::vector<std::string> idsOf(const MembershipEffects& fx, Kind kind) {
  std::vector<std::string> out;
  for (const auto& e : fx.events) {
    if (e.kind == kind) out.push_back(e.peer);
  }
  return out;
}

const MembershipEvent* findEvent(const MembershipEffects& fx, Kind kind, const std::string& peer) {
  for (const auto& e : fx.events) {
    if (e.kind == kind && e.peer == peer) return &e;
  }
  return nullptr;
}

class MembershipTest : public ::testing::Test {
 protected:
  Membership m{kTimeout};
  TimePoint t0 = TimePoint{} + std::chrono::hours(1);
  TimePoint now = t0;
  std::set<std::string> alive;  // peers that send a heartbeat before every tick

  MembershipEffects join(const std::string& id) {
    auto r = m.join(id, id + ".example:7000", 4, now);
    EXPECT_TRUE(r.isOk()) << r.status().toString();
    return r.isOk() ? *r : MembershipEffects{};
  }

  MembershipEffects syncAll() {
    MembershipEffects fx;
    std::vector<std::string> ring = m.ring();
    for (const auto& id : ring) fx.merge(m.syncRequest(id, now));
    return fx;
  }

  // Two members: a admitted alone, b admitted at a's sync point.
  void twoMembers(const std::string& a, const std::string& b) {
    join(a);
    join(b);
    syncAll();
    ASSERT_EQ(m.ring(), (std::vector<std::string>{a, b}));
  }

  // Ticks every 100 ms until `now` has advanced by `d`; `alive` peers heartbeat before each tick.
  MembershipEffects advance(Millis d) {
    MembershipEffects fx;
    TimePoint end = now + d;
    while (now < end) {
      now += kTickEvery;
      for (const auto& id : alive) m.heartbeat(id, now);
      fx.merge(m.tick(now));
      EXPECT_FALSE(m.lastTickWasStall());
    }
    return fx;
  }
};

// ---- admission ---------------------------------------------------------------------------------

TEST_F(MembershipTest, FirstJoinerIsAdmittedAtOnce) {
  EXPECT_EQ(m.epoch(), 0u);
  MembershipEffects fx = join("a");
  EXPECT_EQ(m.epoch(), 1u);
  EXPECT_TRUE(fx.view_changed);
  EXPECT_EQ(idsOf(fx, Kind::kAdmitted), std::vector<std::string>{"a"});
  const MembershipEvent* admitted = findEvent(fx, Kind::kAdmitted, "a");
  ASSERT_NE(admitted, nullptr);
  EXPECT_EQ(admitted->epoch, 1u);
  EXPECT_EQ(m.ring(), std::vector<std::string>{"a"});
  EXPECT_TRUE(m.contains("a"));
  GroupView v = m.view(now);
  ASSERT_EQ(v.peers.size(), 1u);
  EXPECT_EQ(v.peers[0].state, PeerState::kMember);
}

TEST_F(MembershipTest, JoinerStaysPendingUntilEveryMemberSyncs) {
  twoMembers("a", "b");
  const std::uint64_t e = m.epoch();
  EXPECT_EQ(e, 2u);

  MembershipEffects fx = join("c");
  EXPECT_TRUE(fx.view_changed);  // the pending peer shows up in the view
  EXPECT_FALSE(fx.sync_done);
  EXPECT_EQ(idsOf(fx, Kind::kPending), std::vector<std::string>{"c"});
  EXPECT_TRUE(idsOf(fx, Kind::kAdmitted).empty());
  EXPECT_EQ(m.epoch(), e);
  EXPECT_EQ(m.ring(), (std::vector<std::string>{"a", "b"}));

  fx = m.syncRequest("a", now);
  EXPECT_FALSE(fx.sync_done);
  EXPECT_TRUE(fx.events.empty());
  EXPECT_EQ(m.epoch(), e);
  EXPECT_EQ(m.ring().size(), 2u);

  fx = m.syncRequest("b", now);
  EXPECT_TRUE(fx.sync_done);
  EXPECT_TRUE(fx.view_changed);
  EXPECT_EQ(idsOf(fx, Kind::kAdmitted), std::vector<std::string>{"c"});
  EXPECT_EQ(findEvent(fx, Kind::kAdmitted, "c")->epoch, e + 1);
  EXPECT_EQ(m.epoch(), e + 1);  // exactly one increment
  EXPECT_EQ(m.ring(), (std::vector<std::string>{"a", "b", "c"}));
}

TEST_F(MembershipTest, RepeatedSyncFromOneMemberDoesNotCompleteTheBarrier) {
  twoMembers("a", "b");
  join("c");
  EXPECT_FALSE(m.syncRequest("a", now).sync_done);
  EXPECT_FALSE(m.syncRequest("a", now).sync_done);
  EXPECT_EQ(m.ring().size(), 2u);
  EXPECT_TRUE(m.syncRequest("b", now).sync_done);
  EXPECT_EQ(m.ring().size(), 3u);
}

TEST_F(MembershipTest, SeveralPendingJoinersAreAdmittedTogetherInOneEpoch) {
  join("a");
  const std::uint64_t e = m.epoch();
  join("b");
  join("c");
  join("d");
  EXPECT_EQ(m.epoch(), e);
  MembershipEffects fx = m.syncRequest("a", now);
  EXPECT_TRUE(fx.sync_done);
  EXPECT_EQ(m.epoch(), e + 1);
  EXPECT_EQ(idsOf(fx, Kind::kAdmitted), (std::vector<std::string>{"b", "c", "d"}));
  for (const auto& ev : fx.events) EXPECT_EQ(ev.epoch, e + 1) << ev.peer;
  EXPECT_EQ(m.ring(), (std::vector<std::string>{"a", "b", "c", "d"}));
}

TEST_F(MembershipTest, JoinerArrivingMidBarrierIsAdmittedWithTheOthers) {
  twoMembers("a", "b");
  const std::uint64_t e = m.epoch();
  join("c");
  m.syncRequest("a", now);  // some but not all members synced
  join("d");
  EXPECT_EQ(m.ring().size(), 2u);
  MembershipEffects fx = m.syncRequest("b", now);
  EXPECT_TRUE(fx.sync_done);
  EXPECT_EQ(idsOf(fx, Kind::kAdmitted), (std::vector<std::string>{"c", "d"}));
  EXPECT_EQ(m.epoch(), e + 1);
  EXPECT_EQ(m.ring(), (std::vector<std::string>{"a", "b", "c", "d"}));
}

TEST_F(MembershipTest, BarrierWithNothingPendingCompletesWithoutNewEpoch) {
  twoMembers("a", "b");
  const std::uint64_t e = m.epoch();
  EXPECT_FALSE(m.syncRequest("b", now).sync_done);
  MembershipEffects fx = m.syncRequest("a", now);
  EXPECT_TRUE(fx.sync_done);
  EXPECT_TRUE(fx.events.empty());
  EXPECT_EQ(m.epoch(), e);
  // The barrier is reset: the next one again needs everyone.
  EXPECT_FALSE(m.syncRequest("a", now).sync_done);
  EXPECT_TRUE(m.syncRequest("b", now).sync_done);
}

TEST_F(MembershipTest, SyncRequestsFromPendingOrUnknownPeersAreIgnored) {
  twoMembers("a", "b");
  join("c");
  const std::uint64_t e = m.epoch();
  MembershipEffects fx = m.syncRequest("c", now);
  EXPECT_FALSE(fx.sync_done);
  EXPECT_TRUE(fx.events.empty());
  fx = m.syncRequest("nobody", now);
  EXPECT_FALSE(fx.sync_done);
  EXPECT_TRUE(fx.events.empty());
  m.syncRequest("a", now);
  // c's request did not count for b.
  EXPECT_EQ(m.ring().size(), 2u);
  EXPECT_EQ(m.epoch(), e);
}

// ---- leaving -----------------------------------------------------------------------------------

TEST_F(MembershipTest, PendingPeerLeavingBeforeAdmissionChangesNoEpoch) {
  twoMembers("a", "b");
  const std::uint64_t e = m.epoch();
  join("c");
  MembershipEffects fx = m.leave("c");
  EXPECT_EQ(m.epoch(), e);
  EXPECT_TRUE(fx.view_changed);
  EXPECT_FALSE(fx.sync_done);
  ASSERT_NE(findEvent(fx, Kind::kLeft, "c"), nullptr);
  EXPECT_EQ(findEvent(fx, Kind::kLeft, "c")->epoch, e);
  EXPECT_FALSE(m.contains("c"));
  EXPECT_EQ(m.ring(), (std::vector<std::string>{"a", "b"}));
  // The next barrier admits nobody and keeps the epoch.
  fx = syncAll();
  EXPECT_TRUE(fx.sync_done);
  EXPECT_TRUE(idsOf(fx, Kind::kAdmitted).empty());
  EXPECT_EQ(m.epoch(), e);
}

TEST_F(MembershipTest, PendingPeerEvictedBeforeAdmissionChangesNoEpoch) {
  twoMembers("a", "b");
  const std::uint64_t e = m.epoch();
  join("c");
  MembershipEffects fx = m.evict("c", "connection lost");
  EXPECT_EQ(m.epoch(), e);
  ASSERT_NE(findEvent(fx, Kind::kEvicted, "c"), nullptr);
  EXPECT_EQ(findEvent(fx, Kind::kEvicted, "c")->reason, "connection lost");
  EXPECT_FALSE(m.contains("c"));
}

TEST_F(MembershipTest, MemberLeavingBumpsOneEpochAndLeavesTheRing) {
  twoMembers("a", "b");
  join("c");
  syncAll();
  const std::uint64_t e = m.epoch();
  MembershipEffects fx = m.leave("b");
  EXPECT_EQ(m.epoch(), e + 1);
  EXPECT_TRUE(fx.view_changed);
  ASSERT_NE(findEvent(fx, Kind::kLeft, "b"), nullptr);
  EXPECT_EQ(findEvent(fx, Kind::kLeft, "b")->epoch, e + 1);
  EXPECT_EQ(m.ring(), (std::vector<std::string>{"a", "c"}));
  EXPECT_FALSE(m.contains("b"));
}

TEST_F(MembershipTest, MemberLeavingDuringBarrierCompletesItWhenAllRemainingSynced) {
  twoMembers("a", "b");
  join("c");
  syncAll();  // ring a, b, c
  const std::uint64_t e = m.epoch();
  m.syncRequest("a", now);
  m.syncRequest("b", now);
  MembershipEffects fx = m.leave("c");  // c was the one the barrier waited for
  EXPECT_TRUE(fx.sync_done);
  EXPECT_EQ(m.epoch(), e + 1);  // the leave; nothing pending to admit
  EXPECT_EQ(m.ring(), (std::vector<std::string>{"a", "b"}));
}

TEST_F(MembershipTest, MemberLeavingDuringBarrierAdmitsThePendingJoiner) {
  twoMembers("a", "b");
  join("c");
  syncAll();  // ring a, b, c
  const std::uint64_t e = m.epoch();
  join("d");
  m.syncRequest("a", now);
  m.syncRequest("b", now);
  MembershipEffects fx = m.leave("c");
  EXPECT_TRUE(fx.sync_done);
  EXPECT_NE(findEvent(fx, Kind::kLeft, "c"), nullptr);
  ASSERT_NE(findEvent(fx, Kind::kAdmitted, "d"), nullptr);
  // Two member-set changes (c out, d in), one epoch each, in that order.
  EXPECT_EQ(findEvent(fx, Kind::kLeft, "c")->epoch, e + 1);
  EXPECT_EQ(findEvent(fx, Kind::kAdmitted, "d")->epoch, e + 2);
  EXPECT_EQ(m.epoch(), e + 2);
  EXPECT_EQ(m.ring(), (std::vector<std::string>{"a", "b", "d"}));
}

TEST_F(MembershipTest, MemberLeavingDoesNotCompleteTheBarrierWhileOthersHaveNotSynced) {
  twoMembers("a", "b");
  join("c");
  syncAll();  // ring a, b, c
  join("d");
  m.syncRequest("a", now);
  MembershipEffects fx = m.leave("c");
  EXPECT_FALSE(fx.sync_done);
  EXPECT_EQ(findEvent(fx, Kind::kAdmitted, "d"), nullptr);
  EXPECT_EQ(m.ring(), (std::vector<std::string>{"a", "b"}));
  // b is still holding the barrier up; a's earlier sync still counts.
  fx = m.syncRequest("b", now);
  EXPECT_TRUE(fx.sync_done);
  EXPECT_NE(findEvent(fx, Kind::kAdmitted, "d"), nullptr);
}

TEST_F(MembershipTest, LastMemberLeavingAdmitsWhoeverIsPending) {
  join("a");
  join("b");  // pending: a never reaches a sync point
  const std::uint64_t e = m.epoch();
  MembershipEffects fx = m.leave("a");
  EXPECT_NE(findEvent(fx, Kind::kLeft, "a"), nullptr);
  EXPECT_NE(findEvent(fx, Kind::kAdmitted, "b"), nullptr);
  EXPECT_EQ(m.epoch(), e + 2);
  EXPECT_EQ(m.ring(), std::vector<std::string>{"b"});
}

TEST_F(MembershipTest, LeaveOrEvictOfUnknownPeerDoesNothing) {
  twoMembers("a", "b");
  const std::uint64_t e = m.epoch();
  MembershipEffects fx = m.leave("zz");
  EXPECT_TRUE(fx.events.empty());
  EXPECT_FALSE(fx.view_changed);
  fx = m.evict("zz", "x");
  EXPECT_TRUE(fx.events.empty());
  EXPECT_FALSE(fx.view_changed);
  EXPECT_EQ(m.epoch(), e);
  m.heartbeat("zz", now);  // harmless
  EXPECT_FALSE(m.contains("zz"));
}

// ---- identity ----------------------------------------------------------------------------------

TEST_F(MembershipTest, DuplicateMemberIdIsRefusedWithAlreadyExistsNamingTheId) {
  const std::string id = "0123456789abcdef0123456789abcdef";
  join(id);
  const std::uint64_t e = m.epoch();
  auto r = m.join(id, "other:7000", 2, now);
  ASSERT_FALSE(r.isOk());
  EXPECT_EQ(r.status().code(), StatusCode::kAlreadyExists);
  EXPECT_NE(r.status().message().find(id), std::string::npos) << r.status().message();
  EXPECT_EQ(m.epoch(), e);
  EXPECT_EQ(m.registered(), std::vector<std::string>{id});
  // The original registration is untouched.
  GroupView v = m.view(now);
  ASSERT_EQ(v.peers.size(), 1u);
  EXPECT_EQ(v.peers[0].addr, id + ".example:7000");
}

TEST_F(MembershipTest, DuplicatePendingIdIsRefusedWithAlreadyExists) {
  join("a");
  join("b");  // pending
  auto r = m.join("b", "b2:1", 1, now);
  ASSERT_FALSE(r.isOk());
  EXPECT_EQ(r.status().code(), StatusCode::kAlreadyExists);
  EXPECT_NE(r.status().message().find("b"), std::string::npos);
  EXPECT_EQ(m.registered(), (std::vector<std::string>{"a", "b"}));
}

TEST_F(MembershipTest, EvictedPeerCanRejoinWithTheSameIdAsPending) {
  twoMembers("a", "b");
  join("c");
  syncAll();  // ring a, b, c
  const std::uint64_t e = m.epoch();
  MembershipEffects fx = m.evict("b", "connection lost");
  ASSERT_NE(findEvent(fx, Kind::kEvicted, "b"), nullptr);
  EXPECT_EQ(findEvent(fx, Kind::kEvicted, "b")->reason, "connection lost");
  EXPECT_EQ(m.epoch(), e + 1);

  fx = join("b");
  EXPECT_EQ(idsOf(fx, Kind::kPending), std::vector<std::string>{"b"});
  EXPECT_TRUE(idsOf(fx, Kind::kAdmitted).empty());
  EXPECT_EQ(m.ring(), (std::vector<std::string>{"a", "c"}));
  GroupView v = m.view(now);
  ASSERT_EQ(v.peers.size(), 3u);
  EXPECT_EQ(v.peers[2].id, "b");
  EXPECT_EQ(v.peers[2].state, PeerState::kPending);

  fx = syncAll();
  EXPECT_NE(findEvent(fx, Kind::kAdmitted, "b"), nullptr);
  EXPECT_EQ(m.ring(), (std::vector<std::string>{"a", "c", "b"}));  // rejoined at the end
  EXPECT_EQ(m.epoch(), e + 2);
}

// ---- heartbeats and stalls ---------------------------------------------------------------------

TEST_F(MembershipTest, SilentMemberIsEvictedAfterTheTimeoutAndNotBefore) {
  twoMembers("a", "b");
  alive = {"a"};
  const std::uint64_t e = m.epoch();
  // Up to 900 ms of silence: still there after every tick.
  for (int i = 0; i < 9; ++i) {
    MembershipEffects fx = advance(kTickEvery);
    EXPECT_TRUE(fx.events.empty()) << "evicted after only " << (i + 1) * 100 << " ms";
    EXPECT_TRUE(m.contains("b"));
  }
  // By 1100 ms (more than the 1000 ms timeout) it is gone.
  MembershipEffects fx = advance(Millis(200));
  EXPECT_FALSE(m.contains("b"));
  const MembershipEvent* ev = findEvent(fx, Kind::kEvicted, "b");
  ASSERT_NE(ev, nullptr);
  EXPECT_NE(ev->reason.find("heartbeat"), std::string::npos) << ev->reason;
  EXPECT_EQ(ev->epoch, e + 1);
  EXPECT_EQ(m.epoch(), e + 1);
  EXPECT_TRUE(fx.view_changed);
  EXPECT_EQ(m.ring(), std::vector<std::string>{"a"});
  EXPECT_TRUE(m.contains("a"));
}

TEST_F(MembershipTest, HeartbeatsKeepEveryoneRegistered) {
  twoMembers("a", "b");
  join("c");  // pending peers heartbeat too
  alive = {"a", "b", "c"};
  const std::uint64_t e = m.epoch();
  MembershipEffects fx = advance(Millis(20000));
  EXPECT_TRUE(fx.events.empty());
  EXPECT_EQ(m.epoch(), e);
  EXPECT_EQ(m.registered(), (std::vector<std::string>{"a", "b", "c"}));
}

TEST_F(MembershipTest, SyncRequestCountsAsProofOfLife) {
  twoMembers("a", "b");
  alive = {"a"};
  advance(Millis(800));
  m.syncRequest("b", now);
  advance(Millis(800));  // 800 ms since b's sync request
  EXPECT_TRUE(m.contains("b"));
  advance(Millis(400));
  EXPECT_FALSE(m.contains("b"));
}

TEST_F(MembershipTest, SilentPendingPeerIsEvictedWithoutEpochChange) {
  join("a");
  join("b");  // pending: a does not reach a sync point during this test
  alive = {"a"};
  const std::uint64_t e = m.epoch();
  MembershipEffects fx = advance(Millis(1500));
  EXPECT_NE(findEvent(fx, Kind::kEvicted, "b"), nullptr);
  EXPECT_FALSE(m.contains("b"));
  EXPECT_EQ(m.epoch(), e);
}

TEST_F(MembershipTest, StallEvictsNobodyAndRestartsEveryClock) {
  twoMembers("a", "b");
  alive = {};  // nobody heartbeats at all
  const std::uint64_t e = m.epoch();
  EXPECT_TRUE(advance(Millis(500)).events.empty());

  // The coordinator was frozen for 5 s: a tick gap far above timeout / 2.
  now = t0 + Millis(5500);
  MembershipEffects fx = m.tick(now);
  EXPECT_TRUE(m.lastTickWasStall());
  EXPECT_TRUE(fx.events.empty());
  EXPECT_EQ(m.epoch(), e);
  EXPECT_TRUE(m.contains("a"));
  EXPECT_TRUE(m.contains("b"));
  for (const PeerInfo& p : m.view(now).peers) EXPECT_EQ(p.heartbeat_age_ms, 0) << p.id;

  // Clocks restarted at the stall: another 900 ms of silence is still within the timeout ...
  fx = advance(Millis(900));
  EXPECT_TRUE(fx.events.empty());
  EXPECT_EQ(m.registered().size(), 2u);
  // ... but real silence after the stall is still detected.
  fx = advance(Millis(300));
  EXPECT_FALSE(m.contains("a"));
  EXPECT_FALSE(m.contains("b"));
  EXPECT_EQ(idsOf(fx, Kind::kEvicted).size(), 2u);
}

TEST_F(MembershipTest, TickGapBelowHalfTheTimeoutIsNotAStall) {
  join("a");
  m.tick(now);
  now += Millis(400);
  m.tick(now);
  EXPECT_FALSE(m.lastTickWasStall());
  now += Millis(600);
  m.tick(now);
  EXPECT_TRUE(m.lastTickWasStall());
  now += Millis(100);
  m.tick(now);
  EXPECT_FALSE(m.lastTickWasStall());
}

TEST_F(MembershipTest, FirstTickIsNeverAStall) {
  join("a");
  now += Millis(900);
  MembershipEffects fx = m.tick(now);
  EXPECT_FALSE(m.lastTickWasStall());
  EXPECT_TRUE(fx.events.empty());
}

TEST_F(MembershipTest, EvictedByTimeoutPeerCanRejoinAsPending) {
  twoMembers("a", "b");
  join("c");
  syncAll();
  alive = {"a", "c"};
  advance(Millis(1500));
  ASSERT_FALSE(m.contains("b"));
  MembershipEffects fx = join("b");
  EXPECT_EQ(idsOf(fx, Kind::kPending), std::vector<std::string>{"b"});
  EXPECT_EQ(m.ring(), (std::vector<std::string>{"a", "c"}));
  alive.insert("b");
  EXPECT_TRUE(advance(Millis(2000)).events.empty());  // fresh clock after rejoining
  EXPECT_TRUE(m.contains("b"));
}

// ---- ring and view -----------------------------------------------------------------------------

TEST_F(MembershipTest, RingOrderIsAdmissionOrder) {
  join("a");
  join("c");
  join("b");
  syncAll();
  EXPECT_EQ(m.ring(), (std::vector<std::string>{"a", "c", "b"}));
  m.leave("c");
  EXPECT_EQ(m.ring(), (std::vector<std::string>{"a", "b"}));
  join("e");
  join("d");
  syncAll();
  EXPECT_EQ(m.ring(), (std::vector<std::string>{"a", "b", "e", "d"}));
  m.leave("a");
  join("a");
  syncAll();
  EXPECT_EQ(m.ring(), (std::vector<std::string>{"b", "e", "d", "a"}));
}

TEST_F(MembershipTest, ViewListsMembersInRingOrderThenPendingWithStatesAndAges) {
  // Members a, b; pending c, d. Registration order interleaves them to show the view reorders.
  join("a");  // t0, admitted
  now = t0 + Millis(10);
  join("b");  // pending
  now = t0 + Millis(20);
  m.syncRequest("a", now);  // b admitted
  now = t0 + Millis(200);
  join("c");
  now = t0 + Millis(250);
  join("d");
  m.heartbeat("a", t0 + Millis(300));
  m.heartbeat("b", t0 + Millis(100));
  now = t0 + Millis(400);

  GroupView v = m.view(now);
  EXPECT_EQ(v.epoch, m.epoch());
  ASSERT_EQ(v.peers.size(), 4u);
  std::vector<std::string> ids;
  for (const auto& p : v.peers) ids.push_back(p.id);
  EXPECT_EQ(ids, (std::vector<std::string>{"a", "b", "c", "d"}));
  EXPECT_EQ(v.peers[0].state, PeerState::kMember);
  EXPECT_EQ(v.peers[1].state, PeerState::kMember);
  EXPECT_EQ(v.peers[2].state, PeerState::kPending);
  EXPECT_EQ(v.peers[3].state, PeerState::kPending);
  EXPECT_EQ(v.peers[0].heartbeat_age_ms, 100);
  EXPECT_EQ(v.peers[1].heartbeat_age_ms, 300);
  EXPECT_EQ(v.peers[2].heartbeat_age_ms, 200);
  EXPECT_EQ(v.peers[3].heartbeat_age_ms, 150);
  EXPECT_EQ(v.peers[0].addr, "a.example:7000");
  EXPECT_EQ(v.peers[0].streams, 4u);
  EXPECT_EQ(v.world(), 2u);
  EXPECT_EQ(v.pending(), 2u);
  EXPECT_EQ(m.registered(), ids);
}

TEST_F(MembershipTest, ViewNeverReportsNegativeHeartbeatAge) {
  join("a");
  m.heartbeat("a", now + Millis(500));
  GroupView v = m.view(now);
  ASSERT_EQ(v.peers.size(), 1u);
  EXPECT_EQ(v.peers[0].heartbeat_age_ms, 0);
}

TEST_F(MembershipTest, HeartbeatWithAnOlderTimestampDoesNotMoveTheClockBack) {
  join("a");
  m.heartbeat("a", now + Millis(300));
  m.heartbeat("a", now + Millis(100));
  EXPECT_EQ(m.view(now + Millis(400)).peers[0].heartbeat_age_ms, 100);
}

TEST(MembershipEffectsTest, MergeConcatenatesEventsAndOrsFlags) {
  MembershipEffects a;
  a.events.push_back({Kind::kPending, "x", 1, ""});
  MembershipEffects b;
  b.events.push_back({Kind::kAdmitted, "x", 2, ""});
  b.view_changed = true;
  b.sync_done = true;
  a.merge(b);
  ASSERT_EQ(a.events.size(), 2u);
  EXPECT_EQ(a.events[1].kind, Kind::kAdmitted);
  EXPECT_TRUE(a.view_changed);
  EXPECT_TRUE(a.sync_done);
  a.merge(MembershipEffects{});
  EXPECT_TRUE(a.view_changed);
  EXPECT_TRUE(a.sync_done);
}

// ---- epochs under a long random schedule -------------------------------------------------------

// Runs a deterministic random mix of joins, leaves, evictions, sync requests, heartbeats and ticks
// and checks after every step: epochs never decrease; the epoch advances by exactly the number of
// member-set changes (one per member removed, one per admission batch); the ring holds exactly
// the members, without duplicates; the view lists members in ring order, then pending peers.
TEST_F(MembershipTest, EpochsStrictlyIncreaseOncePerMemberSetChange) {
  std::mt19937 rng(12345u);
  const std::vector<std::string> pool = {"p0", "p1", "p2", "p3", "p4", "p5", "p6", "p7"};
  auto pick = [&]() {
    return pool[std::uniform_int_distribution<std::size_t>(0, pool.size() - 1)(rng)];
  };
  std::uniform_int_distribution<int> op(0, 99);
  std::uniform_int_distribution<int> coin(0, 9);
  std::uint64_t admissions = 0, removals = 0;

  for (int step = 0; step < 20000; ++step) {
    const std::vector<std::string> ring_before = m.ring();
    const std::set<std::string> members_before(ring_before.begin(), ring_before.end());
    const std::uint64_t epoch_before = m.epoch();
    MembershipEffects fx;
    int o = op(rng);
    if (o < 15) {
      std::string id = pick();
      auto r = m.join(id, id + ":1", 1, now);
      if (r.isOk()) {
        fx = *r;
      } else {
        EXPECT_EQ(r.status().code(), StatusCode::kAlreadyExists);
      }
    } else if (o < 20) {
      fx = m.leave(pick());
    } else if (o < 23) {
      fx = m.evict(pick(), "test");
    } else if (o < 60) {
      fx = m.syncRequest(pick(), now);
    } else {
      // Most peers heartbeat most of the time; some go silent long enough to be evicted.
      now += kTickEvery;
      for (const auto& id : pool) {
        if (coin(rng) < 8 && id != "p7") m.heartbeat(id, now);
      }
      fx = m.tick(now);
      EXPECT_FALSE(m.lastTickWasStall());
    }

    // Count member-set changes from the events.
    std::set<std::uint64_t> admission_epochs;
    std::uint64_t removed_members = 0;
    std::set<std::string> members = members_before;
    std::uint64_t last_event_epoch = epoch_before;
    for (const auto& ev : fx.events) {
      EXPECT_GE(ev.epoch, last_event_epoch) << "step " << step;
      last_event_epoch = ev.epoch;
      if (ev.kind == Kind::kAdmitted) {
        admission_epochs.insert(ev.epoch);
        members.insert(ev.peer);
      } else if ((ev.kind == Kind::kLeft || ev.kind == Kind::kEvicted) && members.count(ev.peer)) {
        ++removed_members;
        members.erase(ev.peer);
      }
    }
    const std::uint64_t changes = admission_epochs.size() + removed_members;
    admissions += admission_epochs.size();
    removals += removed_members;
    ASSERT_EQ(m.epoch(), epoch_before + changes) << "step " << step;
    if (changes > 0) {
      EXPECT_TRUE(fx.view_changed) << "step " << step;
      EXPECT_EQ(last_event_epoch, m.epoch()) << "step " << step;
    }

    // The ring is exactly the member set the events describe, without duplicates.
    const std::vector<std::string>& ring = m.ring();
    ASSERT_EQ(std::set<std::string>(ring.begin(), ring.end()), members) << "step " << step;
    ASSERT_EQ(ring.size(), members.size()) << "step " << step;
    // Survivors keep their relative ring order; newcomers are appended.
    std::vector<std::string> survivors;
    for (const auto& id : ring_before) {
      if (members.count(id)) survivors.push_back(id);
    }
    ASSERT_TRUE(std::equal(survivors.begin(), survivors.end(), ring.begin())) << "step " << step;

    GroupView v = m.view(now);
    ASSERT_EQ(v.epoch, m.epoch());
    ASSERT_GE(v.peers.size(), ring.size());
    for (std::size_t i = 0; i < v.peers.size(); ++i) {
      if (i < ring.size()) {
        EXPECT_EQ(v.peers[i].id, ring[i]) << "step " << step;
        EXPECT_EQ(v.peers[i].state, PeerState::kMember) << "step " << step;
      } else {
        EXPECT_EQ(v.peers[i].state, PeerState::kPending) << "step " << step;
      }
      EXPECT_GE(v.peers[i].heartbeat_age_ms, 0);
    }
    // With no members, nobody may be left waiting: a joiner is admitted at once.
    if (ring.empty()) {
      EXPECT_TRUE(v.peers.empty()) << "step " << step;
    }
    if (HasFailure()) FAIL() << "stopped at step " << step;
  }
  // The schedule exercised what it claims to.
  EXPECT_GT(admissions, 100u);
  EXPECT_GT(removals, 100u);
}

}  // namespace
}  // namespace loco::p2p

namespace loco::p2p {
namespace {

// A restarted coordinator learns the epoch from the first peers that rejoin: the next epoch is
// above anything a peer has seen, never back at 1.
TEST(Membership, RestartedCoordinatorContinuesAboveThePeersLastEpoch) {
  Membership m(Millis(3000));
  const TimePoint now = TimePoint{} + std::chrono::hours(1);
  auto r = m.join("a", "a:1", 1, now, /*last_epoch=*/41);
  ASSERT_TRUE(r.isOk());
  EXPECT_EQ(m.epoch(), 42u);
  auto lower = m.join("b", "b:1", 1, now, /*last_epoch=*/7);
  ASSERT_TRUE(lower.isOk());
  m.syncRequest("a", now);
  EXPECT_EQ(m.epoch(), 43u) << "a stale peer's lower epoch must not pull the epoch back";
}

}  // namespace
}  // namespace loco::p2p

namespace loco::p2p {
namespace {

// Three members at epoch E, admitted together.
struct ThreeMembers {
  Membership m{Millis(3000)};
  TimePoint now = TimePoint{} + std::chrono::hours(1);
  std::uint64_t epoch = 0;
  ThreeMembers() {
    (void)m.join("a", "a:1", 1, now);
    (void)m.join("b", "b:1", 1, now);
    (void)m.join("c", "c:1", 1, now);
    m.syncRequest("a", now);
    epoch = m.epoch();
  }
};

TEST(MembershipOps, CommitsOnlyWhenEveryMemberReportedDone) {
  ThreeMembers g;
  ASSERT_EQ(g.m.ring().size(), 3u);
  EXPECT_TRUE(g.m.opReport("a", g.epoch, 7, true).decisions.empty());
  EXPECT_TRUE(g.m.opReport("b", g.epoch, 7, true).decisions.empty());
  auto fx = g.m.opReport("c", g.epoch, 7, true);
  ASSERT_EQ(fx.decisions.size(), 1u);
  EXPECT_TRUE(fx.decisions[0].commit);
  EXPECT_EQ(fx.decisions[0].op_id, 7u);
  EXPECT_EQ(g.m.pendingOps(), 0u);
}

TEST(MembershipOps, OneFailureAbortsAndLateDoneReportsAreAbortedToo) {
  ThreeMembers g;
  (void)g.m.opReport("a", g.epoch, 1, true);
  auto fx = g.m.opReport("b", g.epoch, 1, false);
  ASSERT_EQ(fx.decisions.size(), 1u);
  EXPECT_FALSE(fx.decisions[0].commit);
  auto late = g.m.opReport("c", g.epoch, 1, true);
  ASSERT_EQ(late.decisions.size(), 1u);
  EXPECT_FALSE(late.decisions[0].commit) << "an aborted operation can never commit";
  EXPECT_EQ(g.m.pendingOps(), 0u);
}

TEST(MembershipOps, LosingAMemberAbortsEveryOpenOperationOfItsEpoch) {
  ThreeMembers g;
  (void)g.m.opReport("a", g.epoch, 1, true);
  (void)g.m.opReport("a", g.epoch, 2, true);
  (void)g.m.opReport("b", g.epoch, 2, true);
  auto fx = g.m.evict("c", "killed");
  ASSERT_EQ(fx.decisions.size(), 2u);
  for (auto& d : fx.decisions) {
    EXPECT_FALSE(d.commit);
    EXPECT_EQ(d.epoch, g.epoch);
  }
  // The survivors' reports for the old epoch are answered with aborts, never commits.
  auto stale = g.m.opReport("b", g.epoch, 1, true);
  ASSERT_EQ(stale.decisions.size(), 1u);
  EXPECT_FALSE(stale.decisions[0].commit);
}

// An exchange between a few members (collectives/exchange.h) commits when those members are
// done; the others never report it.
TEST(MembershipOps, AGroupOperationCommitsWhenItsMembersAreDone) {
  ThreeMembers g;
  const std::vector<std::string> pair{"a", "c"};
  EXPECT_TRUE(g.m.opReport("a", g.epoch, 9, true, pair).decisions.empty());
  auto fx = g.m.opReport("c", g.epoch, 9, true, pair);
  ASSERT_EQ(fx.decisions.size(), 1u);
  EXPECT_TRUE(fx.decisions[0].commit);
  EXPECT_EQ(g.m.pendingOps(), 0u);
}

TEST(MembershipOps, AGroupOperationAbortsOnDisagreementOrAnOutsider) {
  ThreeMembers g;
  (void)g.m.opReport("a", g.epoch, 1, true, {"a", "b"});
  auto fx = g.m.opReport("b", g.epoch, 1, true, {"a", "b", "c"});
  ASSERT_EQ(fx.decisions.size(), 1u);
  EXPECT_FALSE(fx.decisions[0].commit) << "members that disagree on who takes part";
  fx = g.m.opReport("c", g.epoch, 2, true, {"a", "b"});
  ASSERT_EQ(fx.decisions.size(), 1u);
  EXPECT_FALSE(fx.decisions[0].commit) << "a report from a peer outside the group";
  fx = g.m.opReport("a", g.epoch, 3, true, {"a", "ghost"});
  ASSERT_EQ(fx.decisions.size(), 1u);
  EXPECT_FALSE(fx.decisions[0].commit) << "a group naming a non-member";
  // Losing any member aborts open group operations too (the epoch changes).
  (void)g.m.opReport("a", g.epoch, 4, true, {"a", "b"});
  fx = g.m.evict("c", "killed");
  ASSERT_EQ(fx.decisions.size(), 1u);
  EXPECT_FALSE(fx.decisions[0].commit);
}

TEST(MembershipOps, ReportsFromNonMembersAreIgnored) {
  ThreeMembers g;
  EXPECT_TRUE(g.m.opReport("stranger", g.epoch, 1, true).decisions.empty());
  EXPECT_EQ(g.m.pendingOps(), 0u);
}

}  // namespace
}  // namespace loco::p2p

// ---- re-registration and rebuild (a coordinator that lost its group) ---------------------------

namespace loco::p2p {
namespace {

using Kind = MembershipEvent::Kind;

class RebuildTest : public ::testing::Test {
 protected:
  static constexpr Millis kHeartbeatTimeout{3000};
  static constexpr Millis kWindow{7000};
  Membership m{kHeartbeatTimeout, kWindow};
  TimePoint now = TimePoint{} + std::chrono::hours(1);
  std::vector<std::string> registered;

  // A peer of the lost group registering again with what it holds.
  MembershipEffects back(const std::string& id, std::uint64_t last_epoch,
                         std::vector<std::string> last_members, std::uint64_t revision = 40,
                         std::uint64_t digest = 0xABC, std::uint64_t incarnation = 0,
                         std::uint64_t attempt = 1) {
    JoinRequest r;
    r.id = id;
    r.addr = id + ":7000";
    r.streams = 4;
    r.last_epoch = last_epoch;
    r.last_members = std::move(last_members);
    r.state_revision = revision;
    r.state_digest = digest;
    r.progress = revision / 2;
    r.incarnation = incarnation == 0 ? std::hash<std::string>{}(id) | 1 : incarnation;
    r.attempt = attempt;
    auto fx = m.join(r, now);
    EXPECT_TRUE(fx.isOk()) << fx.status().toString();
    registered.push_back(id);
    return fx.isOk() ? *fx : MembershipEffects{};
  }

  // Time passes in 100 ms ticks; every registered peer heartbeats.
  MembershipEffects advance(Millis d) {
    MembershipEffects fx;
    for (TimePoint end = now + d; now < end;) {
      now += Millis(100);
      for (const auto& id : registered) m.heartbeat(id, now);
      fx.merge(m.tick(now));
    }
    return fx;
  }

  static std::vector<std::string> idsOf(const MembershipEffects& fx, Kind kind) {
    std::vector<std::string> out;
    for (const auto& e : fx.events) {
      if (e.kind == kind) out.push_back(e.peer);
    }
    return out;
  }
  static const MembershipEvent* rebuilt(const MembershipEffects& fx) {
    for (const auto& e : fx.events) {
      if (e.kind == Kind::kRebuilt) return &e;
    }
    return nullptr;
  }
};

// Without the wait, the first peer back would be admitted alone and run the round alone; the
// others' contributions to it would be lost.
TEST_F(RebuildTest, NewCoordinatorAdmitsNobodyUntilEveryReportedMemberIsBack) {
  const std::vector<std::string> group{"a", "b", "c"};
  auto fx = back("a", 17, group);
  EXPECT_TRUE(idsOf(fx, Kind::kAdmitted).empty());
  EXPECT_TRUE(m.rebuilding());
  fx = back("b", 17, group);
  EXPECT_TRUE(idsOf(fx, Kind::kAdmitted).empty());
  fx.merge(advance(Millis(2000)));
  EXPECT_TRUE(idsOf(fx, Kind::kAdmitted).empty()) << "c is still on its way";
  fx = back("c", 17, group);
  EXPECT_EQ(idsOf(fx, Kind::kAdmitted), group);
  EXPECT_TRUE(fx.sync_done) << "the admission is everyone's sync point";
  EXPECT_EQ(m.epoch(), 18u) << "one epoch, above every epoch the peers saw";
  for (const auto& e : fx.events) {
    if (e.kind == Kind::kAdmitted) {
      EXPECT_EQ(e.epoch, 18u);
    }
  }
  ASSERT_NE(rebuilt(fx), nullptr);
  EXPECT_NE(rebuilt(fx)->reason.find("3 of the 3 members of epoch 17"), std::string::npos)
      << rebuilt(fx)->reason;
  EXPECT_FALSE(m.rebuilding());
}

TEST_F(RebuildTest, AMemberThatNeverComesBackHoldsTheGroupOnlyForTheRebuildWindow) {
  const std::vector<std::string> group{"a", "b", "c"};
  back("a", 5, group);
  back("b", 5, group);
  auto fx = advance(kWindow - Millis(200));
  EXPECT_TRUE(idsOf(fx, Kind::kAdmitted).empty());
  fx = advance(Millis(400));
  EXPECT_EQ(idsOf(fx, Kind::kAdmitted), (std::vector<std::string>{"a", "b"}));
  ASSERT_NE(rebuilt(fx), nullptr);
  EXPECT_NE(rebuilt(fx)->reason.find("2 of the 3 members"), std::string::npos);
  EXPECT_NE(rebuilt(fx)->reason.find("before the rebuild window closed"), std::string::npos);
  // The straggler arrives later: an ordinary joiner, admitted at the group's next sync point.
  fx = back("c", 5, group);
  EXPECT_TRUE(idsOf(fx, Kind::kAdmitted).empty());
  m.syncRequest("a", now);
  fx = m.syncRequest("b", now);
  EXPECT_EQ(idsOf(fx, Kind::kAdmitted), std::vector<std::string>{"c"});
}

TEST_F(RebuildTest, ANewcomerDuringTheRebuildWaitsAndEntersWithTheGroup) {
  const std::vector<std::string> group{"a", "b"};
  back("a", 9, group);
  auto fresh = m.join("n", "n:1", 1, now);  // never saw a group
  ASSERT_TRUE(fresh.isOk());
  EXPECT_TRUE(idsOf(*fresh, Kind::kAdmitted).empty()) << "not admitted alone ahead of the group";
  registered.push_back("n");
  auto fx = back("b", 9, group);
  EXPECT_EQ(idsOf(fx, Kind::kAdmitted), (std::vector<std::string>{"a", "n", "b"}));
  EXPECT_EQ(m.epoch(), 10u);
}

TEST_F(RebuildTest, TheMostRecentReportDecidesWhoIsAwaited) {
  // b last saw epoch 5 with z still a member; a saw epoch 9, after z had gone.
  back("b", 5, {"a", "b", "z"});
  EXPECT_TRUE(m.rebuilding()) << "z and a are awaited on b's word";
  auto fx = back("a", 9, {"a", "b"});
  EXPECT_EQ(idsOf(fx, Kind::kAdmitted), (std::vector<std::string>{"b", "a"}));
  EXPECT_EQ(m.epoch(), 10u);
}

TEST_F(RebuildTest, PeersThatDisagreeAboutTheStateAreReportedNotJudged) {
  back("a", 3, {"a", "b"}, /*revision=*/41, /*digest=*/0x1);
  auto fx = back("b", 3, {"a", "b"}, /*revision=*/40, /*digest=*/0x2);
  ASSERT_NE(rebuilt(fx), nullptr);
  const std::string& why = rebuilt(fx)->reason;
  EXPECT_NE(why.find("revision 41"), std::string::npos) << why;
  EXPECT_NE(why.find("revision 40"), std::string::npos) << why;
  EXPECT_NE(why.find("the next shared-state sync elects"), std::string::npos) << why;
  EXPECT_EQ(idsOf(fx, Kind::kAdmitted).size(), 2u) << "both are admitted; the election decides";
}

TEST_F(RebuildTest, SilentPeersAreEvictedWhileTheGroupIsRebuilt) {
  back("a", 3, {"a", "b"});
  registered.clear();  // a falls silent
  auto fx = advance(kHeartbeatTimeout + Millis(200));
  EXPECT_EQ(idsOf(fx, Kind::kEvicted), std::vector<std::string>{"a"});
  EXPECT_FALSE(m.rebuilding()) << "nobody who reported a group is left waiting";
  EXPECT_TRUE(m.registered().empty());
}

// The same process (same incarnation) reconnecting before the coordinator saw its old connection
// die: the old registration goes, the peer is pending again, its ring place and open operations
// go with it. A second process with the same identity is still refused.
TEST_F(RebuildTest, SameProcessReconnectingReplacesItsRegistration) {
  auto a = m.join(JoinRequest{"a", "a:1", 1, 0, /*incarnation=*/7, /*attempt=*/1}, now);
  ASSERT_TRUE(a.isOk());
  auto b = m.join(JoinRequest{"b", "b:1", 1, 0, 8, 1}, now);
  ASSERT_TRUE(b.isOk());
  m.syncRequest("a", now);
  ASSERT_EQ(m.ring(), (std::vector<std::string>{"a", "b"}));
  const std::uint64_t e = m.epoch();
  m.opReport("a", e, 1, true);
  ASSERT_EQ(m.pendingOps(), 1u);

  auto other = m.join(JoinRequest{"a", "a:2", 1, 0, /*incarnation=*/99, 5}, now);
  EXPECT_EQ(other.status().code(), StatusCode::kAlreadyExists) << "another process";
  auto unknown = m.join(JoinRequest{"a", "a:2", 1, 0, /*incarnation=*/0, 5}, now);
  EXPECT_EQ(unknown.status().code(), StatusCode::kAlreadyExists) << "an older peer says nothing";

  auto again = m.join(JoinRequest{"a", "a:3", 1, e, 7, 2}, now);
  ASSERT_TRUE(again.isOk()) << again.status().toString();
  EXPECT_EQ(idsOf(*again, Kind::kReplaced), std::vector<std::string>{"a"});
  EXPECT_EQ(idsOf(*again, Kind::kPending), std::vector<std::string>{"a"});
  EXPECT_EQ(m.ring(), std::vector<std::string>{"b"});
  EXPECT_EQ(m.epoch(), e + 1) << "a member left the ring: one new epoch";
  ASSERT_EQ(again->decisions.size(), 1u);
  EXPECT_FALSE(again->decisions[0].commit) << "its open operation is aborted";
  EXPECT_EQ(m.view(now).peers.back().addr, "a:3");

  auto stale = m.join(JoinRequest{"a", "a:4", 1, e, 7, 1}, now);
  EXPECT_EQ(stale.status().code(), StatusCode::kAborted) << "an older attempt found late";
  EXPECT_EQ(m.view(now).peers.back().addr, "a:3");
}

// ---- the run's high-water mark (ARCHITECTURE.md §4) -------------------------------------------
// A peer that comes back behind the run, when nobody holding the newer state is left, must not
// form a group of its own and train those rounds again (the end-of-run fork `loco chaos` found).

class ProgressTest : public ::testing::Test {
 protected:
  static constexpr Millis kHeartbeatTimeout{2000};
  static constexpr Millis kHolderWait{10000};
  Membership m{kHeartbeatTimeout, Millis(5000), kHolderWait};
  TimePoint now = TimePoint{} + std::chrono::hours(1);
  std::set<std::string> alive;

  MembershipEffects join(const std::string& id, std::uint64_t progress = 0) {
    JoinRequest r;
    r.id = id;
    r.addr = id + ":7000";
    r.streams = 1;
    r.incarnation = std::hash<std::string>{}(id) | 1;
    r.attempt = 1;
    r.progress = progress;
    auto fx = m.join(r, now);
    EXPECT_TRUE(fx.isOk()) << fx.status().toString();
    alive.insert(id);
    return fx.isOk() ? *fx : MembershipEffects{};
  }
  MembershipEffects report(const std::string& id, std::uint64_t progress, bool finished = false) {
    return m.progress(id, ProgressMsg{2 * progress, 0x1000 + progress, progress, finished}, now);
  }
  MembershipEffects advance(Millis d) {
    MembershipEffects fx;
    for (TimePoint end = now + d; now < end;) {
      now += Millis(100);
      for (const auto& id : alive) m.heartbeat(id, now);
      fx.merge(m.tick(now));
    }
    return fx;
  }
  // a and b train together up to `progress`.
  void group(std::uint64_t progress, bool finished) {
    join("a");
    join("b");
    m.syncRequest("a", now);
    ASSERT_EQ(m.ring(), (std::vector<std::string>{"a", "b"}));
    for (std::uint64_t p = 1; p <= progress; ++p) {
      report("a", p, finished && p == progress);
      report("b", p, finished && p == progress);
    }
  }
  static std::vector<std::string> idsOf(const MembershipEffects& fx, Kind kind) {
    std::vector<std::string> out;
    for (const auto& e : fx.events) {
      if (e.kind == kind) out.push_back(e.peer);
    }
    return out;
  }
  static const MembershipEvent* find(const MembershipEffects& fx, Kind kind) {
    for (const auto& e : fx.events) {
      if (e.kind == kind) return &e;
    }
    return nullptr;
  }
};

TEST_F(ProgressTest, TheMarkIsTheMostAdvancedReportAndOutlivesItsHolders) {
  group(30, /*finished=*/false);
  EXPECT_EQ(m.highWater().progress, 30u);
  EXPECT_EQ(m.highWater().state_revision, 60u);
  EXPECT_EQ(m.highWater().state_digest, 0x1000u + 30);
  EXPECT_FALSE(m.highWater().finished);
  report("a", 12);  // an older report never lowers it
  EXPECT_EQ(m.highWater().progress, 30u);
  m.leave("a");
  m.evict("b", "connection lost");
  EXPECT_EQ(m.highWater().progress, 30u) << "kept after every holder has gone";
  EXPECT_TRUE(m.progress("zz", ProgressMsg{1, 1, 99, true}, now).events.empty());
  EXPECT_EQ(m.highWater().progress, 30u) << "an unknown peer's report counts for nothing";
}

// Case 1 of the fork: a peer restarted from its checkpoint (outer step 27) registers after the
// rest of the group finished at 30 and left. Before: admitted alone, it trained 28..30 again.
TEST_F(ProgressTest, APeerBehindAFinishedRunIsToldItCompletedInsteadOfTrainingAlone) {
  group(30, /*finished=*/true);
  EXPECT_TRUE(m.highWater().finished);
  m.leave("a");
  m.leave("b");
  auto fx = join("c", 27);
  EXPECT_TRUE(idsOf(fx, Kind::kAdmitted).empty()) << "no group of one from old state";
  ASSERT_EQ(idsOf(fx, Kind::kCompleted), std::vector<std::string>{"c"});
  const std::string why = find(fx, Kind::kCompleted)->reason;
  EXPECT_NE(why.find("the run completed at progress 30"), std::string::npos) << why;
  EXPECT_NE(why.find("holds progress 27"), std::string::npos) << why;
  EXPECT_FALSE(m.contains("c")) << "removed: the coordinator refuses it and closes";
  EXPECT_TRUE(m.ring().empty());
}

// The same when it registered while the group was still on its last rounds: it waits as pending,
// and the last member to leave ends the wait.
TEST_F(ProgressTest, APendingPeerLearnsTheRunCompletedWhenTheLastMemberLeaves) {
  group(29, /*finished=*/false);
  join("c", 27);
  EXPECT_EQ(m.ring().size(), 2u) << "pending until the next sync point";
  report("a", 30, true);
  report("b", 30, true);
  auto fx = m.leave("a");
  EXPECT_TRUE(idsOf(fx, Kind::kCompleted).empty()) << "b still holds the group";
  fx = m.leave("b");
  EXPECT_TRUE(idsOf(fx, Kind::kAdmitted).empty());
  EXPECT_EQ(idsOf(fx, Kind::kCompleted), std::vector<std::string>{"c"});
}

// Case 2: a peer partitioned off (evicted) comes back after the group finished: the same.
TEST_F(ProgressTest, AnEvictedPeerThatComesBackAfterTheEndIsToldTooEvenDuringARebuildWait) {
  group(20, /*finished=*/false);
  m.evict("b", "no heartbeat");  // partitioned at 20
  report("a", 25, true);
  m.leave("a");
  JoinRequest r{"b", "b:7000", 1, m.epoch(), /*incarnation=*/7, /*attempt=*/2};
  r.last_members = {"a", "b"};
  r.progress = 20;
  auto fx = m.join(r, now);
  ASSERT_TRUE(fx.isOk());
  EXPECT_EQ(idsOf(*fx, Kind::kCompleted), std::vector<std::string>{"b"})
      << "not kept waiting for a rebuild of a group that finished";
}

TEST_F(ProgressTest, PeersBehindWaitForAPeerThatHoldsTheMark) {
  group(30, /*finished=*/false);
  alive.clear();
  advance(kHeartbeatTimeout + Millis(500));  // a and b die (say, the whole swarm is restarted)
  ASSERT_TRUE(m.ring().empty());
  auto fx = join("c", 26);
  EXPECT_TRUE(idsOf(fx, Kind::kAdmitted).empty());
  const MembershipEvent* held = find(fx, Kind::kHeld);
  ASSERT_NE(held, nullptr);
  EXPECT_NE(held->reason.find("progress 26 at most, the run reached progress 30"),
            std::string::npos)
      << held->reason;
  fx = advance(Millis(3000));
  EXPECT_TRUE(idsOf(fx, Kind::kAdmitted).empty());
  EXPECT_EQ(find(fx, Kind::kHeld), nullptr) << "said once per wait";
  // b comes back from its checkpoint: it registers with nothing, then reports what it loaded.
  fx = join("b", 0);
  EXPECT_TRUE(idsOf(fx, Kind::kAdmitted).empty());
  fx = report("b", 30);
  EXPECT_EQ(idsOf(fx, Kind::kAdmitted), (std::vector<std::string>{"c", "b"}))
      << "together: the shared-state sync brings c up to b's state";
  EXPECT_EQ(find(fx, Kind::kRolledBack), nullptr);
}

TEST_F(ProgressTest, WithNoHolderBackWithinTheWaitTheRunGoesOnFromTheBestStateLeft) {
  group(30, /*finished=*/false);
  alive.clear();
  advance(kHeartbeatTimeout + Millis(500));
  join("c", 26);
  join("d", 28);
  auto fx = advance(kHolderWait - Millis(500));
  EXPECT_TRUE(idsOf(fx, Kind::kAdmitted).empty());
  fx = advance(Millis(1000));
  EXPECT_EQ(idsOf(fx, Kind::kAdmitted), (std::vector<std::string>{"c", "d"}));
  const MembershipEvent* back = find(fx, Kind::kRolledBack);
  ASSERT_NE(back, nullptr);
  EXPECT_EQ(back->peer, "d");
  EXPECT_NE(back->reason.find("goes on from progress 28"), std::string::npos) << back->reason;
  EXPECT_EQ(m.highWater().progress, 28u) << "the mark comes down to what the run holds now";
  EXPECT_EQ(m.highWater().peer, "d");
}

TEST_F(ProgressTest, ANewRunAndPeersAtTheMarkAreNeverHeld) {
  auto fx = join("a");  // nothing reported yet: a new run
  EXPECT_EQ(idsOf(fx, Kind::kAdmitted), std::vector<std::string>{"a"});
  report("a", 5);
  m.leave("a");
  fx = join("a", 5);  // back with what the run reached
  EXPECT_EQ(idsOf(fx, Kind::kAdmitted), std::vector<std::string>{"a"});
  EXPECT_EQ(find(fx, Kind::kHeld), nullptr);
}

// A coordinator that restarts knows only what the peers that come back report: the mark is
// rebuilt from their registrations, and the group comes back whole as before.
TEST_F(ProgressTest, ARestartedCoordinatorRebuildsTheMarkFromTheRegistrations) {
  for (const auto& [id, progress] : {std::pair<std::string, std::uint64_t>{"a", 41}, {"b", 40}}) {
    JoinRequest r{id, id + ":1", 1, 9, std::hash<std::string>{}(id) | 1, 1};
    r.last_members = {"a", "b"};
    r.progress = progress;
    auto fx = m.join(r, now);
    ASSERT_TRUE(fx.isOk());
    if (id == "b") {
      EXPECT_EQ(idsOf(*fx, Kind::kAdmitted), (std::vector<std::string>{"a", "b"}));
    }
  }
  EXPECT_EQ(m.highWater().progress, 41u);
  EXPECT_EQ(m.highWater().peer, "a");
}

TEST(RebuildWindow, DefaultCoversAHeartbeatTimeoutAndTwoBackoffCaps) {
  EXPECT_EQ(defaultRebuildWindow(Millis(3000)).count(), 3000 + 2 * BackoffOptions{}.max.count());
}

}  // namespace
}  // namespace loco::p2p

// ---- the quorum rule (two coordinators alive at once: a standby) -------------------------------

namespace loco::p2p {
namespace {

class QuorumTest : public ::testing::Test {
 protected:
  static constexpr Millis kHeartbeatTimeout{2000};
  static constexpr Millis kWindow{6000};
  Membership m{kHeartbeatTimeout, kWindow, kDefaultHolderWait, /*quorum=*/true};
  TimePoint now = TimePoint{} + std::chrono::hours(1);
  std::set<std::string> alive;  // who heartbeats while time passes

  MembershipEffects join(const std::string& id, std::uint64_t last_epoch = 0,
                         std::vector<std::string> last_members = {}) {
    JoinRequest r;
    r.id = id;
    r.addr = id + ":7000";
    r.streams = 4;
    r.last_epoch = last_epoch;
    r.last_members = std::move(last_members);
    r.incarnation = (std::hash<std::string>{}(id) | 1) + last_epoch;
    r.attempt = 1;
    auto fx = m.join(r, now);
    EXPECT_TRUE(fx.isOk()) << fx.status().toString();
    alive.insert(id);
    return fx.isOk() ? *fx : MembershipEffects{};
  }
  MembershipEffects advance(Millis d) {
    MembershipEffects fx;
    for (TimePoint end = now + d; now < end;) {
      now += Millis(100);
      for (const auto& id : alive) m.heartbeat(id, now);
      fx.merge(m.tick(now));
    }
    return fx;
  }
  // A fresh run: `ids` join, the first is admitted alone, the rest at its first sync point.
  void formFresh(const std::vector<std::string>& ids) {
    for (const auto& id : ids) join(id);
    auto fx = m.syncRequest(ids.front(), now);
    ASSERT_EQ(m.ring(), ids);
    ASSERT_EQ(m.quorumBase(), ids);
  }
};

const std::vector<std::string> kFive{"a", "b", "c", "d", "e"};

TEST_F(QuorumTest, TheVeryStartNeedsNoQuorum) {
  auto fx = join("a");
  EXPECT_EQ(idsOf(fx, Kind::kAdmitted), std::vector<std::string>{"a"});
  EXPECT_EQ(m.quorumBase(), std::vector<std::string>{"a"});
}

// The soak's split brain: two of five peers cut off from the coordinator that holds the group
// register with the standby. They must not form a second group there.
TEST_F(QuorumTest, AStandbyJoinedByAMinorityOfTheLastGroupAdmitsNobodyAndSendsThemAway) {
  auto fx = join("c", 78, kFive);
  fx.merge(join("e", 78, kFive));
  ASSERT_NE(findEvent(fx, Kind::kNoQuorum, ""), nullptr);
  EXPECT_NE(findEvent(fx, Kind::kNoQuorum, "")->reason.find("1 of the 5 members of epoch 78"),
            std::string::npos)
      << findEvent(fx, Kind::kNoQuorum, "")->reason;
  fx = advance(kWindow - Millis(300));
  EXPECT_TRUE(idsOf(fx, Kind::kAdmitted).empty());
  EXPECT_TRUE(idsOf(fx, Kind::kNoQuorum).empty()) << "held for the rebuild window first";
  fx.merge(advance(Millis(600)));
  EXPECT_TRUE(idsOf(fx, Kind::kAdmitted).empty()) << "a minority never forms a group";
  EXPECT_EQ(idsOf(fx, Kind::kNoQuorum), (std::vector<std::string>{"c", "e"}));
  EXPECT_TRUE(m.registered().empty());
  EXPECT_TRUE(m.ring().empty());
}

TEST_F(QuorumTest, AStandbyJoinedByAMajorityRebuildsWithoutTheRest) {
  join("a", 78, kFive);
  join("b", 78, kFive);
  auto fx = join("d", 78, kFive);
  EXPECT_EQ(findEvent(fx, Kind::kNoQuorum, ""), nullptr) << "3 of 5 is a majority";
  EXPECT_TRUE(idsOf(fx, Kind::kAdmitted).empty()) << "still waiting for c and e (rebuild)";
  fx = advance(kWindow + Millis(200));
  EXPECT_EQ(idsOf(fx, Kind::kAdmitted), (std::vector<std::string>{"a", "b", "d"}));
  EXPECT_EQ(m.quorumBase(), (std::vector<std::string>{"a", "b", "d"}));
  // Late members of the old group are ordinary joiners now.
  join("c", 78, kFive);
  for (const auto& id : {"a", "b"}) m.syncRequest(id, now);
  fx = m.syncRequest("d", now);
  EXPECT_EQ(idsOf(fx, Kind::kAdmitted), std::vector<std::string>{"c"});
}

TEST_F(QuorumTest, ATwoMemberGroupNeedsBoth) {
  const std::vector<std::string> two{"a", "b"};
  join("a", 9, two);
  auto fx = advance(kWindow + Millis(200));
  EXPECT_TRUE(idsOf(fx, Kind::kAdmitted).empty());
  EXPECT_EQ(idsOf(fx, Kind::kNoQuorum), std::vector<std::string>{"a"});
  join("a", 9, two);
  fx = join("b", 9, two);
  EXPECT_EQ(idsOf(fx, Kind::kAdmitted), two) << "both back: the group comes back at once";
}

// The coordinator on the minority side of a partition: its evictions leave it without a
// majority of its base, so it dissolves its group rather than train on.
TEST_F(QuorumTest, AGroupThatLosesItsMajorityDissolvesAndItsPeersAreHeld) {
  formFresh(kFive);
  const auto base_epoch = m.epoch();
  alive = {"a", "b", "e"};
  auto fx = advance(kHeartbeatTimeout + Millis(300));
  EXPECT_EQ(m.ring(), (std::vector<std::string>{"a", "b", "e"})) << "3 of 5 trains on";
  EXPECT_TRUE(idsOf(fx, Kind::kEvicted).size() == 2u);
  alive = {"a", "b"};
  fx = advance(kHeartbeatTimeout + Millis(300));
  EXPECT_TRUE(m.ring().empty()) << "2 of 5 must not train";
  std::set<std::string> evicted;
  for (const auto& id : idsOf(fx, Kind::kEvicted)) evicted.insert(id);
  EXPECT_EQ(evicted, (std::set<std::string>{"a", "b", "e"}));
  ASSERT_NE(findEvent(fx, Kind::kEvicted, "a"), nullptr);
  EXPECT_NE(findEvent(fx, Kind::kEvicted, "a")->reason.find("lost the quorum"), std::string::npos);
  EXPECT_EQ(m.quorumBase(), kFive) << "evictions do not shrink the base";
  // No operation of the old epoch can commit any more.
  fx = m.opReport("a", m.epoch(), 1, true);
  EXPECT_TRUE(fx.decisions.empty());

  // a and b register again, reporting the last view they saw ({a, b, e}, a majority of it):
  // the coordinator judges by its base (2 of 5), not by their view.
  fx = join("a", m.epoch() - 1, {"a", "b", "e"});
  fx.merge(join("b", m.epoch() - 1, {"a", "b", "e"}));
  fx.merge(advance(Millis(1000)));
  EXPECT_TRUE(idsOf(fx, Kind::kAdmitted).empty());
  // A third member of the base comes back: a majority again.
  fx = join("c", base_epoch, kFive);
  fx.merge(advance(kWindow + Millis(200)));
  std::set<std::string> admitted;
  for (const auto& id : idsOf(fx, Kind::kAdmitted)) admitted.insert(id);
  EXPECT_EQ(admitted, (std::set<std::string>{"a", "b", "c"}));
}

TEST_F(QuorumTest, EvictionsOneAtATimeKeepAMajorityOfTheBaseNotOfTheLastRing) {
  formFresh(kFive);
  for (const std::string gone : {"e", "d"}) {
    alive.erase(gone);
    advance(kHeartbeatTimeout + Millis(300));
  }
  EXPECT_EQ(m.ring().size(), 3u);
  alive.erase("c");
  advance(kHeartbeatTimeout + Millis(300));
  EXPECT_TRUE(m.ring().empty()) << "2 of the base of 5, though 2 of the last ring of 3";
}

TEST_F(QuorumTest, PeersThatLeaveShrinkTheBaseSoTheEndOfARunIsNoLossOfQuorum) {
  formFresh({"a", "b", "c"});
  m.leave("c");
  m.leave("b");
  EXPECT_EQ(m.ring(), std::vector<std::string>{"a"});
  EXPECT_EQ(m.quorumBase(), std::vector<std::string>{"a"});
}

TEST_F(QuorumTest, AReportNewerThanTheBaseComesFromAnotherCoordinatorsGroup) {
  formFresh({"a", "b", "c"});
  alive.clear();
  advance(kHeartbeatTimeout + Millis(300));  // everyone moved away (a failover)
  ASSERT_TRUE(m.ring().empty());
  // The standby's group {a, b} (epoch 40) comes back here: judged by its own report.
  join("a", 40, {"a", "b"});
  auto fx = join("b", 40, {"a", "b"});
  EXPECT_EQ(idsOf(fx, Kind::kAdmitted), (std::vector<std::string>{"a", "b"}));
}

TEST(QuorumOff, AMinorityStillRebuildsAfterTheWindowWithoutTheRule) {
  Membership m{Millis(2000), Millis(6000)};
  TimePoint now = TimePoint{} + std::chrono::hours(1);
  JoinRequest r;
  r.id = "c";
  r.last_epoch = 78;
  r.last_members = kFive;
  ASSERT_TRUE(m.join(r, now).isOk());
  MembershipEffects fx;
  for (int i = 0; i < 70; ++i) {
    now += Millis(100);
    m.heartbeat("c", now);
    fx.merge(m.tick(now));
  }
  EXPECT_EQ(idsOf(fx, Kind::kAdmitted), std::vector<std::string>{"c"})
      << "a single coordinator cannot split the run: the old rule is kept";
}

}  // namespace
}  // namespace loco::p2p
