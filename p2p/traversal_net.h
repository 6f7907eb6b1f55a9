#pragma once
// The sockets of NAT traversal (p2p/traversal.h explains the paths). Internal to p2p/: ASIO.

#include <asio.hpp>

#include <functional>
#include <memory>

#include "p2p/address.h"
#include "p2p/base/clock.h"
#include "p2p/base/status.h"
#include "p2p/traversal.h"

namespace loco::p2p {

namespace traversal {

// Opens a TCP connection from `self_id` to the peer at `remote` by the path pathTo() names.
// `done` runs on io's thread with the connected socket, or kTimeout / kUnavailable / the far
// end's reason (a failed reverse dial or punch).
using SocketDone = std::function<void(Result<std::shared_ptr<asio::ip::tcp::socket>>)>;
void openSocket(asio::io_context& io, const std::string& self_id, const HostPort& remote,
                Deadline deadline, SocketDone done);

// Every socket a link listener accepts goes through here first (LinkListener, RelayClient): a
// reverse dial's preamble hands it to the dial that asked for it; anything else goes to
// `ordinary` untouched. A socket that sends nothing within `timeout` is closed.
void routeAccepted(asio::ip::tcp::socket socket, Millis timeout,
                   std::function<void(asio::ip::tcp::socket)> ordinary);

// A kConnectRequest or kConnectReply the coordinator forwarded to `self_id`. Connections this
// peer opens on request go to `accept` (its link listener's, as if it had accepted them).
// Call on io's thread.
void onCoordinatorFrame(asio::io_context& io, const std::string& self_id, MsgType type,
                        ByteSpan payload, std::function<void(asio::ip::tcp::socket)> accept);

}  // namespace traversal
}  // namespace loco::p2p
