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

#include "p2p/enroll.h"

namespace loco::p2p {

// Enrolls with a coordinator (ARCHITECTURE.md §10): TLS without a certificate of our own, the
// coordinator accepted only if its chain holds the CA pinned by `ca_fingerprint` (refused before
// anything is sent otherwise); sends `request`, returns the signed certificate and the CA.
// Blocking, like fetchStatus. kUnauthenticated: the pin does not match, or the coordinator
// refused the token (its reason).
Result<EnrollReplyMsg> enrollWith(const HostPort& coordinator, const std::string& ca_fingerprint,
                                  const EnrollMsg& request, Deadline deadline);

// Renews our certificate (ARCHITECTURE.md §10): the same request without a token, over TLS with
// the process's current certificate (tls::use), which vouches for the id. Blocking, like
// fetchStatus. kUnauthenticated: the coordinator refused (revoked, or another id).
Result<EnrollReplyMsg> renewWith(const HostPort& coordinator, const EnrollMsg& request,
                                 Deadline deadline);

}  // namespace loco::p2p
