#include "p2p/connect_strategy.h"

#include <fmt/format.h>

#include <future>

#include "p2p/base/log.h"
#include "p2p/base/metrics.h"
#include "p2p/doctor_probe.h"
#include "p2p/link.h"
#include "p2p/relay.h"
#include "p2p/stream.h"

namespace loco::p2p {

const char* reachPathName(ReachPath p) {
  return p == ReachPath::kRelayed ? "relayed" : "direct";
}

Result<ReachDecision> chooseReachPath(NetworkThread& net, LinkListener& listener,
                                      const HostPort& coordinator, const HostPort& listen,
                                      const std::string& advertise, const std::string& relay,
                                      const std::string& peer_id, Deadline deadline) {
  ReachDecision d;
  d.advertise = advertise;
  if (relay.empty()) {
    d.why = "no relay configured";
    return d;
  }
  auto relay_hp = parseHostPort(relay);
  if (!relay_hp) return relay_hp.status().withContext("--relay");
  // Our listener is up already: the coordinator's dial reaches it (the probe's own listen
  // attempt fails on the taken port, which is fine: only the coordinator's verdict counts).
  auto probe = probeCoordinator(coordinator, HostPort{listen.host, listener.port()}, advertise,
                                Deadline::after(std::min(Millis(6000), deadline.remaining())));
  if (probe && probe->result.code == StatusCode::kOk) {
    d.why = fmt::format("the coordinator reached {} directly", advertise);
    counter("p2p.reach_path", {{"path", "direct"}}).inc();
    return d;
  }
  const std::string why_not =
      probe ? (probe->result.detail.empty() ? std::string(statusCodeName(probe->result.code))
                                            : probe->result.detail)
            : probe.status().message();
  auto promise = std::make_shared<std::promise<Result<std::string>>>();
  auto future = promise->get_future();
  std::shared_ptr<RelayClient> client;
  std::promise<void> assigned;  // `client` is written on the network thread
  net.post([&, promise] {
    client = RelayClient::start(
        net, *relay_hp, peer_id,
        [&listener](std::unique_ptr<Stream> s) { listener.acceptStream(std::move(s)); },
        [](const Status& why) {
          // Links through the relay fail with it; the advertised address is dead until this
          // peer joins again.
          LOG_ERROR(kLogP2p, "lost the relay: {}; other peers cannot reach this one now",
                    why.message());
          counter("p2p.relay_lost").inc();
        },
        deadline, [promise](Result<std::string> r) { promise->set_value(std::move(r)); });
    assigned.set_value();
  });
  assigned.get_future().wait();
  Result<std::string> registered = future.get();  // the client's deadline bounds it
  if (!registered) {
    net.post([client] { client->close(); });
    return registered.status().withContext(
        fmt::format("not reachable at {} ({}), and the relay failed", advertise, why_not));
  }
  d.path = ReachPath::kRelayed;
  d.advertise = registered.value();
  d.relay = std::move(client);
  d.why = fmt::format("not reachable at {} ({}); relayed through {} as {}", advertise, why_not,
                      relay, d.advertise);
  counter("p2p.reach_path", {{"path", "relayed"}}).inc();
  return d;
}

}  // namespace loco::p2p
