#pragma once
// `loco join`'s training mode (join_train.cpp).

#include <optional>
#include <string>
#include <vector>

#include "cli/flags.h"
#include "p2p/address.h"
#include "p2p/base/clock.h"

namespace loco::cli {

struct TrainingPeerSetup {
  std::vector<p2p::HostPort> coordinators;  // the first, then standbys
  p2p::HostPort listen;
  std::string advertise;  // "" derives it
  std::string peer_id;
  std::uint32_t streams = 4;
  Millis connect_timeout{10000};       // the first registration
  Millis coordinator_timeout{600000};  // without any coordinator, after losing one
  std::optional<p2p::HostPort> http;   // --http: /metrics, /api/status, /healthz
  std::string relay;                   // --relay: used when the coordinator cannot dial us
};

// Runs a training peer to the end; returns the exit code.
int runTrainingPeer(const Flags& flags, const TrainingPeerSetup& setup);

}  // namespace loco::cli
