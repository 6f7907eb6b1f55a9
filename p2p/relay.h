#pragma once
// A relay for peers nobody can dial (behind a NAT or a firewall), in the manner of a TURN
// server: the relay gives each registered peer a public port of its own and forwards every
// connection made to that port, byte for byte and without reading them, over a connection the
// peer opens to the relay on request. Dialers need nothing new: a relayed peer simply advertises
// RELAYHOST:PORT, so links, state downloads and probes reach it like any other address, and an
// end-to-end session (TLS) runs through the relay untouched.
//
// Wire (control port, every request starts with the 8 bytes "LOCORLY1", then one op byte and a
// 32-character argument):
//   'R' + peer id    register; the relay answers 'K' + u16 port (little-endian) or 'E' + u16
//                    length + message, and then sends 'C' + 32-character token on this same
//                    connection for every connection that arrives at the peer's port.
//   'A' + token      attach: this connection becomes the peer's end of that arrival; the relay
//                    splices the two at once (no answer).
// A control connection that ends releases its port; pairs already spliced live on.
//
// Bad input (wrong magic, unknown op, malformed id, a token nobody issued, an id already
// registered by another connection, too slow a handshake) closes only that connection, counted
// in relay.refused{reason}. Limits: max_peers registrations, max_pairs_per_peer spliced pairs
// per peer, peer_rate_mbit per peer (both directions together; 0: unlimited).
// Metrics: relay.peers, relay.pairs (gauges), relay.bytes{peer} (counter), relay.refused{reason}.
//
// Thread rules: create, use and destroy on one network thread; callbacks run there.

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "p2p/address.h"
#include "p2p/base/clock.h"
#include "p2p/base/status.h"
#include "p2p/runtime.h"

namespace loco::p2p {

class Stream;

struct RelayOptions {
  HostPort listen{"0.0.0.0", 0};  // the control port; peers' ports are bound on the same host
  std::size_t max_peers = 64;
  std::size_t max_pairs_per_peer = 64;
  double peer_rate_mbit = 0;
  Millis handshake_timeout{5000};  // for a request, and for a peer to attach to an arrival
};

class RelayServer {
 public:
  // Binds and starts accepting. Errors: kUnavailable when the address cannot be bound.
  static Result<std::unique_ptr<RelayServer>> start(NetworkThread& net, RelayOptions options);
  ~RelayServer();
  std::uint16_t port() const;
  // Closes every connection and stops accepting.
  void shutdown();

  struct Impl;

 private:
  explicit RelayServer(std::shared_ptr<Impl> impl);
  std::shared_ptr<Impl> impl_;
};

// The relayed peer's side: registers `peer_id` at the relay and hands every forwarded
// connection to `on_stream` (a LinkListener's acceptStream), as the server end of the dialer's
// end-to-end TLS session (tls::wrap; a plain stream under --insecure). `on_lost` runs once if the
// control connection ends afterwards: the advertised address is then dead.
class RelayClient {
 public:
  using OnStream = std::function<void(std::unique_ptr<Stream>)>;
  // `done` gets the public HOST:PORT to advertise, or why registration failed (kUnavailable,
  // kTimeout, kResourceExhausted, kAlreadyExists, kProtocolError).
  static std::shared_ptr<RelayClient> start(NetworkThread& net, const HostPort& relay,
                                            const std::string& peer_id, OnStream on_stream,
                                            std::function<void(const Status&)> on_lost,
                                            Deadline deadline,
                                            std::function<void(Result<std::string>)> done);
  ~RelayClient();
  void close();

  struct Impl;

 private:
  explicit RelayClient(std::shared_ptr<Impl> impl);
  std::shared_ptr<Impl> impl_;
};

}  // namespace loco::p2p
