// Unit tests for how a peer finds a coordinator again (p2p/reconnect.h, ARCHITECTURE.md §4):
// backoff growth, cap and jitter, the order of addresses in a round, giving up, and log
// throttling. Time is fake.

#include "p2p/reconnect.h"

#include <gtest/gtest.h>

#include <set>
#include <vector>

namespace loco::p2p {
namespace {

const TimePoint t0 = TimePoint{} + std::chrono::hours(1);

TEST(Backoff, GrowsTwofoldPerRoundUpToTheCapWithoutJitter) {
  Backoff b(BackoffOptions{Millis(100), Millis(2000), 0.0}, 1);
  std::vector<std::int64_t> got;
  for (int i = 0; i < 8; ++i) got.push_back(b.next().count());
  EXPECT_EQ(got, (std::vector<std::int64_t>{100, 200, 400, 800, 1600, 2000, 2000, 2000}));
  b.reset();
  EXPECT_EQ(b.next().count(), 100);
}

TEST(Backoff, JitterStaysWithinItsFractionAndSpreadsPeersApart) {
  const BackoffOptions o{Millis(100), Millis(2000), 0.5};
  std::set<std::int64_t> firsts;
  for (std::uint64_t seed = 1; seed <= 50; ++seed) {
    Backoff b(o, seed);
    double base = 100;
    for (int round = 0; round < 40; ++round) {
      const auto d = b.next().count();
      EXPECT_GE(d, static_cast<std::int64_t>(base * 0.5) - 1) << "seed " << seed;
      EXPECT_LE(d, static_cast<std::int64_t>(base)) << "seed " << seed;
      EXPECT_LE(d, o.max.count()) << "never above the cap";
      if (round == 5) firsts.insert(d);
      base = std::min(base * 2, 2000.0);
    }
  }
  // Peers that lost the coordinator together do not retry in lockstep.
  EXPECT_GT(firsts.size(), 25u);
}

TEST(Backoff, LongOutagesNeitherOverflowNorExceedTheCap) {
  Backoff b(BackoffOptions{Millis(1), Millis(5000), 0.3}, 7);
  for (int i = 0; i < 10000; ++i) {
    const auto d = b.next();
    ASSERT_GT(d.count(), 0);
    ASSERT_LE(d.count(), 5000);
  }
  EXPECT_EQ(b.rounds(), 10000u);
}

TEST(ReconnectPlan, ARoundTriesEveryAddressBackToBackFromTheCurrentOneThenWaits) {
  ReconnectPlan plan(3, BackoffOptions{Millis(100), Millis(2000), 0.0}, 1);
  auto first = plan.begin(1, t0, t0 + Millis(60000), Millis(0));
  EXPECT_EQ(first.address, 1u);
  EXPECT_EQ(first.delay.count(), 0);
  std::vector<std::pair<std::size_t, std::int64_t>> seen;
  TimePoint now = t0;
  for (int i = 0; i < 7; ++i) {
    auto a = plan.afterFailure(now);
    ASSERT_TRUE(a.has_value());
    seen.emplace_back(a->address, a->delay.count());
    now += a->delay;
  }
  // 1 (begin), 2, 0 | wait, 1, 2, 0 | wait, 1, 2
  std::vector<std::pair<std::size_t, std::int64_t>> want{{2, 0}, {0, 0},   {1, 100}, {2, 0},
                                                         {0, 0}, {1, 200}, {2, 0}};
  EXPECT_EQ(seen, want);
  EXPECT_EQ(plan.attempts(), 8u);
}

TEST(ReconnectPlan, OneAddressWaitsBeforeEveryRetry) {
  ReconnectPlan plan(1, BackoffOptions{Millis(50), Millis(400), 0.0}, 1);
  plan.begin(0, t0, t0 + Millis(60000), Millis(0));
  std::vector<std::int64_t> delays;
  for (int i = 0; i < 5; ++i) delays.push_back(plan.afterFailure(t0)->delay.count());
  EXPECT_EQ(delays, (std::vector<std::int64_t>{50, 100, 200, 400, 400}));
}

TEST(ReconnectPlan, LastAttemptStartsAtTheGiveUpTimeAndNoneAfterIt) {
  ReconnectPlan plan(2, BackoffOptions{Millis(100), Millis(1000), 0.0}, 1);
  const TimePoint give_up = t0 + Millis(2500);
  plan.begin(0, t0, give_up, Millis(0));
  TimePoint now = t0;
  int attempts = 1;
  for (int i = 0; i < 1000; ++i) {
    auto a = plan.afterFailure(now + Millis(3));  // each attempt takes 3 ms
    if (!a) break;
    now += Millis(3) + a->delay;
    ASSERT_LE(now, give_up) << "an attempt planned past the give-up time";
    ++attempts;
  }
  EXPECT_EQ(now, give_up) << "the peer waits the whole timeout, not a backoff step less";
  EXPECT_FALSE(plan.afterFailure(now + Millis(10000)).has_value());
  EXPECT_GT(attempts, 4);
  EXPECT_LT(attempts, 20);
}

TEST(ReconnectPlan, BeginStartsOverWithTheShortestDelay) {
  ReconnectPlan plan(1, BackoffOptions{Millis(100), Millis(2000), 0.0}, 1);
  plan.begin(0, t0, t0 + Millis(60000), Millis(0));
  for (int i = 0; i < 6; ++i) (void)plan.afterFailure(t0);
  EXPECT_EQ(plan.afterFailure(t0)->delay.count(), 2000);
  plan.begin(0, t0, t0 + Millis(60000), Millis(0));
  EXPECT_EQ(plan.afterFailure(t0)->delay.count(), 100) << "a new loss starts a new backoff";
  EXPECT_EQ(plan.attempts(), 2u);
}

TEST(LogThrottle, FirstCallLogsThenAtMostOncePerInterval) {
  LogThrottle t(Millis(5000));
  EXPECT_TRUE(t.shouldLog(t0));
  EXPECT_FALSE(t.shouldLog(t0 + Millis(1)));
  EXPECT_FALSE(t.shouldLog(t0 + Millis(4999)));
  EXPECT_TRUE(t.shouldLog(t0 + Millis(5000)));
  int lines = 0;
  for (int ms = 0; ms < 60000; ms += 10) lines += t.shouldLog(t0 + Millis(5000 + ms)) ? 1 : 0;
  EXPECT_EQ(lines, 11) << "a minute of a repeating state: a dozen lines, not six thousand";
  t.reset();
  EXPECT_TRUE(t.shouldLog(t0 + Millis(65001)));
}

}  // namespace
}  // namespace loco::p2p
