#pragma once
// The run's metrics in the process-wide registry (p2p/base/metrics.h), under the names /metrics
// exposes (README "Metrics"):
// - a coordinator publishes the group as it sees it just before every scrape (epoch, world,
//   pending, each peer's heartbeat age and last reported progress, link estimates, the latest
//   step's loss), so one scrape of the coordinator covers peers Prometheus cannot reach;
// - a training peer records every round it applies (rounds, loss, throughput, utilization,
//   round / compute / all-reduce durations).
// Thread-safe (the registry is).

#include <cstdint>

#include "p2p/messages.h"
#include "p2p/run_log.h"

namespace loco::training {
struct RoundRecord;
}

namespace loco::ops {

void publishRunGauges(const p2p::RunSnapshot& s, double now_unix_s);

// `round_s`: wall time since the previous round (0 for the first); `peer_bytes_sent`: this peer's
// all-reduce bytes so far (Communicator::bytesSent). Returns the report the peer sends its
// coordinator (without `http`). Call from one thread (the training thread).
p2p::PeerReportMsg recordRound(const training::RoundRecord& r, double round_s,
                               std::uint64_t peer_bytes_sent);

// Help texts of the metrics above; creates the counters alerts rely on at 0.
void describeRunMetrics(bool coordinator);

}  // namespace loco::ops
