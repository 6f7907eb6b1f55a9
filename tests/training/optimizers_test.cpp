// Outer SGD (Nesterov, FedAvg), inner AdamW, clipping, schedule, NaN checks, model shapes.

#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "training/model_config.h"
#include "training/optimizers.h"

namespace loco::training {
namespace {

TEST(OuterSgd, NesterovMatchesAHandComputedThreeStepReference) {
  // θ0 = 1, lr 0.7, μ 0.9, Δ = 0.5, −0.2, 0.1 (PyTorch: b = Δ first, then b = μb + Δ;
  // θ −= lr·(Δ + μb)):
  //   b1 = 0.5    θ1 = 1 − 0.7·(0.5 + 0.45)      = 0.335
  //   b2 = 0.25   θ2 = 0.335 − 0.7·(−0.2 + 0.225) = 0.3175
  //   b3 = 0.325  θ3 = 0.3175 − 0.7·(0.1 + 0.2925) = 0.04275
  OuterSgd opt(2, OuterSgdOptions::diloco());
  std::vector<float> theta = {1.0f, -2.0f};
  const float deltas[3] = {0.5f, -0.2f, 0.1f};
  const double expect_theta[3] = {0.335, 0.3175, 0.04275};
  const double expect_b[3] = {0.5, 0.25, 0.325};
  for (int s = 0; s < 3; ++s) {
    std::vector<float> delta = {deltas[s], -2 * deltas[s]};
    ASSERT_TRUE(opt.step(theta, delta).isOk());
    EXPECT_NEAR(theta[0], expect_theta[s], 1e-6) << "step " << s;
    EXPECT_NEAR(opt.momentum()[0], expect_b[s], 1e-6) << "step " << s;
    // Second element: every Δ scaled by −2 → θ − θ0 scaled by −2.
    EXPECT_NEAR(theta[1], -2.0 - 2 * (expect_theta[s] - 1.0), 1e-6) << "step " << s;
  }
}

TEST(OuterSgd, FirstStepMomentumIsTheDeltaItself) {
  OuterSgd opt(3, OuterSgdOptions::diloco());
  EXPECT_TRUE(opt.momentum().empty());
  std::vector<float> theta = {0, 0, 0};
  std::vector<float> delta = {1, 2, 3};
  ASSERT_TRUE(opt.step(theta, delta).isOk());
  EXPECT_EQ(opt.momentum(), delta);
  // θ = −lr·(1 + μ)·Δ
  EXPECT_FLOAT_EQ(theta[2], -0.7f * 1.9f * 3.0f);
}

TEST(OuterSgd, PlainMomentumStepsByTheBuffer) {
  OuterSgd opt(1, OuterSgdOptions{0.5f, 0.9f, false});
  std::vector<float> theta = {0};
  std::vector<float> d = {1};
  ASSERT_TRUE(opt.step(theta, d).isOk());  // b = 1, θ = −0.5
  ASSERT_TRUE(opt.step(theta, d).isOk());  // b = 1.9, θ = −0.5 − 0.95
  EXPECT_FLOAT_EQ(theta[0], -1.45f);
}

TEST(OuterSgd, FedAvgGivesTheMeanOfTheLocalParameters) {
  const std::vector<float> global = {1.0f, -3.0f, 0.25f, 10.0f};
  const std::vector<std::vector<float>> locals = {
      {0.5f, -2.0f, 0.0f, 9.0f}, {1.5f, -4.5f, 1.0f, 12.0f}, {0.0f, -3.0f, 0.5f, 8.5f}};
  std::vector<float> mean_delta(global.size(), 0.0f);
  for (const auto& local : locals) {
    std::vector<float> delta(global.size());
    pseudoGradient(global, local, delta);
    for (std::size_t i = 0; i < delta.size(); ++i) mean_delta[i] += delta[i] / 3.0f;
  }
  OuterSgd opt(global.size(), OuterSgdOptions::fedAvg());
  std::vector<float> theta = global;
  ASSERT_TRUE(opt.step(theta, mean_delta).isOk());
  for (std::size_t i = 0; i < theta.size(); ++i) {
    const float mean_local = (locals[0][i] + locals[1][i] + locals[2][i]) / 3.0f;
    EXPECT_NEAR(theta[i], mean_local, 1e-5) << i;
  }
  EXPECT_TRUE(opt.momentum().empty()) << "FedAvg keeps no momentum";
}

TEST(OuterSgd, PseudoGradientIsOldMinusNew) {
  std::vector<float> delta(2);
  pseudoGradient(std::vector<float>{1.0f, 1.0f}, std::vector<float>{0.75f, 1.5f}, delta);
  EXPECT_FLOAT_EQ(delta[0], 0.25f);
  EXPECT_FLOAT_EQ(delta[1], -0.5f);
}

TEST(OuterSgd, RejectsMismatchedSizesWithoutTouchingAnything) {
  OuterSgd opt(3, OuterSgdOptions::diloco());
  std::vector<float> theta = {1, 2, 3};
  std::vector<float> delta = {1, 2};
  EXPECT_EQ(opt.step(theta, delta).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(theta, (std::vector<float>{1, 2, 3}));
  EXPECT_EQ(opt.restoreMomentum({1, 2}).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(validateOuter({0.7f, 1.0f, true}).code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(validateOuter(OuterSgdOptions::diloco()).isOk());
}

TEST(NonFinite, FindsTheFirstNaNOrInf) {
  std::vector<float> v(100, 1.0f);
  std::size_t bad = 0;
  EXPECT_TRUE(allFinite(v, &bad));
  EXPECT_EQ(findNonFinite(v), v.size());
  v[70] = std::numeric_limits<float>::infinity();
  v[42] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_FALSE(allFinite(v, &bad));
  EXPECT_EQ(bad, 42u);
  v[42] = 0;
  EXPECT_EQ(findNonFinite(v), 70u);
  v[70] = -std::numeric_limits<float>::infinity();
  EXPECT_EQ(findNonFinite(v), 70u);
}

TEST(AdamW, FirstStepMovesEachParameterByAboutLrAgainstItsGradient) {
  // Bias correction makes the first update lr·g/|g| (plus decoupled weight decay).
  AdamW opt({1, 0}, AdamWOptions{});
  std::vector<float> p = {1.0f, 1.0f};
  std::vector<float> g = {0.3f, -2.0f};
  opt.step(p, g, 0.01f);
  EXPECT_NEAR(p[0], 1.0f * (1 - 0.01f * 0.1f) - 0.01f, 1e-6);  // decayed
  EXPECT_NEAR(p[1], 1.0f + 0.01f, 1e-6);                       // not decayed
  EXPECT_EQ(opt.state().steps, 1u);
  EXPECT_NEAR(opt.state().m[1], -0.2f, 1e-7);
  EXPECT_NEAR(opt.state().v[1], 0.05f * 4.0f, 1e-7);
}

TEST(AdamW, SecondStepMatchesTorchFormula) {
  AdamWOptions o;
  o.weight_decay = 0;
  AdamW opt({0}, o);
  std::vector<float> p = {0.0f};
  std::vector<float> g1 = {1.0f};
  std::vector<float> g2 = {-0.5f};
  opt.step(p, g1, 0.1f);
  opt.step(p, g2, 0.1f);
  const double m = 0.9 * 0.1 * 1.0 + 0.1 * -0.5;
  const double v = 0.95 * 0.05 * 1.0 + 0.05 * 0.25;
  const double expected =
      -0.1 - 0.1 / (1 - 0.81) * m / (std::sqrt(v) / std::sqrt(1 - 0.9025) + 1e-8);
  EXPECT_NEAR(p[0], expected, 1e-6);
}

TEST(Clip, ScalesToTheMaxNormAndReportsTheNormBefore) {
  std::vector<float> g = {3.0f, 4.0f};
  EXPECT_DOUBLE_EQ(clipGlobalNorm(g, 1.0), 5.0);
  EXPECT_NEAR(g[0], 0.6f, 1e-6);
  EXPECT_NEAR(g[1], 0.8f, 1e-6);
  std::vector<float> small = {0.3f, 0.4f};
  EXPECT_NEAR(clipGlobalNorm(small, 1.0), 0.5, 1e-7);
  EXPECT_FLOAT_EQ(small[0], 0.3f);
  std::vector<float> nan = {std::numeric_limits<float>::quiet_NaN(), 1.0f};
  EXPECT_FALSE(std::isfinite(clipGlobalNorm(nan, 1.0)));
  EXPECT_EQ(nan[1], 1.0f);
}

TEST(Schedule, WarmsUpLinearlyThenDecaysByCosineToTheFloor) {
  LrSchedule s{.lr = 1.0f, .min_lr_ratio = 0.1f, .warmup_steps = 10, .total_steps = 110};
  EXPECT_FLOAT_EQ(s.at(0), 0.1f);
  EXPECT_FLOAT_EQ(s.at(4), 0.5f);
  EXPECT_FLOAT_EQ(s.at(10), 1.0f);
  EXPECT_NEAR(s.at(60), 0.55f, 1e-6);  // halfway down the cosine
  EXPECT_FLOAT_EQ(s.at(110), 0.1f);
  EXPECT_FLOAT_EQ(s.at(100000), 0.1f);
  for (std::uint64_t i = 11; i <= 110; ++i) EXPECT_LE(s.at(i), s.at(i - 1)) << i;
  EXPECT_EQ(validateInner({}, LrSchedule{.warmup_steps = 700, .total_steps = 600}).code(),
            StatusCode::kInvalidArgument);
}

TEST(ModelShape, ReferenceModelHas437760ParametersWithATiedHead) {
  ModelConfig c;  // width 128, 2 layers, 4 heads, context 64
  ASSERT_TRUE(validateModelConfig(c).isOk());
  EXPECT_EQ(paramCount(c), 437760u);
}

TEST(ModelShape, InvalidShapesAreRefusedNamingTheField) {
  ModelConfig c;
  c.width = 130;
  Status s = validateModelConfig(c);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("multiple of heads"), std::string::npos) << s.toString();
  c = {};
  c.vocab = 300;
  EXPECT_NE(validateModelConfig(c).message().find("vocab"), std::string::npos);
  c = {};
  c.layers = 0;
  EXPECT_NE(validateModelConfig(c).message().find("layers"), std::string::npos);
  c = {};
  c.context = 0;
  EXPECT_NE(validateModelConfig(c).message().find("context"), std::string::npos);
}

}  // namespace
}  // namespace loco::training
