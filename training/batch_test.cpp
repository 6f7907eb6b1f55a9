#include "training/batch_test.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

namespace loco::training {

std::string_view batchTestName(BatchTest t) {
  switch (t) {
    case BatchTest::kNone:
      return "none";
    case BatchTest::kNorm:
      return "norm";
    case BatchTest::kInnerProduct:
      return "inner-product";
  }
  return "?";
}

Result<BatchTest> parseBatchTest(std::string_view name) {
  for (BatchTest t : {BatchTest::kNone, BatchTest::kNorm, BatchTest::kInnerProduct}) {
    if (name == batchTestName(t)) return t;
  }
  return Status(StatusCode::kInvalidArgument,
                fmt::format("unknown batch test '{}' (none, norm or inner-product)", name));
}

Status validateBatchTestConfig(const BatchTestConfig& c, std::uint32_t batch) {
  auto positive = [](double v, std::string_view flag) -> Status {
    if (std::isfinite(v) && v > 0) return Status();
    return Status(StatusCode::kInvalidArgument, fmt::format("{} must be > 0, got {}", flag, v));
  };
  LOCO_RETURN_IF_ERROR(positive(c.eta, "--batch-eta"));
  LOCO_RETURN_IF_ERROR(positive(c.theta, "--batch-theta"));
  LOCO_RETURN_IF_ERROR(positive(c.nu, "--batch-nu"));
  if (c.test != BatchTest::kNone && c.max_batch < batch) {
    return Status(StatusCode::kInvalidArgument,
                  fmt::format("--max-batch {} is below --batch {}", c.max_batch, batch));
  }
  return Status();
}

namespace {

bool usable(const GradientMoments& g) {
  return std::isfinite(g.peers) && std::isfinite(g.sq_norms) && std::isfinite(g.mean_sq_norm) &&
         std::isfinite(g.weight) && g.peers >= kMinTestPeers && g.mean_sq_norm > 0;
}

}  // namespace

double normTestWant(const GradientMoments& g, std::uint32_t batch, double eta) {
  if (!usable(g)) return std::nan("");
  const double m = g.peers;
  // Rounding can make the difference slightly negative when the peers agree.
  if (g.weight > 0) {
    const double variance = std::max(0.0, g.sq_norms - g.weight * g.mean_sq_norm) / (m - 1);
    return variance / (m * eta * eta * g.mean_sq_norm);
  }
  const double spread = std::max(0.0, g.sq_norms - m * g.mean_sq_norm);
  const double variance = static_cast<double>(batch) / (m - 1) * spread;
  return variance / (m * eta * eta * g.mean_sq_norm);
}

double innerProductTestWant(const GradientMoments& g, std::uint32_t batch, double theta,
                            double nu) {
  if (!usable(g) || !std::isfinite(g.dots) || !std::isfinite(g.sq_dots)) return std::nan("");
  const double m = g.peers;
  const double n2 = g.mean_sq_norm;
  // Weighted sums carry the batch in them (w_m): the sample variance needs no factor b.
  const bool weighted = g.weight > 0;
  const double b = weighted ? 1.0 : static_cast<double>(batch);
  const double ip_spread =
      std::max(0.0, g.sq_dots - 2 * n2 * g.dots + (weighted ? g.weight : m) * n2 * n2);
  const double orth_spread = std::max(0.0, g.sq_norms - g.sq_dots / n2);
  const double b_ip = b / (m - 1) * ip_spread / (m * theta * theta * n2 * n2);
  const double b_orth = b / (m - 1) * orth_spread / (m * nu * nu * n2);
  return std::max(b_ip, b_orth);
}

BatchDecision decideBatch(const BatchTestConfig& c, const GradientMoments& g, std::uint32_t batch) {
  BatchDecision d;
  d.batch = batch;
  if (c.test == BatchTest::kNone) {
    d.skipped = "no batch test";
    return d;
  }
  if (!(g.peers >= kMinTestPeers)) {
    d.skipped = fmt::format("{:.0f} gradient(s), the test needs {:.0f}", g.peers, kMinTestPeers);
    return d;
  }
  const double want = c.test == BatchTest::kNorm ? normTestWant(g, batch, c.eta)
                                                 : innerProductTestWant(g, batch, c.theta, c.nu);
  if (!std::isfinite(want)) {
    d.skipped = "the mean gradient is zero or a statistic is not finite";
    return d;
  }
  d.wanted = want;
  // A wish that is a whole number up to rounding (16.000000000000004) asks for that number.
  const double capped = std::min(std::ceil(want * (1 - 1e-12)), static_cast<double>(c.max_batch));
  d.batch = std::max(batch, static_cast<std::uint32_t>(std::max(capped, 0.0)));
  return d;
}

MicroPlan microPlan(std::uint32_t batch, std::uint32_t max_micro_batch) {
  MicroPlan p;
  if (max_micro_batch == 0 || batch <= max_micro_batch) {
    p.micro_size = batch;
    return p;
  }
  p.micro_batches = (batch + max_micro_batch - 1) / max_micro_batch;
  p.micro_size = (batch + p.micro_batches - 1) / p.micro_batches;
  return p;
}

}  // namespace loco::training
