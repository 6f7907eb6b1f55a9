#pragma once
// Links to peers that cannot accept connections (volunteers behind a home router). Every
// connection of a link, a state download or a probe is opened here, by the path the two
// peers' reach (messages.h PeerReach, announced in every membership view) calls for:
//
//   direct    the far end accepts: dial its advertised address (also a relay's address).
//   reverse   the far end is behind a NAT and we are not: through the coordinator we ask it to
//             dial our advertised address; its connection starts with a preamble (0xA5, then
//             "LOCORV", a zero byte and the 64-bit token of our request) that our listener
//             recognizes before anything else is read, and is then used exactly as if we had
//             dialed it (we run the TLS client, it the TLS server, as on a direct link).
//   punched   both ends are behind a port-preserving NAT: each binds a port, the coordinator
//             tells each the other's public address (its own view of where their connections
//             come from) and both connect at once (TCP simultaneous open); the routers let the
//             other side's SYN in because it matches the connection just sent out.
//
// A peer behind a NAT that changes ports per destination cannot be punched; it is relayed
// instead (p2p/connect_strategy.h), which the dialer sees as direct.
// This header holds what code above p2p/ needs (registering its peer); the sockets themselves
// are opened by p2p/traversal_net.h, internal to p2p/.

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "p2p/frame.h"
#include "p2p/messages.h"
#include "p2p/topology.h"

namespace loco::p2p {

namespace traversal {

enum class LinkPath { kDirect, kReverse, kPunched, kRelayed };
const char* linkPathName(LinkPath p);  // "direct", "reverse", "punched", "relayed"
// How a peer of reach `from` opens a connection to one of reach `to` (pure).
LinkPath linkPath(PeerReach from, PeerReach to);

// The path of the link from member `from` to member `to` of `view` ("" when either is unknown),
// for `loco status` and the dashboard.
std::string linkPathIn(const GroupView& view, const std::string& from, const std::string& to);

// The rates the coordinator plans the ring order with (topology.h bestRing): a relayed link
// counts at half its measured rate, because each of its bytes crosses the relay host's link twice
// (in and out) and every relayed link shares that host, which a single link's measurement does
// not see. So the ring takes direct (or dialed-back, or punched) links unless a relayed one is
// clearly faster. `loco status` shows the measured rates.
BandwidthTable planningRates(const BandwidthTable& measured, const GroupView& view);

// A local peer: its reach and how to send a frame to its coordinator. Thread-safe; several
// peers may live in one process (tests), told apart by id.
using Signal = std::function<void(MsgType, std::vector<std::uint8_t>)>;
void registerSelf(const std::string& self_id, PeerReach reach, Signal signal);
void unregisterSelf(const std::string& self_id);
// From each membership view: the member announced at `address` and its reach.
void notePeer(const std::string& address, const std::string& id, PeerReach reach);
// The path a connection from `self_id` to `address` takes now (direct when either is unknown).
LinkPath pathTo(const std::string& self_id, const std::string& address);

}  // namespace traversal
}  // namespace loco::p2p
