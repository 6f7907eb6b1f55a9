// Gradient accumulation equals one big batch (to fp32 rounding), and an identity-derived stream
// really changes the batches a trainer draws.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "small_trainer.h"
#include "temp_dir.h"
#include "training/accumulate.h"
#include "training/data_assignment.h"
#include "training/local_trainer.h"

namespace loco::training {
namespace {

using small::config;
using small::corpus;
using small::relativeError;
using small::trainer;

TEST(Accumulate, MicroBatchesEqualOneBigBatch) {
  for (std::uint32_t k : {2u, 4u, 8u}) {
    const std::uint32_t batch = 24;
    auto big = trainer(batch);
    auto small = trainer(batch / k);
    ASSERT_TRUE(big && small);
    const MicroPlan whole{1, batch};
    const MicroPlan plan = microPlan(batch, batch / k);
    ASSERT_EQ(plan.micro_batches, k);
    for (std::uint64_t step : {0u, 5u}) {
      auto l1 = accumulateGradients(*big, step, whole);
      auto l2 = accumulateGradients(*small, step, plan);
      ASSERT_TRUE(l1.isOk() && l2.isOk());
      EXPECT_NEAR(*l1, *l2, 1e-5 * std::abs(*l1));
      const double err = relativeError(small->gradData(), big->gradData(), big->numParams());
      EXPECT_LT(err, 1e-5) << "k=" << k << " step " << step;
    }
    // Whole steps (clipping and AdamW included) keep the two trainers together.
    std::vector<float> grad(big->numParams());
    for (std::uint64_t step = 0; step < 3; ++step) {
      ASSERT_TRUE(accumulatedInnerStep(*big, step, whole).isOk());
      ASSERT_TRUE(accumulatedInnerStep(*small, step, plan, grad).isOk());
    }
    EXPECT_LT(relativeError(small->paramData(), big->paramData(), big->numParams()), 1e-5);
    double norm = 0;
    for (float g : grad) norm += double(g) * g;
    EXPECT_GT(norm, 0) << "the unclipped gradient was copied out";
  }
}

TEST(Accumulate, ADifferentStreamDrawsDifferentBatches) {
  auto a = trainer(8);
  auto b = trainer(8);
  ASSERT_TRUE(a && b);
  auto la = a->computeBackward(0);
  auto lb = b->computeBackward(0);
  ASSERT_TRUE(la.isOk() && lb.isOk());
  EXPECT_EQ(*la, *lb) << "same seed, same rank: same batch";
  ASSERT_TRUE(b->setShard(0, 1, streamOf("0123456789abcdef0123456789abcdef")).isOk());
  auto lc = b->computeBackward(0);
  ASSERT_TRUE(lc.isOk());
  EXPECT_NE(*la, *lc);
  EXPECT_FALSE(b->setShard(2, 2, std::nullopt).isOk()) << "rank must be below world";
}

}  // namespace
}  // namespace loco::training
