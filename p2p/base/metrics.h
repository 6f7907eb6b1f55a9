#pragma once
// Process-wide metrics: counters, gauges and histograms, by name and optional labels, and their
// Prometheus text exposition (what `--http`'s /metrics serves).
//
// Names are dotted ("p2p.frames_rejected", "train.loss"); the exposition turns them into
// Prometheus names: "loco_" + the name with '.' as '_', and counters end in "_total"
// (p2p.frames_rejected -> loco_p2p_frames_rejected_total). Durations are histograms in seconds
// whose names end in "_seconds". A metric is created on first use and lives until exit, so hot
// paths keep a reference: `static Counter& c = counter("x"); c.inc();`. The same name with other
// labels is another series of the same family. Thread-safe.

#include <atomic>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace loco {

// (name, value) pairs, e.g. {{"peer", "3f2a9c01"}}. Order does not matter.
using MetricLabels = std::vector<std::pair<std::string, std::string>>;

class Counter {
 public:
  void inc(std::uint64_t n = 1) { value_.fetch_add(n, std::memory_order_relaxed); }
  std::uint64_t value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<std::uint64_t> value_{0};
};

class Gauge {
 public:
  void set(double v) { value_.store(v, std::memory_order_relaxed); }
  void add(double v) { value_.fetch_add(v, std::memory_order_relaxed); }
  double value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0.0};
};

// Counts observations into fixed buckets (upper bounds, ascending; +Inf is implicit).
class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds);
  void observe(double v);

  struct Snapshot {
    std::vector<double> bounds;
    std::vector<std::uint64_t> cumulative;  // per bound, observations <= bound
    std::uint64_t count = 0;
    double sum = 0;
  };
  Snapshot snapshot() const;

 private:
  std::vector<double> bounds_;
  std::vector<std::atomic<std::uint64_t>> buckets_;  // per bound, then +Inf; not cumulative
  std::atomic<std::uint64_t> count_{0};
  std::atomic<double> sum_{0.0};
};

Counter& counter(std::string_view name, const MetricLabels& labels = {});
Gauge& gauge(std::string_view name, const MetricLabels& labels = {});
// `bounds` counts only when the series is created.
Histogram& histogram(std::string_view name, std::span<const double> bounds,
                     const MetricLabels& labels = {});
// Removes every series of the gauge `name` (e.g. per-peer gauges when the member set changed).
void clearGauge(std::string_view name);

// Help text for a family ("# HELP" in the exposition); families without one get a generic text.
void describeMetric(std::string_view name, std::string_view help);

// Latency buckets in seconds, 1 ms to 5 min, for histograms of operation and round durations.
std::span<const double> durationBuckets();

// Unlabelled counters, sorted by name (the coordinator's status reply carries them).
std::vector<std::pair<std::string, std::uint64_t>> counterSnapshot();

// Every metric in the Prometheus text exposition format (version 0.0.4), families sorted by name.
std::string renderPrometheus();

// "loco_" + name with every character outside [a-zA-Z0-9_] as '_'.
std::string prometheusName(std::string_view name);

}  // namespace loco
