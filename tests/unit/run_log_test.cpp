// The coordinator's run log (p2p/run_log.h): events and reported steps for the dashboard.
#include "p2p/run_log.h"

#include <gtest/gtest.h>

#include <cmath>

namespace loco::p2p {
namespace {

PeerReportMsg report(std::uint64_t step, double loss, double val, double bytes) {
  PeerReportMsg r;
  r.outer_step = step;
  r.inner_step = step * 30;
  r.loss = loss;
  r.val_loss = val;
  r.bytes_sent = bytes;
  r.world = 2;
  return r;
}

TEST(RunLog, OneStepPointPerOuterStepWithTheEvaluatorsValidationLoss) {
  RunLog log;
  const double nan = std::nan("");
  log.onReport("a", report(1, 4.0, nan, 10), 100);
  log.onReport("b", report(1, 4.0, 3.5, 12), 101);  // the evaluator, a little later
  log.onReport("a", report(2, 3.0, nan, 20), 102);
  auto steps = log.steps();
  ASSERT_EQ(steps.size(), 2u);
  EXPECT_EQ(steps[0].outer_step, 1u);
  EXPECT_EQ(steps[0].loss, 4.0);
  EXPECT_EQ(steps[0].val_loss, 3.5);
  EXPECT_EQ(steps[0].bytes_sent, 12);
  EXPECT_EQ(steps[0].unix_s, 100);
  EXPECT_TRUE(std::isnan(steps[1].val_loss));
  EXPECT_EQ(log.peers().at("a").last.outer_step, 2u);
  EXPECT_EQ(log.peers().at("b").unix_s, 101);
}

TEST(RunLog, EventsAreNamedAndBoundedAndGonePeersForgotten) {
  RunLog log;
  log.onReport("a", report(1, 4.0, 4.0, 1), 1);
  std::vector<MembershipEvent> evs{{MembershipEvent::Kind::kAdmitted, "b", 3, ""},
                                   {MembershipEvent::Kind::kEvicted, "a", 4, "no heartbeat"}};
  log.onEvents(evs, 5);
  ASSERT_EQ(log.events().size(), 2u);
  EXPECT_EQ(log.events()[0].kind, "admitted");
  EXPECT_EQ(log.events()[1].kind, "evicted");
  EXPECT_EQ(log.events()[1].detail, "no heartbeat");
  EXPECT_EQ(log.peers().count("a"), 0u);
  for (int i = 0; i < 1000; ++i) log.onEvents(evs, 6);
  EXPECT_EQ(log.events().size(), RunLog::kMaxEvents);
}

TEST(RunLog, RetriedRoundsBecomeEventsAndStepsAreBounded) {
  RunLog log;
  auto r = report(3, 2.0, std::nan(""), 5);
  r.retries = 2;
  log.onReport("a", r, 1);
  ASSERT_EQ(log.events().size(), 1u);
  EXPECT_EQ(log.events()[0].kind, "retried");
  for (std::uint64_t s = 0; s < RunLog::kMaxSteps + 10; ++s)
    log.onReport("a", report(s, 1, 1, 1), 2);
  auto steps = log.steps();
  EXPECT_EQ(steps.size(), RunLog::kMaxSteps);
  EXPECT_EQ(steps.back().outer_step, RunLog::kMaxSteps + 9);
}

}  // namespace
}  // namespace loco::p2p
