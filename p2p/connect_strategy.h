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
// Blocking: call on an application thread, never the network thread. Errors: only a --relay that
// is not HOST:PORT (a relay that fails leaves the peer reverse: peers that accept connections
// can still have it dial them back).

#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

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
  bool asked = true;  // false: the coordinator did not answer, and direct is a guess
};

// A coordinator that does not answer (not up yet) leaves the peer direct, as before this check.
// `listener` receives the relayed streams; it must outlive the returned RelayClient.
// `on_relay_lost` runs on the network thread if a relay this peer registered at goes away later
// (its advertised address is then dead; the caller chooses again, p2p/membership_client.h
// reregister).
Result<ReachDecision> chooseReachPath(NetworkThread& net, LinkListener& listener,
                                      const HostPort& coordinator, const HostPort& listen,
                                      const std::string& advertise, const std::string& relay,
                                      const std::string& peer_id, Deadline deadline,
                                      std::function<void(const Status&)> on_relay_lost = {});

// A peer's reach for its lifetime: chosen at start, and chosen again (on a thread of its own,
// since choosing blocks) each time the relay it registered at is lost: the relay may be back,
// or the peer goes reverse. `on_change` then gets the new decision, for the caller to register
// again with it (MembershipClient::reregister). Retries every few seconds until a choice
// succeeds or the keeper is destroyed.
class ReachKeeper {
 public:
  struct Settings {
    HostPort coordinator, listen;
    std::string advertise, relay, peer_id;
  };
  // `listener` must outlive the keeper's thread (stop()); close() on the network thread.
  ReachKeeper(NetworkThread& net, LinkListener& listener, Settings settings);
  ~ReachKeeper();  // stop()
  ReachKeeper(const ReachKeeper&) = delete;
  ReachKeeper& operator=(const ReachKeeper&) = delete;

  // The first choice (calling thread). Errors as chooseReachPath.
  Result<ReachDecision> choose(Deadline deadline);
  // Called on the keeper's thread with each later decision. Set before a relay can be lost.
  void setOnChange(std::function<void(const ReachDecision&)> on_change);
  // Joins the re-choosing thread (a choice in progress runs to its bound, about 20 s at most);
  // no on_change after it returns. Idempotent; any thread but the network thread.
  void stop();
  // Drops the relay client (network thread).
  void close();

 private:
  void onRelayLost();
  void repathLoop();

  NetworkThread& net_;
  LinkListener& listener_;
  Settings settings_;
  std::function<void(const ReachDecision&)> on_change_;
  std::shared_ptr<RelayClient> relay_;  // network thread
  std::mutex mu_;
  std::condition_variable cv_;
  bool lost_ = false, stopping_ = false;
  std::thread thread_;
};

}  // namespace loco::p2p
