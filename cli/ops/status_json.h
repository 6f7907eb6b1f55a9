#pragma once
// The JSON documents of `--http`'s /api/status (and `loco status --json`): the coordinator's view
// of the run, or a peer's own state. Built with nlohmann-json; numbers that are not finite
// (a loss before any round) are written as null.

#include <cstdint>
#include <optional>
#include <string>

#include "p2p/messages.h"
#include "p2p/run_log.h"

namespace loco::ops {

// `loco status --json`: epoch, world, pending, peers, counters, links (as before).
std::string groupViewJson(const p2p::GroupView& view);

// The coordinator's /api/status: the view, each peer's last progress report, the steps the
// group reported (loss against steps and bytes) and recent events. `now_unix_s` ages reports.
std::string coordinatorStatusJson(const p2p::RunSnapshot& s, double now_unix_s);

// A peer's /api/status.
struct PeerStatus {
  std::string id;
  std::string role = "peer";  // "peer" (training) or "idle peer"
  std::string state;          // member, pending, or "looking for a coordinator"
  std::string coordinator;    // --coordinator as given
  std::uint64_t epoch = 0;
  std::size_t world = 0;
  std::optional<p2p::PeerReportMsg> last_round;  // training peers, after their first round
  double last_round_unix_s = 0;
};
std::string peerStatusJson(const PeerStatus& s, double now_unix_s);

}  // namespace loco::ops
