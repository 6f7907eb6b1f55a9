// The batch tests' formulas against hand computations, the micro-batch plan, and the data
// assignment that keeps default peers on distinct samples.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <set>
#include <string>
#include <vector>

#include "training/allocation.h"
#include "training/batch_test.h"
#include "training/data_assignment.h"

namespace loco::training {
namespace {

// Three peers' gradients g1 = (1,0), g2 = (0,1), g3 = (1,1): ḡ = (2/3, 2/3), ‖ḡ‖² = 8/9,
// Σ‖g_m‖² = 4, d_m = ⟨g_m, ḡ⟩ = 2/3, 2/3, 4/3 (Σ 8/3, Σd² 24/9).
GradientMoments threeGradients() {
  GradientMoments g;
  g.peers = 3;
  g.sq_norms = 4;
  g.mean_sq_norm = 8.0 / 9;
  g.dots = 8.0 / 3;
  g.sq_dots = 24.0 / 9;
  return g;
}

TEST(BatchTest, NormTestMatchesAHandComputation) {
  // Σ‖g_m − ḡ‖² = 4 − 3·8/9 = 4/3; b = 4: σ̂² = 4/2·4/3 = 8/3.
  // η = 0.5: 8/3 / (3·0.25·8/9) = 4;  η = 0.25: 8/3 / (3·0.0625·8/9) = 16.
  EXPECT_NEAR(normTestWant(threeGradients(), 4, 0.5), 4.0, 1e-12);
  EXPECT_NEAR(normTestWant(threeGradients(), 4, 0.25), 16.0, 1e-12);
  BatchTestConfig c;
  c.test = BatchTest::kNorm;
  c.eta = 0.25;
  c.max_batch = 1000;
  BatchDecision d = decideBatch(c, threeGradients(), 4);
  EXPECT_EQ(d.batch, 16u);
  EXPECT_TRUE(d.skipped.empty());
  c.eta = 0.5;
  EXPECT_EQ(decideBatch(c, threeGradients(), 4).batch, 4u) << "asks exactly for b: stays";
}

TEST(BatchTest, InnerProductTestMatchesAHandComputation) {
  // Σ(d_m − ‖ḡ‖²)² = 2·(2/3 − 8/9)² + (4/3 − 8/9)² = 8/81 + 16/81 = 8/27; b = 4, θ = 0.5:
  // b_ip = 4/2·8/27 / (3·0.25·64/81) = 1.
  // Orthogonal parts: g1 − 0.75ḡ = (0.5, −0.5), g2 likewise, g3 − 1.5ḡ = 0: Σ = 1;
  // ν = 0.5: b_orth = 4/2·1 / (3·0.25·8/9) = 3;  ν = 0.25: 12.
  EXPECT_NEAR(innerProductTestWant(threeGradients(), 4, 0.5, 0.5), 3.0, 1e-12);
  EXPECT_NEAR(innerProductTestWant(threeGradients(), 4, 0.5, 0.25), 12.0, 1e-12);
  // θ = 0.125: b_ip = 1·16 = 16 dominates b_orth = 3.
  EXPECT_NEAR(innerProductTestWant(threeGradients(), 4, 0.125, 0.5), 16.0, 1e-12);
  BatchTestConfig c;
  c.test = BatchTest::kInnerProduct;
  c.theta = 0.5;
  c.nu = 0.25;
  c.max_batch = 1000;
  EXPECT_EQ(decideBatch(c, threeGradients(), 4).batch, 12u);
}

// Speed allocation: the same three gradients from batches of w = 1, 2, 3 windows. ḡ = Σw·g/W =
// (4/6, 5/6), ‖ḡ‖² = 41/36; Σw‖g_m − ḡ‖² = 29/36 + 2·17/36 + 3·5/36 = 13/6 (= Σw‖g‖² − W‖ḡ‖² =
// 9 − 41/6); σ̂² = 13/12 and, η = 1: b = 13/12 / (3·41/36) = 13/41. The inner-product terms are
// checked against their definitions, summed per peer.
TEST(BatchTest, UnequalBatchesWeightEachPeersGradientByItsWindows) {
  const std::vector<std::vector<double>> grads{{1, 0}, {0, 1}, {1, 1}};
  const std::vector<double> w{1, 2, 3};
  const double W = 6;
  const std::vector<double> mean{4.0 / 6, 5.0 / 6};
  const double n2 = 41.0 / 36;
  GradientMoments g;
  g.peers = 3;
  g.weight = W;
  g.mean_sq_norm = n2;
  double ip_spread = 0, orth_spread = 0;
  for (std::size_t m = 0; m < 3; ++m) {
    const double d = grads[m][0] * mean[0] + grads[m][1] * mean[1];
    g.sq_norms += w[m] * (grads[m][0] * grads[m][0] + grads[m][1] * grads[m][1]);
    g.dots += w[m] * d;
    g.sq_dots += w[m] * d * d;
    ip_spread += w[m] * (d - n2) * (d - n2);
    const double o0 = grads[m][0] - d / n2 * mean[0], o1 = grads[m][1] - d / n2 * mean[1];
    orth_spread += w[m] * (o0 * o0 + o1 * o1);
  }
  EXPECT_NEAR(normTestWant(g, 2, 1.0), 13.0 / 41, 1e-12) << "the batch argument plays no part";
  EXPECT_NEAR(normTestWant(g, 2, 0.5), 4 * 13.0 / 41, 1e-12);
  const double b_ip = ip_spread / 2 / (3 * 0.25 * n2 * n2);
  const double b_orth = orth_spread / 2 / (3 * 0.25 * n2);
  EXPECT_NEAR(innerProductTestWant(g, 2, 0.5, 0.5), std::max(b_ip, b_orth), 1e-12);
  // Equal batches of 4, weighted: the unweighted formulas at b = 4.
  GradientMoments equal = threeGradients();
  equal.sq_norms *= 4;
  equal.dots *= 4;
  equal.sq_dots *= 4;
  equal.weight = 12;
  EXPECT_NEAR(normTestWant(equal, 4, 0.5), normTestWant(threeGradients(), 4, 0.5), 1e-12);
  EXPECT_NEAR(innerProductTestWant(equal, 4, 0.5, 0.25),
              innerProductTestWant(threeGradients(), 4, 0.5, 0.25), 1e-12);
}

TEST(BatchTest, NeverShrinksIsCappedAndNeedsThreePeers) {
  BatchTestConfig c;
  c.test = BatchTest::kNorm;
  c.eta = 0.25;  // wants 16 at b = 4 (above)
  c.max_batch = 10;
  EXPECT_EQ(decideBatch(c, threeGradients(), 4).batch, 10u) << "capped";
  c.max_batch = 1000;
  c.eta = 1;  // wants b/4 (the wish scales with b): 16 at b = 64
  EXPECT_NEAR(normTestWant(threeGradients(), 64, 1), 16.0, 1e-12);
  EXPECT_EQ(decideBatch(c, threeGradients(), 64).batch, 64u) << "never shrinks";
  c.eta = 0.25;
  GradientMoments two = threeGradients();
  two.peers = 2;
  BatchDecision d = decideBatch(c, two, 4);
  EXPECT_EQ(d.batch, 4u);
  EXPECT_FALSE(d.skipped.empty());
  GradientMoments zero = threeGradients();
  zero.mean_sq_norm = 0;
  EXPECT_EQ(decideBatch(c, zero, 4).batch, 4u);
  GradientMoments nan = threeGradients();
  nan.sq_norms = std::nan("");
  EXPECT_EQ(decideBatch(c, nan, 4).batch, 4u);
  c.test = BatchTest::kNone;
  EXPECT_EQ(decideBatch(c, threeGradients(), 4).batch, 4u);
}

TEST(BatchTest, IdenticalGradientsNeedNoLargerBatch) {
  GradientMoments g;  // three copies of (1, 2): no spread at all
  g.peers = 3;
  g.sq_norms = 15;
  g.mean_sq_norm = 5;
  g.dots = 15;
  g.sq_dots = 75;
  EXPECT_NEAR(normTestWant(g, 8, 0.1), 0.0, 1e-12);
  EXPECT_NEAR(innerProductTestWant(g, 8, 0.1, 0.1), 0.0, 1e-12);
}

TEST(BatchTest, BadSettingsNameTheFlag) {
  BatchTestConfig c;
  c.eta = 0;
  EXPECT_NE(validateBatchTestConfig(c, 4).message().find("--batch-eta"), std::string::npos);
  c = BatchTestConfig{};
  c.theta = -1;
  EXPECT_NE(validateBatchTestConfig(c, 4).message().find("--batch-theta"), std::string::npos);
  c = BatchTestConfig{};
  c.nu = std::nan("");
  EXPECT_NE(validateBatchTestConfig(c, 4).message().find("--batch-nu"), std::string::npos);
  c = BatchTestConfig{};
  c.test = BatchTest::kNorm;
  c.max_batch = 8;
  EXPECT_NE(validateBatchTestConfig(c, 16).message().find("--max-batch"), std::string::npos);
  EXPECT_TRUE(validateBatchTestConfig(c, 8).isOk());
  EXPECT_TRUE(parseBatchTest("inner-product").isOk());
  EXPECT_FALSE(parseBatchTest("variance").isOk());
}

TEST(BatchTest, MicroPlanCoversTheBatchWithEqualMicroBatches) {
  EXPECT_EQ(microPlan(16, 0).micro_batches, 1u);
  EXPECT_EQ(microPlan(16, 16).micro_batches, 1u);
  MicroPlan p = microPlan(64, 16);
  EXPECT_EQ(p.micro_batches, 4u);
  EXPECT_EQ(p.micro_size, 16u);
  p = microPlan(50, 16);  // 4 passes of 13 = 52: two windows more than asked, never fewer
  EXPECT_EQ(p.micro_batches, 4u);
  EXPECT_EQ(p.micro_size, 13u);
  for (std::uint32_t b = 1; b <= 300; ++b) {
    for (std::uint32_t mx : {1u, 3u, 7u, 16u}) {
      MicroPlan q = microPlan(b, mx);
      ASSERT_LE(q.micro_size, mx);
      ASSERT_GE(q.total(), b);
      ASSERT_LT(q.total(), b + q.micro_batches);
    }
  }
}

TEST(DataAssignment, DefaultPeersGetDistinctStreamsAndACoveringCut) {
  std::vector<std::string> members{"c3", "a1", "b2"};
  std::set<std::uint64_t> streams;
  std::set<std::uint32_t> ranks;
  for (const std::string& id : members) {
    DataAssignment a = assignData(members, id);
    EXPECT_EQ(a.world, 3u);
    streams.insert(a.stream);
    ranks.insert(a.rank);
    EXPECT_EQ(a.stream, streamOf(id)) << "the stream follows the identity, not the position";
  }
  EXPECT_EQ(streams.size(), 3u);
  EXPECT_EQ(ranks, (std::set<std::uint32_t>{0, 1, 2}));
  EXPECT_EQ(assignData(members, "a1").rank, 0u) << "sorted by id";
  // A fourth member re-cuts the slices; a peer not admitted yet counts itself in.
  members.push_back("a0");
  EXPECT_EQ(assignData(members, "a1").rank, 1u);
  EXPECT_EQ(assignData(members, "a1").world, 4u);
  EXPECT_EQ(assignData(std::vector<std::string>{}, "x").world, 1u);
  EXPECT_EQ(assignData(std::vector<std::string>{"y"}, "x").rank, 0u);
}

TEST(DataAssignment, DuplicateExplicitRanksAreSeenInTheStatistics) {
  std::vector<float> slots(kRankSlots, 0.0f);
  markExplicitRank(slots, 3);
  markExplicitRank(slots, 15);  // same bucket (12 buckets), another rank
  EXPECT_FALSE(sharesExplicitRank(slots, 3));
  EXPECT_FALSE(sharesExplicitRank(slots, 15));
  markExplicitRank(slots, 5);
  markExplicitRank(slots, 5);
  EXPECT_TRUE(sharesExplicitRank(slots, 5));
  EXPECT_FALSE(sharesExplicitRank(slots, 4));
}

}  // namespace
}  // namespace loco::training

namespace loco::training {
namespace {

TEST(Allocation, SharesFollowThroughput) {
  // 4 peers of batch 16 = 64 windows per step; throughputs 3000, 3000, 3000, 1000 (sum 10000).
  EXPECT_EQ(speedShare(16, 4, 3000, 10000), 19u);  // 64·0.3 = 19.2
  EXPECT_EQ(speedShare(16, 4, 1000, 10000), 6u);   // 64·0.1 = 6.4
  EXPECT_EQ(speedShare(16, 4, 2500, 10000), 16u) << "equal speeds: equal shares";
  // The split goes by an average: 0.75·1000 + 0.25·2000 = 1250; the first figure as it is; a
  // round without a measurement changes nothing.
  EXPECT_DOUBLE_EQ(smoothedSpeed(0, 1000), 1000);
  EXPECT_DOUBLE_EQ(smoothedSpeed(1000, 2000), 1250);
  EXPECT_DOUBLE_EQ(smoothedSpeed(1250, 0), 1250);
  EXPECT_DOUBLE_EQ(smoothedSpeed(1250, std::nan("")), 1250);
  EXPECT_EQ(speedShare(16, 4, 0, 10000), 16u) << "a joiner takes the mean share";
  EXPECT_EQ(speedShare(16, 0, 10, 10), 16u);
  EXPECT_EQ(speedShare(16, 4, 1, 1e9), 1u) << "at least one window";
  EXPECT_EQ(speedShare(16, 4, 2e9, 1e9), 64u) << "at most the group's total";
  EXPECT_TRUE(parseAllocation("speed").isOk());
  EXPECT_FALSE(parseAllocation("fast").isOk());
}

}  // namespace
}  // namespace loco::training
