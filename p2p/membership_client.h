#pragma once
// A peer's session with the coordinator: registration, heartbeats, the group view, sync points
// and graceful leave. The protocol runs on a NetworkThread; the public calls are blocking, take
// a Deadline and may be called from any one application thread (the training thread). abort()
// may be called from any thread and wakes every blocking call with kAborted. The NetworkThread
// must outlive the client (its destructor closes the connection on that thread).

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>

#include "p2p/address.h"
#include "p2p/base/clock.h"
#include "p2p/base/status.h"
#include "p2p/frame.h"
#include "p2p/messages.h"

namespace loco::p2p {

class NetworkThread;
class Connection;

struct MembershipClientOptions {
  HostPort coordinator;
  std::string peer_id;
  std::string advertise;  // HOST:PORT of this peer's link listener
  std::uint32_t streams = 4;
};

class MembershipClient {
 public:
  enum class State { kDisconnected, kConnecting, kPending, kMember, kEvicted, kLeft };

  MembershipClient(NetworkThread& net, MembershipClientOptions options);
  ~MembershipClient();
  MembershipClient(const MembershipClient&) = delete;
  MembershipClient& operator=(const MembershipClient&) = delete;

  // Called on the network thread with every new view (set before join()).
  void setViewCallback(std::function<void(const GroupView&)> cb);
  // Called on the network thread with the coordinator's verdict on each operation (set before
  // join()): commit or abort of (epoch, op_id).
  void setDecisionCallback(
      std::function<void(std::uint64_t epoch, std::uint64_t op_id, bool commit)> cb);
  // Called on the network thread when this peer is evicted or loses the coordinator.
  void setLostCallback(std::function<void(const Status&)> cb);
  // Tells the coordinator this peer's part of (epoch, op_id) is done or failed. Non-blocking.
  // `members`: who takes part when not every member does (an exchange); the ids, sorted.
  void reportOp(std::uint64_t epoch, std::uint64_t op_id, bool ok,
                std::vector<std::string> members = {});
  // Sends bandwidth measurements to the coordinator (topology.h). Non-blocking; sent in order
  // with reportOp and syncPoint, so a report made before a sync point counts at that sync point.
  void reportLinks(std::vector<EdgeEstimate> edges);
  // Called on the network thread with every shared-state frame from the coordinator
  // (kStatePlan, kStateComplete; see state_sync.h). Set before join().
  void setStateCallback(std::function<void(const FrameHeader&, std::vector<std::uint8_t>)> cb);
  // Queues a frame to the coordinator (shared-state manifests, reports, complaints). Non-blocking;
  // dropped when not connected (the caller's deadline then expires, or the lost callback runs).
  void sendToCoordinator(MsgType type, std::vector<std::uint8_t> payload, std::uint64_t op_id = 0);

  // Connects and registers as pending; blocks until the coordinator welcomes this peer. A refused
  // connection (coordinator not up yet) is retried until the deadline. Errors: kInvalidArgument
  // (the address does not resolve), kUnavailable or kTimeout (unreachable), kAlreadyExists (a
  // live peer uses this identity), kAborted. Also used to rejoin after eviction.
  Status join(Deadline deadline);
  // Blocks until this peer is a member. Admission happens at a sync point of the members, so it
  // counts as this peer's sync point: the next syncPoint() is the barrier after it. Errors:
  // kEvicted, kPeerLost (coordinator gone), kTimeout, kAborted.
  Status waitForMembership(Deadline deadline);
  // A sync point: blocks until every member has reached one and returns the epoch of that
  // barrier, the one to continue in (pending peers are admitted here). Errors as
  // waitForMembership.
  Result<std::uint64_t> syncPoint(Deadline deadline);
  // Graceful leave: the others see it at once. Blocks until acknowledged or the deadline.
  Status leave(Deadline deadline);
  void abort();

  State state() const;
  GroupView view() const;
  std::uint64_t epoch() const;
  // The epoch of the last sync point this peer passed (or of its admission). When epoch() is
  // ahead of it, the group has lost a member since, and the members must meet at a sync point
  // before they can agree on what to run next.
  std::uint64_t barrierEpoch() const;
  Millis heartbeatInterval() const;
  Millis heartbeatTimeout() const;
  const std::string& peerId() const { return options_.peer_id; }

 private:
  // Run on the network thread.
  void onFrame(std::uint64_t session, const FrameHeader& h, std::vector<std::uint8_t> payload);
  void onClosed(std::uint64_t session, const Status& why);
  void closeConnection();  // blocks until the network thread has closed it
  Status errorForStateLocked() const;

  NetworkThread& net_;
  MembershipClientOptions options_;
  std::function<void(const GroupView&)> view_cb_;
  std::function<void(std::uint64_t, std::uint64_t, bool)> decision_cb_;
  std::function<void(const Status&)> lost_cb_;
  std::function<void(const FrameHeader&, std::vector<std::uint8_t>)> state_cb_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  State state_ = State::kDisconnected;
  Status last_error_;
  bool aborted_ = false;
  bool connect_done_ = false;
  std::uint64_t session_ = 0;
  GroupView view_;
  std::uint64_t epoch_ = 0;
  std::uint64_t sync_generation_ = 0;
  std::uint64_t barrier_epoch_ = 0;
  bool admission_sync_pending_ = false;  // admitted, the SyncDone of that barrier not yet here
  Millis heartbeat_interval_{500};
  Millis heartbeat_timeout_{3000};

  std::shared_ptr<Connection> conn_;                           // network thread only
  std::shared_ptr<void> lifetime_ = std::make_shared<int>(0);  // see LifetimeGuard (net.h)
};

}  // namespace loco::p2p
