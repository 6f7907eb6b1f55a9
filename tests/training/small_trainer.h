// A small trainer on a built-in corpus, and a relative error between two tensors' values: what
// the accumulation and switch-mode tests compare one big batch against micro-batches with.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <memory>

#include "temp_dir.h"
#include "training/local_trainer.h"

namespace loco::training::small {

inline TrainConfig config(std::uint32_t batch) {
  TrainConfig c;
  c.model = ModelConfig{.width = 32, .layers = 2, .heads = 2, .context = 16, .vocab = kVocabSize};
  c.batch_size = batch;
  c.seed = 7;
  c.inner.schedule =
      LrSchedule{.lr = 1e-2f, .min_lr_ratio = 0.1f, .warmup_steps = 2, .total_steps = 20};
  c.eval = EvalConfig{.batches = 2, .batch_size = 4};
  return c;
}

inline std::shared_ptr<const TextCorpus> corpus() {
  static auto c = *TextCorpus::fromBytes(encodeText(testing::sampleText(20000)), 0.05, 16, "text");
  return c;
}

inline std::unique_ptr<LocalTrainer> trainer(std::uint32_t batch) {
  auto r = LocalTrainer::create(config(batch), corpus());
  EXPECT_TRUE(r.isOk()) << r.status().toString();
  return r.isOk() ? std::move(r).value() : nullptr;
}

inline double relativeError(const float* a, const float* b, std::size_t n) {
  double diff = 0, ref = 0;
  for (std::size_t i = 0; i < n; ++i) {
    diff += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    ref += double(b[i]) * b[i];
  }
  return std::sqrt(diff / ref);
}

}  // namespace loco::training::small
