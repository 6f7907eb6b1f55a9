#pragma once
// The coordinator: tracks membership and phase state, never carries tensor data (the role of
// PCCL's master). Single-threaded and event-driven on one io_context: every input is a frame or a
// timer, every outcome is broadcast exactly once. The rules live in Membership (membership.h);
// this class does the I/O.
//
// Bad input (garbage, absurd lengths, unknown types, a handshake that never completes, floods)
// closes only the offending connection, with a logged reason and a counter.

#include <asio.hpp>

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>

#include "p2p/address.h"
#include "p2p/base/clock.h"
#include "p2p/base/status.h"
#include "p2p/connection.h"
#include "p2p/enroll.h"
#include "p2p/membership.h"
#include "p2p/net.h"
#include "p2p/run_log.h"
#include "p2p/state_sync.h"
#include "p2p/topology.h"

namespace loco::p2p {

struct CoordinatorOptions {
  HostPort listen{"0.0.0.0", 0};
  Millis heartbeat_interval{500};
  Millis heartbeat_timeout{3000};
  Millis handshake_timeout{2000};     // a connection must send Hello/StatusRequest within this
  std::size_t max_handshaking = 256;  // beyond this the oldest unidentified connection is dropped
  std::size_t max_peers = 4096;
  // How long a coordinator that lost its group (a restart, or a standby taking over) waits for
  // the members the re-registering peers report before it admits those that came back
  // (membership.h). Unset: defaultRebuildWindow(heartbeat_timeout).
  std::optional<Millis> rebuild_window;
  // How long peers behind the run's high-water mark, with no members left, wait for a peer that
  // holds it before the run goes on from what they hold (membership.h).
  Millis holder_wait = kDefaultHolderWait;
  // TLS (tls_stream.h): signs a certificate for a new peer that presents a join token, over a
  // connection without a client certificate. Runs on the io thread; `from` is the remote
  // address. Unset: enrollment is refused.
  std::function<Result<EnrollReplyMsg>(const EnrollMsg&, const std::string& from)> enroll;
  // TLS: signs a fresh certificate for a peer that asks over a connection presenting its current,
  // still valid one (Enroll without a token, for the id in that certificate), so it renews
  // before expiry without dropping anything. Runs on the io thread. Unset: refused.
  std::function<Result<EnrollReplyMsg>(const EnrollMsg&)> renew;
  // The quorum rule (membership.h): on wherever another coordinator may be alive at the same
  // time (a standby), so that the two sides of a partition cannot both train.
  bool quorum = false;
};

// What the coordinator's dial-back of a joiner's advertised address found (reachability.cpp).
struct Reachability {
  enum State { kChecking, kReachable, kUnreachable };
  std::string addr;
  State state = kChecking;
  std::string detail;  // why not, when unreachable
  std::uint64_t generation = 0;
  std::string describe() const;  // "reachable", "unreachable: <why>", "checking"
};

class Coordinator {
 public:
  // Binds and starts accepting on `io` (which the caller runs). Errors: kInvalidArgument for bad
  // options, kUnavailable when the address cannot be bound.
  static Result<std::unique_ptr<Coordinator>> start(asio::io_context& io,
                                                    CoordinatorOptions options);
  ~Coordinator();

  std::uint16_t port() const { return port_; }
  // Closes every connection and stops accepting. Call on the io thread.
  void shutdown();

  // What /api/status and the dashboard show (run_log.h). Call on the io thread; a copy.
  RunSnapshot snapshot() const;

  // Revoked peers (loco token revoke): those registered are evicted (the group's next epoch
  // closes every link to them) and from then on they are refused Hello and renewal. The whole
  // set each time; ids leave it only with a new coordinator. Call on the io thread.
  void revokePeers(const std::set<std::string>& ids);

 private:
  Coordinator(asio::io_context& io, CoordinatorOptions options);
  void accept();
  void onAccepted(asio::ip::tcp::socket socket);
  void onHandshakeFrame(const std::shared_ptr<Connection>& conn, const FrameHeader& h,
                        std::vector<std::uint8_t> payload);
  void onHello(const std::shared_ptr<Connection>& conn, ByteSpan payload);
  void onEnroll(const std::shared_ptr<Connection>& conn, ByteSpan payload);
  void onPeerFrame(const std::string& id, const FrameHeader& h, std::vector<std::uint8_t> payload);
  void onPeerClosed(const std::string& id, const Connection* conn, const Status& why);
  void refuse(const std::shared_ptr<Connection>& conn, StatusCode code, const std::string& reason);
  void sendStatus(Connection& conn);
  void apply(MembershipEffects fx);
  // Tells a registered peer why it is turned away (a Refused message) and closes its control
  // connection once that is sent; its close handler no longer runs.
  void refuseAndClose(const std::string& peer, StatusCode code, const std::string& reason);
  void tick();
  void onLinkReport(const std::string& id, ByteSpan payload);
  // NAT traversal (p2p/traversal.h): forwards a connect request or reply to the peer it names.
  void onConnectFrame(const std::string& id, MsgType type, ByteSpan payload);
  void onPeerReport(const std::string& id, ByteSpan payload);
  // `loco doctor`'s reachability check (messages.h DialBackMsg); dial_back.cpp.
  void onDialBack(const std::shared_ptr<Connection>& conn, ByteSpan payload);
  // Dials `addr` back once per registration and records the outcome (reachability.cpp).
  void checkReachable(const std::string& id, const std::string& addr);
  // Registered peers' outcomes, by id, as `loco status` shows them.
  std::vector<std::pair<std::string, std::string>> reachabilityView() const;
  // Proposes the ring with the fastest slowest edge once every edge among the members is known
  // and it beats the current ring by kReorderGain (so noise does not reshuffle the ring).
  void maybeProposeRing();
  void dropHandshaking(const Connection* conn);
  // Shared-state sync rounds (state_sync.h).
  void onStateFrame(const std::string& id, const FrameHeader& h, ByteSpan payload);
  void applyState(StateSyncEffects fx);
  std::vector<PeerInfo> members() const;

  asio::io_context& io_;
  CoordinatorOptions options_;
  LifetimeGuard lifetime_;  // declared before anything whose handlers capture `this`
  std::unique_ptr<asio::ip::tcp::acceptor> acceptor_;
  asio::steady_timer tick_timer_;
  std::uint16_t port_ = 0;
  bool shut_down_ = false;

  Membership membership_;
  BandwidthTable bandwidth_;
  bool bandwidth_dirty_ = false;
  StateSyncRounds state_sync_;
  RunLog run_log_;
  std::size_t dial_backs_in_flight_ = 0;
  std::map<std::string, Reachability> reachability_;  // by peer id
  std::uint64_t entry_generation_ = 0;
  std::map<std::string, std::shared_ptr<Connection>> peers_;  // registered, by peer id
  std::vector<std::shared_ptr<Connection>> handshaking_;      // oldest first
  std::set<std::string> revoked_;                             // loco token revoke
};

}  // namespace loco::p2p
