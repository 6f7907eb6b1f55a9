#include "p2p/net.h"

#include <netinet/in.h>
#include <netinet/tcp.h>

#include <fmt/format.h>

#include <limits>

#include "p2p/base/log.h"

namespace loco::p2p {

void tuneSocket(asio::ip::tcp::socket& socket, Millis user_timeout) {
  std::error_code ec;
  socket.set_option(asio::ip::tcp::no_delay(true), ec);
  setTcpUserTimeout(socket, user_timeout);
}

void setNotSentLowat(asio::ip::tcp::socket& socket, std::size_t bytes) {
  const int lowat = static_cast<int>(bytes);
  ::setsockopt(socket.native_handle(), IPPROTO_TCP, TCP_NOTSENT_LOWAT, &lowat, sizeof(lowat));
}

std::size_t transferAllAtOnce(const std::error_code& ec, std::size_t /*bytes_transferred*/) {
  return ec ? 0 : std::numeric_limits<std::size_t>::max();
}

void setKeepalive(asio::ip::tcp::socket& socket, Millis idle) {
  const int on = 1;
  const int idle_s = static_cast<int>(std::max<std::int64_t>(1, idle.count() / 1000));
  const int interval_s = std::max(1, idle_s / 4), probes = 3;
  ::setsockopt(socket.native_handle(), SOL_SOCKET, SO_KEEPALIVE, &on, sizeof(on));
  ::setsockopt(socket.native_handle(), IPPROTO_TCP, TCP_KEEPIDLE, &idle_s, sizeof(idle_s));
  ::setsockopt(socket.native_handle(), IPPROTO_TCP, TCP_KEEPINTVL, &interval_s, sizeof(interval_s));
  ::setsockopt(socket.native_handle(), IPPROTO_TCP, TCP_KEEPCNT, &probes, sizeof(probes));
}

void setTcpUserTimeout(asio::ip::tcp::socket& socket, Millis user_timeout) {
  unsigned int ms = static_cast<unsigned int>(std::max<std::int64_t>(0, user_timeout.count()));
  ::setsockopt(socket.native_handle(), IPPROTO_TCP, TCP_USER_TIMEOUT, &ms, sizeof(ms));
}

Result<std::vector<asio::ip::tcp::endpoint>> resolve(const HostPort& hp) {
  asio::io_context io;
  asio::ip::tcp::resolver resolver(io);
  std::error_code ec;
  auto results = resolver.resolve(hp.host, std::to_string(hp.port), ec);
  if (ec || results.empty()) {
    return Status(StatusCode::kInvalidArgument, fmt::format("cannot resolve host '{}': {}", hp.host,
                                                            ec ? ec.message() : "no addresses"));
  }
  std::vector<asio::ip::tcp::endpoint> out;
  for (const auto& r : results) out.push_back(r.endpoint());
  return out;
}

namespace {
struct ConnectAttempt : std::enable_shared_from_this<ConnectAttempt> {
  ConnectAttempt(asio::io_context& io, std::vector<asio::ip::tcp::endpoint> eps, Deadline dl,
                 std::function<void(Result<std::shared_ptr<asio::ip::tcp::socket>>)> cb)
      : socket(std::make_shared<asio::ip::tcp::socket>(io)),
        timer(io),
        endpoints(std::move(eps)),
        deadline(dl),
        done(std::move(cb)) {}

  void start() {
    auto self = shared_from_this();
    timer.expires_at(deadline.at());
    timer.async_wait([self](const std::error_code& ec) {
      if (ec) return;  // cancelled: the connect finished first
      self->timed_out = true;
      std::error_code ignored;
      self->socket->close(ignored);
    });
    next();
  }

  void next() {
    if (index >= endpoints.size()) return finish();
    auto self = shared_from_this();
    std::error_code ignored;
    socket->close(ignored);
    socket->async_connect(endpoints[index], [self](const std::error_code& ec) {
      if (!ec) {
        self->timer.cancel();
        self->done(self->socket);
        return;
      }
      self->last_error = ec;
      ++self->index;
      if (self->timed_out) return self->finish();
      self->next();
    });
  }

  void finish() {
    timer.cancel();
    std::string target =
        endpointString(endpoints.empty() ? asio::ip::tcp::endpoint() : endpoints.front());
    if (timed_out) {
      done(Status(StatusCode::kTimeout, fmt::format("connect to {} timed out", target)));
    } else {
      done(Status(StatusCode::kUnavailable,
                  fmt::format("connect to {} failed: {}", target, last_error.message())));
    }
  }

  std::shared_ptr<asio::ip::tcp::socket> socket;
  asio::steady_timer timer;
  std::vector<asio::ip::tcp::endpoint> endpoints;
  Deadline deadline;
  std::function<void(Result<std::shared_ptr<asio::ip::tcp::socket>>)> done;
  std::size_t index = 0;
  bool timed_out = false;
  std::error_code last_error;
};
}  // namespace

void asyncConnect(asio::io_context& io, std::vector<asio::ip::tcp::endpoint> endpoints,
                  Deadline deadline,
                  std::function<void(Result<std::shared_ptr<asio::ip::tcp::socket>>)> done) {
  std::make_shared<ConnectAttempt>(io, std::move(endpoints), deadline, std::move(done))->start();
}

Result<std::unique_ptr<asio::ip::tcp::acceptor>> listenOn(asio::io_context& io,
                                                          const HostPort& hp) {
  auto eps = resolve(hp);
  if (!eps) return eps.status();
  auto acceptor = std::make_unique<asio::ip::tcp::acceptor>(io);
  const auto& ep = eps->front();
  std::error_code ec;
  acceptor->open(ep.protocol(), ec);
  if (!ec) acceptor->set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) acceptor->bind(ep, ec);
  if (!ec) acceptor->listen(asio::socket_base::max_listen_connections, ec);
  if (ec) {
    return Status(StatusCode::kUnavailable,
                  fmt::format("cannot listen on {}: {}", hp.toString(), ec.message()));
  }
  return acceptor;
}

std::string endpointString(const asio::ip::tcp::endpoint& ep) {
  HostPort hp{ep.address().to_string(), ep.port()};
  return hp.toString();
}

}  // namespace loco::p2p
