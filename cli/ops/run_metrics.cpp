#include "cli/ops/run_metrics.h"

#include <algorithm>
#include <cmath>

#include "p2p/base/metrics.h"
#include "training/distributed.h"

namespace loco::ops {
namespace {

std::string shortId(const std::string& id) {
  return id.substr(0, 8);
}

void setIfFinite(Gauge& g, double v) {
  if (std::isfinite(v)) g.set(v);
}

}  // namespace

void describeRunMetrics(bool coordinator) {
  struct Help {
    const char* name;
    const char* text;
  };
  static const Help kHelp[] = {
      {"coordinator.epoch", "Membership epoch (one per change of the member set)."},
      {"coordinator.world", "Members of the group."},
      {"coordinator.pending", "Registered peers waiting for admission at the next sync point."},
      {"coordinator.peer_heartbeat_age_seconds", "Seconds since the coordinator heard each peer."},
      {"coordinator.peer_member", "1 for a member, 0 for a pending peer."},
      {"coordinator.peer_outer_step", "Outer step of each peer's last progress report."},
      {"coordinator.peer_tokens_per_second", "Inner-loop throughput each peer last reported."},
      {"coordinator.peer_utilization",
       "Share of its last round each peer spent computing (0..1), as reported."},
      {"coordinator.link_bandwidth_bits_per_second",
       "The coordinator's estimate of each directed link, from passive measurement or probes."},
      {"coordinator.outer_step", "Latest outer step any peer reported."},
      {"coordinator.loss", "Train loss (nats per byte) of the latest reported step."},
      {"coordinator.group_sent_bytes", "Bytes all peers sent for collectives up to that step."},
      {"train.rounds", "Rounds this peer applied."},
      {"train.round_retries", "Failed attempts before rounds went through."},
      {"train.outer_step", "Outer steps applied by the group so far."},
      {"train.inner_step", "Position in the inner-step schedule."},
      {"train.loss", "The group's mean train loss of the last round (nats per byte)."},
      {"train.val_loss", "Validation loss, when this peer evaluated (nats per byte)."},
      {"train.tokens_per_second", "This peer's inner-loop throughput in the last round."},
      {"train.utilization", "Share of the last round this peer spent computing (0..1)."},
      {"train.group_sent_bytes", "Bytes all peers sent for collectives so far."},
      {"train.world", "Members in the last round's epoch."},
      {"train.epoch", "Membership epoch of the last round."},
      {"train.round_duration_seconds", "Wall time between two applied rounds on this peer."},
      {"train.compute_duration_seconds", "Local phase (inner steps or a gradient) of a round."},
      {"train.allreduce_duration_seconds",
       "A round's all-reduces (statistics and contributions, in flight together), the attempt "
       "that went through."},
  };
  for (const auto& h : kHelp) describeMetric(h.name, h.text);
  // Counters that rate() and alerts look at exist from the start, at 0.
  describeMetric("p2p.frames_rejected",
                 "Frames that broke the protocol; each closed its connection.");
  counter("p2p.frames_rejected");
  if (coordinator) {
    describeMetric("coord.peers_evicted",
                   "Peers removed for silence, a lost connection or bad data.");
    describeMetric("coord.peers_left", "Peers that left gracefully.");
    describeMetric("coord.peers_admitted", "Peers admitted into the group.");
    for (const char* name : {"coord.peers_evicted", "coord.peers_left", "coord.peers_admitted"})
      counter(name);
  } else {
    describeMetric("collectives.sent_bytes",
                   "Bytes this peer sent for all-reduces (payload, every attempt).");
    counter("collectives.sent_bytes");
  }
}

void publishRunGauges(const p2p::RunSnapshot& s, double now_unix_s) {
  gauge("coordinator.epoch").set(static_cast<double>(s.view.epoch));
  gauge("coordinator.world").set(static_cast<double>(s.view.world()));
  gauge("coordinator.pending").set(static_cast<double>(s.view.pending()));
  // Per-peer and per-link series follow the group: gone peers' series go with them.
  for (const char* name :
       {"coordinator.peer_heartbeat_age_seconds", "coordinator.peer_member",
        "coordinator.peer_outer_step", "coordinator.peer_tokens_per_second",
        "coordinator.peer_utilization", "coordinator.link_bandwidth_bits_per_second"})
    clearGauge(name);
  for (const auto& p : s.view.peers) {
    const MetricLabels peer{{"peer", shortId(p.id)}};
    gauge("coordinator.peer_heartbeat_age_seconds", peer).set(p.heartbeat_age_ms / 1000.0);
    gauge("coordinator.peer_member", peer).set(p.state == p2p::PeerState::kMember ? 1 : 0);
    auto it = s.progress.find(p.id);
    if (it == s.progress.end()) continue;
    const auto& r = it->second.last;
    gauge("coordinator.peer_outer_step", peer).set(static_cast<double>(r.outer_step));
    setIfFinite(gauge("coordinator.peer_tokens_per_second", peer), r.tokens_per_s);
    setIfFinite(gauge("coordinator.peer_utilization", peer), r.utilization);
  }
  for (const auto& e : s.view.edges) {
    const MetricLabels link{{"from", shortId(e.from)},
                            {"to", shortId(e.to)},
                            {"source", std::string(p2p::edgeSourceName(e.source))}};
    gauge("coordinator.link_bandwidth_bits_per_second", link).set(e.bytes_per_s * 8);
  }
  auto last = std::find_if(s.steps.rbegin(), s.steps.rend(),
                           [](const p2p::StepPoint& st) { return std::isfinite(st.loss); });
  if (last != s.steps.rend()) {
    gauge("coordinator.outer_step").set(static_cast<double>(last->outer_step));
    gauge("coordinator.loss").set(last->loss);
    gauge("coordinator.group_sent_bytes").set(last->bytes_sent);
  }
  (void)now_unix_s;
}

p2p::PeerReportMsg recordRound(const training::RoundRecord& r, double round_s,
                               std::uint64_t peer_bytes_sent) {
  static Counter& rounds = counter("train.rounds");
  static Counter& retries = counter("train.round_retries");
  static Histogram& round_h = histogram("train.round_duration_seconds", durationBuckets());
  static Histogram& compute_h = histogram("train.compute_duration_seconds", durationBuckets());
  static Histogram& reduce_h = histogram("train.allreduce_duration_seconds", durationBuckets());
  static Counter& sent = counter("collectives.sent_bytes");
  rounds.inc();
  retries.inc(r.retries);
  if (peer_bytes_sent > sent.value()) sent.inc(peer_bytes_sent - sent.value());
  gauge("train.outer_step").set(static_cast<double>(r.outer_step));
  gauge("train.inner_step").set(static_cast<double>(r.inner_step));
  setIfFinite(gauge("train.loss"), r.train_loss);
  if (r.val_loss) setIfFinite(gauge("train.val_loss"), *r.val_loss);
  gauge("train.tokens_per_second").set(r.tokens_per_s);
  gauge("train.group_sent_bytes").set(r.bytes_sent);
  gauge("train.world").set(static_cast<double>(r.world));
  gauge("train.epoch").set(static_cast<double>(r.epoch));
  // The first round has no predecessor; a round is its local phase plus what it waited for.
  const double utilization =
      round_s > 0 ? std::clamp(r.compute_s / round_s, 0.0, 1.0) : std::nan("");
  setIfFinite(gauge("train.utilization"), utilization);
  if (round_s > 0) round_h.observe(round_s);
  if (r.compute_s > 0) compute_h.observe(r.compute_s);
  if (r.reduce_s > 0) reduce_h.observe(r.reduce_s);

  p2p::PeerReportMsg m;
  m.outer_step = r.outer_step;
  m.inner_step = r.inner_step;
  m.loss = r.train_loss;
  m.val_loss = r.val_loss ? *r.val_loss : std::nan("");
  m.bytes_sent = r.bytes_sent;
  m.tokens_per_s = r.tokens_per_s;
  m.utilization = utilization;
  m.round_s = round_s;
  m.retries = r.retries;
  m.world = static_cast<std::uint32_t>(r.world);
  return m;
}

}  // namespace loco::ops
