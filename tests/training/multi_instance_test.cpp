// Multi-instance training's pure parts: how many instances are active after a number of rounds,
// which ones merge under each policy, the batch-demand-weighted average, the instances' data
// streams, and the settings that are refused.
#include <gtest/gtest.h>

#include <cmath>
#include <set>
#include <vector>

#include "training/distributed.h"
#include "training/multi_instance.h"

namespace loco::training {
namespace {

TEST(MultiInstance, ActiveInstancesHalveEveryMergePeriodDownToOne) {
  MultiInstanceConfig c;
  c.instances = 4;
  c.merge_every = 5;
  for (std::uint64_t r : {0, 1, 4}) EXPECT_EQ(activeInstances(c, r), 4u) << r;
  for (std::uint64_t r : {5, 9}) EXPECT_EQ(activeInstances(c, r), 2u) << r;
  for (std::uint64_t r : {10, 11, 1000}) EXPECT_EQ(activeInstances(c, r), 1u) << r;
  c.instances = 3;  // an odd one out stays as it is: 3 -> 2 -> 1
  c.merge_every = 2;
  EXPECT_EQ(activeInstances(c, 1), 3u);
  EXPECT_EQ(activeInstances(c, 2), 2u);
  EXPECT_EQ(activeInstances(c, 3), 2u);
  EXPECT_EQ(activeInstances(c, 4), 1u);
  c.instances = 1;
  EXPECT_EQ(activeInstances(c, 0), 1u);
  EXPECT_EQ(activeInstances(c, 100), 1u);
}

std::vector<std::pair<std::uint32_t, std::uint32_t>> pairsOf(const std::vector<MergeGroup>& g) {
  std::vector<std::pair<std::uint32_t, std::uint32_t>> out;
  for (const MergeGroup& m : g) out.emplace_back(m.first, m.pair ? m.second : m.first);
  return out;
}

TEST(MultiInstance, WorstWithWorstPairsTheTwoHighestLosses) {
  // Worst first: 3 (4.0), 1 (3.0), 0 (2.0), 2 (1.0): pairs {3,1} and {0,2}; the slots follow
  // the lowest member, so {0,2} becomes instance 0 and {3,1} instance 1.
  const std::vector<double> losses{2.0, 3.0, 1.0, 4.0};
  using P = std::pair<std::uint32_t, std::uint32_t>;
  EXPECT_EQ(pairsOf(mergePlan(losses, MergePolicy::kWorstWithWorst)),
            (std::vector<P>{{0, 2}, {3, 1}}));
  // Best with worst: {2 (best), 3 (worst)} and {0, 1}.
  EXPECT_EQ(pairsOf(mergePlan(losses, MergePolicy::kBestWithWorst)),
            (std::vector<P>{{0, 1}, {2, 3}}));
}

TEST(MultiInstance, AnOddOneOutStaysAndANanCountsAsTheWorst) {
  using P = std::pair<std::uint32_t, std::uint32_t>;
  // Worst first: 2, 1, 0: {2,1} merge, 0 (the best) stays alone.
  auto plan = mergePlan(std::vector<double>{1.0, 2.0, 3.0}, MergePolicy::kWorstWithWorst);
  ASSERT_EQ(plan.size(), 2u);
  EXPECT_FALSE(plan[0].pair);
  EXPECT_EQ(plan[0].first, 0u);
  EXPECT_EQ(pairsOf(plan)[1], (P{2, 1}));
  // Best with worst: {0,2}, and the middle one (1) alone.
  EXPECT_EQ(pairsOf(mergePlan(std::vector<double>{1.0, 2.0, 3.0}, MergePolicy::kBestWithWorst)),
            (std::vector<P>{{0, 2}, {1, 1}}));
  // An instance whose loss is NaN is the worst; ties go to the lower index.
  EXPECT_EQ(pairsOf(mergePlan(std::vector<double>{1.0, std::nan(""), 1.0, 0.5},
                              MergePolicy::kWorstWithWorst)),
            (std::vector<P>{{1, 0}, {2, 3}}));
  EXPECT_TRUE(mergePlan(std::vector<double>{}, MergePolicy::kBestWithWorst).empty());
}

TEST(MultiInstance, MergeIsTheBatchDemandWeightedAverage) {
  const std::vector<float> a{1, 2, -4}, b{3, 6, 4};
  std::vector<float> out(3);
  mergeWeighted(a, 1, b, 3, out);  // (1·a + 3·b) / 4
  EXPECT_FLOAT_EQ(out[0], 2.5f);
  EXPECT_FLOAT_EQ(out[1], 5.0f);
  EXPECT_FLOAT_EQ(out[2], 2.0f);
  mergeWeighted(a, 0, b, 0, out);  // no demand known: equal weights
  EXPECT_FLOAT_EQ(out[0], 2.0f);
  EXPECT_FLOAT_EQ(out[2], 0.0f);
  std::vector<float> in_place(a);
  mergeWeighted(in_place, 16, b, 16, in_place);  // out may alias a
  EXPECT_FLOAT_EQ(in_place[1], 4.0f);
}

TEST(MultiInstance, EachInstanceDrawsItsOwnStream) {
  EXPECT_EQ(instanceStream(7, 0), 7u);  // instance 0 is the peer's own stream
  std::set<std::uint64_t> seen;
  for (std::uint64_t base : {0ull, 1ull, 2ull, 0x1234567890abcdefull}) {
    for (std::uint32_t k = 0; k < kMaxInstances; ++k) seen.insert(instanceStream(base, k));
  }
  EXPECT_EQ(seen.size(), 4 * kMaxInstances);
  // An instance's stream is not another peer's explicit rank.
  for (std::uint32_t k = 1; k < kMaxInstances; ++k) EXPECT_GT(instanceStream(1, k), 1u << 20);
}

TEST(MultiInstance, BadSettingsNameTheFlag) {
  MultiInstanceConfig c;
  c.instances = 0;
  Status st = validateMultiInstanceConfig(c);
  EXPECT_NE(st.message().find("--instances"), std::string::npos) << st.message();
  c.instances = kMaxInstances + 1;
  st = validateMultiInstanceConfig(c);
  EXPECT_NE(st.message().find("--instances"), std::string::npos) << st.message();
  c.instances = 2;
  c.merge_every = 0;
  st = validateMultiInstanceConfig(c);
  EXPECT_NE(st.message().find("--merge-every"), std::string::npos) << st.message();
  c.merge_every = 1;
  EXPECT_TRUE(validateMultiInstanceConfig(c).isOk());
  EXPECT_FALSE(parseMergePolicy("random").isOk());
  // The run's combinations: the merged instance trains K·--batch windows per step, and only
  // blocking DiLoCo has whole-round instances.
  DistributedConfig d;
  d.steps = d.train.inner.schedule.total_steps = 60;
  d.inner_steps = 10;
  d.multi.instances = 8;
  d.train.batch_size = 10000;
  st = validateDistributedConfig(d);
  EXPECT_NE(st.message().find("--instances"), std::string::npos) << st.message();
  d.train.batch_size = 16;
  EXPECT_TRUE(validateDistributedConfig(d).isOk()) << validateDistributedConfig(d).message();
  d.method = Method::kStreaming;
  st = validateDistributedConfig(d);
  EXPECT_NE(st.message().find("--instances"), std::string::npos) << st.message();
  EXPECT_EQ(*parseMergePolicy("best-with-worst"), MergePolicy::kBestWithWorst);
}

}  // namespace
}  // namespace loco::training
