#include "cli/chaos/report.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <nlohmann/json.hpp>

namespace loco::chaos {
namespace {

constexpr std::size_t kFindingsListed = 20;  // per invariant, in the report and its JSON

bool coordinatorFault(const Fault& f) {
  return f.kind == FaultKind::kFailover ||
         (f.processFault() && (f.target == "coordinator" || f.target == "standby"));
}

bool membershipFault(const Fault& f) {
  return f.processFault() || f.kind == FaultKind::kPartition;
}

std::string seconds(const std::optional<double>& s) {
  return s ? fmt::format("+{:.2f} s", *s) : std::string("-");
}

// Bytes each applied round cost: per step, the largest growth of one process's cumulative
// bytes_sent from its previous line (a restarted process starts counting from 0).
std::map<std::uint64_t, double> bytesPerStep(const Timeline& tl) {
  std::map<std::uint64_t, double> per_step;
  std::map<std::string, const RoundLine*> last;  // peer -> its previous line
  for (const TimedRound& r : tl.rounds) {
    const RoundLine& l = r.line;
    auto it = last.find(l.peer);
    if (it != last.end() && it->second->pid == l.pid && l.step > it->second->step) {
      const double d =
          (l.bytes_sent - it->second->bytes_sent) / static_cast<double>(l.step - it->second->step);
      per_step[l.step] = std::max(per_step[l.step], d);
    }
    last[l.peer] = &l;
  }
  return per_step;
}

}  // namespace

FaultOutcome assessFault(const FaultRecord& record, const Timeline& tl, int peers) {
  FaultOutcome o;
  o.record = record;
  if (!record.injected_t) return o;
  const double t0 = *record.injected_t;
  const double end = std::max(t0, record.ended_t.value_or(t0));
  const Fault& f = record.fault;

  // Detection.
  std::uint64_t epoch_before = 0;
  std::string active_before = "coordinator";
  for (const StatusSample& s : tl.status) {
    if (s.t <= t0 && s.reachable) epoch_before = s.epoch, active_before = s.active;
  }
  if (coordinatorFault(f)) {
    o.detection = "the coordinator stopped answering (or the group moved to the other)";
    for (const StatusSample& s : tl.status) {
      if (s.t > t0 && (!s.reachable || s.active != active_before)) {
        o.detected_s = s.t - t0;
        break;
      }
    }
  } else if (membershipFault(f)) {
    o.detection = "a new epoch";
    for (const StatusSample& s : tl.status) {
      if (s.t > t0 && s.reachable && s.epoch > epoch_before) {
        o.detected_s = s.t - t0;
        break;
      }
    }
  } else {
    o.detection = "none expected (no membership change)";
  }

  // The next round, and recovery.
  std::uint64_t step_before = 0;
  for (const TimedRound& r : tl.rounds) {
    if (r.t <= t0 && r.line.contributors > 0) step_before = std::max(step_before, r.line.step);
  }
  // A membership fault has recovered only once it was noticed: rounds in flight when it struck
  // can still finish with everyone.
  const double recovery_from = o.detected_s ? std::max(end, t0 + *o.detected_s) : end;
  for (const TimedRound& r : tl.rounds) {
    if (r.t > t0 && r.line.contributors > 0 && r.line.step > step_before &&
        (!o.first_round_s || r.t - t0 < *o.first_round_s)) {
      o.first_round_s = r.t - t0;
    }
    if (r.t >= recovery_from && r.line.contributors >= peers &&
        (!o.recovered_s || r.t - t0 < *o.recovered_s)) {
      o.recovered_s = r.t - t0;
    }
  }

  // Cost: retries and the bytes of failed attempts between injection and recovery.
  const double until = t0 + o.recovered_s.value_or(end - t0 + 60);
  std::map<std::uint64_t, std::uint32_t> retries;
  for (const TimedRound& r : tl.rounds) {
    if (r.t >= t0 && r.t <= until && r.line.contributors > 0)
      retries[r.line.step] = std::max(retries[r.line.step], r.line.retries);
  }
  for (const auto& [step, n] : retries) o.rounds_retried += n;
  auto per_step = bytesPerStep(tl);
  std::vector<double> steady;
  for (const TimedRound& r : tl.rounds) {
    if (r.t >= t0) break;
    if (auto it = per_step.find(r.line.step); it != per_step.end() && r.line.retries == 0)
      steady.push_back(it->second);
  }
  if (!steady.empty()) {
    std::nth_element(steady.begin(), steady.begin() + static_cast<long>(steady.size() / 2),
                     steady.end());
    const double normal = steady[steady.size() / 2];
    for (const auto& [step, n] : retries) {
      if (n == 0) continue;
      if (auto it = per_step.find(step); it != per_step.end())
        o.bytes_lost += std::max(0.0, it->second - normal);
    }
  }
  return o;
}

std::string outcomeJson(const FaultOutcome& o) {
  const Fault& f = o.record.fault;
  nlohmann::json j;
  j["fault"] = faultKindName(f.kind);
  j["what"] = f.describe();
  if (!f.target.empty()) j["target"] = f.target;
  if (f.after_round > 0) {
    j["after_round"] = f.after_round;
  } else {
    j["at_s"] = f.at_s;
  }
  if (f.duration_s > 0) j["duration_s"] = f.duration_s;
  auto opt = [](const std::optional<double>& v) -> nlohmann::json {
    return v ? nlohmann::json(std::round(*v * 1000) / 1000) : nlohmann::json(nullptr);
  };
  j["injected"] = o.record.injected_t.has_value();
  j["injected_t"] = opt(o.record.injected_t);
  j["detected_s"] = opt(o.detected_s);
  j["detection"] = o.detection;
  j["first_round_s"] = opt(o.first_round_s);
  j["recovered_s"] = opt(o.recovered_s);
  j["rounds_retried"] = o.rounds_retried;
  j["bytes_lost"] = std::round(o.bytes_lost);
  if (!o.record.how.empty()) j["how"] = o.record.how;
  if (f.line > 0) j["line"] = f.line;
  return j.dump();
}

std::string verdictJson(const std::vector<Verdict>& verdicts, bool passed) {
  nlohmann::json j;
  j["chaos"] = "verdict";
  j["passed"] = passed;
  for (const Verdict& v : verdicts) {
    nlohmann::json x;
    x["held"] = v.held();
    x["checks"] = v.checks;
    x["violations"] = v.violations.size();
    if (!v.note.empty()) x["note"] = v.note;
    if (!v.violations.empty()) x["first"] = v.violations.front().detail;
    // Every finding, not just the first: the first is often the least telling one.
    for (std::size_t i = 0; i < v.violations.size() && i < kFindingsListed; ++i) {
      const Violation& f = v.violations[i];
      x["findings"].push_back({{"t", std::round(f.t * 10) / 10}, {"detail", f.detail}});
    }
    j["invariants"][v.invariant] = x;
  }
  return j.dump();
}

std::string reportText(const Scenario& s, const std::vector<FaultOutcome>& outcomes,
                       const std::vector<Verdict>& verdicts, double run_s) {
  std::string out = fmt::format(
      "loco chaos: {}  seed {}  {} peers on {} lab hosts  heartbeat timeout {} ms  run {:.1f} "
      "s\n\n",
      s.path.empty() ? "random schedule" : s.path, s.seed, s.swarm.peers, s.swarm.hostCount(),
      s.swarm.heartbeat_timeout_ms, run_s);
  out += fmt::format("{:<48} {:>8} {:>10} {:>11} {:>10} {:>7} {:>10}  {}\n", "FAULT", "AT",
                     "DETECTED", "NEXT ROUND", "RECOVERED", "RETRIED", "LOST", "HOW");
  for (const FaultOutcome& o : outcomes) {
    const Fault& f = o.record.fault;
    if (!o.record.injected_t) {
      out += fmt::format("{:<48} {:>8}  not injected: the run ended first\n", f.describe(),
                         f.after_round > 0 ? fmt::format("round {}", f.after_round)
                                           : fmt::format("{:.1f} s", f.at_s));
      continue;
    }
    out += fmt::format("{:<48} {:>8} {:>10} {:>11} {:>10} {:>7} {:>10}  {}\n", f.describe(),
                       fmt::format("{:.1f} s", *o.record.injected_t), seconds(o.detected_s),
                       seconds(o.first_round_s), seconds(o.recovered_s), o.rounds_retried,
                       fmt::format("{:.1f} MB", o.bytes_lost / 1e6), o.record.how);
  }
  out +=
      "\n(DETECTED: a new epoch, or the coordinator unreachable; NEXT ROUND: the next round "
      "applied; RECOVERED: every peer contributing again after the fault ended; LOST: bytes "
      "of failed attempts)\n\n";
  out += fmt::format("{:<10} {:<8} {:>7}  {}\n", "INVARIANT", "VERDICT", "CHECKS", "DETAIL");
  bool passed = true;
  for (const Verdict& v : verdicts) {
    passed = passed && v.held();
    std::string detail = v.note;
    if (!v.violations.empty()) {
      detail = fmt::format("{} violation(s); first at {:.1f} s: {}", v.violations.size(),
                           v.violations.front().t, v.violations.front().detail);
    }
    out += fmt::format("{:<10} {:<8} {:>7}  {}\n", v.invariant, v.held() ? "held" : "BROKEN",
                       v.checks, detail);
  }
  for (const Verdict& v : verdicts) {
    if (v.violations.size() < 2) continue;  // the table shows a single finding whole
    out += fmt::format("\n{} findings:\n", v.invariant);
    for (std::size_t i = 0; i < v.violations.size() && i < kFindingsListed; ++i) {
      out += fmt::format("  {:8.1f} s  {}\n", v.violations[i].t, v.violations[i].detail);
    }
    if (v.violations.size() > kFindingsListed)
      out += fmt::format("  and {} more\n", v.violations.size() - kFindingsListed);
  }
  out += passed ? "\nevery invariant held\n" : "\nAN INVARIANT BROKE\n";
  return out;
}

}  // namespace loco::chaos
