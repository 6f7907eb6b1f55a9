#pragma once
// What the coordinator remembers of a run for its dashboard and /api/status: recent membership
// events (joins, admissions, leaves, evictions, ring changes, rebuilds, retried rounds) and the
// training progress the peers report after every round (PeerReportMsg). Bounded: the last
// kMaxEvents events and kMaxSteps steps; older ones are dropped first. One run per coordinator:
// a second run's steps overwrite the first one's.
//
// Pure (no clocks, no I/O: the caller passes the wall-clock time) and not thread-safe: the
// coordinator owns one on its network thread and hands out copies.

#include <cstddef>
#include <cstdint>
#include <deque>
#include <map>
#include <string>
#include <vector>

#include "p2p/base/clock.h"
#include "p2p/membership.h"
#include "p2p/messages.h"

namespace loco::p2p {

struct RunEvent {
  double unix_s = 0;
  std::string kind;  // pending, admitted, left, evicted, reordered, replaced, rebuilt, retried
  std::string peer;  // "" for group-wide events
  std::uint64_t epoch = 0;
  std::string detail;
};

// One outer step as the group saw it: every member reports the same loss and byte count (they
// come out of the round's all-reduced statistics); the validation loss comes from the one peer
// that evaluated.
struct StepPoint {
  std::uint64_t outer_step = 0;
  std::uint64_t inner_step = 0;
  double unix_s = 0;    // first report of this step
  double loss = 0;      // NaN: nobody contributed
  double val_loss = 0;  // NaN: not evaluated at this step
  double bytes_sent = 0;
  std::uint32_t world = 0;
};

struct PeerProgress {
  double unix_s = 0;  // of the last report
  PeerReportMsg last;
};

// The coordinator's whole picture of a run at one moment (Coordinator::snapshot()): the view with
// its counters and link estimates, and what its RunLog holds.
struct RunSnapshot {
  GroupView view;
  std::vector<RunEvent> events;
  std::vector<StepPoint> steps;
  std::map<std::string, PeerProgress> progress;  // by peer id
  Millis heartbeat_interval{0};
  Millis heartbeat_timeout{0};
};

class RunLog {
 public:
  static constexpr std::size_t kMaxEvents = 256;
  static constexpr std::size_t kMaxSteps = 4096;

  void onEvents(const std::vector<MembershipEvent>& events, double unix_s);
  void onReport(const std::string& peer, const PeerReportMsg& report, double unix_s);
  // Peers that are gone from the group keep no progress entry.
  void forget(const std::string& peer);

  const std::deque<RunEvent>& events() const { return events_; }
  std::vector<StepPoint> steps() const;
  const std::map<std::string, PeerProgress>& peers() const { return peers_; }

 private:
  void add(RunEvent e);
  std::deque<RunEvent> events_;
  std::map<std::uint64_t, StepPoint> steps_;  // by outer step
  std::map<std::string, PeerProgress> peers_;
};

}  // namespace loco::p2p
