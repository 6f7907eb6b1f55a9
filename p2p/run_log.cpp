#include "p2p/run_log.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>

namespace loco::p2p {
namespace {

std::string_view kindName(MembershipEvent::Kind k) {
  switch (k) {
    case MembershipEvent::Kind::kPending:
      return "pending";
    case MembershipEvent::Kind::kAdmitted:
      return "admitted";
    case MembershipEvent::Kind::kLeft:
      return "left";
    case MembershipEvent::Kind::kEvicted:
      return "evicted";
    case MembershipEvent::Kind::kReordered:
      return "reordered";
    case MembershipEvent::Kind::kReplaced:
      return "replaced";
    case MembershipEvent::Kind::kRebuilt:
      return "rebuilt";
    case MembershipEvent::Kind::kCompleted:
      return "completed";
    case MembershipEvent::Kind::kHeld:
      return "held";
    case MembershipEvent::Kind::kRolledBack:
      return "rolled back";
  }
  return "unknown";
}

}  // namespace

void RunLog::add(RunEvent e) {
  events_.push_back(std::move(e));
  while (events_.size() > kMaxEvents) events_.pop_front();
}

void RunLog::onEvents(const std::vector<MembershipEvent>& events, double unix_s) {
  for (const auto& e : events) {
    add(RunEvent{unix_s, std::string(kindName(e.kind)), e.peer, e.epoch, e.reason});
    if (e.kind == MembershipEvent::Kind::kLeft || e.kind == MembershipEvent::Kind::kEvicted)
      forget(e.peer);
  }
}

void RunLog::onReport(const std::string& peer, const PeerReportMsg& report, double unix_s) {
  peers_[peer] = PeerProgress{unix_s, report};
  if (report.retries > 0) {
    add(RunEvent{unix_s, "retried", peer, 0,
                 fmt::format("round {} went through after {} failed attempt(s)", report.outer_step,
                             report.retries)});
  }
  auto [it, fresh] = steps_.try_emplace(report.outer_step);
  StepPoint& s = it->second;
  if (fresh) {
    s.outer_step = report.outer_step;
    s.inner_step = report.inner_step;
    s.unix_s = unix_s;
    s.loss = report.loss;
    s.val_loss = std::numeric_limits<double>::quiet_NaN();
    s.bytes_sent = report.bytes_sent;
    s.world = report.world;
  } else if (std::isnan(s.loss)) {
    s.loss = report.loss;
  }
  if (std::isfinite(report.val_loss)) s.val_loss = report.val_loss;
  s.bytes_sent = std::max(s.bytes_sent, report.bytes_sent);
  while (steps_.size() > kMaxSteps) steps_.erase(steps_.begin());
}

void RunLog::forget(const std::string& peer) {
  peers_.erase(peer);
}

std::vector<StepPoint> RunLog::steps() const {
  std::vector<StepPoint> out;
  out.reserve(steps_.size());
  for (const auto& [step, s] : steps_) out.push_back(s);
  return out;
}

}  // namespace loco::p2p
