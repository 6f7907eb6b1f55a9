#pragma once
// ASIO plumbing shared by the coordinator, peers and links: socket tuning, resolution and
// connecting with a deadline. Internal to p2p/: nothing above p2p/ includes it or sees ASIO
// (ARCHITECTURE.md §1); code above p2p/ uses p2p/runtime.h.

#include <asio.hpp>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "p2p/address.h"
#include "p2p/base/clock.h"
#include "p2p/base/status.h"
#include "p2p/runtime.h"

namespace loco::p2p {

// TCP_NODELAY always; TCP_USER_TIMEOUT (unacknowledged data older than this kills the
// connection) as the backstop behind application heartbeats. Errors are ignored: tuning is best
// effort and the connection works without it.
void tuneSocket(asio::ip::tcp::socket& socket, Millis user_timeout);
void setTcpUserTimeout(asio::ip::tcp::socket& socket, Millis user_timeout);
// Keeps at most `bytes` of unsent data in the kernel (TCP_NOTSENT_LOWAT): the socket reports
// writable only below it, so the application, not the kernel's FIFO, decides what goes next.
// Best effort, like tuneSocket.
void setNotSentLowat(asio::ip::tcp::socket& socket, std::size_t bytes);
// Completion condition for asio::async_write that offers the socket everything left at each
// write. asio's default (transfer_all) offers at most 64 KiB per write, and with TCP_NODELAY every
// write is pushed as its own segment: a 256 KiB ring piece took four sendmsg calls and four
// pushes (loopback, N = 4, 64 MiB: 1900 sendmsg and 4300 packets per peer per operation, against
// Gloo's 300 writev and 2000 packets). The kernel takes what its send buffer (and
// TCP_NOTSENT_LOWAT) allows, and the rest waits for the socket to become writable, as before.
std::size_t transferAllAtOnce(const std::error_code& ec, std::size_t bytes_transferred);
// TCP keepalive after `idle` without traffic, then every idle/4, dead after 3 unanswered probes:
// a long-lived idle connection (a relay's control connection) keeps its entry in the NAT
// routers on the way and notices a vanished far end. Best effort, like tuneSocket.
void setKeepalive(asio::ip::tcp::socket& socket, Millis idle);

// Blocking name resolution (call it off the network thread). kInvalidArgument when the name
// does not resolve.
Result<std::vector<asio::ip::tcp::endpoint>> resolve(const HostPort& hp);

// Connects to the first endpoint that accepts, giving up at `deadline`. `done` runs on the
// socket's executor with the connected socket or kUnavailable (refused) / kTimeout.
void asyncConnect(asio::io_context& io, std::vector<asio::ip::tcp::endpoint> endpoints,
                  Deadline deadline,
                  std::function<void(Result<std::shared_ptr<asio::ip::tcp::socket>>)> done);

// Binds and listens; port 0 picks a free port. SO_REUSEADDR so a restarted coordinator can
// rebind at once.
Result<std::unique_ptr<asio::ip::tcp::acceptor>> listenOn(asio::io_context& io, const HostPort& hp);

// "1.2.3.4:5678" for an endpoint.
std::string endpointString(const asio::ip::tcp::endpoint& ep);

}  // namespace loco::p2p
