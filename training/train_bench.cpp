#include "training/train_bench.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <vector>

#include "p2p/base/json.h"
#include "training/local_trainer.h"

namespace loco::training {

std::string TrainBenchResult::toJson() const {
  const ModelConfig& m = options.model;
  return jsonDump({{"bench", "train"},
                   {"width", m.width},
                   {"layers", m.layers},
                   {"heads", m.heads},
                   {"context", m.context},
                   {"batch", options.batch_size},
                   {"threads", options.threads},
                   {"params", params},
                   {"steps", options.steps},
                   {"ms_per_step", jsonFixed(mean_ms, 2)},
                   {"p50_ms", jsonFixed(p50_ms, 2)},
                   {"fwd_bwd_ms", jsonFixed(fwd_bwd_ms, 2)},
                   {"optimizer_ms", jsonFixed(optimizer_ms, 2)},
                   {"tokens_per_s", jsonFixed(tokens_per_s, 0)},
                   {"first_loss", jsonFixed(first_loss, 4)},
                   {"last_loss", jsonFixed(last_loss, 4)}});
}

Result<TrainBenchResult> benchTrain(const TrainBenchOptions& options,
                                    std::shared_ptr<const TextCorpus> corpus) {
  if (options.steps == 0 || options.steps > 100000 || options.warmup_steps > 100000) {
    return Status(
        StatusCode::kInvalidArgument,
        fmt::format("bench train: {} steps after {} warm-up steps is out of range (1..100000)",
                    options.steps, options.warmup_steps));
  }
  TrainConfig config;
  config.model = options.model;
  config.batch_size = options.batch_size;
  config.threads = options.threads;
  config.data.path = options.data_path;
  config.inner.schedule.total_steps = options.warmup_steps + options.steps;
  config.inner.schedule.warmup_steps = std::min<std::uint64_t>(config.inner.schedule.warmup_steps,
                                                               config.inner.schedule.total_steps);
  auto trainer =
      corpus ? LocalTrainer::create(config, std::move(corpus)) : LocalTrainer::create(config);
  if (!trainer.isOk()) return trainer.status();
  LocalTrainer& t = **trainer;

  using Clock = std::chrono::steady_clock;
  auto ms = [](Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); };
  TrainBenchResult r;
  r.options = options;
  r.params = t.numParams();
  std::vector<double> steps;
  double fwd_bwd = 0;
  double opt = 0;
  for (std::uint64_t s = 0; s < std::uint64_t{options.warmup_steps} + options.steps; ++s) {
    const auto t0 = Clock::now();
    Result<float> loss = t.computeBackward(s);
    if (!loss.isOk()) return loss.status();
    const auto t1 = Clock::now();
    Result<double> norm = t.applyGrads(s);
    if (!norm.isOk()) return norm.status();
    const auto t2 = Clock::now();
    if (s == 0) r.first_loss = *loss;
    r.last_loss = *loss;
    if (s < options.warmup_steps) continue;
    steps.push_back(ms(t2 - t0));
    fwd_bwd += ms(t1 - t0);
    opt += ms(t2 - t1);
  }
  const double n = static_cast<double>(steps.size());
  for (double x : steps) r.mean_ms += x / n;
  std::sort(steps.begin(), steps.end());
  r.p50_ms = steps[steps.size() / 2];
  r.fwd_bwd_ms = fwd_bwd / n;
  r.optimizer_ms = opt / n;
  r.tokens_per_s =
      static_cast<double>(options.batch_size) * options.model.context / (r.mean_ms / 1000.0);
  return r;
}

}  // namespace loco::training
