#include "p2p/doctor_probe.h"

#include <fmt/format.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <array>
#include <cstring>
#include <optional>
#include <random>

#include "crypto/ca.h"
#include "p2p/connection.h"
#include "p2p/net.h"
#include "p2p/tls_stream.h"

namespace loco::p2p {
namespace {

// The interface that holds `ip`, and its MTU.
std::pair<std::string, int> interfaceOf(const asio::ip::address& ip) {
  ifaddrs* list = nullptr;
  if (::getifaddrs(&list) != 0) return {"", 0};
  std::string name;
  for (ifaddrs* a = list; a != nullptr; a = a->ifa_next) {
    if (a->ifa_addr == nullptr) continue;
    if (a->ifa_addr->sa_family == AF_INET && ip.is_v4()) {
      auto* sin = reinterpret_cast<sockaddr_in*>(a->ifa_addr);
      if (ntohl(sin->sin_addr.s_addr) == ip.to_v4().to_uint()) name = a->ifa_name;
    } else if (a->ifa_addr->sa_family == AF_INET6 && ip.is_v6()) {
      auto* sin6 = reinterpret_cast<sockaddr_in6*>(a->ifa_addr);
      if (std::memcmp(sin6->sin6_addr.s6_addr, ip.to_v6().to_bytes().data(), 16) == 0)
        name = a->ifa_name;
    }
    if (!name.empty()) break;
  }
  ::freeifaddrs(list);
  if (name.empty()) return {"", 0};
  int mtu = 0;
  int fd = ::socket(AF_INET, SOCK_DGRAM, 0);
  if (fd >= 0) {
    ifreq req{};
    std::strncpy(req.ifr_name, name.c_str(), IFNAMSIZ - 1);
    if (::ioctl(fd, SIOCGIFMTU, &req) == 0) mtu = req.ifr_mtu;
    ::close(fd);
  }
  return {name, mtu};
}

int intOption(int fd, int level, int name) {
  int v = 0;
  socklen_t len = sizeof(v);
  return ::getsockopt(fd, level, name, &v, &len) == 0 ? v : 0;
}

}  // namespace

Result<DoctorProbe> probeCoordinator(const HostPort& coordinator, const HostPort& listen,
                                     const std::string& advertise, Deadline deadline,
                                     const std::string& pinned_ca) {
  auto eps = resolve(coordinator);
  if (!eps) return eps.status().withContext("--coordinator");
  std::optional<HostPort> adv;
  if (!advertise.empty()) {
    auto a = parseHostPort(advertise);
    if (!a) return a.status().withContext("--advertise");
    adv = *a;
  }
  DoctorProbe out;
  asio::io_context io;

  // Our own listener on the link port, to see the coordinator's dial arrive.
  std::unique_ptr<asio::ip::tcp::acceptor> acceptor;
  if (auto a = listenOn(io, listen); a) {
    acceptor = std::move(a.value());
    out.listening = true;
    out.listen_port = acceptor->local_endpoint().port();
  } else {
    out.listen_error = a.status().message();
    out.listen_port = listen.port;
  }
  const std::uint64_t token = std::random_device{}() * 0x9e3779b97f4a7c15ull ^ unixMillis();
  std::vector<std::shared_ptr<Connection>> accepted;
  std::vector<std::shared_ptr<asio::ip::tcp::socket>> raw;
  std::array<std::uint8_t, 2> first{};
  std::function<void()> accept_next = [&] {
    acceptor->async_accept([&](const std::error_code& ec, asio::ip::tcp::socket s) {
      if (ec) return;
      if (!pinned_ca.empty()) {
        // No certificate to answer with: a TLS record (0x16 0x03) is the coordinator's dial.
        auto sock = std::make_shared<asio::ip::tcp::socket>(std::move(s));
        raw.push_back(sock);
        asio::async_read(*sock, asio::buffer(first),
                         [&out, &first](const std::error_code& e, std::size_t) {
                           if (!e && first[0] == 0x16 && first[1] == 0x03)
                             out.probe_received = true;
                         });
        return accept_next();
      }
      Connection::Options copts;
      copts.name = "dial-back";
      copts.first_frame_timeout = Millis(5000);
      auto c = Connection::create(io, tls::wrap(std::move(s), {tls::Role::kServer}), copts);
      c->setFrameHandler([&out, token](const FrameHeader& h, std::vector<std::uint8_t> payload) {
        if (h.type != MsgType::kDialBackProbe) return;
        auto m = decodeDialBack(payload);
        if (m && m->token == token) out.probe_received = true;
      });
      c->start();
      accepted.push_back(std::move(c));
      accept_next();
    });
  };
  if (acceptor) accept_next();

  std::optional<Status> failure;
  bool answered = false;
  std::shared_ptr<Connection> conn;
  TimePoint sent_at{};
  std::int64_t sent_unix_ms = 0;
  const TimePoint start = Clock::now();
  asyncConnect(io, eps.value(), deadline, [&](Result<std::shared_ptr<asio::ip::tcp::socket>> sock) {
    if (!sock) {
      failure = sock.status();
      return;
    }
    out.connect_s = toSeconds(Clock::now() - start);
    auto& s = *sock.value();
    std::error_code ec;
    const auto local = s.local_endpoint(ec);
    if (!ec) {
      out.local_ip = local.address().to_string();
      out.local_port = local.port();
      std::tie(out.interface, out.interface_mtu) = interfaceOf(local.address());
    }
    out.path_mtu = intOption(s.native_handle(), local.address().is_v6() ? IPPROTO_IPV6 : IPPROTO_IP,
                             local.address().is_v6() ? IPV6_MTU : IP_MTU);
    tuneSocket(s, Millis(0));
    out.advertised = adv ? HostPort{adv->host, adv->port}.toString()
                         : HostPort{out.local_ip, out.listen_port}.toString();
    if (adv) {
      // The coordinator compares addresses, not names.
      auto resolved = resolve(*adv);
      if (resolved) out.advertised = endpointString(resolved->front());
    }
    Connection::Options copts;
    copts.name = "coordinator";
    conn = Connection::create(
        io,
        pinned_ca.empty() ? tls::wrap(std::move(s), {tls::Role::kClient, crypto::kCoordinatorId})
                          : tls::wrapPinned(std::move(s), pinned_ca),
        copts);
    conn->setFrameHandler([&](const FrameHeader& h, std::vector<std::uint8_t> payload) {
      if (h.type != MsgType::kDialBackResult) {
        failure = Status(StatusCode::kProtocolError,
                         fmt::format("the coordinator answered with {}", msgTypeName(h.type)));
        return;
      }
      auto r = decodeDialBackResult(payload);
      if (!r) {
        failure = r.status();
        return;
      }
      out.rtt_s = toSeconds(Clock::now() - sent_at);
      const double mid_ms = static_cast<double>(sent_unix_ms) + out.rtt_s * 500.0;
      out.clock_offset_s = (static_cast<double>(r->coordinator_unix_ms) - mid_ms) / 1000.0;
      out.result = std::move(r.value());
      answered = true;
    });
    conn->setCloseHandler([&](const Status& why) {
      if (!answered && !failure) {
        failure = why.isOk() || why.code() == StatusCode::kPeerLost
                      ? Status(StatusCode::kProtocolError,
                               "the coordinator closed the connection without answering (a loco "
                               "coordinator older than `loco doctor`, or not a loco coordinator)")
                      : why;
      }
    });
    conn->start();
    sent_at = Clock::now();
    sent_unix_ms = unixMillis();
    conn->send(MsgType::kDialBack, encodeDialBack(DialBackMsg{out.advertised, token}));
  });

  // Until the answer (and, when the coordinator connected, our probe) or the deadline.
  std::optional<TimePoint> grace_until;
  while (!failure && !deadline.expired()) {
    if (answered) {
      const bool expect_probe = out.listening && out.result.code == StatusCode::kOk;
      if (!expect_probe || out.probe_received) break;
      if (!grace_until) grace_until = Clock::now() + Millis(1000);  // the probe is on its way
      if (Clock::now() >= *grace_until) break;
    }
    io.run_for(Millis(20));
    if (io.stopped()) io.restart();
  }
  if (conn) {
    conn->setCloseHandler(nullptr);
    conn->close(Status());
  }
  for (auto& c : accepted) {
    c->setCloseHandler(nullptr);
    c->close(Status());
  }
  std::error_code ignored;
  for (auto& r : raw) r->close(ignored);
  if (acceptor) acceptor->close(ignored);
  io.poll();
  if (failure) return failure->withContext(fmt::format("coordinator {}", coordinator.toString()));
  if (!answered) {
    return Status(StatusCode::kTimeout, fmt::format("coordinator {}: no answer before the deadline",
                                                    coordinator.toString()));
  }
  return out;
}

}  // namespace loco::p2p
