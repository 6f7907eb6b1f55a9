#pragma once
// Inner-step throughput of one peer (what `loco bench train` reports). No LibTorch in the header.
//
// Blocks for warmup + steps inner steps. Sets the process's torch thread count (setThreads).

#include <cstdint>
#include <memory>
#include <string>

#include "p2p/base/status.h"
#include "training/model_config.h"
#include "training/text_data.h"

namespace loco::training {

struct TrainBenchOptions {
  ModelConfig model;  // default: the 0.43M reference model
  std::uint32_t batch_size = 16;
  int threads = 1;
  std::uint32_t warmup_steps = 3;             // not timed (allocator and OpenMP pool warm-up)
  std::uint32_t steps = 20;                   // timed, 1..100000
  std::string data_path{kDefaultCorpusPath};  // ignored when a corpus is passed in
};

struct TrainBenchResult {
  TrainBenchOptions options;
  std::uint64_t params = 0;
  double mean_ms = 0;  // whole inner step
  double p50_ms = 0;
  double fwd_bwd_ms = 0;    // mean of computeBackward
  double optimizer_ms = 0;  // mean of applyGrads (clip + AdamW)
  double tokens_per_s = 0;  // batch·context / mean step time
  float first_loss = 0;
  float last_loss = 0;

  // {"bench":"train","width":128,...,"ms_per_step":..,"tokens_per_s":..} on one line.
  std::string toJson() const;
};

// Errors: those of LocalTrainer::create and innerStep; kInvalidArgument for steps out of range.
Result<TrainBenchResult> benchTrain(const TrainBenchOptions& options,
                                    std::shared_ptr<const TextCorpus> corpus = nullptr);

}  // namespace loco::training
