#include "p2p/relay.h"

#include <fmt/format.h>

#include <array>
#include <cstring>
#include <deque>
#include <map>

#include "crypto/identity.h"
#include "p2p/base/log.h"
#include "p2p/base/metrics.h"
#include "p2p/net.h"
#include "p2p/stream.h"
#include "p2p/tls_stream.h"
#include "p2p/traversal_net.h"

namespace loco::p2p {
namespace {

constexpr char kMagic[8] = {'L', 'O', 'C', 'O', 'R', 'L', 'Y', '1'};
// Control connections idle while nobody dials the peer: TCP keepalive after this long.
constexpr Millis kControlKeepalive{20000};
constexpr std::size_t kArgLen = 32;
constexpr std::size_t kRequestLen = sizeof(kMagic) + 1 + kArgLen;
constexpr std::size_t kSpliceBuffer = 256u << 10;
using tcp = asio::ip::tcp;

void refuse(const char* reason) {
  counter("relay.refused", {{"reason", reason}}).inc();
}

std::array<std::uint8_t, kRequestLen> request(char op, const std::string& arg) {
  std::array<std::uint8_t, kRequestLen> r{};
  std::memcpy(r.data(), kMagic, sizeof(kMagic));
  r[sizeof(kMagic)] = static_cast<std::uint8_t>(op);
  std::memcpy(r.data() + sizeof(kMagic) + 1, arg.data(), std::min(arg.size(), kArgLen));
  return r;
}

bool isHex32(const std::string& s) {
  if (s.size() != kArgLen) return false;
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

// A per-peer token bucket: bytes through the peer's pairs, both directions together.
struct RateCap {
  double rate = 0;  // bytes/s; 0: unlimited
  double tokens = 0;
  TimePoint last = Clock::now();
  // How long to wait before `n` more bytes may go (0: now); takes them either way.
  Millis take(std::size_t n) {
    if (rate <= 0) return Millis(0);
    const TimePoint now = Clock::now();
    const double burst = std::max(rate * 0.05, double(kSpliceBuffer));
    tokens = std::min(burst, tokens + rate * std::chrono::duration<double>(now - last).count());
    last = now;
    tokens -= static_cast<double>(n);
    if (tokens >= 0) return Millis(0);
    return Millis(static_cast<std::int64_t>(-tokens / rate * 1000) + 1);
  }
};

}  // namespace

// ---- server -----------------------------------------------------------------------------------

struct RelayServer::Impl : std::enable_shared_from_this<RelayServer::Impl> {
  struct Allocation;
  // Two spliced sockets; each direction reads into its own buffer and writes it whole to the
  // other side before reading again (so a slow side holds the fast one back: TCP backpressure).
  struct Pair : std::enable_shared_from_this<Pair> {
    std::array<std::shared_ptr<tcp::socket>, 2> sock;
    std::array<std::vector<std::uint8_t>, 2> buf;
    std::array<bool, 2> eof{false, false};
    std::shared_ptr<Allocation> alloc;
    asio::steady_timer timer;  // cancelled on close; its executor runs the cap's pauses
    bool closed = false;
    Counter& bytes;
    Pair(asio::io_context& io, Counter& b) : timer(io), bytes(b) {}
    void close();
    void pump(int from);
  };
  struct Allocation {
    std::string peer_id;
    std::shared_ptr<tcp::socket> control;
    std::unique_ptr<tcp::acceptor> acceptor;
    std::uint16_t port = 0;
    RateCap cap;
    std::size_t pairs = 0;
    bool closed = false;
    // Arrivals waiting for the peer to attach, by token.
    std::map<std::string, std::shared_ptr<tcp::socket>> waiting;
  };

  asio::io_context& io;
  RelayOptions options;
  std::unique_ptr<tcp::acceptor> acceptor;
  std::map<std::string, std::shared_ptr<Allocation>> by_peer;
  std::map<std::string, std::shared_ptr<Allocation>> by_token;
  std::vector<std::weak_ptr<Pair>> pairs;  // so that shutdown() ends forwarding too
  bool stopped = false;

  Impl(asio::io_context& i, RelayOptions o) : io(i), options(std::move(o)) {}

  void acceptControl();
  void onRequest(std::shared_ptr<tcp::socket> s,
                 std::shared_ptr<std::array<std::uint8_t, kRequestLen>> r);
  void registerPeer(std::shared_ptr<tcp::socket> s, const std::string& id);
  void acceptArrival(std::shared_ptr<Allocation> a);
  void release(const std::shared_ptr<Allocation>& a, const char* why);
  void updateGauges() { gauge("relay.peers").set(static_cast<double>(by_peer.size())); }
};

void RelayServer::Impl::Pair::close() {
  if (closed) return;
  closed = true;
  std::error_code ignored;
  timer.cancel();
  for (auto& s : sock) s->close(ignored);
  if (alloc) --alloc->pairs;
  gauge("relay.pairs").add(-1);
}

void RelayServer::Impl::Pair::pump(int from) {
  auto self = shared_from_this();
  sock[from]->async_read_some(
      asio::buffer(buf[from]), [self, from](const std::error_code& ec, std::size_t n) {
        if (self->closed) return;
        const int to = 1 - from;
        if (ec == asio::error::eof) {
          // Half-close travels through: the other side sees the end of this direction.
          self->eof[from] = true;
          std::error_code ignored;
          self->sock[to]->shutdown(tcp::socket::shutdown_send, ignored);
          if (self->eof[to]) self->close();
          return;
        }
        if (ec) return self->close();
        self->bytes.inc(n);
        auto write = [self, from, to, n] {
          const auto data = asio::buffer(self->buf[from].data(), n);
          asio::async_write(*self->sock[to], data, transferAllAtOnce,
                            [self, from](const std::error_code& wec, std::size_t) {
                              if (self->closed) return;
                              if (wec) return self->close();
                              self->pump(from);
                            });
        };
        Millis wait = self->alloc ? self->alloc->cap.take(n) : Millis(0);
        if (wait.count() == 0) return write();
        // Over the peer's rate cap: this direction pauses before writing (and so before
        // reading more); a pair closed meanwhile skips the write.
        auto t = std::make_shared<asio::steady_timer>(self->timer.get_executor(), wait);
        t->async_wait([t, self, write](const std::error_code& tec) {
          if (!tec && !self->closed) write();
        });
      });
}

void RelayServer::Impl::acceptControl() {
  acceptor->async_accept([self = shared_from_this()](const std::error_code& ec, tcp::socket sock) {
    if (self->stopped) return;
    if (ec) {
      if (ec == asio::error::operation_aborted) return;
      auto t = std::make_shared<asio::steady_timer>(self->io, Millis(50));
      t->async_wait([t, self](const std::error_code&) {
        if (!self->stopped) self->acceptControl();
      });
      return;
    }
    tuneSocket(sock, Millis(10000));
    auto s = std::make_shared<tcp::socket>(std::move(sock));
    auto r = std::make_shared<std::array<std::uint8_t, kRequestLen>>();
    // A request must arrive whole within the handshake timeout.
    auto t = std::make_shared<asio::steady_timer>(self->io, self->options.handshake_timeout);
    t->async_wait([s](const std::error_code& tec) {
      if (tec) return;
      refuse("handshake_timeout");
      std::error_code ignored;
      s->close(ignored);
    });
    asio::async_read(*s, asio::buffer(*r),
                     [self, s, r, t](const std::error_code& rec, std::size_t) {
                       t->cancel();
                       if (rec || self->stopped) {
                         std::error_code ignored;
                         s->close(ignored);
                         return;
                       }
                       self->onRequest(s, r);
                     });
    self->acceptControl();
  });
}

void RelayServer::Impl::onRequest(std::shared_ptr<tcp::socket> s,
                                  std::shared_ptr<std::array<std::uint8_t, kRequestLen>> r) {
  std::error_code ignored;
  if (std::memcmp(r->data(), kMagic, sizeof(kMagic)) != 0) {
    refuse("bad_magic");
    return s->close(ignored);
  }
  const char op = static_cast<char>((*r)[sizeof(kMagic)]);
  const std::string arg(reinterpret_cast<const char*>(r->data()) + sizeof(kMagic) + 1, kArgLen);
  if (!isHex32(arg)) {
    refuse("bad_argument");
    return s->close(ignored);
  }
  if (op == 'R') return registerPeer(std::move(s), arg);
  if (op != 'A') {
    refuse("bad_op");
    return s->close(ignored);
  }
  auto it = by_token.find(arg);
  if (it == by_token.end()) {
    refuse("unknown_token");
    return s->close(ignored);
  }
  auto alloc = it->second;
  by_token.erase(it);
  auto w = alloc->waiting.find(arg);
  if (w == alloc->waiting.end()) return s->close(ignored);
  auto outside = w->second;
  alloc->waiting.erase(w);
  auto pair =
      std::make_shared<Pair>(io, counter("relay.bytes", {{"peer", alloc->peer_id.substr(0, 8)}}));
  pair->sock = {outside, s};
  pair->buf[0].resize(kSpliceBuffer);
  pair->buf[1].resize(kSpliceBuffer);
  pair->alloc = alloc;
  gauge("relay.pairs").add(1);
  std::erase_if(pairs, [](const std::weak_ptr<Pair>& p) { return p.expired(); });
  pairs.push_back(pair);
  pair->pump(0);
  pair->pump(1);
}

void RelayServer::Impl::registerPeer(std::shared_ptr<tcp::socket> s, const std::string& id) {
  auto fail = [s](const char* reason, const std::string& msg) {
    refuse(reason);
    auto out = std::make_shared<std::vector<std::uint8_t>>();
    out->push_back('E');
    const std::uint16_t len = static_cast<std::uint16_t>(std::min<std::size_t>(msg.size(), 1024));
    out->push_back(static_cast<std::uint8_t>(len & 0xff));
    out->push_back(static_cast<std::uint8_t>(len >> 8));
    out->insert(out->end(), msg.begin(), msg.begin() + len);
    asio::async_write(*s, asio::buffer(*out), [s, out](const std::error_code&, std::size_t) {
      std::error_code ignored;
      s->close(ignored);
    });
  };
  if (by_peer.count(id)) {
    // First come, first served: another connection claiming a registered id is refused and the
    // registered peer is not disturbed. (Ids are not authenticated here; TLS does that.)
    return fail("id_taken", fmt::format("peer {} is registered already", id.substr(0, 8)));
  }
  if (by_peer.size() >= options.max_peers)
    return fail("full", fmt::format("the relay serves {} peers already", options.max_peers));
  setKeepalive(*s, kControlKeepalive);  // a registered peer that vanished frees its port
  auto acc = listenOn(io, HostPort{options.listen.host, 0});
  if (!acc) return fail("bind", acc.status().message());
  auto a = std::make_shared<Allocation>();
  a->peer_id = id;
  a->control = s;
  a->acceptor = std::move(acc.value());
  a->port = a->acceptor->local_endpoint().port();
  a->cap.rate = options.peer_rate_mbit * 1e6 / 8;
  by_peer[id] = a;
  updateGauges();
  std::error_code ec;
  const auto from = s->remote_endpoint(ec);
  LOG_INFO(kLogP2p, "relay: peer {} registered from {}, port {}", id.substr(0, 8),
           ec ? std::string("?") : endpointString(from), a->port);
  auto ok = std::make_shared<std::array<std::uint8_t, 3>>(std::array<std::uint8_t, 3>{
      'K', static_cast<std::uint8_t>(a->port & 0xff), static_cast<std::uint8_t>(a->port >> 8)});
  asio::async_write(*s, asio::buffer(*ok), [ok](const std::error_code&, std::size_t) {});
  // The peer never sends on its control connection: a read completing (data, EOF or error)
  // ends the registration.
  auto sink = std::make_shared<std::array<std::uint8_t, 1>>();
  s->async_read_some(asio::buffer(*sink),
                     [self = shared_from_this(), a, sink](const std::error_code&, std::size_t) {
                       self->release(a, "control connection ended");
                     });
  acceptArrival(a);
}

void RelayServer::Impl::acceptArrival(std::shared_ptr<Allocation> a) {
  a->acceptor->async_accept(
      [self = shared_from_this(), a](const std::error_code& ec, tcp::socket sock) {
        if (a->closed || self->stopped) return;
        if (ec) {
          if (ec == asio::error::operation_aborted) return;
          return self->release(a, "accept failed");
        }
        self->acceptArrival(a);
        std::error_code ignored;
        if (a->pairs >= self->options.max_pairs_per_peer) {
          refuse("pairs_per_peer");
          sock.close(ignored);
          return;
        }
        ++a->pairs;  // counted from arrival, so waiting ones count against the cap too
        tuneSocket(sock, Millis(10000));
        auto outside = std::make_shared<tcp::socket>(std::move(sock));
        const std::string token = crypto::randomHex(16);
        a->waiting[token] = outside;
        self->by_token[token] = a;
        auto msg = std::make_shared<std::string>("C" + token);
        asio::async_write(*a->control, asio::buffer(*msg),
                          [msg](const std::error_code&, std::size_t) {});
        auto t = std::make_shared<asio::steady_timer>(self->io, self->options.handshake_timeout);
        t->async_wait([t, self, a, token](const std::error_code&) {
          auto w = a->waiting.find(token);
          if (w == a->waiting.end()) return;  // attached (or released)
          refuse("attach_timeout");
          std::error_code ignored2;
          w->second->close(ignored2);
          a->waiting.erase(w);
          self->by_token.erase(token);
          --a->pairs;
        });
      });
}

void RelayServer::Impl::release(const std::shared_ptr<Allocation>& a, const char* why) {
  if (a->closed) return;
  a->closed = true;
  std::error_code ignored;
  a->acceptor->close(ignored);
  a->control->close(ignored);
  for (auto& [token, sock] : a->waiting) {
    sock->close(ignored);
    by_token.erase(token);
  }
  a->waiting.clear();
  auto it = by_peer.find(a->peer_id);
  if (it != by_peer.end() && it->second == a) by_peer.erase(it);
  updateGauges();
  LOG_INFO(kLogP2p, "relay: peer {} released its port {} ({})", a->peer_id.substr(0, 8), a->port,
           why);
}

Result<std::unique_ptr<RelayServer>> RelayServer::start(NetworkThread& net, RelayOptions options) {
  auto impl = std::make_shared<Impl>(net.context(), std::move(options));
  auto acc = listenOn(impl->io, impl->options.listen);
  if (!acc) return acc.status().withContext("relay");
  impl->acceptor = std::move(acc.value());
  describeMetric("relay.peers", "peers registered at this relay");
  describeMetric("relay.pairs", "connections this relay forwards now");
  describeMetric("relay.bytes", "bytes forwarded for a peer, both directions");
  describeMetric("relay.refused", "requests and connections the relay refused, by reason");
  impl->acceptControl();
  return std::unique_ptr<RelayServer>(new RelayServer(std::move(impl)));
}

RelayServer::RelayServer(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}
RelayServer::~RelayServer() {
  shutdown();
}
std::uint16_t RelayServer::port() const {
  return impl_->acceptor->local_endpoint().port();
}
void RelayServer::shutdown() {
  if (impl_->stopped) return;
  impl_->stopped = true;
  std::error_code ignored;
  impl_->acceptor->close(ignored);
  auto peers = impl_->by_peer;
  for (auto& [id, a] : peers) impl_->release(a, "relay shutting down");
  // Like a relay process that dies: every forwarded connection ends, so links through it fail.
  for (auto& w : impl_->pairs) {
    if (auto p = w.lock()) p->close();
  }
  impl_->pairs.clear();
}

// ---- client -----------------------------------------------------------------------------------

struct RelayClient::Impl : std::enable_shared_from_this<RelayClient::Impl> {
  asio::io_context& io;
  std::vector<tcp::endpoint> relay;
  std::string host;
  std::string peer_id;
  OnStream on_stream;
  std::function<void(const Status&)> on_lost;
  std::shared_ptr<tcp::socket> control;
  std::array<std::uint8_t, 1 + kArgLen> msg{};
  bool closed = false;
  bool registered = false;

  explicit Impl(asio::io_context& i) : io(i) {}

  void lost(const Status& why) {
    if (closed) return;
    closed = true;
    std::error_code ignored;
    if (control) control->close(ignored);
    if (registered && on_lost) on_lost(why);
  }
  void readNext() {
    asio::async_read(
        *control, asio::buffer(msg),
        [self = shared_from_this()](const std::error_code& ec, std::size_t) {
          if (self->closed) return;
          if (ec || self->msg[0] != 'C')
            return self->lost(
                Status(StatusCode::kPeerLost,
                       ec ? "relay control connection: " + ec.message() : "relay sent garbage"));
          self->attach(std::string(reinterpret_cast<const char*>(self->msg.data()) + 1, kArgLen));
          self->readNext();
        });
  }
  void attach(const std::string& token) {
    asyncConnect(
        io, relay, Deadline::after(Millis(5000)),
        [self = shared_from_this(), token](Result<std::shared_ptr<tcp::socket>> s) {
          if (self->closed || !s) return;  // the arrival times out at the relay
          auto sock = s.value();
          tuneSocket(*sock, Millis(10000));
          setNotSentLowat(*sock, 128u << 10);
          auto req = std::make_shared<std::array<std::uint8_t, kRequestLen>>(request('A', token));
          asio::async_write(
              *sock, asio::buffer(*req), [self, sock, req](const std::error_code& ec, std::size_t) {
                if (ec || self->closed) return;
                // The dialer's bytes follow unread by the relay: our end of its
                // TLS session (plaintext under --insecure), as on a direct accept, or a
                // reverse dial we asked for through the relay's address (p2p/traversal.h).
                traversal::routeAccepted(
                    std::move(*sock), Millis(5000), [self](tcp::socket arrived) {
                      if (self->closed) return;
                      self->on_stream(
                          tls::wrap(std::move(arrived), {tls::Role::kServer, "", true}));
                    });
              });
        });
  }
};

std::shared_ptr<RelayClient> RelayClient::start(NetworkThread& net, const HostPort& relay,
                                                const std::string& peer_id, OnStream on_stream,
                                                std::function<void(const Status&)> on_lost,
                                                Deadline deadline,
                                                std::function<void(Result<std::string>)> done) {
  auto impl = std::make_shared<Impl>(net.context());
  auto client = std::shared_ptr<RelayClient>(new RelayClient(impl));
  auto eps = resolve(relay);
  if (!eps) {
    done(eps.status().withContext("relay"));
    return client;
  }
  impl->relay = eps.value();
  impl->host = relay.host;
  impl->peer_id = peer_id;
  impl->on_stream = std::move(on_stream);
  impl->on_lost = std::move(on_lost);
  auto finish = std::make_shared<std::function<void(Result<std::string>)>>(std::move(done));
  auto timer = std::make_shared<asio::steady_timer>(impl->io, deadline.at());
  timer->async_wait([impl, finish, timer](const std::error_code& ec) {
    if (ec || !*finish) return;
    impl->lost(Status(StatusCode::kTimeout, "relay did not answer the registration in time"));
    auto f = std::move(*finish);
    *finish = nullptr;
    f(Status(StatusCode::kTimeout, "the relay did not answer the registration in time"));
  });
  auto complete = [finish, timer](Result<std::string> r) {
    if (!*finish) return;
    timer->cancel();
    auto f = std::move(*finish);
    *finish = nullptr;
    f(std::move(r));
  };
  asyncConnect(
      impl->io, impl->relay, deadline,
      [impl, complete, relay](Result<std::shared_ptr<tcp::socket>> s) {
        if (impl->closed) return;
        if (!s) return complete(s.status().withContext("relay " + relay.toString()));
        impl->control = s.value();
        tuneSocket(*impl->control, Millis(10000));
        // Idle for as long as nobody dials us: keepalives hold our router's mapping open and
        // notice a relay that vanished without a word.
        setKeepalive(*impl->control, kControlKeepalive);
        auto req =
            std::make_shared<std::array<std::uint8_t, kRequestLen>>(request('R', impl->peer_id));
        asio::async_write(*impl->control, asio::buffer(*req),
                          [req](const std::error_code&, std::size_t) {});
        auto head = std::make_shared<std::array<std::uint8_t, 3>>();
        asio::async_read(
            *impl->control, asio::buffer(*head),
            [impl, complete, head, relay](const std::error_code& ec, std::size_t) {
              if (impl->closed) return;
              if (ec)
                return complete(Status(StatusCode::kUnavailable,
                                       "relay " + relay.toString() + ": " + ec.message()));
              const std::uint16_t v = static_cast<std::uint16_t>((*head)[1] | ((*head)[2] << 8));
              if ((*head)[0] == 'K') {
                impl->registered = true;
                impl->readNext();
                return complete(HostPort{impl->host, v}.toString());
              }
              if ((*head)[0] != 'E')
                return complete(
                    Status(StatusCode::kProtocolError, relay.toString() + " is not a loco relay"));
              auto text = std::make_shared<std::string>(v, '\0');
              asio::async_read(
                  *impl->control, asio::buffer(*text),
                  [impl, complete, text, relay](const std::error_code&, std::size_t) {
                    impl->lost(Status(StatusCode::kAborted, "refused"));
                    complete(Status(text->find("registered already") != std::string::npos
                                        ? StatusCode::kAlreadyExists
                                        : StatusCode::kResourceExhausted,
                                    "relay " + relay.toString() + " refused: " + *text));
                  });
            });
      });
  return client;
}

RelayClient::RelayClient(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}
RelayClient::~RelayClient() {
  close();
}
void RelayClient::close() {
  impl_->on_lost = nullptr;
  impl_->lost(Status(StatusCode::kAborted, "closed"));
}

}  // namespace loco::p2p
