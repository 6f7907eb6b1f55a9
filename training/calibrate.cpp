#include "training/calibrate.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <string>

#include "p2p/base/log.h"

namespace loco::training {
namespace {

double procStatusBytes(const char* key) {
  std::ifstream in("/proc/self/status");
  const std::string k(key);
  for (std::string line; std::getline(in, line);) {
    if (line.rfind(k, 0) == 0) return std::strtod(line.c_str() + k.size(), nullptr) * 1024.0;
  }
  return 0;
}

constexpr int kMinPasses = 3;
constexpr int kMaxPasses = 12;
constexpr double kMinProbeSeconds = 0.1;
constexpr int kFlatProbesToStop = 2;

// Starts the peak resident set (VmHWM) again from the current one, so that what calibration
// reads is its own passes' peak, not the corpus loading's. Best effort: without it, the peaks
// are higher than the passes need (a smaller b_mem, never a larger one).
void resetPeakRss() {
  std::ofstream("/proc/self/clear_refs") << "5";
}

}  // namespace

double peakRssBytes() {
  return procStatusBytes("VmHWM:");
}
double currentRssBytes() {
  return procStatusBytes("VmRSS:");
}

Result<Calibration> calibrateMicroBatch(LocalTrainer& trainer, const CalibrationOptions& options) {
  const auto t0 = Clock::now();
  const Deadline until = Deadline::after(options.time_limit);
  const std::uint32_t restore = trainer.config().batch_size;
  const double context = trainer.config().model.context;
  // What the run allocates after calibration (AdamW's moments, the outer parameters and
  // momentum, the all-reduce buffers): about kReservedFloatsPerParam floats per parameter, or
  // 1 − kHeadroom of the budget, whichever is more.
  const double total = static_cast<double>(options.memory_budget_bytes);
  const double reserve =
      std::max(total * (1 - kHeadroom),
               static_cast<double>(trainer.numParams()) * kReservedFloatsPerParam * sizeof(float));
  const bool has_budget = total > 0;
  const double budget = total - reserve;  // for the passes; may be negative
  const std::uint32_t largest = std::clamp<std::uint32_t>(options.largest, 1, 65536);
  Calibration c;
  // One validation pass first: the run evaluates too, and its peak counts.
  auto val = trainer.validationLoss();
  if (!val) return val.status();
  resetPeakRss();
  c.base_rss_bytes = currentRssBytes();
  if (has_budget && c.base_rss_bytes > budget) {
    return Status(StatusCode::kResourceExhausted,
                  fmt::format("--memory-budget-mib {}: the model and data alone take {:.0f} MiB, "
                              "and {:.0f} MiB are kept for the run's buffers",
                              options.memory_budget_bytes >> 20, c.base_rss_bytes / (1 << 20),
                              reserve / (1 << 20)));
  }
  double best_tps = 0;
  std::uint32_t best_b = 0, fit_b = 0;
  int flat = 0;
  auto finish = [&](std::string why) -> Result<Calibration> {
    Status st = trainer.setBatchSize(restore);
    if (!st.isOk()) return st;
    if (fit_b == 0) {
      return Status(StatusCode::kResourceExhausted,
                    fmt::format("--memory-budget-mib {}: not even one window's backward pass fits "
                                "(peak {:.0f} MiB, {:.0f} MiB kept for the run's buffers)",
                                options.memory_budget_bytes >> 20, peakRssBytes() / (1 << 20),
                                reserve / (1 << 20)));
    }
    c.stopped_by = std::move(why);
    c.limits.b_max = std::max<std::uint32_t>(1, std::min(best_b, fit_b));
    if (has_budget) {
      // Extend along the line through the probes that fitted: memory grows about linearly
      // with the micro-batch (activations), from the model's fixed part.
      std::uint32_t b_mem = fit_b;
      std::vector<const CalibrationProbe*> fitted;
      double cap = 65536;
      for (const auto& p : c.probes) {
        if (p.batch <= fit_b) fitted.push_back(&p);
        if (p.batch > fit_b) cap = std::min<double>(cap, p.batch - 1);  // measured: too big
      }
      if (fitted.size() >= 2) {
        const CalibrationProbe& z = *fitted.back();
        const CalibrationProbe& a = *fitted[fitted.size() - 2];
        const double slope = (z.peak_rss_bytes - a.peak_rss_bytes) / (z.batch - a.batch);
        const double more = slope > 0 ? std::floor((budget - z.peak_rss_bytes) / slope) : cap;
        // At small sizes the peak hardly moves (the allocator reuses what it holds), so the
        // line is trusted for one doubling past what was measured, no further.
        cap = std::min(cap, 2.0 * fit_b);
        b_mem = static_cast<std::uint32_t>(std::min(cap, fit_b + std::max(0.0, more)));
      }
      c.limits.b_mem = b_mem;
      c.limits.b_max = std::min(c.limits.b_max, b_mem);
    }
    c.seconds = toSeconds(Clock::now() - t0);
    return c;
  };
  for (std::uint32_t b = 1; b <= largest; b *= 2) {
    if (until.expired()) return finish("time");
    if (has_budget && c.probes.size() >= 2) {
      const auto& a = c.probes[c.probes.size() - 2];
      const auto& z = c.probes.back();
      const double slope =
          (z.peak_rss_bytes - a.peak_rss_bytes) / static_cast<double>(z.batch - a.batch);
      if (z.peak_rss_bytes + std::max(0.0, slope) * (b - z.batch) > budget) return finish("memory");
    }
    LOCO_RETURN_IF_ERROR(trainer.setBatchSize(b));
    // Past the throughput knee, with a budget, the probes go on for b_mem alone: one pass each.
    const bool memory_only = flat >= kFlatProbesToStop;
    if (!memory_only) {
      auto warm = trainer.computeBackward(0);
      if (!warm) return warm.status();
    }
    // The fastest pass: on a machine shared with other work, the others' interference only
    // ever slows a pass down, so the minimum is the steadiest estimate of what this size costs.
    int passes = 0;
    double seconds = 0, fastest = 0;
    const int min_passes = memory_only ? 1 : kMinPasses;
    while (passes < min_passes ||
           (!memory_only && passes < kMaxPasses && seconds < kMinProbeSeconds)) {
      const auto p0 = Clock::now();
      auto l = trainer.computeBackward(0);
      if (!l) return l.status();
      const double s = toSeconds(Clock::now() - p0);
      fastest = passes == 0 ? s : std::min(fastest, s);
      seconds += s;
      ++passes;
    }
    CalibrationProbe p;
    p.batch = b;
    p.tokens_per_s = fastest > 0 ? b * context / fastest : 0;
    p.peak_rss_bytes = peakRssBytes();
    c.probes.push_back(p);
    if (has_budget && p.peak_rss_bytes > budget) return finish("memory");
    fit_b = b;
    if (memory_only) {
      // b_max is settled; only b_mem is still being measured.
    } else if (p.tokens_per_s > kMinGain * best_tps) {
      best_tps = p.tokens_per_s;
      best_b = b;
      flat = 0;
    } else if (++flat >= kFlatProbesToStop && !has_budget) {
      return finish("throughput");
    }
    if (b > largest / 2) break;
  }
  return finish("largest");
}

Status calibrateForRun(LocalTrainer& trainer, DistributedConfig& config) {
  if (config.switch_mode == SwitchMode::kNone) return Status();
  CalibrationOptions o;
  o.memory_budget_bytes = config.memory_budget_mib << 20;
  o.largest = config.batch.test != BatchTest::kNone
                  ? std::max(config.batch.max_batch, config.train.batch_size)
                  : config.train.batch_size;
  auto c = calibrateMicroBatch(trainer, o);
  if (!c) return c.status();
  config.micro_limits = c->limits;
  std::string probes;
  for (const auto& p : c->probes) {
    probes += fmt::format("{}{}: {:.0f} tok/s, peak {:.0f} MiB", probes.empty() ? "" : "; ",
                          p.batch, p.tokens_per_s, p.peak_rss_bytes / (1 << 20));
  }
  const MicroPlan plan = switchPlan(config.switch_mode, config.train.batch_size, c->limits, 0);
  LOG_INFO(kLogTrain,
           "switch mode {}: b_max {}{} (stopped by {}, {:.1f} s; {}); batch {} -> {} "
           "micro-batch(es) of {}",
           switchModeName(config.switch_mode), c->limits.b_max,
           c->limits.b_mem
               ? fmt::format(", b_mem {} within {} MiB", c->limits.b_mem, config.memory_budget_mib)
               : "",
           c->stopped_by, c->seconds, probes, config.train.batch_size, plan.micro_batches,
           plan.micro_size);
  return Status();
}

}  // namespace loco::training
