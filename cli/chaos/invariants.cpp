#include "cli/chaos/invariants.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <map>

#include "p2p/base/json.h"

namespace loco::chaos {
namespace {

constexpr int kFdSlack = 4;
constexpr long kRssSlackKib = 8 * 1024;
constexpr std::size_t kMinSamples = 10;
constexpr double kWarmupS = 30;  // resources: growth before this is warm-up, not a leak
constexpr std::size_t kRecentRounds = 20;

const char* const kNames[] = {"digests", "steps", "finite", "no_hang", "resources", "val_loss"};

// The far host of a TCP connection as `describeFds` (runner.cpp) words it ("tcp dialed
// 10.50.0.3:7411", "tcp accepted from 10.50.0.4"); "" for any other descriptor.
std::string connectionHost(const std::string& d) {
  static const std::string kDialed = "tcp dialed ", kAccepted = "tcp accepted from ";
  if (d.rfind(kAccepted, 0) == 0) return d.substr(kAccepted.size());
  if (d.rfind(kDialed, 0) == 0) {
    const std::string endpoint = d.substr(kDialed.size());
    return endpoint.substr(0, endpoint.rfind(':'));
  }
  return "";
}

template <typename T>
T median(std::vector<T> v) {
  if (v.empty()) return T{};
  std::nth_element(v.begin(), v.begin() + static_cast<long>(v.size() / 2), v.end());
  return v[v.size() / 2];
}

}  // namespace

Result<RoundLine> parseRoundLine(const std::string& text, const std::string& peer) {
  auto parsed = parseJsonObject(text);
  if (!parsed || !parsed->contains("step") || !(*parsed)["step"].is_number())
    return Status(StatusCode::kInvalidArgument, "not a round record: " + text.substr(0, 80));
  const nlohmann::json& j = *parsed;
  RoundLine r;
  r.peer = peer;
  auto u64 = [&](const char* key) -> std::uint64_t {
    return j.contains(key) && j[key].is_number() ? j[key].get<std::uint64_t>() : 0;
  };
  auto dbl = [&](const char* key) -> std::optional<double> {
    if (!j.contains(key) || !j[key].is_number()) return std::nullopt;
    return j[key].get<double>();
  };
  r.step = u64("step");
  r.inner_step = u64("inner_step");
  r.epoch = u64("epoch");
  r.world = static_cast<int>(u64("world"));
  r.contributors = static_cast<int>(u64("contributors"));
  r.loss = dbl("loss").value_or(NAN);
  r.val_loss = dbl("val_loss");
  r.bytes_sent = dbl("bytes_sent").value_or(0);
  r.retries = static_cast<std::uint32_t>(u64("retries"));
  r.tokens_per_s = dbl("tokens_per_s").value_or(0);
  r.wall_s = dbl("wall_s").value_or(0);
  r.batch = dbl("batch").value_or(0);
  r.tokens = dbl("tokens").value_or(0);
  r.instances = static_cast<std::uint32_t>(std::max<std::uint64_t>(u64("instances"), 1));
  r.e2e_tokens_per_s = dbl("e2e_tokens_per_s");
  r.utilization = dbl("utilization");
  r.pid = static_cast<long>(u64("pid"));
  r.unix_s = dbl("unix_s").value_or(0);
  if (j.contains("digest") && j["digest"].is_string()) r.digest = j["digest"].get<std::string>();
  // Older records have no "finite": a round with contributors and no loss had a non-finite one.
  if (j.contains("finite") && j["finite"].is_boolean()) {
    r.finite = j["finite"].get<bool>();
  } else {
    r.finite = r.contributors == 0 || std::isfinite(r.loss);
  }
  return r;
}

InvariantChecker::InvariantChecker(InvariantLimits limits) : limits_(limits) {
  for (const char* name : kNames) verdicts_.push_back(Verdict{name, 0, {}, ""});
}

Verdict& InvariantChecker::verdict(const std::string& invariant) {
  for (auto& v : verdicts_) {
    if (v.invariant == invariant) return v;
  }
  verdicts_.push_back(Verdict{invariant, 0, {}, ""});
  return verdicts_.back();
}

void InvariantChecker::violate(const std::string& invariant, double t, std::string detail) {
  verdict(invariant).violations.push_back(Violation{invariant, t, std::move(detail)});
}

void InvariantChecker::onRound(const RoundLine& r, double t) {
  // digests: one per step, whoever reported it.
  ++verdict("digests").checks;
  auto [it, fresh] = steps_.try_emplace(r.step, StepSeen{r.digest, r.peer, r.epoch});
  if (!fresh && it->second.digest != r.digest) {
    violate("digests", t,
            fmt::format("outer step {}: {} (epoch {}) holds {}, {} (epoch {}) holds {}", r.step,
                        it->second.peer, it->second.epoch, it->second.digest, r.peer, r.epoch,
                        r.digest));
  }
  // steps: strictly increasing per peer; +1 within one epoch of one process.
  ++verdict("steps").checks;
  PeerLast& last = peers_[r.peer];
  if (r.contributors > 0 && last.any) {
    if (r.step <= last.step) {
      violate("steps", t,
              fmt::format("{} reported outer step {} after {} (pid {} after {}): a round applied "
                          "twice or progress lost",
                          r.peer, r.step, last.step, r.pid, last.pid));
    } else if (r.pid == last.pid && r.epoch == last.epoch && r.step != last.step + 1) {
      violate("steps", t,
              fmt::format("{} went from outer step {} to {} within epoch {}: it missed a round "
                          "the group applied while it was a member",
                          r.peer, last.step, r.step, r.epoch));
    }
  }
  if (r.contributors > 0 || !last.any) {
    last = PeerLast{std::max(last.step, r.step), r.epoch, r.pid, true};
  }
  // finite.
  ++verdict("finite").checks;
  if (!r.finite) {
    violate("finite", t,
            fmt::format("{} reported a non-finite loss at outer step {}", r.peer, r.step));
  }
  // progress (no_hang's clock).
  if (r.contributors > 0 && (r.step > max_step_ || !progress_started_)) {
    max_step_ = std::max(max_step_, r.step);
    last_progress_t_ = t;
    progress_started_ = true;
    round_times_.push_back(t);
    hanging_ = false;
  }
}

double InvariantChecker::roundEstimate() const {
  // No history yet: as long as the swarm took from its start to its first round (processes,
  // joins and one round: this machine's pace under its load; a loaded machine's first rounds
  // took 80 s in a soak, where a fixed 5 s called that a hang), at least 5 s.
  if (round_times_.size() < 3)
    return std::max(5.0, round_times_.empty() ? 0.0 : round_times_.front());
  std::vector<double> gaps;
  const std::size_t from =
      round_times_.size() > kRecentRounds + 1 ? round_times_.size() - kRecentRounds - 1 : 0;
  for (std::size_t i = from + 1; i < round_times_.size(); ++i)
    gaps.push_back(round_times_[i] - round_times_[i - 1]);
  return 3 * median(gaps);
}

void InvariantChecker::onTick(double t, bool majority_healthy) {
  if (!progress_started_ || complete_) return;
  ++verdict("no_hang").checks;
  if (!majority_healthy) {
    last_progress_t_ = std::max(last_progress_t_, t);  // the allowance starts when health returns
    hanging_ = false;
    return;
  }
  const double allowance = limits_.heartbeat_timeout_s + roundEstimate() + limits_.hang_margin_s;
  if (!hanging_ && t - last_progress_t_ > allowance) {
    hanging_ = true;  // one violation per hang
    violate("no_hang", t,
            fmt::format("no round applied for {:.1f} s (allowed {:.1f} s: heartbeat timeout {:g} + "
                        "round {:.2f} + margin {:g}) with a majority healthy; last outer step {}",
                        t - last_progress_t_, allowance, limits_.heartbeat_timeout_s,
                        roundEstimate(), limits_.hang_margin_s, max_step_));
  }
}

void InvariantChecker::runComplete(double) {
  complete_ = true;
}

void InvariantChecker::onProcessSample(const std::string& name, long pid, ProcessSample sample) {
  std::vector<Sample>& life = samples_[{name, pid}];
  std::shared_ptr<const std::vector<std::string>> descriptors;
  if (!life.empty() && life.back().descriptors && *life.back().descriptors == sample.descriptors) {
    descriptors = life.back().descriptors;
  } else {
    descriptors = std::make_shared<const std::vector<std::string>>(std::move(sample.descriptors));
  }
  int other = sample.fds, most = 0;
  std::string busiest;
  if (!descriptors->empty()) {
    std::map<std::string, int> per_host;
    for (const auto& d : *descriptors) {
      const std::string host = connectionHost(d);
      if (!host.empty()) ++per_host[host];
    }
    other = static_cast<int>(descriptors->size());
    for (const auto& [host, n] : per_host) {
      other -= n;
      if (n > most) most = n, busiest = host;
    }
  }
  life.push_back(Sample{sample.t, sample.fds, sample.rss_kib, other, most, std::move(busiest),
                        std::move(descriptors)});
}

namespace {

// "+2 tcp dialed 10.50.0.3:7411, -1 pipe": the descriptors in `late` and not in `early` and the
// other way round (multisets), at most `limit` kinds.
std::string descriptorDiff(const std::vector<std::string>& early,
                           const std::vector<std::string>& late, std::size_t limit = 8) {
  std::map<std::string, int> delta;
  for (const auto& d : late) ++delta[d];
  for (const auto& d : early) --delta[d];
  std::vector<std::pair<int, std::string>> changed;
  for (const auto& [d, n] : delta) {
    if (n != 0) changed.emplace_back(n, d);
  }
  std::stable_sort(changed.begin(), changed.end(), [](const auto& a, const auto& b) {
    return std::abs(a.first) > std::abs(b.first);
  });
  std::string out;
  for (std::size_t i = 0; i < changed.size() && i < limit; ++i) {
    out += fmt::format("{}{:+d} {}", out.empty() ? "" : ", ", changed[i].first, changed[i].second);
  }
  if (changed.size() > limit) out += fmt::format(", and {} more kinds", changed.size() - limit);
  return out;
}

}  // namespace

std::vector<Verdict> InvariantChecker::finish(std::optional<double> final_val,
                                              std::optional<double> baseline_val,
                                              const std::string& baseline_note) {
  Verdict& res = verdict("resources");
  std::size_t too_short = 0;
  for (const auto& [key, samples] : samples_) {
    const auto& [name, pid] = key;
    if (samples.size() < kMinSamples || samples.back().t - samples.front().t < limits_.min_life_s) {
      ++too_short;
      continue;
    }
    // A young process grows while it warms up (LibTorch's allocator, the first rounds' buffers,
    // a state download), slower still on a loaded machine: the early window starts after
    // kWarmupS or a fifth of the life, whichever is later, and spans a fifth of the life; the
    // late window is the last fifth.
    const double t0 = samples.front().t, span = samples.back().t - t0;
    const double warm = std::max(kWarmupS, 0.2 * span);
    std::vector<const Sample*> early, late;
    for (const Sample& s : samples) {
      const double since = s.t - t0;
      if (since >= warm && since < warm + 0.2 * span) early.push_back(&s);
      if (since >= 0.8 * span) late.push_back(&s);
    }
    if (early.empty() || late.empty()) continue;
    ++res.checks;
    // Each window is judged by its floor, its lowest sample. A leak stays, so the floor rises
    // with it; the links and connections of a recovery (a failover, a rebuild, a state
    // transfer) come and go, and a window in which the process is back to its usual count once
    // keeps the usual floor. Judged by medians, a late window that held a failover's recovery
    // counted that recovery as growth (35 -> 43 fds in a 1-hour soak).
    auto floorOf = [](const std::vector<const Sample*>& w, auto field) {
      return *std::min_element(w.begin(), w.end(), [&](const Sample* a, const Sample* b) {
        return field(a) < field(b);
      });
    };
    const Sample* fa = floorOf(early, [](const Sample* s) { return s->other_fds; });
    const Sample* fb = floorOf(late, [](const Sample* s) { return s->other_fds; });
    const long rss0 = floorOf(early, [](const Sample* s) { return s->rss_kib; })->rss_kib;
    const long rss1 = floorOf(late, [](const Sample* s) { return s->rss_kib; })->rss_kib;
    const double g = 1 + limits_.growth_limit;
    if (fb->other_fds > fa->other_fds * g + kFdSlack) {
      // Which descriptors: the two floor samples' listings.
      std::string diff;
      if (fa->descriptors && fb->descriptors && !fb->descriptors->empty()) {
        diff = fmt::format(" (at {:.0f} s vs {:.0f} s: {})", fa->t, fb->t,
                           descriptorDiff(*fa->descriptors, *fb->descriptors));
      }
      violate("resources", samples.back().t,
              fmt::format("{} (pid {}) open fds other than connections grew {} -> {} over "
                          "{:.0f} s{}",
                          name, pid, fa->other_fds, fb->other_fds, span, diff));
    }
    // Connections are bounded, not compared: a member's link mesh follows the membership (a
    // peer admitted while the others were down ends with links to all of them: 11 -> 35 fds
    // in a 1-hour soak). A leak to one host stays and lifts that host's count above what its
    // links can need, in every late sample.
    const Sample* cb = floorOf(late, [](const Sample* s) { return s->most_to_host; });
    if (limits_.connections_per_host > 0 && cb->most_to_host > limits_.connections_per_host) {
      std::vector<std::string> to_host;
      for (const auto& d : *cb->descriptors) {
        if (connectionHost(d) == cb->busiest_host) to_host.push_back(d);
      }
      violate("resources", samples.back().t,
              fmt::format("{} (pid {}) kept more than {} TCP connections to one host through "
                          "the last fifth of its life ({:.0f}-{:.0f} s), at least {} to {} (at "
                          "{:.0f} s: {})",
                          name, pid, limits_.connections_per_host, late.front()->t, late.back()->t,
                          cb->most_to_host, cb->busiest_host, cb->t, descriptorDiff({}, to_host)));
    }
    if (static_cast<double>(rss1) > static_cast<double>(rss0) * g + kRssSlackKib) {
      violate("resources", samples.back().t,
              fmt::format("{} (pid {}) RSS grew {} -> {} KiB over {:.0f} s", name, pid, rss0, rss1,
                          span));
    }
  }
  if (too_short)
    res.note = fmt::format("{} process lives shorter than {:g} s not judged", too_short,
                           limits_.min_life_s);
  Verdict& val = verdict("val_loss");
  if (!final_val) {
    val.note = "no final validation loss was reported";
    violate("val_loss", 0, "the run reported no final validation loss");
  } else if (!baseline_val) {
    val.note = baseline_note.empty() ? "no baseline" : baseline_note;
  } else {
    ++val.checks;
    const double rel = std::abs(*final_val - *baseline_val) / *baseline_val;
    val.note = fmt::format("final {:.4f} vs fault-free {:.4f} ({:+.2f} %, band {:g} %)", *final_val,
                           *baseline_val, 100 * (*final_val - *baseline_val) / *baseline_val,
                           100 * limits_.val_loss_band);
    if (!(rel <= limits_.val_loss_band)) {
      violate("val_loss", 0,
              fmt::format("final validation loss {:.4f} is {:.2f} % from the fault-free {:.4f} "
                          "(band {:g} %)",
                          *final_val, 100 * rel, *baseline_val, 100 * limits_.val_loss_band));
    }
  }
  return verdicts_;
}

}  // namespace loco::chaos
