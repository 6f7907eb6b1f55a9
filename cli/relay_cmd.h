#pragma once
// The relay's flags, shared by `loco relay` and `loco coordinator --relay` (p2p/relay.h), and
// the signal wait both commands end with.

#include <string>
#include <vector>

#include "cli/flags.h"
#include "p2p/relay.h"
#include "p2p/runtime.h"

namespace loco::cli {

// --relay-max-peers, --relay-pairs-per-peer, --relay-peer-rate-mbit.
std::vector<FlagSpec> relayLimitFlags();
// The options from those flags, listening on `listen` (HOST:PORT, port 0: any).
Result<p2p::RelayOptions> relayOptions(const Flags& flags, const std::string& listen);

// Blocks until SIGINT or SIGTERM arrives (watched on `net`); returns the signal. For long-running
// commands (loco relay, loco coordinator).
int waitForTerminationSignal(p2p::NetworkThread& net);

}  // namespace loco::cli
