#pragma once
// How other peers reach this one, decided once at start (issue: volunteers behind a NAT):
// direct when the coordinator can dial the advertised address back (the check `loco doctor`
// makes, p2p/doctor_probe.h); through a relay (p2p/relay.h) when it cannot and a relay is
// configured. Dialers need nothing new either way: a relayed peer advertises its port at the
// relay. Logged, and shown by `loco status` (the ADDRESS column is the relay's).
//
// Blocking: call on an application thread, never the network thread. Errors: the relay refused
// or did not answer (the peer cannot take part: nobody could reach it).

#include <memory>
#include <string>

#include "p2p/address.h"
#include "p2p/base/clock.h"
#include "p2p/base/status.h"
#include "p2p/runtime.h"

namespace loco::p2p {

class LinkListener;
class RelayClient;

enum class ReachPath { kDirect, kRelayed };
const char* reachPathName(ReachPath p);  // "direct", "relayed"

struct ReachDecision {
  ReachPath path = ReachPath::kDirect;
  std::string advertise;               // what to tell the coordinator
  std::string why;                     // one sentence for the log
  std::shared_ptr<RelayClient> relay;  // kRelayed: keep it alive; destroy on the network thread
};

// `relay` empty: always direct, without asking the coordinator (nothing else to choose).
// `listener` receives the relayed streams; it must outlive the returned RelayClient.
Result<ReachDecision> chooseReachPath(NetworkThread& net, LinkListener& listener,
                                      const HostPort& coordinator, const HostPort& listen,
                                      const std::string& advertise, const std::string& relay,
                                      const std::string& peer_id, Deadline deadline);

}  // namespace loco::p2p
