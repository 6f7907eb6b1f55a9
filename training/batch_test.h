#pragma once
// Adaptive batch size: the distributed norm test and the augmented inner-product test (AdAdaGrad,
// arXiv 2402.11215; AdLoCo, arXiv 2508.18182), and the micro-batch plan that takes over once the
// batch outgrows what one backward pass may hold.
//
// Each round, the M contributing peers' last mini-batch gradients g_1..g_M (each the mean over b
// windows) serve as M samples of a batch-b gradient. ḡ = Σ g_m / M. The per-sample variance is
// estimated as b times the sample variance across peers, and the tests ask for the per-peer
// batch b_new such that the group's batch M·b_new keeps the noise below a fraction of ‖ḡ‖:
//   norm:   σ̂² = b/(M−1)·Σ‖g_m − ḡ‖²,   b_norm = σ̂² / (M·η²·‖ḡ‖²)
//   inner product (augmented): with d_m = ⟨g_m, ḡ⟩,
//           b_ip   = b/(M−1)·Σ(d_m − ‖ḡ‖²)² / (M·θ²·‖ḡ‖⁴)
//           b_orth = b/(M−1)·Σ‖g_m − (d_m/‖ḡ‖²)·ḡ‖² / (M·ν²·‖ḡ‖²)
//           b_want = max(b_ip, b_orth)
//   b_new = min(max_batch, max(b, ⌈b_want⌉)): the batch never shrinks and is capped.
// Everything is computed from sums the round's all-reduces already carry:
//   Σ‖g_m − ḡ‖² = Σ‖g_m‖² − M‖ḡ‖²;  Σ(d_m − ‖ḡ‖²)² = Σd_m² − 2‖ḡ‖²Σd_m + M‖ḡ‖⁴;
//   Σ‖g_m − (d_m/‖ḡ‖²)ḡ‖² = Σ‖g_m‖² − Σd_m²/‖ḡ‖².
// With fewer than 3 contributors (the variance of 2 samples is too noisy to act on), a zero or
// non-finite ḡ, or a non-finite statistic, the batch stays.
//
// Peers whose batches differ (speed allocation: peer m computes w_m windows per step): g_m has
// variance σ²/w_m, so every per-peer sum is weighted by w_m and ḡ = Σ w_m·g_m / W (W = Σ w_m).
// Then Σ w_m‖g_m − ḡ‖² = Σ w_m‖g_m‖² − W‖ḡ‖² has expectation (M−1)·σ², and
//   σ̂² = (Σ w_m‖g_m‖² − W‖ḡ‖²)/(M−1), and likewise for the inner-product terms
// (Σ w_m(d_m − ‖ḡ‖²)² = Σ w_m d_m² − 2‖ḡ‖²Σ w_m d_m + W‖ḡ‖⁴). With w_m = b for every peer these
// are the formulas above.
//
// Pure functions; no threads, no I/O. Every peer evaluates them on the same all-reduced values
// (bit-identical on every member), so every peer reaches the same batch.

#include <cstdint>
#include <string>
#include <string_view>

#include "p2p/base/status.h"

namespace loco::training {

enum class BatchTest : std::uint8_t { kNone, kNorm, kInnerProduct };
std::string_view batchTestName(BatchTest t);
// "none", "norm" or "inner-product"; kInvalidArgument otherwise.
Result<BatchTest> parseBatchTest(std::string_view name);

struct BatchTestConfig {
  BatchTest test = BatchTest::kNone;
  double eta = 0.8;                // --batch-eta: norm test tolerance (> 0)
  double theta = 0.9;              // --batch-theta: inner-product test tolerance (> 0)
  double nu = 5.0;                 // --batch-nu: orthogonality test tolerance (> 0)
  std::uint32_t max_batch = 1024;  // --max-batch: cap on the per-peer batch (>= --batch)
  // --max-micro-batch: windows per backward pass; a larger batch is accumulated over
  // ⌈b / max_micro_batch⌉ micro-batches. 0: never split.
  std::uint32_t max_micro_batch = 0;
};

// kInvalidArgument naming the flag: η, θ or ν not positive and finite, or (with a test on)
// --max-batch below `batch`. --max-batch equal to --batch (nothing can grow) is allowed.
Status validateBatchTestConfig(const BatchTestConfig& c, std::uint32_t batch);

// Sums over the M peers that contributed a gradient this round.
struct GradientMoments {
  double peers = 0;         // M
  double sq_norms = 0;      // Σ‖g_m‖²
  double mean_sq_norm = 0;  // ‖ḡ‖²
  double dots = 0;          // Σ⟨g_m, ḡ⟩ (inner-product test only)
  double sq_dots = 0;       // Σ⟨g_m, ḡ⟩² (inner-product test only)
  // Batches of different sizes: W = Σ w_m, and sq_norms, dots and sq_dots are Σ w_m·(…) with ḡ
  // the weighted mean (the header comment). 0: every peer's batch is the `batch` argument.
  double weight = 0;
};

inline constexpr double kMinTestPeers = 3;

struct BatchDecision {
  std::uint32_t batch = 0;  // the per-peer batch from now on
  double wanted = 0;        // what the test asked for before rounding and capping; 0: no test
  std::string skipped;      // why the test did not run ("" when it did)
};

// The test's per-peer batch wish (b_norm, or max(b_ip, b_orth)); NaN when it cannot be computed.
double normTestWant(const GradientMoments& g, std::uint32_t batch, double eta);
double innerProductTestWant(const GradientMoments& g, std::uint32_t batch, double theta, double nu);

// The whole rule: test, never shrink, cap.
BatchDecision decideBatch(const BatchTestConfig& c, const GradientMoments& g, std::uint32_t batch);

// How one inner step of `batch` windows is computed: `micro_batches` backward passes of
// `micro_size` windows each (micro_batches·micro_size >= batch, at most micro_batches − 1 more).
struct MicroPlan {
  std::uint32_t micro_batches = 1;
  std::uint32_t micro_size = 0;
  std::uint32_t total() const { return micro_batches * micro_size; }
};
MicroPlan microPlan(std::uint32_t batch, std::uint32_t max_micro_batch);

}  // namespace loco::training
