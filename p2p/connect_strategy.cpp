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
                                      const std::string& peer_id, Deadline deadline,
                                      std::function<void(const Status&)> on_relay_lost) {
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
    d.asked = false;
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
        [on_relay_lost](const Status& why) {
          // Links through the relay fail with it; the advertised address is dead until this
          // peer registers again with another path.
          LOG_ERROR(kLogP2p, "lost the relay: {}; other peers cannot reach this one now",
                    why.message());
          counter("p2p.relay_lost").inc();
          if (on_relay_lost) on_relay_lost(why);
        },
        deadline, [promise](Result<std::string> r) { promise->set_value(std::move(r)); });
    assigned.set_value();
  });
  assigned.get_future().wait();
  Result<std::string> registered = future.get();  // the client's deadline bounds it
  if (!registered) {
    // Better than nothing: peers that accept connections can still have us dial them back.
    net.post([client] { client->close(); });
    d.path = PeerReach::kReverse;
    d.why = fmt::format(
        "not reachable at {} ({}) behind a NAT that changes ports, and the relay "
        "{} failed ({}): only peers that accept connections can reach this one "
        "(by dialing back)",
        advertise, why_not, relay, registered.status().message());
    counter("p2p.reach_path", {{"path", "reverse"}}).inc();
    return d;
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

ReachKeeper::ReachKeeper(NetworkThread& net, LinkListener& listener, Settings settings)
    : net_(net), listener_(listener), settings_(std::move(settings)) {}

ReachKeeper::~ReachKeeper() {
  stop();
}

void ReachKeeper::stop() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

Result<ReachDecision> ReachKeeper::choose(Deadline deadline) {
  auto d = chooseReachPath(net_, listener_, settings_.coordinator, settings_.listen,
                           settings_.advertise, settings_.relay, settings_.peer_id, deadline,
                           [this](const Status&) { onRelayLost(); });
  if (d) net_.post([this, relay = d->relay] { relay_ = relay; });
  return d;
}

void ReachKeeper::setOnChange(std::function<void(const ReachDecision&)> on_change) {
  on_change_ = std::move(on_change);
}

void ReachKeeper::close() {
  if (relay_) relay_->close();
  relay_.reset();
}

void ReachKeeper::onRelayLost() {
  std::lock_guard lock(mu_);
  if (stopping_) return;
  lost_ = true;
  if (!thread_.joinable()) thread_ = std::thread([this] { repathLoop(); });
  cv_.notify_all();
}

void ReachKeeper::repathLoop() {
  std::unique_lock lock(mu_);
  while (!stopping_) {
    cv_.wait(lock, [&] { return lost_ || stopping_; });
    if (stopping_) return;
    lost_ = false;
    lock.unlock();
    LOG_WARN(kLogP2p, "choosing how peers reach this one again: the relay was lost");
    auto d = choose(Deadline::after(Millis(15000)));
    // Without the coordinator's verdict the old guess (direct) is no answer: ask again later.
    if (d && !d->asked) d = Status(StatusCode::kUnavailable, d->why);
    if (d) {
      LOG_WARN(kLogPeer, "reached {} again: {}", peerReachName(d->path), d->why);
      if (on_change_) on_change_(*d);
    } else {
      LOG_WARN(kLogP2p, "could not choose a path ({}); trying again in 5 s", d.status().message());
    }
    lock.lock();
    // A failed choice is retried after a pause, unless the keeper stops meanwhile.
    if (!d) lost_ = !cv_.wait_for(lock, std::chrono::seconds(5), [&] { return stopping_; });
  }
}

}  // namespace loco::p2p
