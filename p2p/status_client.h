#pragma once
// `loco status` and `loco local`'s live view: one request to the coordinator, one reply.

#include "p2p/address.h"
#include "p2p/base/clock.h"
#include "p2p/base/status.h"
#include "p2p/messages.h"

namespace loco::p2p {

// Blocking (runs its own io_context on the calling thread). Errors: kInvalidArgument (address does
// not resolve), kUnavailable (refused), kTimeout, kPeerLost, kProtocolError.
Result<GroupView> fetchStatus(const HostPort& coordinator, Deadline deadline);

}  // namespace loco::p2p
