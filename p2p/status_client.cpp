#include "p2p/status_client.h"

#include <fmt/format.h>

#include "crypto/ca.h"
#include "p2p/connection.h"
#include "p2p/net.h"
#include "p2p/tls_stream.h"

namespace loco::p2p {

Result<GroupView> fetchStatus(const HostPort& coordinator, Deadline deadline) {
  auto eps = resolve(coordinator);
  if (!eps) return eps.status().withContext("--coordinator");
  asio::io_context io;
  std::optional<Result<GroupView>> result;
  std::shared_ptr<Connection> conn;
  asyncConnect(io, eps.value(), deadline, [&](auto sock) {
    if (!sock) {
      result = sock.status();
      return;
    }
    tuneSocket(*sock.value(), Millis(0));
    Connection::Options copts;
    copts.name = "coordinator";
    conn = Connection::create(
        io, tls::wrap(std::move(*sock.value()), {tls::Role::kClient, crypto::kCoordinatorId}),
        copts);
    conn->setFrameHandler([&](const FrameHeader& h, std::vector<std::uint8_t> payload) {
      if (h.type == MsgType::kStatusReply) {
        auto v = decodeGroupView(payload);
        result = v ? Result<GroupView>(std::move(v.value())) : Result<GroupView>(v.status());
      } else if (h.type == MsgType::kRefused) {
        auto r = decodeRefused(payload);
        result = Status(r ? r->code : StatusCode::kProtocolError,
                        r ? "refused: " + r->reason : r.status().message());
      } else {
        result = Status(StatusCode::kProtocolError,
                        fmt::format("unexpected {} reply", msgTypeName(h.type)));
      }
      conn->close(Status());
    });
    conn->setCloseHandler([&](const Status& why) {
      if (!result)
        result = why.isOk() ? Status(StatusCode::kPeerLost, "closed without a reply") : why;
    });
    conn->start();
    conn->send(MsgType::kStatusRequest);
  });
  while (!result && !deadline.expired()) {
    io.run_for(std::min<Clock::duration>(deadline.remaining(), Millis(50)));
    if (io.stopped()) io.restart();
  }
  if (conn) {
    conn->setCloseHandler(nullptr);
    conn->close(Status());
  }
  if (!result)
    return Status(StatusCode::kTimeout,
                  fmt::format("no status reply from {}", coordinator.toString()));
  if (!result->isOk())
    return result->status().withContext(fmt::format("status from {}", coordinator.toString()));
  return std::move(*result);
}

}  // namespace loco::p2p

namespace loco::p2p {

namespace {

// One Enroll round trip over the stream `wrap` makes of the connected socket.
Result<EnrollReplyMsg> enrollOver(
    const HostPort& coordinator, const EnrollMsg& request, Deadline deadline,
    const std::function<std::unique_ptr<Stream>(asio::ip::tcp::socket)>& wrap, const char* what) {
  auto eps = resolve(coordinator);
  if (!eps) return eps.status().withContext(what);
  asio::io_context io;
  std::optional<Result<EnrollReplyMsg>> result;
  std::shared_ptr<Connection> conn;
  asyncConnect(io, eps.value(), deadline, [&](auto sock) {
    if (!sock) {
      result = sock.status();
      return;
    }
    tuneSocket(*sock.value(), Millis(0));
    Connection::Options copts;
    copts.name = "coordinator (enrolling)";
    copts.first_frame_timeout = std::max(Millis(1), deadline.remaining());
    conn = Connection::create(io, wrap(std::move(*sock.value())), copts);
    conn->setFrameHandler([&](const FrameHeader& h, std::vector<std::uint8_t> payload) {
      if (h.type == MsgType::kEnrollReply) {
        auto r = decodeEnrollReply(payload);
        result =
            r ? Result<EnrollReplyMsg>(std::move(r.value())) : Result<EnrollReplyMsg>(r.status());
      } else if (h.type == MsgType::kRefused) {
        auto r = decodeRefused(payload);
        result = Status(
            r ? r->code : StatusCode::kProtocolError,
            r ? "the coordinator refused to enroll this peer: " + r->reason : r.status().message());
      } else {
        result = Status(StatusCode::kProtocolError,
                        fmt::format("unexpected {} reply", msgTypeName(h.type)));
      }
      conn->close(Status());
    });
    conn->setCloseHandler([&](const Status& why) {
      if (!result)
        result = why.isOk() ? Status(StatusCode::kPeerLost, "closed without a reply") : why;
    });
    conn->start();
    // Queued behind the handshake: written only once the pinned CA checked out.
    conn->send(MsgType::kEnroll, encodeEnroll(request));
  });
  while (!result && !deadline.expired()) {
    io.run_for(std::min<Clock::duration>(deadline.remaining(), Millis(50)));
    if (io.stopped()) io.restart();
  }
  if (conn) {
    conn->setCloseHandler(nullptr);
    conn->close(Status());
  }
  if (!result)
    return Status(StatusCode::kTimeout,
                  fmt::format("no enrollment reply from {}", coordinator.toString()));
  if (!result->isOk())
    return result->status().withContext(fmt::format("{} with {}", what, coordinator.toString()));
  return std::move(*result);
}

}  // namespace

Result<EnrollReplyMsg> enrollWith(const HostPort& coordinator, const std::string& ca_fingerprint,
                                  const EnrollMsg& request, Deadline deadline) {
  return enrollOver(
      coordinator, request, deadline,
      [&](asio::ip::tcp::socket s) { return tls::wrapPinned(std::move(s), ca_fingerprint); },
      "enrolling");
}

Result<EnrollReplyMsg> renewWith(const HostPort& coordinator, const EnrollMsg& request,
                                 Deadline deadline) {
  return enrollOver(
      coordinator, request, deadline,
      [](asio::ip::tcp::socket s) {
        return tls::wrap(std::move(s), {tls::Role::kClient, crypto::kCoordinatorId});
      },
      "renewing the certificate");
}

}  // namespace loco::p2p
