// The pure math of eager overlap, Streaming DiLoCo and NoLoCo (training/sync_methods.h), each
// against a hand computation.

#include "training/sync_methods.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <set>

#include "training/local_trainer.h"

namespace loco::training {
namespace {

TEST(SyncMethods, OuterNesterovStepIsOuterSgdBitForBit) {
  OuterSgd ref(3, OuterSgdOptions::diloco());
  std::vector<float> a = {1.0f, -2.0f, 0.5f}, b = a, mom(3, 0.0f);
  const float ds[3][3] = {{0.5f, -0.1f, 0.3f}, {-0.2f, 0.7f, 0.0f}, {0.1f, 0.2f, -0.9f}};
  for (const auto& d : ds) {
    ASSERT_TRUE(ref.step(a, d).isOk());
    outerNesterovStep(b, mom, d, OuterSgdOptions::diloco());
    for (int i = 0; i < 3; ++i) {
      EXPECT_EQ(a[i], b[i]);
      EXPECT_EQ(ref.momentum()[i], mom[i]);
    }
  }
}

TEST(SyncMethods, EagerStartPointIsConsensusPlusCorrectionByHand) {
  // lr 0.7, μ 0.9, θ0 = 1. This peer's Δ: 0.5 then 0.2; the group's first average Δ̄0 = 0.3.
  // Applied directly, the eager update Δ_own^(t) + Δ̄^(t−1) − Δ_own^(t−1):
  //   round 0: g = 0.5          b = 0.5   s1 = 1 − 0.7·(0.5 + 0.45)  = 0.335
  //   round 1: g = 0.2+0.3−0.5 = 0   b = 0.45  s2 = 0.335 − 0.7·0.405 = 0.0515
  // Split: consensus θc = 1 − 0.7·(0.3 + 0.27) = 0.601; correction c over d = 0.5, −0.3:
  //   c = −0.665, then b = 0.15, c = −0.665 − 0.7·(−0.3 + 0.135) = −0.5495; 0.601 − 0.5495.
  const auto o = OuterSgdOptions::diloco();
  EagerCorrection eager(1, o);
  std::vector<float> own0 = {0.5f}, own1 = {0.2f}, start = {0.0f};
  std::vector<float> consensus = {1.0f}, cmom = {0.0f};
  eager.add(own0);
  eager.startPoint(consensus, start);
  EXPECT_NEAR(start[0], 0.335, 1e-6);  // round 1 starts from θ0 + own fresh step
  std::vector<float> avg0 = {0.3f};
  outerNesterovStep(consensus, cmom, avg0, o);  // Δ̄0 arrives during round 1
  EXPECT_NEAR(consensus[0], 0.601, 1e-6);
  eager.add(own1);
  eager.startPoint(consensus, start);
  EXPECT_NEAR(eager.correction()[0], -0.5495, 1e-6);
  EXPECT_NEAR(start[0], 0.0515, 1e-6);
  eager.reset();
  eager.startPoint(consensus, start);
  EXPECT_EQ(start[0], consensus[0]);
}

std::vector<ParamInfo> layoutOf(int blocks) {
  std::vector<ParamInfo> l;
  std::size_t at = 0;
  auto add = [&](std::string name, std::size_t n, int layer) {
    l.push_back({std::move(name), at, n, layer, false});
    at += n;
  };
  add("wte.weight", 10, -1);
  add("wpe.weight", 4, -1);
  for (int b = 0; b < blocks; ++b) {
    add("blocks." + std::to_string(b) + ".ln1.weight", 2, b);
    add("blocks." + std::to_string(b) + ".mlp_fc.weight", 6, b);
  }
  add("ln_f.weight", 2, -1);
  add("ln_f.bias", 2, -1);
  return l;
}

TEST(SyncMethods, FragmentsAreStridedOverBlocksAndCoverEveryParameterOnce) {
  const auto layout = layoutOf(4);
  auto frags = fragmentRanges(layout, 2);
  ASSERT_TRUE(frags.isOk()) << frags.status().message();
  ASSERT_EQ(frags->size(), 2u);
  // Fragment 0: embeddings (0..14) with block 0 (14..22) merged, block 2 (30..38).
  ASSERT_EQ((*frags)[0].size(), 2u);
  EXPECT_EQ((*frags)[0][0].offset, 0u);
  EXPECT_EQ((*frags)[0][0].count, 22u);
  EXPECT_EQ((*frags)[0][1].offset, 30u);
  EXPECT_EQ((*frags)[0][1].count, 8u);
  // Fragment 1: block 1 (22..30), block 3 and the final norm (38..50).
  ASSERT_EQ((*frags)[1].size(), 2u);
  EXPECT_EQ((*frags)[1][0].offset, 22u);
  EXPECT_EQ((*frags)[1][1].offset, 38u);
  EXPECT_EQ((*frags)[1][1].count, 12u);
  std::vector<int> covered(50, 0);
  for (const auto& f : *frags)
    for (const Range& r : f)
      for (std::size_t i = r.offset; i < r.offset + r.count; ++i) ++covered[i];
  for (int c : covered) EXPECT_EQ(c, 1);
  EXPECT_FALSE(fragmentRanges(layout, 5).isOk());
  EXPECT_FALSE(fragmentRanges(layout, 0).isOk());

  std::vector<float> all(50), out(rangesSize((*frags)[1])), back(50, -1.0f);
  for (std::size_t i = 0; i < all.size(); ++i) all[i] = static_cast<float>(i);
  gatherRanges(all, (*frags)[1], out);
  EXPECT_EQ(out.front(), 22.0f);
  EXPECT_EQ(out.back(), 49.0f);
  scatterRanges(out, (*frags)[1], back);
  EXPECT_EQ(back[22], 22.0f);
  EXPECT_EQ(back[0], -1.0f);
}

TEST(SyncMethods, StreamingScheduleSyncsEachFragmentEveryHWithItsOffset) {
  // H = 12, P = 3: rounds every 4 steps; fragment p syncs at steps ≡ 4p (mod 12).
  const std::uint32_t P = 3, S = 4, H = 12;
  std::map<std::uint32_t, std::vector<std::uint64_t>> steps;
  for (std::uint64_t r = 0; r < 9; ++r) steps[streamingFragment(r, P)].push_back((r + 1) * S);
  for (std::uint32_t p = 0; p < P; ++p) {
    ASSERT_EQ(steps[p].size(), 3u);
    for (std::size_t i = 0; i < steps[p].size(); ++i) {
      EXPECT_EQ(steps[p][i] % H, p * S);
      if (i > 0) {
        EXPECT_EQ(steps[p][i] - steps[p][i - 1], H);
      }
    }
  }
}

TEST(SyncMethods, MergeIsAlphaLocalPlusOneMinusAlphaGlobal) {
  std::vector<float> local = {1.0f, -4.0f};
  const std::vector<float> global = {3.0f, 0.0f};
  mergeFragment(local, global, 0.5f);
  EXPECT_EQ(local[0], 2.0f);
  EXPECT_EQ(local[1], -2.0f);
  mergeFragment(local, global, 0.25f);  // 0.25·2 + 0.75·3
  EXPECT_FLOAT_EQ(local[0], 2.75f);
}

TEST(SyncMethods, NolocoGroupsAreIdenticalOnEveryPeerAndCoverTheWorld) {
  std::vector<std::string> members = {"d", "a", "c", "b", "f", "e"};
  std::vector<std::string> reversed(members.rbegin(), members.rend());
  std::set<std::vector<std::vector<std::string>>> pairings;
  for (std::uint64_t round = 0; round < 12; ++round) {
    const auto g = nolocoGroups(members, round);
    EXPECT_EQ(g, nolocoGroups(reversed, round)) << "order-independent, round " << round;
    ASSERT_EQ(g.size(), 3u);
    std::set<std::string> seen;
    for (const auto& group : g) {
      EXPECT_EQ(group.size(), 2u);
      for (const auto& m : group) EXPECT_TRUE(seen.insert(m).second) << m << " twice";
    }
    EXPECT_EQ(seen.size(), 6u);
    // Every member finds the same group for itself.
    for (const auto& group : g)
      for (const auto& m : group) EXPECT_EQ(nolocoGroupOf(reversed, round, m), group);
    pairings.insert(g);
  }
  EXPECT_GT(pairings.size(), 4u) << "the pairing changes with the round";
}

TEST(SyncMethods, NolocoOddWorldHasOneGroupOfThreeAndWorldOneIsAlone) {
  for (std::size_t n : {3u, 5u, 7u}) {
    std::vector<std::string> m;
    for (std::size_t i = 0; i < n; ++i) m.push_back("p" + std::to_string(i));
    for (std::uint64_t round = 0; round < 5; ++round) {
      const auto g = nolocoGroups(m, round);
      std::size_t threes = 0, total = 0;
      for (const auto& group : g) {
        threes += group.size() == 3;
        EXPECT_TRUE(group.size() == 2 || group.size() == 3);
        total += group.size();
      }
      EXPECT_EQ(threes, 1u);
      EXPECT_EQ(total, n);
    }
  }
  const auto alone = nolocoGroups({"solo"}, 3);
  ASSERT_EQ(alone.size(), 1u);
  EXPECT_EQ(alone[0], std::vector<std::string>{"solo"});
  EXPECT_TRUE(nolocoGroupOf({"a", "b"}, 0, "z").empty());
}

TEST(SyncMethods, NolocoStepByHand) {
  // φ = 1, δ = 0.2, mean Δ = 0.4, mean φ = 0.5, α 0.5, β 0.7, γ 0.7:
  //   δ = 0.5·0.2 + 0.7·0.4 − 0.7·(1 − 0.5) = 0.1 + 0.28 − 0.35 = 0.03;  φ = 1.03.
  std::vector<float> phi = {1.0f}, delta = {0.2f};
  const std::vector<float> mean_delta = {0.4f}, mean_phi = {0.5f};
  nolocoStep(phi, delta, mean_delta, mean_phi, NolocoOptions{});
  EXPECT_NEAR(delta[0], 0.03, 1e-6);
  EXPECT_NEAR(phi[0], 1.03, 1e-6);
  // Alone (a lost partner): mean Δ = own Δ, mean φ = own φ: no pull, only momentum and Δ.
  std::vector<float> own = {1.03f};
  const std::vector<float> own_delta = {0.1f};
  nolocoStep(own, delta, own_delta, std::vector<float>{1.03f}, NolocoOptions{});
  EXPECT_NEAR(delta[0], 0.5 * 0.03 + 0.7 * 0.1, 1e-6);
  EXPECT_FALSE(validateNoloco({-1.0f, 0.7f, 0.7f}).isOk());
  EXPECT_TRUE(validateNoloco({}).isOk());
}

TEST(SyncMethods, OverlapNamesRoundTrip) {
  for (Overlap o : {Overlap::kNone, Overlap::kEager, Overlap::kNaive}) {
    auto p = parseOverlap(overlapName(o));
    ASSERT_TRUE(p.isOk());
    EXPECT_EQ(*p, o);
  }
  EXPECT_FALSE(parseOverlap("late").isOk());
}

}  // namespace
}  // namespace loco::training
