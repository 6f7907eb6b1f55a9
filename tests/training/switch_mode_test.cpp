// The adaptive batch's shared state and switch mode: the learning-rate schedule that counts
// samples (and gives today's values with a fixed batch), the batch fields of checkpoints (and
// version-1 files without them), the micro-batch plans of each switch mode against hand
// computations, accumulation under switch mode against one big batch, and calibration.
#include <gtest/gtest.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "small_trainer.h"
#include "temp_dir.h"
#include "training/accumulate.h"
#include "training/batch_state.h"
#include "training/calibrate.h"
#include "training/checkpoint.h"
#include "training/local_trainer.h"
#include "training/switch_mode.h"

namespace loco::training {
namespace {

// With --batch-test none the batch is b throughout: the position of every step of every round is
// the step itself, so every learning rate is bit for bit the one a step-counting schedule gives.
// This is exactly the call distributed.cpp makes (round start, samples = start·b).
TEST(SampleSchedule, AFixedBatchGivesTheStepScheduleExactly) {
  const LrSchedule sched{
      .lr = 3e-3f, .min_lr_ratio = 0.1f, .warmup_steps = 200, .total_steps = 600};
  for (std::uint32_t b : {1u, 4u, 16u, 1000u}) {
    for (std::uint32_t h : {1u, 10u, 30u}) {
      std::uint64_t samples = 0;
      for (std::uint64_t start = 0; start < 650; start += h) {
        for (std::uint64_t s = start; s < start + h; ++s) {
          const std::uint64_t pos = scheduleStepOf(s, start, samples, b, b);
          ASSERT_EQ(pos, s) << "b " << b << " H " << h;
          const float a = sched.at(pos), want = sched.at(s);
          ASSERT_EQ(std::memcmp(&a, &want, sizeof a), 0);
        }
        samples = advanceSamples(samples, h, b);
        ASSERT_EQ(samples, (start + h) * b);
      }
    }
  }
}

// By hand: --batch 4, 10 steps at 4 (40 samples), then the batch grows to 8. Step 15 of the
// second round is 5 steps of 8 further: (40 + 40) / 4 = 20 steps of the starting batch; the
// warm-up of 20 steps is over there instead of at step 20.
TEST(SampleSchedule, AGrownBatchMovesTheScheduleFaster) {
  const std::uint64_t after_round = advanceSamples(0, 10, 4);
  EXPECT_EQ(after_round, 40u);
  EXPECT_EQ(scheduleStepOf(10, 10, after_round, 8, 4), 10u);
  EXPECT_EQ(scheduleStepOf(15, 10, after_round, 8, 4), 20u);
  EXPECT_EQ(scheduleStepOf(19, 10, after_round, 8, 4), 28u);
  // Whole steps of the starting batch: 3 samples past a step boundary stay on it.
  EXPECT_EQ(scheduleStep(43, 4), 10u);
  EXPECT_EQ(scheduleStep(44, 4), 11u);
  const LrSchedule sched{.lr = 1.0f, .min_lr_ratio = 0.1f, .warmup_steps = 20, .total_steps = 100};
  EXPECT_FLOAT_EQ(sched.at(scheduleStepOf(15, 10, after_round, 8, 4)), sched.at(20));
  EXPECT_LT(sched.at(scheduleStepOf(19, 10, after_round, 8, 4)), sched.at(19))
      << "past the warm-up the samples schedule is further into the decay";
  // Saturates instead of wrapping.
  EXPECT_EQ(advanceSamples(~std::uint64_t{0} - 1, 5, 3), ~std::uint64_t{0});
}

TrainingState smallState() {
  TrainingState s;
  s.model = ModelConfig{.width = 8, .layers = 1, .heads = 2, .context = 8, .vocab = kVocabSize};
  s.params.assign(paramCount(s.model), 0.25f);
  s.seed = 3;
  s.step = 70;
  s.outer_step = 7;
  return s;
}

std::string readAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

TEST(Checkpoint, StoresTheBatchAndTheStreamingStepsAndReadsVersions1And2) {
  testing::TempDir dir;
  const std::string path = dir.file("ckpt.bin");
  TrainingState s = smallState();
  s.batch = 23;
  s.schedule_samples = 1234;
  s.local_step = 75;
  s.pending_steps = 5;
  s.pending_losses = 4;
  s.pending_loss_sum = 9.25;
  ASSERT_TRUE(saveCheckpoint(path, s).isOk());
  auto loaded = loadCheckpoint(path);
  ASSERT_TRUE(loaded.isOk()) << loaded.status().toString();
  EXPECT_EQ(loaded->batch, 23u);
  EXPECT_EQ(loaded->schedule_samples, 1234u);
  EXPECT_EQ(loaded->step, 70u);
  EXPECT_EQ(loaded->local_step, 75u);
  EXPECT_EQ(loaded->pending_steps, 5u);
  EXPECT_EQ(loaded->pending_losses, 4u);
  EXPECT_EQ(loaded->pending_loss_sum, 9.25);

  // Older files: the same bytes without the fields their version lacks (version 2: the four
  // streaming fields; version 1: the two batch fields too), that version, their checksum.
  const std::string bytes = readAll(path);
  const std::size_t body = bytes.size() - 8;  // before the checksum
  auto older = [&](std::uint32_t version, std::size_t cut) {
    std::string v = bytes.substr(0, body - cut);
    std::memcpy(v.data() + 8, &version, sizeof version);
    const std::uint64_t sum = XXH3_64bits(v.data(), v.size());
    v.append(reinterpret_cast<const char*>(&sum), sizeof sum);
    std::ofstream(path, std::ios::binary | std::ios::trunc) << v;
    return loadCheckpoint(path);
  };
  auto v2 = older(2, 32);
  ASSERT_TRUE(v2.isOk()) << v2.status().toString();
  EXPECT_EQ(v2->batch, 23u);
  EXPECT_EQ(v2->local_step, 0u) << "version 2 has no streaming steps";
  EXPECT_EQ(v2->pending_loss_sum, 0.0);
  auto v1 = older(1, 48);
  ASSERT_TRUE(v1.isOk()) << v1.status().toString();
  EXPECT_EQ(v1->batch, 0u) << "version 1 has no batch";
  EXPECT_EQ(v1->schedule_samples, 0u);
  EXPECT_EQ(v1->params, s.params);

  // A version-3 file cut before its streaming fields, or a version-2 one before its batch
  // fields (checksums recomputed), is refused.
  for (auto [version, cut] : {std::pair<std::uint32_t, std::size_t>{3, 32}, {2, 48}}) {
    auto bad = older(version, cut);
    ASSERT_FALSE(bad.isOk()) << version;
    EXPECT_EQ(bad.status().code(), StatusCode::kDataLoss) << bad.status().toString();
  }
}

TEST(SwitchMode, PlansMatchHandComputations) {
  const MicroLimits lim{.b_max = 16, .b_mem = 40};
  auto plan = [&](SwitchMode m, std::uint32_t b) {
    const MicroPlan p = switchPlan(m, b, lim, 0);
    return std::pair<std::uint32_t, std::uint32_t>(p.micro_batches, p.micro_size);
  };
  using P = std::pair<std::uint32_t, std::uint32_t>;
  // threshold: one pass up to 2·b_max = 32 (fits b_mem 40); 33 -> ⌈33/16⌉ = 3 of 11;
  // 128 = 8·b_max -> 8 of 16.
  EXPECT_EQ(plan(SwitchMode::kThreshold, 16), P(1, 16));
  EXPECT_EQ(plan(SwitchMode::kThreshold, 32), P(1, 32));
  EXPECT_EQ(plan(SwitchMode::kThreshold, 33), P(3, 11));
  EXPECT_EQ(plan(SwitchMode::kThreshold, 128), P(8, 16));
  // accumulate: split as soon as b > b_max.
  EXPECT_EQ(plan(SwitchMode::kAccumulate, 16), P(1, 16));
  EXPECT_EQ(plan(SwitchMode::kAccumulate, 17), P(2, 9));
  EXPECT_EQ(plan(SwitchMode::kAccumulate, 128), P(8, 16));
  // loader: one pass while it fits b_mem 40; 41 -> 2 of 21; 128 -> ⌈128/40⌉ = 4 of 32.
  EXPECT_EQ(plan(SwitchMode::kLoader, 40), P(1, 40));
  EXPECT_EQ(plan(SwitchMode::kLoader, 41), P(2, 21));
  EXPECT_EQ(plan(SwitchMode::kLoader, 128), P(4, 32));
  // threshold when memory binds before 2·b_max: b_max 16, b_mem 20: 24 -> 2 of 12.
  EXPECT_EQ(switchPlan(SwitchMode::kThreshold, 24, {.b_max = 16, .b_mem = 20}, 0).micro_batches,
            2u);
  // none: --max-micro-batch as given.
  EXPECT_EQ(switchPlan(SwitchMode::kNone, 128, lim, 0).micro_batches, 1u);
  EXPECT_EQ(switchPlan(SwitchMode::kNone, 128, lim, 32).micro_batches, 4u);
  // No budget: loader never splits.
  EXPECT_EQ(switchPlan(SwitchMode::kLoader, 4096, {.b_max = 8, .b_mem = 0}, 0).micro_batches, 1u);
  EXPECT_TRUE(parseSwitchMode("threshold").isOk());
  EXPECT_FALSE(parseSwitchMode("always").isOk());
}

using small::config;
using small::corpus;
using small::relativeError;
using small::trainer;

// E8's unit half: a batch of 8·b_max under threshold mode is 8 micro-batches of b_max, and its
// gradient (and a whole inner step with the samples schedule's position) equals one pass over
// the whole batch within 1e-5 relative.
TEST(SwitchMode, EightTimesBMaxUnderThresholdEqualsOneBigBatch) {
  const MicroLimits lim{.b_max = 4, .b_mem = 6};
  const MicroPlan plan = switchPlan(SwitchMode::kThreshold, 32, lim, 0);
  ASSERT_EQ(plan.micro_batches, 8u);
  ASSERT_EQ(plan.micro_size, 4u);
  auto big = trainer(32);
  auto small = trainer(4);
  ASSERT_TRUE(big && small);
  for (std::uint64_t step : {0u, 3u}) {
    auto l1 = accumulateGradients(*big, step, MicroPlan{1, 32});
    auto l2 = accumulateGradients(*small, step, plan);
    ASSERT_TRUE(l1.isOk() && l2.isOk());
    EXPECT_NEAR(*l1, *l2, 1e-5 * std::abs(*l1));
    EXPECT_LT(relativeError(small->gradData(), big->gradData(), big->numParams()), 1e-5);
  }
  for (std::uint64_t step = 0; step < 3; ++step) {
    const std::uint64_t lr_step = scheduleStepOf(step, 0, 0, 32, 4);  // 8 steps of --batch 4 each
    ASSERT_TRUE(accumulatedInnerStep(*big, step, MicroPlan{1, 32}, {}, lr_step).isOk());
    ASSERT_TRUE(accumulatedInnerStep(*small, step, plan, {}, lr_step).isOk());
  }
  EXPECT_LT(relativeError(small->paramData(), big->paramData(), big->numParams()), 1e-5);
}

// lr_step is only the schedule's position: unset and equal to the step give the same bits, and
// another position gives another update.
TEST(SwitchMode, TheScheduleStepOnlyMovesTheLearningRate) {
  auto a = trainer(4), b = trainer(4), c = trainer(4);
  ASSERT_TRUE(a && b && c);
  const MicroPlan one{1, 4};
  ASSERT_TRUE(accumulatedInnerStep(*a, 1, one).isOk());
  ASSERT_TRUE(accumulatedInnerStep(*b, 1, one, {}, 1).isOk());
  ASSERT_TRUE(accumulatedInnerStep(*c, 1, one, {}, 10).isOk());
  const std::size_t n = a->numParams();
  EXPECT_EQ(std::memcmp(a->paramData(), b->paramData(), n * sizeof(float)), 0);
  EXPECT_NE(std::memcmp(a->paramData(), c->paramData(), n * sizeof(float)), 0);
}

TEST(Calibration, MeasuresWithinTheBudgetAndRestoresTheBatch) {
  auto t = trainer(4);
  ASSERT_TRUE(t);
  CalibrationOptions o;
  o.largest = 64;
  auto c = calibrateMicroBatch(*t, o);
  ASSERT_TRUE(c.isOk()) << c.status().toString();
  EXPECT_EQ(t->config().batch_size, 4u) << "restored";
  ASSERT_FALSE(c->probes.empty());
  EXPECT_EQ(c->probes.front().batch, 1u);
  for (std::size_t i = 1; i < c->probes.size(); ++i)
    EXPECT_EQ(c->probes[i].batch, 2 * c->probes[i - 1].batch);
  EXPECT_LE(c->probes.back().batch, 64u);
  EXPECT_GE(c->limits.b_max, 1u);
  EXPECT_LE(c->limits.b_max, 64u);
  EXPECT_EQ(c->limits.b_mem, 0u) << "no budget";
  EXPECT_LT(c->seconds, 20.0);

  // A budget below what the process already holds: refused, naming the flag.
  CalibrationOptions tight = o;
  tight.memory_budget_bytes = 1 << 20;
  auto r = calibrateMicroBatch(*t, tight);
  ASSERT_FALSE(r.isOk());
  EXPECT_EQ(r.status().code(), StatusCode::kResourceExhausted);
  EXPECT_NE(r.status().message().find("--memory-budget-mib"), std::string::npos);

  // A budget just above the current resident set: b_mem is bounded and b_max within it, and no
  // probe that counted as fitting went over the budget's share for passes.
  CalibrationOptions some = o;
  some.memory_budget_bytes =
      static_cast<std::uint64_t>((currentRssBytes() + (64 << 20)) / kHeadroom +
                                 t->numParams() * kReservedFloatsPerParam * sizeof(float));
  auto m = calibrateMicroBatch(*t, some);
  ASSERT_TRUE(m.isOk()) << m.status().toString();
  EXPECT_GE(m->limits.b_mem, m->limits.b_max);
  EXPECT_GE(m->limits.b_max, 1u);
  for (const auto& p : m->probes) {
    if (p.batch <= m->limits.b_max) {
      EXPECT_LE(p.peak_rss_bytes, static_cast<double>(some.memory_budget_bytes)) << p.batch;
    }
  }
}

}  // namespace
}  // namespace loco::training
