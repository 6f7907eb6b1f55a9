// Unit tests for the bandwidth table and ring choice (p2p/topology.h) and for the ring reorder
// that Membership applies at a sync point.
#include "p2p/topology.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "p2p/membership.h"

namespace loco::p2p {
namespace {

constexpr double kMbit = 1e6 / 8;

// Every directed edge at `fast`, except the listed undirected pairs at `slow`.
BandwidthTable table(const std::vector<std::string>& ids, double fast,
                     const std::vector<std::pair<std::string, std::string>>& slow_pairs,
                     double slow) {
  BandwidthTable t;
  for (const auto& a : ids) {
    for (const auto& b : ids) {
      if (a == b) continue;
      bool is_slow = std::any_of(slow_pairs.begin(), slow_pairs.end(), [&](const auto& p) {
        return (p.first == a && p.second == b) || (p.first == b && p.second == a);
      });
      t.update({a, b, is_slow ? slow : fast, EdgeSource::kProbe});
    }
  }
  return t;
}

bool usesPair(const std::vector<std::string>& ring, const std::string& a, const std::string& b) {
  for (std::size_t i = 0; i < ring.size(); ++i) {
    const auto& x = ring[i];
    const auto& y = ring[(i + 1) % ring.size()];
    if ((x == a && y == b) || (x == b && y == a)) return true;
  }
  return false;
}

TEST(Topology, BestRingAvoidsTheTwoSlowPairsOfTheLabScenario) {
  std::vector<std::string> ids{"1", "2", "3", "4"};
  auto t = table(ids, 100 * kMbit, {{"1", "2"}, {"3", "4"}}, 10 * kMbit);
  EXPECT_DOUBLE_EQ(ringBottleneck(ids, t), 10 * kMbit);
  auto best = bestRing(ids, t);
  ASSERT_TRUE(best.has_value());
  EXPECT_EQ(best->front(), "1") << "the ring starts at members[0]";
  EXPECT_FALSE(usesPair(*best, "1", "2"));
  EXPECT_FALSE(usesPair(*best, "3", "4"));
  EXPECT_DOUBLE_EQ(ringBottleneck(*best, t), 100 * kMbit);
}

TEST(Topology, DirectionMatters) {
  // a->b is slow but b->a is fast: with three peers a ring in the other direction avoids it.
  std::vector<std::string> ids{"a", "b", "c"};
  BandwidthTable t;
  for (auto [x, y] :
       std::vector<std::pair<std::string, std::string>>{{"a", "b"}, {"b", "c"}, {"c", "a"}}) {
    t.update({x, y, (x == "a" ? 1 : 50) * kMbit, EdgeSource::kPassive});
    t.update({y, x, 50 * kMbit, EdgeSource::kProbe});
  }
  auto best = bestRing(ids, t);
  ASSERT_TRUE(best);
  EXPECT_EQ(*best, (std::vector<std::string>{"a", "c", "b"}));
}

TEST(Topology, UnknownEdgesMeanNoProposal) {
  std::vector<std::string> ids{"a", "b", "c"};
  BandwidthTable t;
  t.update({"a", "b", 1e6, EdgeSource::kProbe});
  EXPECT_FALSE(bestRing(ids, t).has_value());
  EXPECT_EQ(ringBottleneck(ids, t), 0.0);
  EXPECT_TRUE(std::isinf(ringBottleneck({"a"}, t)));
}

TEST(Topology, PassiveEstimatesWinOverProbes) {
  BandwidthTable t;
  EXPECT_TRUE(t.update({"a", "b", 5e6, EdgeSource::kProbe}));
  EXPECT_TRUE(t.update({"a", "b", 9e6, EdgeSource::kPassive}));
  EXPECT_FALSE(t.update({"a", "b", 1e6, EdgeSource::kProbe}))
      << "a probe never overrides real traffic";
  EXPECT_EQ(*t.rate("a", "b"), 9e6);
  EXPECT_TRUE(t.update({"a", "b", 7e6, EdgeSource::kPassive}));
  EXPECT_EQ(*t.rate("a", "b"), 7e6);
  EXPECT_FALSE(t.update({"a", "b", 7e6, EdgeSource::kPassive})) << "same value: no change";
}

TEST(Topology, BadRatesAndSelfLoopsAreIgnored) {
  BandwidthTable t;
  EXPECT_FALSE(t.update({"a", "b", 0, EdgeSource::kProbe}));
  EXPECT_FALSE(t.update({"a", "b", -3, EdgeSource::kProbe}));
  EXPECT_FALSE(t.update({"a", "b", std::nan(""), EdgeSource::kProbe}));
  EXPECT_FALSE(t.update({"a", "b", INFINITY, EdgeSource::kProbe}));
  EXPECT_FALSE(t.update({"a", "a", 5, EdgeSource::kProbe}));
  EXPECT_TRUE(t.edges().empty());
}

TEST(Topology, EraseForgetsEveryEdgeOfAPeer) {
  std::vector<std::string> ids{"a", "b", "c"};
  auto t = table(ids, 1e6, {}, 0);
  EXPECT_EQ(t.edges().size(), 6u);
  t.erase("b");
  EXPECT_EQ(t.edges().size(), 2u);
  EXPECT_FALSE(t.rate("a", "b"));
  EXPECT_TRUE(t.rate("a", "c"));
}

// The heuristic (more than 9 members) must find a ring without slow links when one exists.
TEST(Topology, LargeGroupsUseTheHeuristicAndStillAvoidSlowLinks) {
  std::vector<std::string> ids;
  for (int i = 0; i < 16; ++i) ids.push_back("p" + std::to_string(i));
  // Consecutive ids are slow pairs: the initial ring is as bad as it gets.
  std::vector<std::pair<std::string, std::string>> slow;
  for (int i = 0; i < 16; ++i) slow.emplace_back(ids[i], ids[(i + 1) % 16]);
  auto t = table(ids, 100 * kMbit, slow, 1 * kMbit);
  EXPECT_DOUBLE_EQ(ringBottleneck(ids, t), 1 * kMbit);
  auto best = bestRing(ids, t);
  ASSERT_TRUE(best);
  EXPECT_EQ(best->size(), ids.size());
  auto sorted = *best;
  std::sort(sorted.begin(), sorted.end());
  auto want = ids;
  std::sort(want.begin(), want.end());
  EXPECT_EQ(sorted, want) << "a permutation of the members";
  EXPECT_DOUBLE_EQ(ringBottleneck(*best, t), 100 * kMbit);
}

// Exact search against brute force on random matrices.
TEST(Topology, ExactSearchMatchesBruteForceOnRandomRates) {
  std::mt19937 rng(7);
  std::uniform_real_distribution<double> rate(1, 100);
  for (int round = 0; round < 50; ++round) {
    std::vector<std::string> ids{"a", "b", "c", "d", "e"};
    BandwidthTable t;
    for (const auto& x : ids)
      for (const auto& y : ids)
        if (x != y) t.update({x, y, rate(rng), EdgeSource::kProbe});
    auto best = bestRing(ids, t);
    ASSERT_TRUE(best);
    double want = 0;
    auto perm = ids;
    do {
      want = std::max(want, ringBottleneck(perm, t));
    } while (std::next_permutation(perm.begin() + 1, perm.end()));
    EXPECT_DOUBLE_EQ(ringBottleneck(*best, t), want);
  }
}

// ---- Membership applies a proposed ring at the next barrier ----

class RingReorderTest : public ::testing::Test {
 protected:
  Membership m{Millis(1000)};
  TimePoint now = TimePoint{} + std::chrono::hours(1);

  void joinAll(const std::vector<std::string>& ids) {
    for (const auto& id : ids) ASSERT_TRUE(m.join(id, id + ":1", 1, now).isOk());
    syncAll();  // admits everyone after the first
  }
  MembershipEffects syncAll() {
    MembershipEffects fx;
    auto ring = m.ring();
    for (const auto& id : ring) fx.merge(m.syncRequest(id, now));
    return fx;
  }
};

TEST_F(RingReorderTest, AppliedAtTheNextBarrierAsANewEpoch) {
  joinAll({"a", "b", "c", "d"});
  ASSERT_EQ(m.ring(), (std::vector<std::string>{"a", "b", "c", "d"}));
  const auto epoch = m.epoch();
  m.proposeRing({"a", "c", "b", "d"});
  EXPECT_EQ(m.ring(), (std::vector<std::string>{"a", "b", "c", "d"}))
      << "never between sync points";
  auto fx = syncAll();
  EXPECT_TRUE(fx.sync_done);
  EXPECT_TRUE(fx.view_changed);
  EXPECT_EQ(m.ring(), (std::vector<std::string>{"a", "c", "b", "d"}));
  EXPECT_EQ(m.epoch(), epoch + 1) << "new neighbours need new links: a new epoch";
  ASSERT_EQ(fx.events.size(), 1u);
  EXPECT_EQ(fx.events[0].kind, MembershipEvent::Kind::kReordered);
  // Applied once: the next barrier changes nothing.
  auto again = syncAll();
  EXPECT_FALSE(again.view_changed);
  EXPECT_EQ(m.epoch(), epoch + 1);
}

TEST_F(RingReorderTest, AStaleProposalIsDropped) {
  joinAll({"a", "b", "c"});
  const auto epoch = m.epoch();
  m.proposeRing({"a", "c", "b"});
  (void)m.leave("c");  // the member set changed before the barrier
  auto fx = syncAll();
  EXPECT_TRUE(fx.sync_done);
  EXPECT_EQ(m.ring(), (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(m.epoch(), epoch + 1) << "only the leave advanced the epoch";
}

TEST_F(RingReorderTest, ProposalWithStrangersOrDuplicatesIsDropped) {
  joinAll({"a", "b", "c"});
  const auto epoch = m.epoch();
  m.proposeRing({"a", "a", "b"});
  (void)syncAll();
  m.proposeRing({"a", "b", "z"});
  (void)syncAll();
  EXPECT_EQ(m.ring(), (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_EQ(m.epoch(), epoch);
}

TEST_F(RingReorderTest, ReorderAbortsNothingCommittedButNoOpStraddlesIt) {
  joinAll({"a", "b", "c"});
  const auto epoch = m.epoch();
  (void)m.opReport("a", epoch, 7,
                   true);  // an operation some member reported (misuse: at a sync point)
  m.proposeRing({"a", "c", "b"});
  auto fx = syncAll();
  ASSERT_EQ(fx.decisions.size(), 1u);
  EXPECT_FALSE(fx.decisions[0].commit) << "an operation open across the reorder aborts";
  EXPECT_EQ(m.epoch(), epoch + 1);
}

}  // namespace
}  // namespace loco::p2p
