#pragma once
// Switch mode's calibration (switch_mode.h): this peer measures, once at start, the largest
// micro-batch that fits its memory budget (b_mem) and the one beyond which tokens/s stop
// improving (b_max).
//
// It runs forward+backward passes of step 0's batch at micro-batch sizes 1, 2, 4, ... (the
// gradient is overwritten, the parameters and the optimizer are untouched; batches are a pure
// function of (seed, rank, step), so nothing the training draws later changes). For each size
// it records tokens/s and the process's peak resident set (VmHWM). It stops at the first of:
//   - two doublings in a row that raised tokens/s by less than kMinGain over the best so far
//     (without a budget; with one, the probes go on, one pass each, to measure b_mem);
//   - the next size would exceed the budget (a straight line through the last two peaks), or a
//     measured peak did (that size is then not counted as fitting);
//   - the largest size the run can ask for (`largest`), or `time_limit`.
// b_max is the size of the last ≥ kMinGain improvement; b_mem, with a budget, is the largest
// size that fitted extended along that line, at most to twice that size (0 without a budget).
// Not all of the budget is given to the passes: the larger of (1 − kHeadroom) of it and
// kReservedFloatsPerParam floats per parameter is kept for what the run allocates after
// calibration (AdamW's moments, the outer parameters and momentum, the all-reduce buffers). One
// validation pass runs before the probes, so its peak is in the base.
//
// Throughput is taken from the fastest of at least 3 passes (at least 0.1 s of them, at most
// 12) after one warm-up pass: interference from other work only slows passes down.
// Cost: those passes at every size up to 4·b_max, then (with a budget) one pass per size up to
// b_mem; on the default model (0.44M parameters, context 64) on a loaded 2-core machine, 1–3 s.
//
// Blocks; same thread rules as LocalTrainer. Errors: kResourceExhausted (even one window does
// not fit the budget; the message names --memory-budget-mib), kDataLoss/kInternal from the
// trainer. The trainer's batch size is restored on return.

#include <cstdint>
#include <string>
#include <vector>

#include "p2p/base/clock.h"
#include "p2p/base/status.h"
#include "training/distributed.h"
#include "training/local_trainer.h"
#include "training/switch_mode.h"

namespace loco::training {

inline constexpr double kMinGain = 1.10;
inline constexpr double kHeadroom = 0.9;
inline constexpr double kReservedFloatsPerParam = 16;

struct CalibrationOptions {
  std::uint64_t memory_budget_bytes = 0;  // 0: no budget
  std::uint32_t largest = 1024;           // the largest micro-batch worth trying
  Millis time_limit{20000};
};

struct CalibrationProbe {
  std::uint32_t batch = 0;
  double tokens_per_s = 0;
  double peak_rss_bytes = 0;  // the process's peak so far (VmHWM), after this size's passes
};

struct Calibration {
  MicroLimits limits;
  std::vector<CalibrationProbe> probes;
  double base_rss_bytes = 0;  // resident set before the first pass
  std::string stopped_by;     // "throughput", "memory", "largest" or "time"
  double seconds = 0;
};

Result<Calibration> calibrateMicroBatch(LocalTrainer& trainer, const CalibrationOptions& options);

// Switch mode before a run (call it before joining: the group does not wait for it): with
// config.switch_mode other than kNone, calibrates up to the largest batch the run can ask for
// (--max-batch under a batch test, else --batch) within config.memory_budget_mib, fills
// config.micro_limits and logs the probes. Errors: calibrateMicroBatch's.
Status calibrateForRun(LocalTrainer& trainer, DistributedConfig& config);

// The process's peak resident set (VmHWM) and current one (VmRSS) in bytes; 0 without /proc.
double peakRssBytes();
double currentRssBytes();

}  // namespace loco::training
