#include "p2p/connect_strategy.h"

#include <fmt/format.h>

#include <future>
#include <optional>

#include "p2p/base/log.h"
#include "p2p/base/metrics.h"
#include "p2p/doctor_probe.h"
#include "p2p/link.h"
#include "p2p/relay.h"
#include "p2p/stream.h"

namespace loco::p2p {

Result<ReachDecision> chooseReachPath(NetworkThread& net, LinkListener& listener,
                                      const HostPort& coordinator, const HostPort& listen,
                                      const std::string& advertise, const std::string& relay,
                                      const std::string& peer_id, Deadline deadline) {
  ReachDecision d;
  d.advertise = advertise;
  std::optional<HostPort> relay_hp;
  if (!relay.empty()) {
    auto hp = parseHostPort(relay);
    if (!hp) return hp.status().withContext("--relay");
    relay_hp = *hp;
  }
  // Our listener is up already: the coordinator's dial reaches it (the probe's own listen
  // attempt fails on the taken port, which is fine: only the coordinator's verdict counts).
  auto probe = probeCoordinator(coordinator, HostPort{listen.host, listener.port()}, advertise,
                                Deadline::after(std::min(Millis(6000), deadline.remaining())));
  if (!probe) {
    d.why = fmt::format("could not ask the coordinator ({}); assuming {} accepts connections",
                        probe.status().message(), advertise);
    return d;
  }
  if (probe->result.code == StatusCode::kOk) {
    d.why = fmt::format("the coordinator reached {} directly", advertise);
    counter("p2p.reach_path", {{"path", "direct"}}).inc();
    return d;
  }
  const std::string why_not = probe->result.detail.empty()
                                  ? std::string(statusCodeName(probe->result.code))
                                  : probe->result.detail;
  // A NAT that kept our port lets a punch through; one that changes it does not.
  auto seen = parseHostPort(probe->result.seen_from);
  const bool keeps_ports = seen && probe->local_port != 0 && seen->port == probe->local_port;
  if (keeps_ports || !relay_hp) {
    d.path = PeerReach::kReverse;
    d.why = keeps_ports ? fmt::format(
                              "not reachable at {} ({}), behind a NAT that keeps ports ({} seen "
                              "as {}): peers dial back or punch through",
                              advertise, why_not, probe->local_port, probe->result.seen_from)
                        : fmt::format(
                              "not reachable at {} ({}), and the coordinator sees this peer at "
                              "{} from local port {}: a NAT that changes ports cannot be punched "
                              "through, so only peers that accept connections can reach this one "
                              "(by dialing back); give --relay HOST:PORT for the others",
                              advertise, why_not, probe->result.seen_from, probe->local_port);
    counter("p2p.reach_path", {{"path", "reverse"}}).inc();
    return d;
  }
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
  d.path = PeerReach::kRelayed;
  d.advertise = registered.value();
  d.relay = std::move(client);
  d.why = fmt::format(
      "not reachable at {} ({}) behind a NAT that changes ports ({} seen as {}); "
      "relayed through {} as {}",
      advertise, why_not, probe->local_port, probe->result.seen_from, relay, d.advertise);
  counter("p2p.reach_path", {{"path", "relayed"}}).inc();
  return d;
}

}  // namespace loco::p2p
