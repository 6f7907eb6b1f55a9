#include <fmt/format.h>

#include <array>
#include <cstring>
#include <map>
#include <mutex>
#include <random>

#include "p2p/base/log.h"
#include "p2p/base/metrics.h"
#include "p2p/base/text.h"
#include "p2p/net.h"
#include "p2p/traversal_net.h"

namespace loco::p2p::traversal {
namespace {

using asio::ip::tcp;

// 0xA5 cannot start anything else a link listener is sent: frames start with "LOCO", TLS
// records with 0x16 (ClientHello).
constexpr std::uint8_t kPreambleByte = 0xA5;
constexpr std::array<std::uint8_t, 8> kPreambleMagic{kPreambleByte, 'L', 'O', 'C',
                                                     'O',           'R', 'V', 0};
constexpr std::size_t kPreambleLen = 16;  // magic + u64 token (little-endian)

struct Self {
  PeerReach reach = PeerReach::kDirect;
  Signal signal;
};

// A dial waiting for the far end: the reverse connection's arrival, or the punch's reply.
struct Pending {
  asio::io_context* io = nullptr;
  SocketDone done;
  std::shared_ptr<tcp::socket> punch_socket;  // kPunch: bound before the request went out
  std::shared_ptr<asio::steady_timer> timer;
  Deadline deadline = Deadline::after(Millis(0));
  std::string remote;  // for messages
};

struct Registry {
  std::mutex mu;
  std::map<std::string, Self> selves;
  std::map<std::string, std::pair<std::string, PeerReach>> peers;  // address -> id, reach
  std::map<std::uint64_t, Pending> pending;
  std::mt19937_64 rng{std::random_device{}() ^ static_cast<std::uint64_t>(unixMillis())};
};

Registry& registry() {
  static Registry r;
  return r;
}

// Takes the pending dial `token` out of the registry (nullopt when it finished already).
std::optional<Pending> take(std::uint64_t token) {
  Registry& r = registry();
  std::lock_guard lock(r.mu);
  auto it = r.pending.find(token);
  if (it == r.pending.end()) return std::nullopt;
  Pending p = std::move(it->second);
  r.pending.erase(it);
  return p;
}

// Completes pending dial `token` on its own io_context; false (and a socket given is closed)
// when nobody waits for it any more.
bool finish(std::uint64_t token, Result<std::shared_ptr<tcp::socket>> result) {
  auto p = take(token);
  if (!p) {
    if (result) {
      std::error_code ignored;
      result.value()->close(ignored);
    }
    return false;
  }
  if (p->timer) p->timer->cancel();
  if (p->punch_socket && (!result || result.value() != p->punch_socket)) {
    std::error_code ignored;
    p->punch_socket->close(ignored);
  }
  asio::post(*p->io, [done = std::move(p->done), result = std::move(result)]() mutable {
    done(std::move(result));
  });
  return true;
}

void writeToken(std::uint8_t* out, std::uint64_t token) {
  for (int i = 0; i < 8; ++i) out[i] = static_cast<std::uint8_t>(token >> (8 * i));
}
std::uint64_t readToken(const std::uint8_t* in) {
  std::uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= static_cast<std::uint64_t>(in[i]) << (8 * i);
  return v;
}

// The far end asked us (through the coordinator) to dial `endpoint` and open with the token.
void serveReverse(asio::io_context& io, const ConnectMsg& m,
                  std::function<void(tcp::socket)> accept) {
  auto hp = parseHostPort(m.endpoint);
  if (!hp) return;
  auto eps = resolve(*hp);
  if (!eps) return;
  asyncConnect(io, eps.value(), Deadline::after(Millis(10000)),
               [m, accept = std::move(accept)](Result<std::shared_ptr<tcp::socket>> s) {
                 if (!s) {
                   LOG_WARN(kLogP2p, "reverse dial to {} for peer {} failed: {}", m.endpoint,
                            shortId(m.peer), s.status().message());
                   counter("p2p.traversal_failed", {{"path", "reverse"}}).inc();
                   return;
                 }
                 auto sock = s.value();
                 auto pre = std::make_shared<std::array<std::uint8_t, kPreambleLen>>();
                 std::memcpy(pre->data(), kPreambleMagic.data(), kPreambleMagic.size());
                 writeToken(pre->data() + kPreambleMagic.size(), m.token);
                 asio::async_write(*sock, asio::buffer(*pre),
                                   [sock, pre, accept](const std::error_code& ec, std::size_t) {
                                     if (ec) return;
                                     // From here on we are the accepting end, as on a direct link.
                                     accept(std::move(*sock));
                                   });
               });
}

// One side of a simultaneous open: connects the bound `sock` to the far end's public `endpoint`
// by the deadline (the kernel retries a SYN the far router dropped before its own went out).
void connectPunch(std::shared_ptr<tcp::socket> sock, const std::string& endpoint, Deadline deadline,
                  std::function<void(const std::error_code&)> done) {
  auto hp = parseHostPort(endpoint);
  asio::error_code ec;
  auto addr = hp ? asio::ip::make_address(hp->host, ec) : asio::ip::address();
  if (!hp || ec) return done(asio::error::invalid_argument);
  auto timer = std::make_shared<asio::steady_timer>(sock->get_executor(), deadline.at());
  timer->async_wait([sock](const std::error_code& e) {
    if (!e) {
      std::error_code ignored;
      sock->cancel(ignored);
    }
  });
  sock->async_connect(tcp::endpoint(addr, hp->port),
                      [sock, timer, done = std::move(done)](const std::error_code& e) {
                        timer->cancel();
                        done(e);
                      });
}

// A socket bound to a free port, with SO_REUSEADDR (the same port then connects out).
Result<std::shared_ptr<tcp::socket>> boundSocket(asio::io_context& io) {
  auto sock = std::make_shared<tcp::socket>(io);
  std::error_code ec;
  sock->open(tcp::v4(), ec);
  if (!ec) sock->set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) sock->bind(tcp::endpoint(tcp::v4(), 0), ec);
  if (ec)
    return Status(StatusCode::kUnavailable, "cannot bind a port to punch from: " + ec.message());
  return sock;
}

}  // namespace

const char* linkPathName(LinkPath p) {
  switch (p) {
    case LinkPath::kReverse:
      return "reverse";
    case LinkPath::kPunched:
      return "punched";
    case LinkPath::kRelayed:
      return "relayed";
    case LinkPath::kDirect:
      break;
  }
  return "direct";
}

LinkPath linkPath(PeerReach from, PeerReach to) {
  switch (to) {
    case PeerReach::kDirect:
      return LinkPath::kDirect;
    case PeerReach::kRelayed:
      return LinkPath::kRelayed;
    case PeerReach::kReverse:
      // A relayed dialer is reached through its relay's address, so it can be dialed back.
      return from == PeerReach::kReverse ? LinkPath::kPunched : LinkPath::kReverse;
  }
  return LinkPath::kDirect;
}

std::string linkPathIn(const GroupView& view, const std::string& from, const std::string& to) {
  const PeerInfo* a = nullptr;
  const PeerInfo* b = nullptr;
  for (const PeerInfo& p : view.peers) {
    if (p.id == from) a = &p;
    if (p.id == to) b = &p;
  }
  return a && b ? linkPathName(linkPath(a->reach, b->reach)) : "";
}

BandwidthTable planningRates(const BandwidthTable& measured, const GroupView& view) {
  BandwidthTable out;
  for (EdgeEstimate e : measured.edges()) {
    if (linkPathIn(view, e.from, e.to) == linkPathName(LinkPath::kRelayed)) e.bytes_per_s /= 2;
    out.update(e);
  }
  return out;
}

void registerSelf(const std::string& self_id, PeerReach reach, Signal signal) {
  Registry& r = registry();
  std::lock_guard lock(r.mu);
  r.selves[self_id] = Self{reach, std::move(signal)};
}

void unregisterSelf(const std::string& self_id) {
  Registry& r = registry();
  std::lock_guard lock(r.mu);
  r.selves.erase(self_id);
}

void notePeer(const std::string& address, const std::string& id, PeerReach reach) {
  Registry& r = registry();
  std::lock_guard lock(r.mu);
  r.peers[address] = {id, reach};
}

LinkPath pathTo(const std::string& self_id, const std::string& address) {
  Registry& r = registry();
  std::lock_guard lock(r.mu);
  auto self = r.selves.find(self_id);
  auto peer = r.peers.find(address);
  if (self == r.selves.end() || peer == r.peers.end()) return LinkPath::kDirect;
  return linkPath(self->second.reach, peer->second.second);
}

void openSocket(asio::io_context& io, const std::string& self_id, const HostPort& remote,
                Deadline deadline, SocketDone done) {
  const std::string address = remote.toString();
  std::string peer_id;
  LinkPath path = LinkPath::kDirect;
  Signal signal;
  std::uint64_t token = 0;
  {
    Registry& r = registry();
    std::lock_guard lock(r.mu);
    auto self = r.selves.find(self_id);
    auto peer = r.peers.find(address);
    if (self != r.selves.end() && peer != r.peers.end()) {
      path = linkPath(self->second.reach, peer->second.second);
      peer_id = peer->second.first;
      signal = self->second.signal;
      token = r.rng();
    }
  }
  if (path == LinkPath::kDirect || path == LinkPath::kRelayed) {
    auto eps = resolve(remote);
    if (!eps) return done(eps.status());
    return asyncConnect(io, eps.value(), deadline, std::move(done));
  }
  Pending p;
  p.io = &io;
  p.done = std::move(done);
  p.deadline = deadline;
  p.remote = address;
  ConnectMsg request{peer_id, token, ConnectMode::kReverse, 0, "", ""};
  if (path == LinkPath::kPunched) {
    auto sock = boundSocket(io);
    if (!sock) return p.done(sock.status());
    std::error_code ec;
    request.mode = ConnectMode::kPunch;
    request.port = sock.value()->local_endpoint(ec).port();
    p.punch_socket = sock.value();
  }
  p.timer = std::make_shared<asio::steady_timer>(io, deadline.at());
  p.timer->async_wait([token, address, path](const std::error_code& ec) {
    if (ec) return;
    counter("p2p.traversal_failed", {{"path", linkPathName(path)}}).inc();
    finish(token, Status(StatusCode::kTimeout,
                         fmt::format("{} connection to {}: the far end did not connect in time",
                                     linkPathName(path), address)));
  });
  {
    Registry& r = registry();
    std::lock_guard lock(r.mu);
    r.pending[token] = std::move(p);
  }
  LOG_DEBUG(kLogP2p, "asking peer {} at {} for a {} connection", shortId(peer_id), address,
            linkPathName(path));
  counter("p2p.traversal_requests", {{"path", linkPathName(path)}}).inc();
  signal(MsgType::kConnectRequest, encodeConnect(request));
}

void routeAccepted(tcp::socket socket, Millis timeout, std::function<void(tcp::socket)> ordinary) {
  auto sock = std::make_shared<tcp::socket>(std::move(socket));
  auto first = std::make_shared<std::uint8_t>(0);
  auto timer = std::make_shared<asio::steady_timer>(sock->get_executor(), timeout);
  timer->async_wait([sock](const std::error_code& ec) {
    if (!ec) {
      std::error_code ignored;
      sock->close(ignored);
    }
  });
  // Peek: the byte stays for whoever reads the stream next.
  sock->async_receive(
      asio::buffer(first.get(), 1), asio::socket_base::message_peek,
      [sock, first, timer, ordinary = std::move(ordinary)](const std::error_code& ec,
                                                           std::size_t n) {
        if (ec || n == 0) {
          timer->cancel();
          std::error_code ignored;
          sock->close(ignored);
          return;
        }
        if (*first != kPreambleByte) {
          timer->cancel();
          return ordinary(std::move(*sock));
        }
        auto pre = std::make_shared<std::array<std::uint8_t, kPreambleLen>>();
        asio::async_read(
            *sock, asio::buffer(*pre), [sock, pre, timer](const std::error_code& e, std::size_t) {
              timer->cancel();
              std::error_code ignored;
              if (e ||
                  std::memcmp(pre->data(), kPreambleMagic.data(), kPreambleMagic.size()) != 0) {
                counter("p2p.traversal_refused", {{"reason", "bad_preamble"}}).inc();
                return sock->close(ignored);
              }
              // Unknown or late (timed out): nobody waits for it, and it is closed.
              if (!finish(readToken(pre->data() + kPreambleMagic.size()), sock))
                counter("p2p.traversal_refused", {{"reason", "unknown_token"}}).inc();
            });
      });
}

void onCoordinatorFrame(asio::io_context& io, const std::string& self_id, MsgType type,
                        ByteSpan payload, std::function<void(tcp::socket)> accept) {
  auto m = decodeConnect(payload);
  if (!m) {
    counter("p2p.traversal_refused", {{"reason", "malformed"}}).inc();
    return;
  }
  if (type == MsgType::kConnectReply) {
    // Our request's answer: why it cannot be served, or for a punch the far end's public
    // endpoint.
    if (!m->error.empty()) {
      finish(m->token, Status(StatusCode::kUnavailable, fmt::format("peer {} cannot connect: {}",
                                                                    shortId(m->peer), m->error)));
      return;
    }
    std::shared_ptr<tcp::socket> sock;
    Deadline deadline = Deadline::after(Millis(0));
    {
      Registry& r = registry();
      std::lock_guard lock(r.mu);
      auto it = r.pending.find(m->token);
      if (it == r.pending.end() || !it->second.punch_socket) return;
      sock = it->second.punch_socket;
      deadline = it->second.deadline;
    }
    const std::uint64_t token = m->token;
    connectPunch(
        sock, m->endpoint, deadline,
        [sock, token, endpoint = m->endpoint](const std::error_code& ec) {
          if (ec) {
            counter("p2p.traversal_failed", {{"path", "punched"}}).inc();
            finish(token, Status(StatusCode::kUnavailable,
                                 fmt::format("punching to {} failed: {}", endpoint, ec.message())));
            return;
          }
          finish(token, sock);
        });
    return;
  }
  if (type != MsgType::kConnectRequest) return;
  if (m->mode == ConnectMode::kReverse) return serveReverse(io, *m, std::move(accept));
  // Punch: bind, tell the far end our port through the coordinator, and connect at once. Our
  // SYN opens the way through our router for the far end's, which follows its reply.
  Signal signal;
  {
    Registry& r = registry();
    std::lock_guard lock(r.mu);
    auto self = r.selves.find(self_id);
    if (self == r.selves.end()) return;
    signal = self->second.signal;
  }
  ConnectMsg reply{m->peer, m->token, ConnectMode::kPunch, 0, "", ""};
  auto sock = boundSocket(io);
  if (!sock) {
    reply.error = sock.status().message();
    return signal(MsgType::kConnectReply, encodeConnect(reply));
  }
  std::error_code ec;
  reply.port = sock.value()->local_endpoint(ec).port();
  signal(MsgType::kConnectReply, encodeConnect(reply));
  auto s = sock.value();
  connectPunch(s, m->endpoint, Deadline::after(Millis(10000)),
               [s, accept = std::move(accept), m = *m](const std::error_code& e) {
                 if (e) {
                   LOG_WARN(kLogP2p, "punching to {} for peer {} failed: {}", m.endpoint,
                            shortId(m.peer), e.message());
                   counter("p2p.traversal_failed", {{"path", "punched"}}).inc();
                   return;
                 }
                 accept(std::move(*s));
               });
}

}  // namespace loco::p2p::traversal
