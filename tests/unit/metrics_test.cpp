// The metrics registry and its Prometheus text exposition (p2p/base/metrics.h).
#include "p2p/base/metrics.h"

#include <gtest/gtest.h>

#include <cmath>
#include <string>

namespace loco {
namespace {

bool contains(const std::string& text, const std::string& line) {
  return text.find(line) != std::string::npos;
}

TEST(Metrics, CountersGetPrometheusNamesAndTotal) {
  counter("test.widgets").inc(3);
  counter("test.requests", {{"code", "200"}, {"path", "/x"}}).inc();
  counter("test.requests", {{"path", "/x"}, {"code", "200"}}).inc();  // same series
  counter("test.requests", {{"code", "500"}, {"path", "/x"}}).inc(7);
  const std::string text = renderPrometheus();
  EXPECT_TRUE(contains(text, "# TYPE loco_test_widgets_total counter\n"));
  EXPECT_TRUE(contains(text, "\nloco_test_widgets_total 3\n"));
  EXPECT_TRUE(contains(text, "\nloco_test_requests_total{code=\"200\",path=\"/x\"} 2\n"));
  EXPECT_TRUE(contains(text, "\nloco_test_requests_total{code=\"500\",path=\"/x\"} 7\n"));
  // One HELP and one TYPE line per family, however many series it has.
  EXPECT_EQ(text.find("# TYPE loco_test_requests_total"),
            text.rfind("# TYPE loco_test_requests_total"));
}

TEST(Metrics, LabelValuesAreEscaped) {
  gauge("test.escaped", {{"v", "a\"b\\c\nd"}, {"bad-name", "x"}}).set(1.5);
  const std::string text = renderPrometheus();
  EXPECT_TRUE(contains(text, "loco_test_escaped{bad_name=\"x\",v=\"a\\\"b\\\\c\\nd\"} 1.5\n"))
      << text;
}

TEST(Metrics, GaugesSetAddAndSpecialValues) {
  Gauge& g = gauge("test.level");
  g.set(2.5);
  g.add(-1);
  EXPECT_DOUBLE_EQ(g.value(), 1.5);
  gauge("test.nan").set(std::nan(""));
  const std::string text = renderPrometheus();
  EXPECT_TRUE(contains(text, "# TYPE loco_test_level gauge\nloco_test_level 1.5\n"));
  EXPECT_TRUE(contains(text, "\nloco_test_nan NaN\n"));
}

TEST(Metrics, HistogramsAreCumulativeWithInfSumAndCount) {
  const double bounds[] = {0.1, 1, 10};
  Histogram& h = histogram("test.op_seconds", bounds, {{"op", "a"}});
  for (double v : {0.05, 0.1, 0.5, 2.0, 20.0}) h.observe(v);
  const auto s = h.snapshot();
  ASSERT_EQ(s.cumulative.size(), 3u);
  EXPECT_EQ(s.cumulative[0], 2u);  // 0.05 and 0.1 (le is inclusive)
  EXPECT_EQ(s.cumulative[1], 3u);
  EXPECT_EQ(s.cumulative[2], 4u);
  EXPECT_EQ(s.count, 5u);
  EXPECT_DOUBLE_EQ(s.sum, 22.65);
  const std::string text = renderPrometheus();
  EXPECT_TRUE(contains(text, "# TYPE loco_test_op_seconds histogram\n"));
  EXPECT_TRUE(contains(text, "loco_test_op_seconds_bucket{op=\"a\",le=\"0.1\"} 2\n"));
  EXPECT_TRUE(contains(text, "loco_test_op_seconds_bucket{op=\"a\",le=\"+Inf\"} 5\n"));
  EXPECT_TRUE(contains(text, "loco_test_op_seconds_sum{op=\"a\"} 22.65\n"));
  EXPECT_TRUE(contains(text, "loco_test_op_seconds_count{op=\"a\"} 5\n"));
}

TEST(Metrics, HelpTextAndClearedGauges) {
  describeMetric("test.described", "What it counts.");
  counter("test.described").inc();
  gauge("test.per_peer", {{"peer", "a"}}).set(1);
  gauge("test.per_peer", {{"peer", "b"}}).set(2);
  clearGauge("test.per_peer");
  gauge("test.per_peer", {{"peer", "c"}}).set(3);
  const std::string text = renderPrometheus();
  EXPECT_TRUE(contains(text, "# HELP loco_test_described_total What it counts.\n"));
  EXPECT_FALSE(contains(text, "peer=\"a\""));
  EXPECT_TRUE(contains(text, "loco_test_per_peer{peer=\"c\"} 3\n"));
}

TEST(Metrics, CounterSnapshotHasUnlabelledCountersOnly) {
  counter("test.snap").inc(4);
  counter("test.snap_labelled", {{"k", "v"}}).inc();
  bool found = false;
  for (const auto& [name, value] : counterSnapshot()) {
    EXPECT_NE(name, "test.snap_labelled");
    if (name == "test.snap") {
      found = true;
      EXPECT_EQ(value, 4u);
    }
  }
  EXPECT_TRUE(found);
}

}  // namespace
}  // namespace loco
