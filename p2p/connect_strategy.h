#pragma once
// How other peers reach this one, decided once at start (issue: volunteers behind a NAT), from
// the coordinator's dial-back of the advertised address (the check `loco doctor` makes,
// p2p/doctor_probe.h):
//   direct   the coordinator reached it: everyone dials it.
//   reverse  it did not, and the port our connection to the coordinator came from is the port
//            the coordinator saw (a NAT that keeps ports, like most home routers): peers that
//            accept connections are asked to be dialed back, peers behind a NAT themselves
//            punch through (p2p/traversal.h). Also without a NAT that keeps ports when no relay
//            is configured: peers that accept connections can still be dialed back.
//   relayed  it did not, the NAT changes ports (punching cannot work) and a relay is
//            configured: it registers at the relay (p2p/relay.h) and advertises its port there,
//            which every dialer reaches as if it were direct.
// The choice goes into the Hello (every view then shows it), the log, and `loco status`.
//
// Blocking: call on an application thread, never the network thread. Errors: the relay refused
// or did not answer (the peer cannot take part: nobody could reach it).

#include <memory>
#include <string>

#include "p2p/address.h"
#include "p2p/base/clock.h"
#include "p2p/base/status.h"
#include "p2p/messages.h"
#include "p2p/runtime.h"

namespace loco::p2p {

class LinkListener;
class RelayClient;

struct ReachDecision {
  PeerReach path = PeerReach::kDirect;
  std::string advertise;               // what to tell the coordinator
  std::string why;                     // one sentence for the log
  std::shared_ptr<RelayClient> relay;  // kRelayed: keep it alive; destroy on the network thread
};

// A coordinator that does not answer (not up yet) leaves the peer direct, as before this check.
// `listener` receives the relayed streams; it must outlive the returned RelayClient.
Result<ReachDecision> chooseReachPath(NetworkThread& net, LinkListener& listener,
                                      const HostPort& coordinator, const HostPort& listen,
                                      const std::string& advertise, const std::string& relay,
                                      const std::string& peer_id, Deadline deadline);

}  // namespace loco::p2p
