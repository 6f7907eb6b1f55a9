#include "p2p/base/metrics.h"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <map>
#include <memory>
#include <mutex>

namespace loco {
namespace {

enum class Kind { kCounter, kGauge, kHistogram };

struct Series {
  MetricLabels labels;  // sorted by name
  std::unique_ptr<Counter> counter;
  std::unique_ptr<Gauge> gauge;
  std::unique_ptr<Histogram> histogram;
};

struct Family {
  Kind kind;
  std::map<std::string, Series> series;  // by rendered label set
};

// Families are keyed by kind and name, so a counter and a gauge of the same name never share
// series (the exposition would then hold two families of one name; nothing does that).
struct Registry {
  std::mutex mu;
  std::map<std::pair<std::string, Kind>, Family, std::less<>> families;
  std::map<std::string, std::string, std::less<>> help;
};

Registry& registry() {
  static Registry* r = new Registry();  // never destroyed: metrics may be touched during exit
  return *r;
}

std::string escapeLabelValue(std::string_view v) {
  std::string out;
  out.reserve(v.size());
  for (char c : v) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out.push_back(c);
    }
  }
  return out;
}

std::string labelName(std::string_view n) {
  std::string out(n);
  for (char& c : out) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '_') c = '_';
  }
  if (out.empty() || std::isdigit(static_cast<unsigned char>(out[0]))) out = "_" + out;
  return out;
}

MetricLabels sorted(const MetricLabels& labels) {
  MetricLabels out = labels;
  std::sort(out.begin(), out.end());
  return out;
}

// `{a="x",b="y"}`, or "" without labels; `extra` (e.g. le="0.5") goes last.
std::string renderLabels(const MetricLabels& labels, std::string_view extra = {}) {
  if (labels.empty() && extra.empty()) return "";
  std::string out = "{";
  for (const auto& [k, v] : labels) {
    if (out.size() > 1) out += ',';
    out += fmt::format("{}=\"{}\"", labelName(k), escapeLabelValue(v));
  }
  if (!extra.empty()) {
    if (out.size() > 1) out += ',';
    out += extra;
  }
  return out + "}";
}

std::string renderValue(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  return fmt::format("{}", v);
}

Series& seriesOf(Kind kind, std::string_view name, const MetricLabels& labels,
                 std::span<const double> bounds) {
  auto& r = registry();
  std::lock_guard lock(r.mu);
  auto key = std::make_pair(std::string(name), kind);
  auto fit = r.families.find(key);
  if (fit == r.families.end()) fit = r.families.emplace(key, Family{kind, {}}).first;
  MetricLabels sorted_labels = sorted(labels);
  const std::string id = renderLabels(sorted_labels);
  auto sit = fit->second.series.find(id);
  if (sit == fit->second.series.end()) {
    Series s;
    s.labels = std::move(sorted_labels);
    if (kind == Kind::kCounter) s.counter = std::make_unique<Counter>();
    if (kind == Kind::kGauge) s.gauge = std::make_unique<Gauge>();
    if (kind == Kind::kHistogram)
      s.histogram = std::make_unique<Histogram>(std::vector<double>(bounds.begin(), bounds.end()));
    sit = fit->second.series.emplace(id, std::move(s)).first;
  }
  return sit->second;
}

constexpr double kDurationBuckets[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                       1,     2.5,    5,     10,   25,    60,   120, 300};

}  // namespace

Histogram::Histogram(std::vector<double> bounds)
    : bounds_(std::move(bounds)), buckets_(bounds_.size() + 1) {
  std::sort(bounds_.begin(), bounds_.end());
}

void Histogram::observe(double v) {
  const auto it = std::lower_bound(bounds_.begin(), bounds_.end(), v);
  buckets_[static_cast<std::size_t>(it - bounds_.begin())].fetch_add(1, std::memory_order_relaxed);
  sum_.fetch_add(v, std::memory_order_relaxed);
  count_.fetch_add(1, std::memory_order_relaxed);
}

Histogram::Snapshot Histogram::snapshot() const {
  Snapshot s;
  s.bounds = bounds_;
  std::uint64_t running = 0;
  for (std::size_t i = 0; i < bounds_.size(); ++i) {
    running += buckets_[i].load(std::memory_order_relaxed);
    s.cumulative.push_back(running);
  }
  // Count and the +Inf bucket must agree in one scrape: count is what the buckets hold.
  s.count = running + buckets_.back().load(std::memory_order_relaxed);
  s.sum = sum_.load(std::memory_order_relaxed);
  return s;
}

Counter& counter(std::string_view name, const MetricLabels& labels) {
  return *seriesOf(Kind::kCounter, name, labels, {}).counter;
}

Gauge& gauge(std::string_view name, const MetricLabels& labels) {
  return *seriesOf(Kind::kGauge, name, labels, {}).gauge;
}

Histogram& histogram(std::string_view name, std::span<const double> bounds,
                     const MetricLabels& labels) {
  return *seriesOf(Kind::kHistogram, name, labels, bounds).histogram;
}

void clearGauge(std::string_view name) {
  auto& r = registry();
  std::lock_guard lock(r.mu);
  // Gauges handed out stay valid (callers may hold references): only labelled series that can
  // be re-created go, and their objects are kept alive in a graveyard.
  static auto* graveyard = new std::vector<std::unique_ptr<Gauge>>();
  auto it = r.families.find(std::make_pair(std::string(name), Kind::kGauge));
  if (it == r.families.end()) return;
  for (auto& [id, s] : it->second.series) graveyard->push_back(std::move(s.gauge));
  it->second.series.clear();
}

void describeMetric(std::string_view name, std::string_view help) {
  auto& r = registry();
  std::lock_guard lock(r.mu);
  r.help[std::string(name)] = std::string(help);
}

std::span<const double> durationBuckets() {
  return kDurationBuckets;
}

std::vector<std::pair<std::string, std::uint64_t>> counterSnapshot() {
  auto& r = registry();
  std::lock_guard lock(r.mu);
  std::vector<std::pair<std::string, std::uint64_t>> out;
  for (auto& [key, family] : r.families) {
    if (key.second != Kind::kCounter) continue;
    auto it = family.series.find("");
    if (it != family.series.end()) out.emplace_back(key.first, it->second.counter->value());
  }
  return out;
}

std::string prometheusName(std::string_view name) {
  std::string out = "loco_";
  for (char c : name) {
    out.push_back(std::isalnum(static_cast<unsigned char>(c)) ? c : '_');
  }
  return out;
}

std::string renderPrometheus() {
  auto& r = registry();
  std::lock_guard lock(r.mu);
  struct Out {
    std::string name;
    std::string text;
  };
  std::vector<Out> families;
  for (auto& [key, family] : r.families) {
    if (family.series.empty()) continue;
    const auto& [name, kind] = key;
    std::string prom = prometheusName(name);
    if (kind == Kind::kCounter && !prom.ends_with("_total")) prom += "_total";
    auto help_it = r.help.find(name);
    std::string help = help_it != r.help.end()
                           ? help_it->second
                           : fmt::format("loco metric {} (see the README)", name);
    std::replace(help.begin(), help.end(), '\n', ' ');
    std::string text = fmt::format("# HELP {} {}\n# TYPE {} {}\n", prom, help, prom,
                                   kind == Kind::kCounter ? "counter"
                                   : kind == Kind::kGauge ? "gauge"
                                                          : "histogram");
    for (auto& [id, s] : family.series) {
      if (kind == Kind::kCounter) {
        text += fmt::format("{}{} {}\n", prom, id, s.counter->value());
      } else if (kind == Kind::kGauge) {
        text += fmt::format("{}{} {}\n", prom, id, renderValue(s.gauge->value()));
      } else {
        const auto snap = s.histogram->snapshot();
        std::string base = prom;
        if (base.ends_with("_total")) base.resize(base.size() - 6);
        for (std::size_t i = 0; i < snap.bounds.size(); ++i) {
          text += fmt::format("{}_bucket{} {}\n", base,
                              renderLabels(s.labels, fmt::format("le=\"{}\"", snap.bounds[i])),
                              snap.cumulative[i]);
        }
        text += fmt::format("{}_bucket{} {}\n", base, renderLabels(s.labels, "le=\"+Inf\""),
                            snap.count);
        text += fmt::format("{}_sum{} {}\n", base, id, renderValue(snap.sum));
        text += fmt::format("{}_count{} {}\n", base, id, snap.count);
      }
    }
    families.push_back({prom, std::move(text)});
  }
  std::sort(families.begin(), families.end(),
            [](const Out& a, const Out& b) { return a.name < b.name; });
  std::string out;
  for (const auto& f : families) out += f.text;
  return out;
}

}  // namespace loco
