// The coordinator's half of `loco doctor`'s reachability check (messages.h DialBackMsg): it
// connects to the requester's advertised address and sends the request's token there, so the
// doctor learns whether other peers could reach its link listener from outside.
#include <fmt/format.h>

#include "p2p/base/log.h"
#include "p2p/base/metrics.h"
#include "p2p/coordinator.h"
#include "p2p/tls_stream.h"

namespace loco::p2p {
namespace {
constexpr std::size_t kMaxDialBacks = 8;  // in flight at once; more are refused
constexpr Millis kDialTimeout{3000};
}  // namespace

void Coordinator::onDialBack(const std::shared_ptr<Connection>& conn, ByteSpan payload) {
  auto request = decodeDialBack(payload);
  if (!request) {
    counter("coord.bad_handshake").inc();
    return conn->close(request.status().withContext(conn->remoteAddress()));
  }
  counter("coord.dial_backs").inc();
  auto answer = [this, conn](DialBackResultMsg r) {
    r.coordinator_unix_ms = unixMillis();
    conn->send(MsgType::kDialBackResult, encodeDialBackResult(r));
    conn->closeAfterFlush(Status());
    dropHandshaking(conn.get());
  };
  DialBackResultMsg r;
  r.seen_from = conn->remoteAddress();
  auto target = parseHostPort(request->addr);
  auto seen = parseHostPort(r.seen_from);
  if (!target || !seen) {
    r.code = StatusCode::kInvalidArgument;
    r.detail = fmt::format("cannot dial back '{}': not HOST:PORT", request->addr);
    return answer(std::move(r));
  }
  std::error_code ec;
  auto target_ip = asio::ip::make_address(target->host, ec);
  auto seen_ip = asio::ip::make_address(seen->host);
  if (ec || target_ip != seen_ip) {
    // Dialling anything else would let anyone use the coordinator to probe third parties.
    r.code = StatusCode::kInvalidArgument;
    r.detail = fmt::format(
        "the coordinator dials back only the address it sees this machine at ({}), not {}",
        seen->host, target->host);
    return answer(std::move(r));
  }
  if (dial_backs_in_flight_ >= kMaxDialBacks) {
    r.code = StatusCode::kResourceExhausted;
    r.detail = "too many reachability checks at once; try again in a few seconds";
    return answer(std::move(r));
  }
  ++dial_backs_in_flight_;
  asio::ip::tcp::endpoint ep(target_ip, target->port);
  asyncConnect(io_, {ep}, Deadline::after(kDialTimeout),
               [this, alive = lifetime_.watch(), r = std::move(r), answer, token = request->token,
                ep](Result<std::shared_ptr<asio::ip::tcp::socket>> sock) mutable {
                 if (alive.expired()) return;
                 --dial_backs_in_flight_;
                 if (!sock) {
                   r.code = sock.status().code();
                   r.detail = fmt::format("connecting to {}: {}", endpointString(ep),
                                          sock.status().message());
                   LOG_INFO(kLogCoord, "dial-back to {} failed: {}", endpointString(ep),
                            sock.status().message());
                   return answer(std::move(r));
                 }
                 Connection::Options copts;
                 copts.name = "dial-back " + endpointString(ep);
                 auto probe = Connection::create(
                     io_, tls::wrap(std::move(*sock.value()), {tls::Role::kClient}), copts);
                 probe->start();
                 probe->send(MsgType::kDialBackProbe, encodeDialBack(DialBackMsg{"", token}));
                 probe->closeAfterFlush(Status());
                 LOG_INFO(kLogCoord, "dial-back to {} connected", endpointString(ep));
                 answer(std::move(r));
               });
}

}  // namespace loco::p2p
