#pragma once
// A peer's session with the coordinator: registration, heartbeats, the group view, sync points
// and graceful leave. The protocol runs on a NetworkThread; the public calls are blocking, take
// a Deadline and may be called from any one application thread (the training thread). abort()
// may be called from any thread and wakes every blocking call with kAborted. The NetworkThread
// must outlive the client (its destructor closes the connection on that thread).
//
// The session survives its coordinator (ARCHITECTURE.md §4). When the connection drops, the
// coordinator falls silent for the heartbeat timeout, or it evicts this peer, the client
// - tells the owner at once (the lost callback: operations in flight fail and restore their
//   buffers), and blocking calls return kPeerLost / kEvicted;
// - reconnects in the background (reconnect.h: every address in turn, jittered exponential
//   backoff between rounds, at once after an eviction), logging at most one line per few
//   seconds, and registers again as pending with what it holds: its id and incarnation, the
//   highest epoch and the members of the last view it saw, and the report set by
//   setRegistrationReport (shared-state revision and digest, progress);
// - gives up after `coordinator_timeout` without any coordinator: blocking calls then return
//   kUnavailable with a message that says so.
// With more than one coordinator address, every registration (the first one and each after a
// loss) starts by asking every address for its view, all at once: the peer registers with the
// coordinator that holds the group (the one that answers with the most members, then the most
// registered peers, then the highest epoch), not with an empty one that was restarted meanwhile;
// with none holding anyone, the one it had (or the first listed), if that one answers.
// The report (setRegistrationReport) also goes to the coordinator whenever it is set, so that a
// coordinator knows how far the run got (membership.h). A coordinator that answers with Refused
// kCompleted (the run finished while this peer was away) ends the session: blocking calls return
// kCompleted, and nothing is retried.
// Admission (the first one or after a reconnect) counts as the peer's sync point: the next
// syncPoint() or waitForMembership() returns it at once.

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "p2p/address.h"
#include "p2p/base/clock.h"
#include "p2p/base/status.h"
#include "p2p/frame.h"
#include "p2p/messages.h"
#include "p2p/reconnect.h"

namespace loco::p2p {

class NetworkThread;
class Connection;

struct MembershipClientOptions {
  HostPort coordinator;
  std::string peer_id;
  std::string advertise;  // HOST:PORT of this peer's link listener
  std::uint32_t streams = 4;
  PeerReach reach = PeerReach::kDirect;  // how others open connections to us (Hello)
  // Tried in order after `coordinator` (a standby coordinator takes over a lost group).
  std::vector<HostPort> standby_coordinators;
  // After losing the coordinator, how long to look for one before giving up. 0: never
  // reconnect (a lost coordinator or an eviction is final, as for a one-shot tool).
  Millis coordinator_timeout{600000};
  BackoffOptions backoff;
};

// What this peer holds, sent with every registration (HelloMsg version 2).
struct RegistrationReport {
  std::uint64_t state_revision = 0;
  std::uint64_t state_digest = 0;
  std::uint64_t progress = 0;
  bool finished = false;  // this peer reached the run's last step
};

class MembershipClient {
 public:
  // kReconnecting: the coordinator was lost (or evicted this peer); looking for one in the
  // background. kDisconnected after join() failed or the client gave up (see the error).
  // kEvicted only with coordinator_timeout 0.
  enum class State {
    kDisconnected,
    kConnecting,
    kPending,
    kMember,
    kReconnecting,
    kEvicted,
    kLeft
  };

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
  // Called on the network thread when this peer is evicted or loses the coordinator (each time).
  void setLostCallback(std::function<void(const Status&)> cb);
  // Sent to the coordinator now (kProgress, if registered) and with every registration (any
  // thread, non-blocking).
  void setRegistrationReport(RegistrationReport report);
  // Tells the coordinator this peer's part of (epoch, op_id) is done or failed. Non-blocking.
  // `members`: who takes part when not every member does (an exchange); the ids, sorted.
  void reportOp(std::uint64_t epoch, std::uint64_t op_id, bool ok,
                std::vector<std::string> members = {});
  // Sends bandwidth measurements to the coordinator (topology.h). Non-blocking; sent in order
  // with reportOp and syncPoint, so a report made before a sync point counts at that sync point.
  void reportLinks(std::vector<EdgeEstimate> edges);
  // Sends a training peer's progress (PeerReportMsg) to the coordinator. Non-blocking; dropped
  // while not registered.
  void reportProgress(PeerReportMsg report);
  // Called on the network thread with every shared-state frame from the coordinator
  // (kStatePlan, kStateComplete; see state_sync.h). Set before join().
  void setStateCallback(std::function<void(const FrameHeader&, std::vector<std::uint8_t>)> cb);
  // Called on the network thread with every kConnectRequest / kConnectReply the coordinator
  // forwards (NAT traversal, p2p/traversal.h). Set before join().
  void setTraversalCallback(std::function<void(MsgType, std::vector<std::uint8_t>)> cb);
  // Queues a frame to the coordinator (shared-state manifests, reports, complaints). Non-blocking;
  // dropped when not connected (the caller's deadline then expires, or the lost callback runs).
  void sendToCoordinator(MsgType type, std::vector<std::uint8_t> payload, std::uint64_t op_id = 0);

  // This peer is reached another way now (its relay was lost, p2p/connect_strategy.h): it
  // registers again with `advertise` and `reach`, as after a lost coordinator (the lost callback
  // runs; the coordinator replaces the registration, and the next epoch's ring dials the new
  // address). Any thread. A client not registered just keeps the new values for its next Hello.
  void reregister(std::string advertise, PeerReach reach, const Status& why);
  // Connects and registers as pending; blocks until a coordinator (the first address that
  // answers) welcomes this peer. Refused and reset connections (a coordinator not up yet) are
  // retried with backoff until the deadline. Errors: kInvalidArgument (an address does not
  // resolve), kUnavailable or kTimeout (unreachable), kAlreadyExists (a live peer uses this
  // identity), kAborted. While the client reconnects on its own, join() waits for that instead.
  Status join(Deadline deadline);
  // Blocks until this peer is a member and consumes its admission, which counts as this peer's
  // sync point: the next syncPoint() is the barrier after it. Waits through reconnection.
  // Errors: kUnavailable (no coordinator within coordinator_timeout), kAlreadyExists,
  // kEvicted (coordinator_timeout 0), kCompleted (the run finished without this peer),
  // kTimeout (the deadline; still trying), kAborted.
  Status waitForMembership(Deadline deadline);
  // A sync point: blocks until every member has reached one and returns the epoch of that
  // barrier, the one to continue in (pending peers are admitted here). An admission not yet
  // consumed is returned at once. Errors: kPeerLost / kEvicted (not a member any more, or lost
  // during the wait: call waitForMembership), the errors of waitForMembership, kTimeout.
  Result<std::uint64_t> syncPoint(Deadline deadline);
  // Graceful leave: the others see it at once. Blocks until acknowledged or the deadline. Stops
  // any reconnection.
  Status leave(Deadline deadline);
  void abort();
  // OK when this peer is a member; else why not: kInvalidArgument before its first admission,
  // kPeerLost / kEvicted after it lost the group (it is rejoining), the terminal errors.
  Status memberStatus(std::string_view what) const;

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
  void startAttempts(std::size_t first_address, TimePoint give_up, Millis first_delay);
  void scheduleAttempt(std::size_t address, Millis delay);
  // Asks every address for its view at once and calls `done` with the one to register with
  // (see above), within `timeout`.
  void probeCoordinators(std::size_t preferred, Millis timeout,
                         std::function<void(std::size_t)> done);
  // The coordinator said the run completed without this peer: the session ends.
  void runCompleted(std::uint64_t session, Status why);
  void attempt(std::size_t address);
  void attemptFailed(std::uint64_t session, const Status& why);
  void giveUp(const Status& last);
  void onFrame(std::uint64_t session, const FrameHeader& h, std::vector<std::uint8_t> payload);
  void onClosed(std::uint64_t session, const Status& why);
  // The group is lost: tell the owner and look for a coordinator (or stop, without reconnect).
  void lostLocked(Status why, bool evicted);
  void dropConnection();   // network thread: closes conn_ without running its handlers
  void closeConnection();  // blocks until the network thread has closed it
  Status errorForStateLocked() const;
  bool terminalLocked() const;
  bool admissionReadyLocked() const;
  std::uint64_t consumeAdmissionLocked();

  NetworkThread& net_;
  MembershipClientOptions options_;
  std::function<void(const GroupView&)> view_cb_;
  std::function<void(std::uint64_t, std::uint64_t, bool)> decision_cb_;
  std::function<void(const Status&)> lost_cb_;
  std::function<void(const FrameHeader&, std::vector<std::uint8_t>)> state_cb_;
  std::function<void(MsgType, std::vector<std::uint8_t>)> traversal_cb_;

  std::vector<HostPort> addresses_;  // coordinator, then the standbys
  const std::uint64_t incarnation_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  State state_ = State::kDisconnected;
  Status last_error_;
  bool aborted_ = false;
  bool stopped_ = false;      // leave() or abort(): no more attempts
  bool initial_join_ = true;  // attempts belong to join() (errors end it) vs. a reconnect
  std::uint64_t session_ = 0;
  std::uint64_t attempt_ = 0;      // connection attempts so far (HelloMsg::attempt)
  std::size_t address_index_ = 0;  // of the coordinator registered with / being tried
  GroupView view_;
  std::uint64_t epoch_ = 0;
  std::uint64_t sync_generation_ = 0;
  std::uint64_t barrier_epoch_ = 0;  // of the last barrier the application passed
  // An admission the application has not consumed yet (waitForMembership / syncPoint), and
  // whether the SyncDone of its barrier has come.
  bool admission_pending_ = false;
  bool admission_synced_ = false;
  std::uint64_t admission_epoch_ = 0;
  bool ever_admitted_ = false;
  std::uint64_t losses_ = 0;
  std::vector<std::string> last_members_;  // of the latest view that had members
  RegistrationReport report_;
  Millis heartbeat_interval_{500};
  Millis heartbeat_timeout_{3000};
  TimePoint lost_at_{};

  // Network thread only.
  std::shared_ptr<Connection> conn_;
  bool conn_registered_ = false;  // conn_ has been welcomed: frames other than Hello may go
  struct Attempts;  // resolved addresses, the reconnect plan and its timer (asio: .cpp only)
  std::unique_ptr<Attempts> attempts_;
  std::shared_ptr<void> lifetime_ = std::make_shared<int>(0);  // see LifetimeGuard (net.h)
};

}  // namespace loco::p2p
