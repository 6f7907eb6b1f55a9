#include "p2p/coordinator.h"

#include <fmt/format.h>

#include <algorithm>

#include "crypto/identity.h"
#include "p2p/base/log.h"
#include "p2p/base/metrics.h"
#include "p2p/base/text.h"
#include "p2p/net.h"
#include "p2p/tls_stream.h"
#include "p2p/traversal.h"

namespace loco::p2p {
namespace {
constexpr std::uint32_t kMaxStreams = 64;
}  // namespace

Result<std::unique_ptr<Coordinator>> Coordinator::start(asio::io_context& io,
                                                        CoordinatorOptions options) {
  if (options.heartbeat_interval.count() <= 0 || options.heartbeat_timeout.count() <= 0) {
    return Status(StatusCode::kInvalidArgument, "heartbeat interval and timeout must be positive");
  }
  if (options.heartbeat_timeout < 2 * options.heartbeat_interval) {
    return Status(
        StatusCode::kInvalidArgument,
        fmt::format("--heartbeat-timeout ({} ms) must be at least twice --heartbeat-interval "
                    "({} ms), or healthy peers would be evicted",
                    options.heartbeat_timeout.count(), options.heartbeat_interval.count()));
  }
  std::unique_ptr<Coordinator> c(new Coordinator(io, options));
  auto acceptor = listenOn(io, options.listen);
  if (!acceptor) return acceptor.status().withContext("coordinator");
  c->acceptor_ = std::move(acceptor.value());
  c->port_ = c->acceptor_->local_endpoint().port();
  c->accept();
  c->tick();
  LOG_INFO(kLogCoord, "listening on {}:{} (heartbeat interval {} ms, timeout {} ms)",
           options.listen.host, c->port_, options.heartbeat_interval.count(),
           options.heartbeat_timeout.count());
  return c;
}

Coordinator::Coordinator(asio::io_context& io, CoordinatorOptions options)
    : io_(io),
      options_(std::move(options)),
      tick_timer_(io),
      membership_(options_.heartbeat_timeout, options_.rebuild_window, options_.holder_wait,
                  options_.quorum) {}

Coordinator::~Coordinator() {
  shutdown();
}

void Coordinator::shutdown() {
  if (shut_down_) return;
  shut_down_ = true;
  std::error_code ignored;
  if (acceptor_) acceptor_->close(ignored);
  tick_timer_.cancel();
  auto peers = std::move(peers_);
  peers_.clear();
  for (auto& [id, conn] : peers) {
    conn->setCloseHandler(nullptr);
    conn->close(Status(StatusCode::kAborted, "coordinator shutting down"));
  }
  auto hs = std::move(handshaking_);
  handshaking_.clear();
  for (auto& conn : hs) {
    conn->setCloseHandler(nullptr);
    conn->close(Status(StatusCode::kAborted, "coordinator shutting down"));
  }
}

void Coordinator::accept() {
  acceptor_->async_accept(
      [this, alive = lifetime_.watch()](const std::error_code& ec, asio::ip::tcp::socket socket) {
        if (alive.expired() || shut_down_) return;
        if (!ec) {
          onAccepted(std::move(socket));
        } else if (ec != asio::error::operation_aborted) {
          // EMFILE and friends: count, log, and keep accepting (after a breath so we do not spin).
          counter("coord.accept_errors").inc();
          LOG_WARN(kLogCoord, "accept failed: {}", ec.message());
          auto t = std::make_shared<asio::steady_timer>(io_, Millis(50));
          t->async_wait([this, t, alive = lifetime_.watch()](const std::error_code&) {
            if (!alive.expired() && !shut_down_) accept();
          });
          return;
        }
        accept();
      });
}

void Coordinator::onAccepted(asio::ip::tcp::socket socket) {
  counter("coord.connections_accepted").inc();
  tuneSocket(socket, options_.heartbeat_timeout);
  if (handshaking_.size() >= options_.max_handshaking) {
    // Under a flood, drop the oldest unidentified connection: a legitimate client that
    // handshakes promptly still gets in.
    counter("coord.handshaking_dropped").inc();
    auto oldest = handshaking_.front();
    handshaking_.erase(handshaking_.begin());
    oldest->setCloseHandler(nullptr);
    oldest->close(
        Status(StatusCode::kResourceExhausted, "too many connections without a handshake"));
  }
  Connection::Options copts;
  copts.name = "incoming connection";
  copts.first_frame_timeout = options_.handshake_timeout;
  copts.max_queued_bytes = 16u << 20;
  // A new peer enrolls without a client certificate; it may send only Enroll (onHandshakeFrame).
  tls::WrapOptions wopts;
  wopts.role = tls::Role::kServer;
  wopts.require_client_cert = false;
  auto conn = Connection::create(io_, tls::wrap(std::move(socket), wopts), copts);
  std::weak_ptr<Connection> weak = conn;
  conn->setFrameHandler([this, weak](const FrameHeader& h, std::vector<std::uint8_t> payload) {
    if (auto c = weak.lock()) onHandshakeFrame(c, h, std::move(payload));
  });
  conn->setCloseHandler([this, raw = conn.get()](const Status& why) {
    if (why.code() == StatusCode::kProtocolError || why.code() == StatusCode::kTimeout ||
        why.code() == StatusCode::kUnauthenticated) {
      counter("coord.connections_rejected").inc();
      LOG_WARN(kLogCoord, "closed connection: {}", why.message());
    }
    dropHandshaking(raw);
  });
  handshaking_.push_back(conn);
  conn->start();
}

void Coordinator::dropHandshaking(const Connection* conn) {
  handshaking_.erase(std::remove_if(handshaking_.begin(), handshaking_.end(),
                                    [&](const auto& c) { return c.get() == conn; }),
                     handshaking_.end());
}

void Coordinator::refuse(const std::shared_ptr<Connection>& conn, StatusCode code,
                         const std::string& reason) {
  counter("coord.joins_refused").inc();
  LOG_WARN(kLogCoord, "refused {}: {}", conn->remoteAddress(), reason);
  // Logged here, once: the close that follows is not news.
  conn->setCloseHandler([this, raw = conn.get()](const Status&) { dropHandshaking(raw); });
  conn->send(MsgType::kRefused, encodeRefused(RefusedMsg{code, reason}));
  conn->closeAfterFlush(Status(code, reason));
}

void Coordinator::onHandshakeFrame(const std::shared_ptr<Connection>& conn, const FrameHeader& h,
                                   std::vector<std::uint8_t> payload) {
  if (h.type == MsgType::kEnroll) return onEnroll(conn, payload);
  // DialBack needs no certificate: the coordinator dials only the requester's own address, so
  // a volunteer's `loco doctor` checks its port before it has enrolled.
  if (tls::mode() == tls::Mode::kTls && conn->peerId().empty() && h.type != MsgType::kDialBack) {
    counter("tls.refused", {{"reason", "no_client_certificate"}}).inc();
    return refuse(conn, StatusCode::kUnauthenticated,
                  fmt::format("{} without a client certificate: enroll first with a join token "
                              "(loco join loco://...)",
                              msgTypeName(h.type)));
  }
  switch (h.type) {
    case MsgType::kStatusRequest:
      sendStatus(*conn);
      conn->closeAfterFlush(Status());
      return;
    case MsgType::kHello:
      return onHello(conn, payload);
    case MsgType::kDialBack:
      return onDialBack(conn, payload);
    default:
      counter("coord.bad_handshake").inc();
      conn->close(Status(
          StatusCode::kProtocolError,
          fmt::format("{} sent {} before Hello", conn->remoteAddress(), msgTypeName(h.type))));
  }
}

void Coordinator::onEnroll(const std::shared_ptr<Connection>& conn, ByteSpan payload) {
  if (tls::mode() != tls::Mode::kTls || !options_.enroll) {
    return refuse(conn, StatusCode::kFailedPrecondition,
                  "this coordinator does not enroll peers (it runs without --ca)");
  }
  auto msg = decodeEnroll(payload);
  if (!msg) return refuse(conn, StatusCode::kProtocolError, msg.status().message());
  if (revoked_.count(msg->peer_id) || revoked_.count(conn->peerId())) {
    counter("tls.enroll_refused").inc();
    return refuse(conn, StatusCode::kUnauthenticated,
                  fmt::format("peer {} was revoked (loco token revoke)", shortId(msg->peer_id)));
  }
  // Renewal: the connection's verified certificate vouches for the id, no token needed.
  const bool renewal = !conn->peerId().empty();
  if (renewal && (msg->peer_id != conn->peerId() || !msg->token.empty() || !options_.renew)) {
    counter("tls.enroll_refused").inc();
    return refuse(conn, StatusCode::kUnauthenticated,
                  fmt::format("renewal for {} over a connection certified for {}",
                              shortId(msg->peer_id), shortId(conn->peerId())));
  }
  if (renewal) {
    auto renewed = options_.renew(*msg);
    if (!renewed) return refuse(conn, renewed.status().code(), renewed.status().message());
    counter("tls.renewed").inc();
    LOG_INFO(kLogCoord, "renewed the certificate of peer {}", shortId(msg->peer_id));
    conn->send(MsgType::kEnrollReply, encodeEnrollReply(*renewed));
    conn->closeAfterFlush(Status());
    return;
  }
  auto reply = options_.enroll(*msg, conn->remoteAddress());
  if (!reply) {
    counter("tls.enroll_refused").inc();
    return refuse(conn, reply.status().code(), reply.status().message());
  }
  counter("tls.enrolled").inc();
  LOG_INFO(kLogCoord, "enrolled peer {} from {}", shortId(msg->peer_id), conn->remoteAddress());
  conn->send(MsgType::kEnrollReply, encodeEnrollReply(*reply));
  conn->closeAfterFlush(Status());
}

void Coordinator::onHello(const std::shared_ptr<Connection>& conn, ByteSpan payload) {
  auto hello = decodeHello(payload);
  if (!hello) return refuse(conn, StatusCode::kProtocolError, hello.status().message());
  if (!crypto::isValidPeerId(hello->peer_id)) {
    return refuse(conn, StatusCode::kInvalidArgument, "peer id must be 32 lowercase hex digits");
  }
  if (revoked_.count(hello->peer_id)) {
    counter("tls.refused", {{"reason", "revoked"}}).inc();
    return refuse(conn, StatusCode::kUnauthenticated,
                  fmt::format("peer {} was revoked (loco token revoke)", shortId(hello->peer_id)));
  }
  // The certificate binds the id: a stolen certificate cannot register under another id.
  if (tls::mode() == tls::Mode::kTls && conn->peerId() != hello->peer_id) {
    counter("tls.refused", {{"reason", "id_mismatch"}}).inc();
    return refuse(conn, StatusCode::kUnauthenticated,
                  fmt::format("the certificate is for {} but Hello claims {}",
                              shortId(conn->peerId()), shortId(hello->peer_id)));
  }
  auto adv = parseHostPort(hello->advertise);
  if (!adv)
    return refuse(conn, StatusCode::kInvalidArgument, "advertised " + adv.status().message());
  if (hello->streams == 0 || hello->streams > kMaxStreams) {
    return refuse(
        conn, StatusCode::kInvalidArgument,
        fmt::format("--streams must be between 1 and {}, got {}", kMaxStreams, hello->streams));
  }
  if (peers_.size() >= options_.max_peers) {
    return refuse(conn, StatusCode::kResourceExhausted,
                  fmt::format("the group is full ({} peers)", options_.max_peers));
  }
  const std::string id = hello->peer_id;
  JoinRequest request;
  request.id = id;
  request.addr = hello->advertise;
  request.streams = hello->streams;
  request.last_epoch = hello->last_epoch;
  request.incarnation = hello->incarnation;
  request.attempt = hello->attempt;
  request.last_members = hello->last_members;
  request.state_revision = hello->state_revision;
  request.state_digest = hello->state_digest;
  request.progress = hello->progress;
  request.reach = hello->reach;
  const bool was_registered = membership_.contains(id);
  auto fx = membership_.join(request, Clock::now());
  if (!fx) return refuse(conn, fx.status().code(), fx.status().message());

  dropHandshaking(conn.get());
  if (auto old = peers_.find(id); old != peers_.end()) {
    // The same process reconnected (Membership accepted it as such): its old connection is dead
    // on its side; close ours quietly.
    auto stale = old->second;
    peers_.erase(old);
    stale->setCloseHandler(nullptr);
    stale->close(Status(StatusCode::kAborted, "replaced by the peer's new connection"));
  }
  peers_[id] = conn;
  conn->setName(fmt::format("peer {}", shortId(id)));
  conn->setFrameHandler([this, id](const FrameHeader& h, std::vector<std::uint8_t> p) {
    onPeerFrame(id, h, std::move(p));
  });
  conn->setCloseHandler(
      [this, id, raw = conn.get()](const Status& why) { onPeerClosed(id, raw, why); });
  // We heartbeat the peer so it can tell a dead coordinator; its silence is judged by
  // Membership::tick, not by the connection.
  conn->setLiveness(options_.heartbeat_interval, Millis(0));
  checkReachable(id, hello->advertise);
  conn->send(MsgType::kWelcome, encodeWelcome(WelcomeMsg{
                                    static_cast<std::uint32_t>(options_.heartbeat_interval.count()),
                                    static_cast<std::uint32_t>(options_.heartbeat_timeout.count()),
                                    membership_.epoch()}));
  if (hello->last_members.empty()) {
    LOG_INFO(kLogCoord, "peer {} registered from {} advertising {} ({} streams, loco {})",
             shortId(id), conn->remoteAddress(), hello->advertise, hello->streams, hello->version);
  } else {
    counter("coord.peers_reregistered").inc();
    LOG_INFO(kLogCoord,
             "peer {} registered again from {} advertising {} ({} streams, loco {}{}): last epoch "
             "{} with {} members, shared-state revision {} digest {:016x}, progress {}",
             shortId(id), conn->remoteAddress(), hello->advertise, hello->streams, hello->version,
             was_registered ? ", replacing its old connection" : "", hello->last_epoch,
             hello->last_members.size(), hello->state_revision, hello->state_digest,
             hello->progress);
    if (membership_.rebuilding()) {
      LOG_INFO(kLogCoord,
               "rebuilding the group: admitting nobody until the members of epoch {} are back "
               "(at most {} ms)",
               hello->last_epoch,
               options_.rebuild_window.value_or(defaultRebuildWindow(options_.heartbeat_timeout))
                   .count());
    }
  }
  apply(std::move(fx.value()));
}

void Coordinator::onPeerFrame(const std::string& id, const FrameHeader& h,
                              std::vector<std::uint8_t> payload) {
  auto now = Clock::now();
  membership_.heartbeat(id, now);  // any frame proves the peer is alive
  switch (h.type) {
    case MsgType::kHeartbeat:
      return;
    case MsgType::kSyncRequest:
      maybeProposeRing();
      return apply(membership_.syncRequest(id, now));
    case MsgType::kLinkReport:
      return onLinkReport(id, payload);
    case MsgType::kProgress: {
      auto report = decodeProgress(payload);
      if (!report) {
        counter("coord.bad_progress_reports").inc();
        auto it = peers_.find(id);
        if (it != peers_.end())
          it->second->close(report.status().withContext("progress report from " + shortId(id)));
        return;
      }
      return apply(membership_.progress(id, *report, now));
    }
    case MsgType::kPeerReport:
      return onPeerReport(id, payload);
    case MsgType::kLeave: {
      auto it = peers_.find(id);
      if (it != peers_.end()) {
        auto conn = it->second;
        peers_.erase(it);
        conn->setCloseHandler(nullptr);
        conn->send(MsgType::kLeaveAck);
        conn->closeAfterFlush(Status());
      }
      return apply(membership_.leave(id));
    }
    case MsgType::kStatusRequest: {
      auto it = peers_.find(id);
      if (it != peers_.end()) sendStatus(*it->second);
      return;
    }
    case MsgType::kOpReport: {
      auto report = decodeOpReport(payload);
      if (!report) {
        counter("coord.unexpected_frames").inc();
        return apply(membership_.opReport(id, h.epoch, h.op_id, false));
      }
      return apply(membership_.opReport(id, h.epoch, h.op_id, report->ok, report->members));
    }
    case MsgType::kStateManifest:
    case MsgType::kStateDone:
    case MsgType::kStateComplaint:
      return onStateFrame(id, h, payload);
    case MsgType::kConnectRequest:
    case MsgType::kConnectReply:
      return onConnectFrame(id, h.type, payload);
    default: {
      counter("coord.unexpected_frames").inc();
      auto it = peers_.find(id);
      if (it != peers_.end()) {
        it->second->close(
            Status(StatusCode::kProtocolError,
                   fmt::format("peer {} sent unexpected {}", shortId(id), msgTypeName(h.type))));
      }
    }
  }
}

void Coordinator::onConnectFrame(const std::string& id, MsgType type, ByteSpan payload) {
  auto from = peers_.find(id);
  auto m = decodeConnect(payload);
  if (!m) {
    counter("coord.bad_connect_requests").inc();
    if (from != peers_.end()) from->second->close(m.status().withContext("from " + shortId(id)));
    return;
  }
  auto to = peers_.find(m->peer);
  if (to == peers_.end() || m->peer == id) {
    // Tell the requester at once instead of letting its dial time out.
    if (type == MsgType::kConnectRequest && from != peers_.end()) {
      ConnectMsg no{m->peer, m->token, m->mode,
                    0,       "",       fmt::format("peer {} is not registered", shortId(m->peer))};
      from->second->send(MsgType::kConnectReply, encodeConnect(no));
    }
    return;
  }
  // The endpoint is ours to fill in: the sender's advertised address for a reverse dial, the
  // address its connections come from (its router's) with its port for a punch. A sender cannot
  // make another peer dial an address of its choosing.
  ConnectMsg fwd{id, m->token, m->mode, 0, "", m->error};
  if (m->mode == ConnectMode::kReverse) {
    for (const PeerInfo& p : membership_.view(Clock::now()).peers) {
      if (p.id == id) fwd.endpoint = p.addr;
    }
  } else if (m->error.empty()) {
    auto seen = parseHostPort(from->second->remoteAddress());
    if (seen && m->port != 0) fwd.endpoint = HostPort{seen->host, m->port}.toString();
  }
  if (fwd.endpoint.empty() && fwd.error.empty()) fwd.error = "no endpoint to connect to";
  counter("coord.connect_requests",
          {{"mode", m->mode == ConnectMode::kPunch ? "punch" : "reverse"}})
      .inc();
  LOG_DEBUG(kLogCoord, "{} {} -> {}: {} at {}", msgTypeName(type), shortId(id), shortId(m->peer),
            m->mode == ConnectMode::kPunch ? "punch" : "reverse dial", fwd.endpoint);
  to->second->send(type, encodeConnect(fwd));
}

void Coordinator::onLinkReport(const std::string& id, ByteSpan payload) {
  auto report = decodeLinkReport(payload);
  if (!report) {
    counter("coord.bad_link_reports").inc();
    auto it = peers_.find(id);
    if (it != peers_.end())
      it->second->close(report.status().withContext("link report from " + shortId(id)));
    return;
  }
  for (const EdgeEstimate& e : report->edges) {
    // A peer speaks only for links it is an end of, between peers the group knows.
    if ((e.from != id && e.to != id) || !membership_.contains(e.from) ||
        !membership_.contains(e.to))
      continue;
    if (bandwidth_.update(e)) {
      bandwidth_dirty_ = true;
      LOG_DEBUG(kLogCoord, "link {} -> {}: {:.1f} Mbit/s ({})", shortId(e.from), shortId(e.to),
                e.bytes_per_s * 8e-6, edgeSourceName(e.source));
    }
  }
}

void Coordinator::onPeerReport(const std::string& id, ByteSpan payload) {
  auto report = decodePeerReport(payload);
  if (!report) {
    counter("coord.bad_peer_reports").inc();
    return;  // progress is informational: a bad report costs the report, not the peer
  }
  run_log_.onReport(id, *report, unixSeconds());
}

RunSnapshot Coordinator::snapshot() const {
  RunSnapshot s;
  s.view = membership_.view(Clock::now());
  s.view.counters = counterSnapshot();
  s.view.edges = bandwidth_.edges();
  s.view.reachability = reachabilityView();
  s.events.assign(run_log_.events().begin(), run_log_.events().end());
  s.steps = run_log_.steps();
  s.progress = run_log_.peers();
  s.heartbeat_interval = options_.heartbeat_interval;
  s.heartbeat_timeout = options_.heartbeat_timeout;
  return s;
}

void Coordinator::maybeProposeRing() {
  if (!bandwidth_dirty_) return;
  bandwidth_dirty_ = false;
  const auto& ring = membership_.ring();
  // Relayed links count at half their rate: direct links win (traversal.h planningRates).
  const BandwidthTable rates = traversal::planningRates(bandwidth_, membership_.view(Clock::now()));
  auto best = bestRing(ring, rates);
  if (!best) return;
  constexpr double kReorderGain = 1.2;
  const double now_slowest = ringBottleneck(ring, rates),
               best_slowest = ringBottleneck(*best, rates);
  if (best_slowest <= now_slowest * kReorderGain) return;
  LOG_INFO(kLogCoord,
           "topology: a ring whose slowest link is {:.1f} Mbit/s (now {:.1f}); applying it at the "
           "next sync point",
           best_slowest * 8e-6, now_slowest * 8e-6);
  membership_.proposeRing(std::move(*best));
}

void Coordinator::revokePeers(const std::set<std::string>& ids) {
  for (const std::string& id : ids) {
    if (!revoked_.insert(id).second) continue;
    counter("coord.peers_revoked").inc();
    auto it = peers_.find(id);
    if (it == peers_.end()) continue;
    const std::string why = "revoked (loco token revoke)";
    if (membership_.contains(id)) {
      apply(membership_.evict(id, why));
    }
    // Evicted above (the Evicted message closes the connection) or registered but not in the
    // membership: refused outright.
    if (auto still = peers_.find(id); still != peers_.end()) {
      auto conn = still->second;
      peers_.erase(still);
      conn->setCloseHandler(nullptr);
      conn->send(MsgType::kRefused, encodeRefused(RefusedMsg{StatusCode::kUnauthenticated, why}));
      conn->closeAfterFlush(Status(StatusCode::kUnauthenticated, why));
    }
  }
}

void Coordinator::onPeerClosed(const std::string& id, const Connection* conn, const Status& why) {
  auto it = peers_.find(id);
  if (it == peers_.end() || it->second.get() != conn) return;
  peers_.erase(it);
  apply(membership_.evict(id, fmt::format("connection lost ({})", why.message())));
}

void Coordinator::sendStatus(Connection& conn) {
  GroupView v = membership_.view(Clock::now());
  v.counters = counterSnapshot();
  v.edges = bandwidth_.edges();
  v.reachability = reachabilityView();
  conn.send(MsgType::kStatusReply, encodeGroupView(v), membership_.epoch());
}

void Coordinator::refuseAndClose(const std::string& peer, StatusCode code,
                                 const std::string& reason) {
  auto it = peers_.find(peer);
  if (it == peers_.end()) return;
  auto conn = it->second;
  peers_.erase(it);
  conn->setCloseHandler(nullptr);
  conn->send(MsgType::kRefused, encodeRefused(RefusedMsg{code, reason}));
  conn->closeAfterFlush(Status(code, reason));
}

void Coordinator::apply(MembershipEffects fx) {
  const auto epoch = membership_.epoch();
  const auto world = membership_.ring().size();
  if (!fx.events.empty()) run_log_.onEvents(fx.events, unixSeconds());
  for (const MembershipEvent& e : fx.events) {
    switch (e.kind) {
      case MembershipEvent::Kind::kPending:
        LOG_INFO(kLogCoord, "peer {} pending epoch={} world={}", shortId(e.peer), e.epoch, world);
        break;
      case MembershipEvent::Kind::kAdmitted:
        counter("coord.peers_admitted").inc();
        LOG_INFO(kLogCoord, "peer {} admitted epoch={} world={}", shortId(e.peer), e.epoch, world);
        break;
      case MembershipEvent::Kind::kReordered:
        counter("coord.ring_reorders").inc();
        LOG_INFO(kLogCoord, "ring reordered for speed epoch={}: {}", e.epoch, e.reason);
        break;
      case MembershipEvent::Kind::kReplaced:
        // onHello has swapped the connection already; the peer needs no Evicted.
        bandwidth_.erase(e.peer);
        counter("coord.peers_replaced").inc();
        LOG_INFO(kLogCoord, "peer {} {} epoch={} world={}", shortId(e.peer), e.reason, e.epoch,
                 world);
        break;
      case MembershipEvent::Kind::kRebuilt:
        counter("coord.rebuilds").inc();
        LOG_INFO(kLogCoord, "group rebuilt at epoch={} world={}: {}", e.epoch, world, e.reason);
        break;
      case MembershipEvent::Kind::kLeft:
        bandwidth_.erase(e.peer);
        counter("coord.peers_left").inc();
        LOG_INFO(kLogCoord, "peer {} left epoch={} world={}", shortId(e.peer), e.epoch, world);
        break;
      case MembershipEvent::Kind::kCompleted: {
        counter("coord.told_run_completed").inc();
        LOG_INFO(kLogCoord, "peer {} told that the run is over: {}", shortId(e.peer), e.reason);
        refuseAndClose(e.peer, StatusCode::kCompleted, e.reason);
        break;
      }
      case MembershipEvent::Kind::kHeld:
        // Often for a moment only: a peer resumed from its checkpoint reports what it holds
        // right after it registers.
        counter("coord.held_for_progress").inc();
        LOG_INFO(kLogCoord, "{} (--holder-wait)", e.reason);
        break;
      case MembershipEvent::Kind::kNoQuorum: {
        counter(e.peer.empty() ? "coord.held_for_quorum" : "coord.sent_away_for_quorum").inc();
        if (e.peer.empty()) {
          LOG_WARN(kLogCoord, "{}", e.reason);
          break;
        }
        LOG_WARN(kLogCoord, "peer {} sent away: {}", shortId(e.peer), e.reason);
        // Unavailable: not final; the peer looks for a coordinator again.
        refuseAndClose(e.peer, StatusCode::kUnavailable, e.reason);
        break;
      }
      case MembershipEvent::Kind::kRolledBack:
        counter("coord.progress_rolled_back").inc();
        LOG_WARN(kLogCoord, "{}", e.reason);
        break;
      case MembershipEvent::Kind::kEvicted: {
        bandwidth_.erase(e.peer);
        counter("coord.peers_evicted").inc();
        LOG_WARN(kLogCoord, "peer {} evicted epoch={} world={}: {}", shortId(e.peer), e.epoch,
                 world, e.reason);
        auto it = peers_.find(e.peer);
        if (it != peers_.end()) {
          // Tell it, so that a peer that was only frozen learns it must rejoin.
          auto conn = it->second;
          peers_.erase(it);
          conn->setCloseHandler(nullptr);
          conn->send(MsgType::kEvicted, encodeEvicted(EvictedMsg{e.reason}), e.epoch);
          conn->closeAfterFlush(Status(StatusCode::kEvicted, e.reason));
        }
        break;
      }
    }
  }
  // Decisions first: a peer must learn its operation aborted before it sees the new view.
  for (const OpDecision& d : fx.decisions) {
    counter(d.commit ? "coord.ops_committed" : "coord.ops_aborted").inc();
    const std::uint8_t verdict = d.commit ? 1 : 0;
    for (auto& [id, conn] : peers_)
      conn->send(MsgType::kOpDecision, ByteSpan(&verdict, 1), d.epoch, d.op_id);
  }
  if (fx.view_changed) {
    bandwidth_dirty_ = true;  // another member set: its best ring may differ
    auto payload = encodeGroupView(membership_.view(Clock::now()));
    for (auto& [id, conn] : peers_) conn->send(MsgType::kMembership, payload, epoch);
  }
  if (fx.sync_done) {
    for (const std::string& id : membership_.ring()) {
      auto it = peers_.find(id);
      if (it != peers_.end()) it->second->send(MsgType::kSyncDone, {}, epoch);
    }
  }
  // A member that left no longer holds up (or serves) a shared-state round.
  if (fx.view_changed) applyState(state_sync_.membersChanged(members()));
}

std::vector<PeerInfo> Coordinator::members() const {
  std::vector<PeerInfo> out;
  for (PeerInfo& p : membership_.view(Clock::now()).peers) {
    if (p.state == PeerState::kMember) out.push_back(std::move(p));
  }
  return out;
}

void Coordinator::onStateFrame(const std::string& id, const FrameHeader& h, ByteSpan payload) {
  auto it = peers_.find(id);
  if (it == peers_.end()) return;
  auto conn = it->second;
  switch (h.type) {
    case MsgType::kStateManifest: {
      auto m = decodeStateManifest(payload);
      if (!m) {
        counter("coord.state_bad_manifests").inc();
        return conn->close(m.status().withContext(fmt::format("peer {}", shortId(id))));
      }
      LOG_DEBUG(kLogCoord, "peer {} shared-state manifest: revision {}, {} buffers, {} chunks, {}",
                shortId(id), m->revision, m->buffers.size(), m->hashes.size(),
                stateStrategyName(m->strategy));
      return applyState(state_sync_.manifest(id, std::move(m.value()), members()));
    }
    case MsgType::kStateDone:
      applyState(state_sync_.done(id, h.op_id, members()));
      // A withdrawal is acknowledged (kStateComplete, round 0): the peer's failed sync returns only
      // after this, so its next manifest cannot be overtaken by another peer's and meet a round
      // the withdrawn manifest was still counted in.
      if (h.op_id == 0) conn->send(MsgType::kStateComplete, {}, membership_.epoch(), 0);
      return;
    case MsgType::kStateComplaint: {
      auto c = decodeStateComplaint(payload);
      if (!c) return conn->close(c.status().withContext(fmt::format("peer {}", shortId(id))));
      counter("coord.state_complaints").inc();
      LOG_WARN(kLogCoord,
               "peer {} reports that peer {} served {} corrupt shared-state chunk(s): {}",
               shortId(id), shortId(c->accused), c->bad_chunks, c->reason);
      if (c->accused == id || !membership_.contains(c->accused)) return;
      return apply(membership_.evict(
          c->accused,
          fmt::format(
              "served {} shared-state chunk(s) that failed their hash check (reported by peer {})",
              c->bad_chunks, shortId(id))));
    }
    default:
      return;
  }
}

void Coordinator::applyState(StateSyncEffects fx) {
  for (auto& [id, plan] : fx.plans) {
    auto it = peers_.find(id);
    if (it == peers_.end()) continue;
    if (plan.code != StatusCode::kOk) {
      counter("coord.state_refusals").inc();
      LOG_WARN(kLogCoord, "peer {} shared-state sync refused: {}", shortId(id), plan.reason);
    }
    it->second->send(MsgType::kStatePlan, encodeStatePlan(plan), membership_.epoch(), fx.round);
  }
  if (!fx.plans.empty()) {
    counter("coord.state_rounds").inc();
    LOG_DEBUG(kLogCoord, "shared-state round {} planned for {} peers", fx.round, fx.plans.size());
  }
  for (const std::string& id : fx.complete) {
    auto it = peers_.find(id);
    if (it != peers_.end())
      it->second->send(MsgType::kStateComplete, {}, membership_.epoch(), fx.complete_round);
  }
}

void Coordinator::tick() {
  if (shut_down_) return;
  auto fx = membership_.tick(Clock::now());
  if (membership_.lastTickWasStall()) {
    LOG_WARN(kLogCoord, "the coordinator was stalled; restarting every peer's heartbeat clock");
  }
  apply(std::move(fx));
  // Tick well inside half the timeout so Membership can tell our own stalls from silent peers.
  Millis period = std::min(Millis(100), options_.heartbeat_timeout / 8);
  tick_timer_.expires_after(std::max(period, Millis(5)));
  tick_timer_.async_wait([this, alive = lifetime_.watch()](const std::error_code& ec) {
    if (!ec && !alive.expired()) tick();
  });
}

}  // namespace loco::p2p
