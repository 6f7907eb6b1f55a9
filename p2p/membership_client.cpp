#include "p2p/membership_client.h"

#include <fmt/format.h>

#include <algorithm>
#include <future>

#include "p2p/base/log.h"
#include "p2p/connection.h"
#include "p2p/net.h"

namespace loco::p2p {
namespace {
constexpr Millis kRetryPause{200};
}  // namespace

MembershipClient::MembershipClient(NetworkThread& net, MembershipClientOptions options)
    : net_(net), options_(std::move(options)) {}

MembershipClient::~MembershipClient() {
  // On the network thread, so that no connect completion can be running while we go away.
  std::promise<void> released;
  net_.post([this, &released] {
    lifetime_.reset();
    released.set_value();
  });
  released.get_future().wait();
  closeConnection();
}

void MembershipClient::setViewCallback(std::function<void(const GroupView&)> cb) {
  view_cb_ = std::move(cb);
}
void MembershipClient::setDecisionCallback(
    std::function<void(std::uint64_t, std::uint64_t, bool)> cb) {
  decision_cb_ = std::move(cb);
}
void MembershipClient::setLostCallback(std::function<void(const Status&)> cb) {
  lost_cb_ = std::move(cb);
}

void MembershipClient::reportOp(std::uint64_t epoch, std::uint64_t op_id, bool ok,
                                std::vector<std::string> members) {
  auto send = [this, epoch, op_id, ok, members = std::move(members)] {
    if (conn_) {
      conn_->send(MsgType::kOpReport, encodeOpReport(OpReportMsg{ok, members}), epoch, op_id);
    }
  };
  // Collectives report from the network thread: sending at once saves a turn of its loop.
  if (net_.inThisThread()) return send();
  net_.post(std::move(send));
}

void MembershipClient::reportLinks(std::vector<EdgeEstimate> edges) {
  net_.post([this, edges = std::move(edges)] {
    if (conn_) conn_->send(MsgType::kLinkReport, encodeLinkReport(LinkReportMsg{edges}));
  });
}

void MembershipClient::setStateCallback(
    std::function<void(const FrameHeader&, std::vector<std::uint8_t>)> cb) {
  state_cb_ = std::move(cb);
}

void MembershipClient::sendToCoordinator(MsgType type, std::vector<std::uint8_t> payload,
                                         std::uint64_t op_id) {
  net_.post([this, type, payload = std::move(payload), op_id] {
    if (conn_) conn_->send(type, payload, epoch(), op_id);
  });
}

void MembershipClient::closeConnection() {
  std::promise<void> closed;
  net_.post([this, &closed] {
    if (conn_) {
      conn_->setCloseHandler(nullptr);
      conn_->close(Status(StatusCode::kAborted, "closed by this peer"));
      conn_.reset();
    }
    closed.set_value();
  });
  closed.get_future().wait();
}

Status MembershipClient::join(Deadline deadline) {
  auto eps = resolve(options_.coordinator);
  if (!eps) return eps.status().withContext("--coordinator");
  closeConnection();
  const std::string target = options_.coordinator.toString();
  Status refused;  // the last "connection refused", reported if the deadline passes meanwhile
  for (;;) {
    std::uint64_t session;
    std::uint64_t last_epoch;
    {
      std::lock_guard lock(mu_);
      if (aborted_) return Status(StatusCode::kAborted, "join aborted");
      session = ++session_;
      last_epoch = epoch_;
      state_ = State::kConnecting;
      connect_done_ = false;
      last_error_ = Status();
    }
    net_.post([this, session, eps = eps.value(), deadline, last_epoch] {
      std::weak_ptr<void> alive = lifetime_;
      asyncConnect(
          net_.context(), eps, deadline, [this, alive, session, deadline, last_epoch](auto result) {
            if (alive.expired()) return;  // the client was destroyed while connecting
            if (!result) {
              std::lock_guard lock(mu_);
              if (session != session_) return;
              last_error_ = result.status();
              state_ = State::kDisconnected;
              connect_done_ = true;
              cv_.notify_all();
              return;
            }
            auto& socket = *result.value();
            tuneSocket(socket, Millis(0));
            Connection::Options copts;
            copts.name = "coordinator";
            copts.first_frame_timeout = std::max(Millis(1), deadline.remaining());
            conn_ = Connection::create(net_.context(),
                                       std::make_unique<TcpStream>(std::move(socket)), copts);
            conn_->setFrameHandler(
                [this, session](const FrameHeader& h, std::vector<std::uint8_t> p) {
                  onFrame(session, h, std::move(p));
                });
            conn_->setCloseHandler([this, session](const Status& why) { onClosed(session, why); });
            conn_->start();
            conn_->send(MsgType::kHello,
                        encodeHello(HelloMsg{options_.peer_id, options_.advertise, options_.streams,
                                             LOCO_VERSION, last_epoch}));
          });
    });
    std::unique_lock lock(mu_);
    cv_.wait_until(lock, deadline.at(), [&] {
      return aborted_ || state_ == State::kPending || state_ == State::kMember ||
             (state_ == State::kDisconnected && (connect_done_ || !last_error_.isOk()));
    });
    if (aborted_) return Status(StatusCode::kAborted, "join aborted");
    if (state_ == State::kPending || state_ == State::kMember) return Status();
    Status err = last_error_;
    bool refused_connection = err.code() == StatusCode::kUnavailable && connect_done_;
    if (refused_connection) refused = err;
    // Reset before the coordinator answered: a coordinator dying as we connect (its listen
    // backlog accepts, then the kernel resets) or one starting up. Worth another try, like a
    // refusal.
    const bool lost_in_handshake = err.code() == StatusCode::kPeerLost && connect_done_;
    if (err.isOk() || (err.code() == StatusCode::kTimeout && !refused.isOk())) {
      err =
          refused.isOk()
              ? Status(StatusCode::kTimeout, fmt::format("no answer from coordinator {}", target))
              : Status(StatusCode::kUnavailable,
                       fmt::format("{} (retried until the connect timeout); is `loco coordinator` "
                                   "running there?",
                                   refused.message()));
    }
    if ((!refused_connection && !lost_in_handshake) || deadline.expired()) {
      lock.unlock();
      closeConnection();
      return err.withContext(fmt::format("cannot join via coordinator {}", target));
    }
    // Nobody listening yet (the coordinator may be starting): try again shortly.
    cv_.wait_until(lock, std::min(deadline.at(), Clock::now() + kRetryPause),
                   [&] { return aborted_; });
  }
}

void MembershipClient::onFrame(std::uint64_t session, const FrameHeader& h,
                               std::vector<std::uint8_t> payload) {
  std::function<void(const GroupView&)> cb;
  GroupView view_copy;
  if (h.type == MsgType::kOpDecision) {
    if (session == session_ && decision_cb_ && payload.size() == 1)
      decision_cb_(h.epoch, h.op_id, payload[0] != 0);
    return;
  }
  if (h.type == MsgType::kStatePlan || h.type == MsgType::kStateComplete) {
    if (session == session_ && state_cb_) state_cb_(h, std::move(payload));
    return;
  }
  {
    std::lock_guard lock(mu_);
    if (session != session_) return;
    switch (h.type) {
      case MsgType::kWelcome: {
        auto w = decodeWelcome(payload);
        if (!w) break;
        heartbeat_interval_ = Millis(w->heartbeat_interval_ms);
        heartbeat_timeout_ = Millis(w->heartbeat_timeout_ms);
        epoch_ = w->epoch;
        state_ = State::kPending;
        // The coordinator heartbeats us every interval; silence past the timeout means it is gone.
        if (conn_) conn_->setLiveness(heartbeat_interval_, heartbeat_timeout_);
        break;
      }
      case MsgType::kRefused: {
        auto r = decodeRefused(payload);
        last_error_ =
            r ? Status(r->code, "coordinator refused this peer: " + r->reason) : r.status();
        state_ = State::kDisconnected;
        break;
      }
      case MsgType::kMembership: {
        auto v = decodeGroupView(payload);
        if (!v) {
          LOG_WARN(kLogPeer, "ignoring membership update: {}", v.status().message());
          break;
        }
        view_ = std::move(v.value());
        epoch_ = view_.epoch;
        bool member = std::any_of(view_.peers.begin(), view_.peers.end(), [&](const PeerInfo& p) {
          return p.id == options_.peer_id && p.state == PeerState::kMember;
        });
        if (state_ == State::kPending && member) {
          state_ = State::kMember;
          barrier_epoch_ = view_.epoch;
          admission_sync_pending_ = true;
        }
        cb = view_cb_;
        view_copy = view_;
        break;
      }
      case MsgType::kSyncDone:
        epoch_ = std::max(epoch_, h.epoch);
        barrier_epoch_ = h.epoch;
        if (admission_sync_pending_) {
          // The barrier that admitted us: waitForMembership stands for it, so it must not also
          // complete the caller's next syncPoint (whether it would depended on thread timing).
          admission_sync_pending_ = false;
        } else {
          ++sync_generation_;
        }
        break;
      case MsgType::kEvicted: {
        auto e = decodeEvicted(payload);
        last_error_ = Status(StatusCode::kEvicted,
                             fmt::format("evicted by the coordinator at epoch {}: {}", h.epoch,
                                         e ? e->reason : std::string("no reason given")));
        state_ = State::kEvicted;
        if (lost_cb_) {
          auto lost = lost_cb_;
          Status why = last_error_;
          net_.post([lost, why] { lost(why); });
        }
        break;
      }
      case MsgType::kLeaveAck:
        state_ = State::kLeft;
        break;
      default:
        break;  // heartbeats
    }
    cv_.notify_all();
  }
  if (cb) cb(view_copy);
}

void MembershipClient::onClosed(std::uint64_t session, const Status& why) {
  std::lock_guard lock(mu_);
  if (session != session_) return;
  if (state_ != State::kEvicted && state_ != State::kLeft) {
    if (state_ != State::kDisconnected || last_error_.isOk()) {
      last_error_ =
          Status(why.code() == StatusCode::kTimeout ? StatusCode::kTimeout : StatusCode::kPeerLost,
                 fmt::format("lost the coordinator {}: {}", options_.coordinator.toString(),
                             why.message()));
    }
    const bool was_in_group = state_ == State::kPending || state_ == State::kMember;
    state_ = State::kDisconnected;
    if (was_in_group && lost_cb_) {
      auto lost = lost_cb_;
      Status reason = last_error_;
      net_.post([lost, reason] { lost(reason); });
    }
  }
  connect_done_ = true;
  cv_.notify_all();
}

Status MembershipClient::errorForStateLocked() const {
  if (aborted_) return Status(StatusCode::kAborted, "aborted");
  switch (state_) {
    case State::kEvicted:
    case State::kDisconnected:
      return last_error_.isOk() ? Status(StatusCode::kPeerLost, "not connected to the coordinator")
                                : last_error_;
    case State::kLeft:
      return Status(StatusCode::kAborted, "this peer has left the group");
    default:
      return Status();
  }
}

Status MembershipClient::waitForMembership(Deadline deadline) {
  std::unique_lock lock(mu_);
  bool ok = cv_.wait_until(lock, deadline.at(), [&] {
    return (state_ == State::kMember && !admission_sync_pending_) || !errorForStateLocked().isOk();
  });
  if (!ok) return Status(StatusCode::kTimeout, "not admitted before the deadline");
  return errorForStateLocked();
}

Result<std::uint64_t> MembershipClient::syncPoint(Deadline deadline) {
  std::unique_lock lock(mu_);
  if (state_ != State::kMember) {
    Status err = errorForStateLocked();
    return err.isOk() ? Status(StatusCode::kInvalidArgument, "syncPoint called before admission")
                      : err;
  }
  const std::uint64_t gen = sync_generation_;
  const std::uint64_t epoch = epoch_;
  net_.post([this, epoch] {
    if (conn_) conn_->send(MsgType::kSyncRequest, {}, epoch);
  });
  bool ok = cv_.wait_until(lock, deadline.at(), [&] {
    return sync_generation_ != gen || !errorForStateLocked().isOk();
  });
  if (!ok)
    return Status(StatusCode::kTimeout, "sync point: not every member arrived before the deadline");
  Status err = errorForStateLocked();
  if (!err.isOk()) return err;
  // The barrier's epoch, not epoch_: a member lost right after the barrier has already moved
  // epoch_ on, and the caller must learn that it passed the barrier in the older one.
  return barrier_epoch_;
}

Status MembershipClient::leave(Deadline deadline) {
  {
    std::unique_lock lock(mu_);
    if (state_ == State::kPending || state_ == State::kMember) {
      net_.post([this] {
        if (conn_) conn_->send(MsgType::kLeave);
      });
      cv_.wait_until(lock, deadline.at(),
                     [&] { return state_ != State::kPending && state_ != State::kMember; });
    }
  }
  closeConnection();
  std::lock_guard lock(mu_);
  if (state_ == State::kLeft) return Status();
  state_ = State::kLeft;
  return Status(StatusCode::kTimeout, "leave was not acknowledged before the deadline");
}

void MembershipClient::abort() {
  std::lock_guard lock(mu_);
  aborted_ = true;
  cv_.notify_all();
}

MembershipClient::State MembershipClient::state() const {
  std::lock_guard lock(mu_);
  return state_;
}
GroupView MembershipClient::view() const {
  std::lock_guard lock(mu_);
  return view_;
}
std::uint64_t MembershipClient::epoch() const {
  std::lock_guard lock(mu_);
  return epoch_;
}
std::uint64_t MembershipClient::barrierEpoch() const {
  std::lock_guard lock(mu_);
  return barrier_epoch_;
}
Millis MembershipClient::heartbeatInterval() const {
  std::lock_guard lock(mu_);
  return heartbeat_interval_;
}
Millis MembershipClient::heartbeatTimeout() const {
  std::lock_guard lock(mu_);
  return heartbeat_timeout_;
}

}  // namespace loco::p2p
