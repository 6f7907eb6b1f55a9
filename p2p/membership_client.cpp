#include "p2p/membership_client.h"

#include <fmt/format.h>

#include <algorithm>
#include <future>
#include <optional>
#include <random>
#include <tuple>

#include "crypto/ca.h"
#include "p2p/base/log.h"
#include "p2p/connection.h"
#include "p2p/net.h"
#include "p2p/tls_stream.h"
#include "p2p/traversal.h"

namespace loco::p2p {
namespace {

// An attempt waits this long at least for the coordinator's Welcome (and at most the heartbeat
// timeout it announced: a stalled coordinator's kernel accepts the connection, then nothing).
constexpr Millis kMinAttemptTimeout{1000};
// A repeating state is logged at most once per this interval.
constexpr Millis kWaitLogInterval{5000};

std::uint64_t randomIncarnation() {
  std::random_device rd;
  std::uint64_t v = 0;
  while (v == 0) v = (std::uint64_t{rd()} << 32) ^ rd();
  return v;
}

// Refusals that another attempt cannot fix.
bool refusalIsFinal(StatusCode code) {
  return code != StatusCode::kResourceExhausted && code != StatusCode::kAborted &&
         code != StatusCode::kUnavailable && code != StatusCode::kPeerLost &&
         code != StatusCode::kTimeout;
}

std::string joinAddresses(const std::vector<HostPort>& addrs) {
  std::string out;
  for (const auto& a : addrs) out += (out.empty() ? "" : ", ") + a.toString();
  return out;
}

}  // namespace

struct MembershipClient::Attempts {
  Attempts(asio::io_context& io, std::size_t addresses, BackoffOptions backoff, std::uint64_t seed)
      : plan(addresses, backoff, seed), timer(io), throttle(kWaitLogInterval) {}
  std::vector<std::vector<asio::ip::tcp::endpoint>> endpoints;  // per address
  ReconnectPlan plan;
  asio::steady_timer timer;
  std::uint64_t timer_generation = 0;
  LogThrottle throttle;
  std::vector<std::string> last_errors;  // per address, for the give-up message
};

std::string_view clientStateName(MembershipClient::State s) {
  switch (s) {
    case MembershipClient::State::kDisconnected:
      return "disconnected";
    case MembershipClient::State::kConnecting:
      return "connecting";
    case MembershipClient::State::kPending:
      return "pending";
    case MembershipClient::State::kMember:
      return "member";
    case MembershipClient::State::kReconnecting:
      return "reconnecting";
    case MembershipClient::State::kEvicted:
      return "evicted";
    case MembershipClient::State::kLeft:
      return "left";
  }
  return "?";
}

MembershipClient::MembershipClient(NetworkThread& net, MembershipClientOptions options)
    : net_(net), options_(std::move(options)), incarnation_(randomIncarnation()) {
  addresses_.push_back(options_.coordinator);
  for (const auto& a : options_.standby_coordinators) addresses_.push_back(a);
  attempts_ =
      std::make_unique<Attempts>(net_.context(), addresses_.size(), options_.backoff, incarnation_);
}

MembershipClient::~MembershipClient() {
  // On the network thread, so that no connect completion or timer can be running while we go
  // away.
  std::promise<void> released;
  net_.post([this, &released] {
    lifetime_.reset();
    attempts_->timer.cancel();
    attempts_.reset();
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
void MembershipClient::setRegistrationReport(RegistrationReport report) {
  {
    std::lock_guard lock(mu_);
    report_ = report;
  }
  net_.post([this, report] {
    if (conn_ && conn_registered_) {
      conn_->send(MsgType::kProgress,
                  encodeProgress(ProgressMsg{report.state_revision, report.state_digest,
                                             report.progress, report.finished}));
    }
  });
}

void MembershipClient::reportOp(std::uint64_t epoch, std::uint64_t op_id, bool ok,
                                std::vector<std::string> members) {
  auto send = [this, epoch, op_id, ok, members = std::move(members)] {
    if (conn_ && conn_registered_) {
      conn_->send(MsgType::kOpReport, encodeOpReport(OpReportMsg{ok, members}), epoch, op_id);
    }
  };
  // Collectives report from the network thread: sending at once saves a turn of its loop.
  if (net_.inThisThread()) return send();
  net_.post(std::move(send));
}

void MembershipClient::reportLinks(std::vector<EdgeEstimate> edges) {
  net_.post([this, edges = std::move(edges)] {
    if (conn_ && conn_registered_)
      conn_->send(MsgType::kLinkReport, encodeLinkReport(LinkReportMsg{edges}));
  });
}

void MembershipClient::reportProgress(PeerReportMsg report) {
  net_.post([this, report = std::move(report)] {
    if (conn_ && conn_registered_) conn_->send(MsgType::kPeerReport, encodePeerReport(report));
  });
}

void MembershipClient::setStateCallback(
    std::function<void(const FrameHeader&, std::vector<std::uint8_t>)> cb) {
  state_cb_ = std::move(cb);
}

void MembershipClient::setTraversalCallback(
    std::function<void(MsgType, std::vector<std::uint8_t>)> cb) {
  traversal_cb_ = std::move(cb);
}

void MembershipClient::reregister(std::string advertise, PeerReach reach, const Status& why) {
  std::lock_guard lock(mu_);
  options_.advertise = std::move(advertise);
  options_.reach = reach;
  if (state_ == State::kPending || state_ == State::kMember) lostLocked(why, /*evicted=*/false);
}

void MembershipClient::sendToCoordinator(MsgType type, std::vector<std::uint8_t> payload,
                                         std::uint64_t op_id) {
  net_.post([this, type, payload = std::move(payload), op_id] {
    if (conn_ && conn_registered_) conn_->send(type, payload, epoch(), op_id);
  });
}

void MembershipClient::dropConnection() {
  conn_registered_ = false;
  if (!conn_) return;
  conn_->setCloseHandler(nullptr);
  conn_->close(Status(StatusCode::kAborted, "closed by this peer"));
  conn_.reset();
}

void MembershipClient::closeConnection() {
  std::promise<void> closed;
  net_.post([this, &closed] {
    if (attempts_) {
      ++attempts_->timer_generation;
      attempts_->timer.cancel();
    }
    dropConnection();
    closed.set_value();
  });
  closed.get_future().wait();
}

// ---- attempts (network thread) -----------------------------------------------------------------

void MembershipClient::startAttempts(std::size_t first_address, TimePoint give_up,
                                     Millis first_delay) {
  {
    std::lock_guard lock(mu_);
    if (stopped_ || aborted_) return;
  }
  attempts_->last_errors.assign(addresses_.size(), "");
  attempts_->throttle.reset();
  const TimePoint now = Clock::now();
  // The loss itself was just logged: the first line about attempts comes one interval later.
  (void)attempts_->throttle.shouldLog(now);
  if (addresses_.size() == 1) {
    auto a = attempts_->plan.begin(first_address, now, give_up, first_delay);
    return scheduleAttempt(a.address, a.delay);
  }
  // Several coordinators: register where the group is (see the header).
  Millis timeout;
  {
    std::lock_guard lock(mu_);
    timeout = std::max(kMinAttemptTimeout, heartbeat_timeout_);
  }
  timeout =
      std::max(Millis(1), std::min(timeout, std::chrono::duration_cast<Millis>(give_up - now)));
  probeCoordinators(first_address, timeout, [this, give_up, first_delay](std::size_t chosen) {
    {
      std::lock_guard lock(mu_);
      if (stopped_ || aborted_) return;
    }
    auto a = attempts_->plan.begin(chosen, Clock::now(), give_up, first_delay);
    scheduleAttempt(a.address, a.delay);
  });
}

void MembershipClient::probeCoordinators(std::size_t preferred, Millis timeout,
                                         std::function<void(std::size_t)> done) {
  struct Probe {
    std::vector<std::optional<GroupView>> views;
    std::vector<bool> settled;
    std::vector<std::shared_ptr<Connection>> conns;
    std::size_t outstanding = 0;
    bool finished = false;
    std::unique_ptr<asio::steady_timer> timer;
  };
  const std::size_t n = addresses_.size();
  auto probe = std::make_shared<Probe>();
  probe->views.resize(n);
  probe->settled.assign(n, false);
  probe->conns.resize(n);
  probe->outstanding = n;
  probe->timer = std::make_unique<asio::steady_timer>(net_.context(), timeout);
  std::weak_ptr<void> alive = lifetime_;
  // Ends the probe once (every answer in, or the timeout): closes what is open, then chooses.
  auto finish = [this, probe, preferred, alive, done = std::move(done)] {
    if (probe->finished) return;
    probe->finished = true;
    probe->timer->cancel();
    for (auto& c : probe->conns) {
      if (!c) continue;
      c->setFrameHandler(nullptr);
      c->setCloseHandler(nullptr);
      c->close(Status());
      c.reset();
    }
    if (alive.expired()) return;
    // An answering coordinator beats a silent one; then the most members, the most peers, the
    // highest epoch; ties go to the preferred address, then the list order after it.
    std::size_t best = preferred;
    auto score = [&](std::size_t i) {
      const auto& v = probe->views[i];
      return v ? std::make_tuple(1, v->world(), v->peers.size(), v->epoch)
               : std::make_tuple(0, std::size_t{0}, std::size_t{0}, std::uint64_t{0});
    };
    for (std::size_t k = 1; k < probe->views.size(); ++k) {
      const std::size_t i = (preferred + k) % probe->views.size();
      if (score(i) > score(best)) best = i;
    }
    if (best != preferred) {
      const auto& v = probe->views[best];
      if (v->peers.empty()) {
        LOG_INFO(kLogPeer, "coordinator {} did not answer and {} did: registering with {}",
                 addresses_[preferred].toString(), addresses_[best].toString(),
                 addresses_[best].toString());
      } else {
        LOG_INFO(kLogPeer,
                 "coordinator {} holds the group ({} members, {} pending, epoch {}); registering "
                 "there rather than with {}",
                 addresses_[best].toString(), v->world(), v->pending(), v->epoch,
                 addresses_[preferred].toString());
      }
    }
    done(best);
  };
  auto settle = [probe, finish](std::size_t i) {
    if (probe->finished || probe->settled[i]) return;
    probe->settled[i] = true;
    if (--probe->outstanding == 0) finish();
  };
  probe->timer->async_wait([finish](const std::error_code& ec) {
    if (!ec) finish();
  });
  for (std::size_t i = 0; i < n; ++i) {
    asyncConnect(
        net_.context(), attempts_->endpoints[i], Deadline::after(timeout),
        [this, probe, settle, alive, i](Result<std::shared_ptr<asio::ip::tcp::socket>> sock) {
          if (alive.expired() || probe->finished) return;
          if (!sock) return settle(i);
          tuneSocket(*sock.value(), Millis(0));
          Connection::Options copts;
          copts.name = "coordinator probe";
          auto conn = Connection::create(
              net_.context(),
              tls::wrap(std::move(*sock.value()), {tls::Role::kClient, crypto::kCoordinatorId}),
              copts);
          probe->conns[i] = conn;
          conn->setFrameHandler(
              [probe, settle, i](const FrameHeader& h, std::vector<std::uint8_t> payload) {
                if (h.type == MsgType::kStatusReply) {
                  if (auto v = decodeGroupView(payload)) probe->views[i] = std::move(v.value());
                }
                settle(i);
              });
          conn->setCloseHandler([settle, i](const Status&) { settle(i); });
          conn->start();
          conn->send(MsgType::kStatusRequest);
        });
  }
}

void MembershipClient::scheduleAttempt(std::size_t address, Millis delay) {
  const std::uint64_t gen = ++attempts_->timer_generation;
  attempts_->timer.expires_after(delay);
  attempts_->timer.async_wait(
      [this, address, gen, alive = std::weak_ptr<void>(lifetime_)](const std::error_code& ec) {
        if (ec || alive.expired() || gen != attempts_->timer_generation) return;
        attempt(address);
      });
}

void MembershipClient::attempt(std::size_t address) {
  std::uint64_t session = 0;
  HelloMsg hello;
  Millis attempt_timeout;
  bool initial = false;
  {
    std::lock_guard lock(mu_);
    if (stopped_ || aborted_) return;
    session = ++session_;
    address_index_ = address;
    hello = HelloMsg{options_.peer_id, options_.advertise, options_.streams, LOCO_VERSION, epoch_};
    hello.incarnation = incarnation_;
    hello.attempt = ++attempt_;
    hello.reach = options_.reach;
    hello.last_members = last_members_;
    hello.state_revision = report_.state_revision;
    hello.state_digest = report_.state_digest;
    hello.progress = report_.progress;
    attempt_timeout = std::max(kMinAttemptTimeout, heartbeat_timeout_);
    initial = initial_join_;
  }
  dropConnection();
  // join()'s deadline is a hard one; a reconnect's last attempt may end after the give-up time.
  const TimePoint until = Clock::now() + attempt_timeout;
  const Deadline deadline(initial ? std::min(attempts_->plan.giveUpAt(), until) : until);
  LOG_DEBUG(kLogPeer, "connecting to coordinator {} (attempt {})", addresses_[address].toString(),
            hello.attempt);
  asyncConnect(
      net_.context(), attempts_->endpoints[address], deadline,
      [this, alive = std::weak_ptr<void>(lifetime_), session, deadline,
       hello = std::move(hello)](Result<std::shared_ptr<asio::ip::tcp::socket>> result) {
        if (alive.expired()) return;  // the client was destroyed while connecting
        if (!result) return attemptFailed(session, result.status());
        {
          std::lock_guard lock(mu_);
          if (session != session_) return;  // superseded (closed, left, aborted)
        }
        auto& socket = *result.value();
        tuneSocket(socket, Millis(0));
        Connection::Options copts;
        copts.name = "coordinator";
        copts.first_frame_timeout = std::max(Millis(1), deadline.remaining());
        conn_ = Connection::create(
            net_.context(),
            tls::wrap(std::move(socket), {tls::Role::kClient, crypto::kCoordinatorId}), copts);
        conn_->setFrameHandler([this, session](const FrameHeader& h, std::vector<std::uint8_t> p) {
          onFrame(session, h, std::move(p));
        });
        conn_->setCloseHandler([this, session](const Status& why) { onClosed(session, why); });
        conn_->start();
        conn_->send(MsgType::kHello, encodeHello(hello));
      });
}

void MembershipClient::attemptFailed(std::uint64_t session, const Status& why) {
  bool final_refusal = false;
  bool initial = false;
  {
    std::lock_guard lock(mu_);
    if (session != session_ || stopped_ || aborted_) return;
    if (state_ != State::kConnecting && state_ != State::kReconnecting) return;
    final_refusal = refusalIsFinal(why.code());
    initial = initial_join_;
  }
  dropConnection();
  const std::size_t address = attempts_->plan.address();
  attempts_->last_errors[address] = why.message();
  if (final_refusal) return giveUp(why);
  const auto now = Clock::now();
  auto next = attempts_->plan.afterFailure(now);
  // join()'s deadline leaves no time for an attempt that would start right at it.
  if (!next || (initial && now + next->delay >= attempts_->plan.giveUpAt())) return giveUp(why);
  LOG_DEBUG(kLogPeer, "coordinator {}: {}; next attempt in {} ms", addresses_[address].toString(),
            why.message(), next->delay.count());
  if (attempts_->throttle.shouldLog(now)) {
    LOG_INFO(kLogPeer,
             "{} for {:.1f} s ({} attempts); last: {}: {}; next attempt in {} ms (giving up in "
             "{:.0f} s)",
             initial ? "waiting for the coordinator" : "looking for a coordinator",
             toSeconds(now - attempts_->plan.startedAt()), attempts_->plan.attempts(),
             addresses_[address].toString(), why.message(), next->delay.count(),
             toSeconds(attempts_->plan.giveUpAt() - now));
  }
  scheduleAttempt(next->address, next->delay);
}

void MembershipClient::giveUp(const Status& last) {
  Status err;
  bool initial = false;
  {
    std::lock_guard lock(mu_);
    if (stopped_) return;
    const double waited = toSeconds(Clock::now() - attempts_->plan.startedAt());
    std::string tried;
    for (std::size_t i = 0; i < addresses_.size(); ++i) {
      if (attempts_->last_errors[i].empty()) continue;
      tried += fmt::format("{}{}: {}", tried.empty() ? "" : "; ", addresses_[i].toString(),
                           attempts_->last_errors[i]);
    }
    const std::string target = joinAddresses(addresses_);
    initial = initial_join_;
    if (initial_join_) {
      if (last.code() == StatusCode::kUnavailable) {
        err = Status(StatusCode::kUnavailable,
                     fmt::format("cannot join via coordinator {}: {} (retried for {:.1f} s); is "
                                 "`loco coordinator` running there?",
                                 target, tried, waited));
      } else if (last.code() == StatusCode::kTimeout || last.code() == StatusCode::kPeerLost) {
        err = Status(StatusCode::kTimeout,
                     fmt::format("cannot join via coordinator {}: no answer ({}; for {:.1f} s)",
                                 target, tried, waited));
      } else {
        err = last.withContext(fmt::format("cannot join via coordinator {}", target));
      }
    } else if (refusalIsFinal(last.code())) {
      err = last.withContext("cannot register again");
    } else {
      err = Status(StatusCode::kUnavailable,
                   fmt::format("no coordinator answered for {:.0f} s after the group was lost "
                               "(tried {}: {}); giving up (--coordinator-timeout)",
                               waited, target, tried));
    }
    state_ = State::kDisconnected;
    last_error_ = err;
    cv_.notify_all();
  }
  dropConnection();
  if (!initial) LOG_ERROR(kLogPeer, "{}", err.message());
}

// ---- public calls ------------------------------------------------------------------------------

Status MembershipClient::join(Deadline deadline) {
  std::vector<std::vector<asio::ip::tcp::endpoint>> endpoints;
  for (const auto& a : addresses_) {
    auto eps = resolve(a);
    if (!eps) return eps.status().withContext("--coordinator " + a.toString());
    endpoints.push_back(std::move(eps.value()));
  }
  bool start = false;
  {
    std::lock_guard lock(mu_);
    if (aborted_) return Status(StatusCode::kAborted, "join aborted");
    if (state_ == State::kPending || state_ == State::kMember) return Status();
    if (state_ != State::kReconnecting) {
      state_ = State::kConnecting;
      initial_join_ = true;
      stopped_ = false;
      last_error_ = Status();
      start = true;
    }
  }
  if (start) {
    net_.post([this, endpoints = std::move(endpoints), deadline] {
      dropConnection();
      attempts_->endpoints = endpoints;
      startAttempts(0, deadline.at(), Millis(0));
    });
  }
  std::unique_lock lock(mu_);
  cv_.wait_until(lock, deadline.at(), [&] {
    return aborted_ || state_ == State::kPending || state_ == State::kMember || terminalLocked();
  });
  if (aborted_) return Status(StatusCode::kAborted, "join aborted");
  if (state_ == State::kPending || state_ == State::kMember) return Status();
  if (terminalLocked()) return last_error_;
  // The deadline passed with an attempt in flight (giveUp runs on the network thread): stop it.
  stopped_ = true;
  state_ = State::kDisconnected;
  last_error_ = Status(StatusCode::kTimeout,
                       fmt::format("cannot join via coordinator {}: no answer before the deadline",
                                   joinAddresses(addresses_)));
  Status err = last_error_;
  lock.unlock();
  closeConnection();
  return err;
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
  if (h.type == MsgType::kConnectRequest || h.type == MsgType::kConnectReply) {
    if (session == session_ && traversal_cb_) traversal_cb_(h.type, std::move(payload));
    return;
  }
  if (h.type == MsgType::kRefused) {
    auto r = decodeRefused(payload);
    const std::string target = addresses_[attempts_->plan.address()].toString();
    if (r && r->code == StatusCode::kCompleted) {
      return runCompleted(session, Status(StatusCode::kCompleted,
                                          fmt::format("coordinator {}: {}", target, r->reason)));
    }
    {
      // Registered already: a coordinator without a quorum sends its pending peers away to look
      // for the one that holds the group (a lost coordinator for this peer, with the reason).
      std::lock_guard lock(mu_);
      if (session == session_ && (state_ == State::kPending || state_ == State::kMember)) {
        return lostLocked(
            Status(StatusCode::kPeerLost, fmt::format("coordinator {} sent this peer away: {}",
                                                      addresses_[address_index_].toString(),
                                                      r ? r->reason : r.status().message())),
            /*evicted=*/false);
      }
    }
    return attemptFailed(session, r ? Status(r->code, fmt::format("coordinator {} refused this "
                                                                  "peer: {}",
                                                                  target, r->reason))
                                    : r.status());
  }
  {
    std::lock_guard lock(mu_);
    if (session != session_) return;
    switch (h.type) {
      case MsgType::kWelcome: {
        auto w = decodeWelcome(payload);
        if (!w || (state_ != State::kConnecting && state_ != State::kReconnecting)) break;
        heartbeat_interval_ = Millis(w->heartbeat_interval_ms);
        heartbeat_timeout_ = Millis(w->heartbeat_timeout_ms);
        epoch_ = std::max(epoch_, w->epoch);
        if (state_ == State::kReconnecting) {
          LOG_INFO(kLogPeer,
                   "registered again with coordinator {} after {:.1f} s ({} attempts); pending "
                   "until the group's next sync point",
                   addresses_[address_index_].toString(),
                   toSeconds(Clock::now() - attempts_->plan.startedAt()),
                   attempts_->plan.attempts());
        }
        state_ = State::kPending;
        initial_join_ = false;  // from now on a lost coordinator is looked for again
        conn_registered_ = true;
        // What this peer holds now (it may have changed since the Hello was built).
        if (conn_ && (report_.progress > 0 || report_.finished)) {
          conn_->send(MsgType::kProgress,
                      encodeProgress(ProgressMsg{report_.state_revision, report_.state_digest,
                                                 report_.progress, report_.finished}));
        }
        // The coordinator heartbeats us every interval; silence past the timeout means it is gone.
        if (conn_) conn_->setLiveness(heartbeat_interval_, heartbeat_timeout_);
        break;
      }
      case MsgType::kMembership: {
        auto v = decodeGroupView(payload);
        if (!v) {
          LOG_WARN(kLogPeer, "ignoring membership update: {}", v.status().message());
          break;
        }
        view_ = std::move(v.value());
        epoch_ = std::max(epoch_, view_.epoch);
        // Links dialed to these addresses must present these members' certificates, and are
        // opened by the path the two ends' reach calls for (p2p/traversal.h).
        for (const auto& p : view_.peers) {
          if (auto hp = parseHostPort(p.addr)) {
            tls::expectPeerAt(hp->toString(), p.id);
            traversal::notePeer(hp->toString(), p.id, p.reach);
          }
        }
        if (view_.world() > 0) {
          last_members_ = view_.ringIds();
        }
        bool member = std::any_of(view_.peers.begin(), view_.peers.end(), [&](const PeerInfo& p) {
          return p.id == options_.peer_id && p.state == PeerState::kMember;
        });
        if (state_ == State::kPending && member) {
          state_ = State::kMember;
          admission_pending_ = true;
          admission_synced_ = false;
          admission_epoch_ = view_.epoch;
          ever_admitted_ = true;
        }
        cb = view_cb_;
        view_copy = view_;
        break;
      }
      case MsgType::kSyncDone:
        epoch_ = std::max(epoch_, h.epoch);
        if (admission_pending_ && !admission_synced_) {
          // The barrier that admitted us: waitForMembership (or the next syncPoint) stands for
          // it, so it must not also complete a later syncPoint.
          admission_synced_ = true;
          admission_epoch_ = h.epoch;
        } else {
          barrier_epoch_ = h.epoch;
          ++sync_generation_;
        }
        break;
      case MsgType::kEvicted: {
        auto e = decodeEvicted(payload);
        lostLocked(Status(StatusCode::kEvicted,
                          fmt::format("evicted by the coordinator at epoch {}: {}", h.epoch,
                                      e ? e->reason : std::string("no reason given"))),
                   /*evicted=*/true);
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

void MembershipClient::runCompleted(std::uint64_t session, Status why) {
  {
    std::lock_guard lock(mu_);
    if (session != session_ || stopped_) return;
    stopped_ = true;  // nothing to register for any more
    state_ = State::kDisconnected;
    last_error_ = why;
    cv_.notify_all();
  }
  if (attempts_) {
    ++attempts_->timer_generation;
    attempts_->timer.cancel();
  }
  dropConnection();
  LOG_INFO(kLogPeer, "{}", why.message());
}

void MembershipClient::onClosed(std::uint64_t session, const Status& why) {
  {
    std::lock_guard lock(mu_);
    if (session != session_) return;
    if (state_ == State::kPending || state_ == State::kMember) {
      lostLocked(Status(StatusCode::kPeerLost,
                        fmt::format("lost the coordinator {}: {}",
                                    addresses_[address_index_].toString(), why.message())),
                 /*evicted=*/false);
      return;
    }
    if (state_ != State::kConnecting && state_ != State::kReconnecting) return;
  }
  // An attempt ended before the coordinator welcomed us: a coordinator starting or dying, or one
  // that accepts connections but does not answer (stalled).
  attemptFailed(session, why.code() == StatusCode::kTimeout
                             ? Status(StatusCode::kTimeout, "no Welcome: " + why.message())
                             : Status(StatusCode::kPeerLost,
                                      "closed before the coordinator answered: " + why.message()));
}

void MembershipClient::lostLocked(Status why, bool evicted) {
  last_error_ = why;
  ++losses_;
  lost_at_ = Clock::now();
  admission_pending_ = false;  // an admission not yet consumed is void with the group
  const bool reconnect = options_.coordinator_timeout.count() > 0 && !stopped_ && !aborted_;
  if (!reconnect) {
    state_ = evicted ? State::kEvicted : State::kDisconnected;
  } else {
    state_ = State::kReconnecting;
    if (evicted) {
      LOG_WARN(kLogPeer, "{}; rejoining as pending", why.message());
    } else {
      LOG_WARN(kLogPeer,
               "{}; reconnecting (every coordinator address in turn, at most {} ms apart; giving "
               "up after {} s)",
               why.message(), options_.backoff.max.count(),
               options_.coordinator_timeout.count() / 1000);
    }
  }
  cv_.notify_all();
  if (lost_cb_) {
    auto lost = lost_cb_;
    net_.post([lost, why] { lost(why); });
  }
  if (reconnect) {
    // The same coordinator first (an eviction, or a restart on the same address), then the
    // standbys. Posted: runs after the lost callback, outside this lock.
    const std::size_t first = address_index_;
    const TimePoint give_up = lost_at_ + options_.coordinator_timeout;
    net_.post([this, first, give_up, alive = std::weak_ptr<void>(lifetime_)] {
      if (alive.expired()) return;
      dropConnection();
      startAttempts(first, give_up, Millis(0));
    });
  }
}

bool MembershipClient::terminalLocked() const {
  return aborted_ || state_ == State::kEvicted || state_ == State::kLeft ||
         (state_ == State::kDisconnected && !last_error_.isOk());
}

bool MembershipClient::admissionReadyLocked() const {
  return state_ == State::kMember && admission_pending_ && admission_synced_;
}

std::uint64_t MembershipClient::consumeAdmissionLocked() {
  admission_pending_ = false;
  barrier_epoch_ = admission_epoch_;
  return admission_epoch_;
}

Status MembershipClient::errorForStateLocked() const {
  if (aborted_) return Status(StatusCode::kAborted, "aborted");
  switch (state_) {
    case State::kMember:
      return Status();
    case State::kLeft:
      return Status(StatusCode::kAborted, "this peer has left the group");
    case State::kEvicted:
    case State::kDisconnected:
      return last_error_.isOk() ? Status(StatusCode::kPeerLost, "not connected to the coordinator")
                                : last_error_;
    case State::kReconnecting:
      return Status(
          last_error_.code() == StatusCode::kEvicted ? StatusCode::kEvicted : StatusCode::kPeerLost,
          fmt::format("{}; looking for a coordinator",
                      last_error_.isOk() ? "lost the group" : last_error_.message()));
    case State::kPending:
      return Status(
          last_error_.code() == StatusCode::kEvicted ? StatusCode::kEvicted : StatusCode::kPeerLost,
          fmt::format("pending at coordinator {} until the group's next sync point{}",
                      addresses_[address_index_].toString(),
                      last_error_.isOk() ? "" : " (" + last_error_.message() + ")"));
    case State::kConnecting:
      return Status(StatusCode::kPeerLost, "not registered with a coordinator yet");
  }
  return Status(StatusCode::kInternal, "unknown membership state");
}

Status MembershipClient::memberStatus(std::string_view what) const {
  std::lock_guard lock(mu_);
  if (state_ == State::kMember && !aborted_) return Status();
  if (!ever_admitted_ && !aborted_ &&
      (state_ == State::kPending || state_ == State::kConnecting ||
       state_ == State::kDisconnected)) {
    return Status(StatusCode::kFailedPrecondition,
                  fmt::format("{} before this peer was admitted to the group (call "
                              "waitForMembership)",
                              what));
  }
  return errorForStateLocked().withContext(what);
}

Status MembershipClient::waitForMembership(Deadline deadline) {
  std::unique_lock lock(mu_);
  bool ok = cv_.wait_until(lock, deadline.at(), [&] {
    return admissionReadyLocked() || (state_ == State::kMember && !admission_pending_) ||
           terminalLocked();
  });
  if (!ok) {
    return Status(
        StatusCode::kTimeout,
        state_ == State::kReconnecting
            ? fmt::format("not admitted yet: looking for a coordinator for {:.0f} s",
                          toSeconds(Clock::now() - lost_at_))
            : fmt::format("not admitted yet: {} at coordinator {}", clientStateName(state_),
                          addresses_[address_index_].toString()));
  }
  if (terminalLocked()) return errorForStateLocked();
  if (admissionReadyLocked()) consumeAdmissionLocked();
  return Status();
}

Result<std::uint64_t> MembershipClient::syncPoint(Deadline deadline) {
  std::unique_lock lock(mu_);
  const std::uint64_t losses = losses_;
  auto lostError = [&] {
    Status err = errorForStateLocked();
    if (err.isOk()) err = Status(StatusCode::kPeerLost, last_error_.message());
    return err.withContext("sync point");
  };
  if (state_ == State::kMember && admission_pending_) {
    // Admitted (again) since the caller's last sync point: that barrier is this sync point.
    bool ok = cv_.wait_until(lock, deadline.at(), [&] {
      return admissionReadyLocked() || losses_ != losses || terminalLocked();
    });
    if (!ok) return Status(StatusCode::kTimeout, "sync point: admission not complete");
    if (admissionReadyLocked() && losses_ == losses) return consumeAdmissionLocked();
    return lostError();
  }
  if (state_ != State::kMember) {
    if (!ever_admitted_ && !aborted_ && state_ == State::kPending)
      return Status(StatusCode::kInvalidArgument, "syncPoint called before admission");
    return errorForStateLocked();
  }
  const std::uint64_t gen = sync_generation_;
  const std::uint64_t epoch = epoch_;
  net_.post([this, epoch] {
    if (conn_ && conn_registered_) conn_->send(MsgType::kSyncRequest, {}, epoch);
  });
  bool ok = cv_.wait_until(lock, deadline.at(), [&] {
    return sync_generation_ != gen || losses_ != losses || terminalLocked();
  });
  if (!ok)
    return Status(StatusCode::kTimeout, "sync point: not every member arrived before the deadline");
  // Lost the group during the wait (even if already admitted again: the caller must learn it).
  if (losses_ != losses || state_ != State::kMember) return lostError();
  // The barrier's epoch, not epoch_: a member lost right after the barrier has already moved
  // epoch_ on, and the caller must learn that it passed the barrier in the older one.
  return barrier_epoch_;
}

Status MembershipClient::leave(Deadline deadline) {
  bool was_registered = false;
  {
    std::unique_lock lock(mu_);
    stopped_ = true;  // whatever happens now, do not look for another coordinator
    if (state_ == State::kPending || state_ == State::kMember) {
      was_registered = true;
      net_.post([this] {
        if (conn_ && conn_registered_) conn_->send(MsgType::kLeave);
      });
      cv_.wait_until(lock, deadline.at(),
                     [&] { return state_ != State::kPending && state_ != State::kMember; });
    }
  }
  closeConnection();
  std::lock_guard lock(mu_);
  if (state_ == State::kLeft || !was_registered) {
    state_ = State::kLeft;
    return Status();
  }
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
