#pragma once
// Link bandwidth measurement for the topology (p2p/topology.h; ARCHITECTURE.md §5). Internal to
// collectives/.
//
// - Passive: the outgoing ring link's rate while it had data to send, taken before each "done"
//   report. Fast links mostly idle waiting for data from upstream and show a high rate; the slow
//   link of a ring is always backlogged and shows its true rate, which is what the ring order
//   needs.
// - Probes: every member this peer has no estimate towards, except its ring successor (which
//   real traffic measures), gets one short probe: at most kProbePieces x 256 KiB, measured by the
//   receiver over at most 2 s. One probe at a time, so probes do not split this peer's uplink.
//
// Thread rules: network thread, except waitIdle().

#include <condition_variable>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "collectives/link_transport.h"
#include "p2p/link.h"
#include "p2p/messages.h"

namespace loco::p2p {
class MembershipClient;
}

namespace loco::collectives {

// A dialed link with this epoch is a probe, not a ring link.
inline constexpr std::uint64_t kProbeEpoch = ~std::uint64_t{0};

class LinkProbe {
 public:
  LinkProbe(p2p::NetworkThread& net, p2p::MembershipClient& client, std::string self_id,
            p2p::LinkOptions link_opts, bool enabled);
  ~LinkProbe();

  void onView(const p2p::GroupView& v);
  // A probe dialed to this peer: measure it.
  void onProbeLink(std::shared_ptr<p2p::Link> link, const std::string& from);
  // Passive measurement of the link to the ring successor of `group`.
  void measurePassive(LinkTransport& transport, const PeerGroup& group);
  void stop();
  // Any thread: blocks until every queued probe is done. kTimeout.
  Status waitIdle(Deadline deadline);

 private:
  struct ProbeReceive;
  void setIdle();
  void startNext();
  void endProbe();
  void finishReceive(const std::shared_ptr<ProbeReceive>& rx);

  p2p::NetworkThread& net_;
  p2p::MembershipClient& client_;
  std::string self_id_;
  p2p::LinkOptions link_opts_;
  bool enabled_;
  p2p::LifetimeGuard lifetime_;
  std::uint64_t passive_epoch_ = ~std::uint64_t{0};
  std::uint64_t passive_bytes_ = 0;
  double passive_busy_s_ = 0;
  std::map<std::string, double> reported_rate_;  // outgoing links measured passively
  std::set<std::string> probed_;
  std::deque<std::pair<std::string, std::string>> queue_;  // id, address
  std::shared_ptr<p2p::Link> link_;                        // the probe this peer sends
  bool dialing_ = false;
  p2p::Timer timer_;
  std::vector<std::shared_ptr<ProbeReceive>> receives_;
  const std::vector<std::uint8_t> payload_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool idle_ = true;
};

}  // namespace loco::collectives
