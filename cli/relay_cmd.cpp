// `loco relay`: forwards link connections for peers nobody can dial (p2p/relay.h), and the
// `--relay` half of `loco coordinator`.
#include <fmt/format.h>

#include <condition_variable>
#include <csignal>
#include <future>
#include <mutex>

#include "cli/relay_cmd.h"

#include "cli/commands.h"
#include "cli/ops/http_server.h"
#include "p2p/base/log.h"
#include "p2p/relay.h"
#include "p2p/runtime.h"

namespace loco::cli {

std::vector<FlagSpec> relayLimitFlags() {
  return {{"relay-max-peers", "peers the relay serves at once", "64"},
          {"relay-pairs-per-peer", "forwarded connections per peer at once", "64"},
          {"relay-peer-rate-mbit", "cap on each peer's forwarded traffic, Mbit/s (0: none)", "0"}};
}

Result<p2p::RelayOptions> relayOptions(const Flags& flags, const std::string& listen) {
  p2p::RelayOptions o;
  auto hp = p2p::parseHostPort(listen, /*allow_port_zero=*/true);
  if (!hp) return hp.status().withContext("relay listen address");
  o.listen = *hp;
  auto peers = flags.getInt("relay-max-peers", 1, 100000);
  if (!peers) return peers.status();
  auto pairs = flags.getInt("relay-pairs-per-peer", 1, 100000);
  if (!pairs) return pairs.status();
  auto rate = flags.getInt("relay-peer-rate-mbit", 0, 1000000);
  if (!rate) return rate.status();
  o.max_peers = static_cast<std::size_t>(*peers);
  o.max_pairs_per_peer = static_cast<std::size_t>(*pairs);
  o.peer_rate_mbit = static_cast<double>(*rate);
  return o;
}

int waitForTerminationSignal(p2p::NetworkThread& net) {
  std::mutex mu;
  std::condition_variable cv;
  int signal = 0;
  p2p::SignalWatch signals(net, {SIGINT, SIGTERM}, [&](int sig) {
    std::lock_guard lock(mu);
    signal = sig;
    cv.notify_all();
  });
  std::unique_lock lock(mu);
  cv.wait(lock, [&] { return signal != 0; });
  return signal;
}

int runRelay(const Args& args) {
  std::vector<FlagSpec> specs{{"listen",
                               "HOST:PORT peers register on (port 0: any free port); each relayed "
                               "peer gets a port of its own on the same HOST",
                               "0.0.0.0:7100"}};
  for (auto& f : relayLimitFlags()) specs.push_back(std::move(f));
  specs.push_back({"port-file", "write the bound port to this file once listening", ""});
  specs.push_back({"http", "HOST:PORT for /metrics and /healthz (off unless given)", ""});
  Flags flags("relay",
              "forward link connections for peers behind a NAT (bytes pass through unread)", specs);
  if (int rc = parseAndSetUp(flags, args, "relay"); rc >= 0) return rc;
  auto options = relayOptions(flags, flags.get("listen"));
  if (!options) return reportFailure(options.status());
  std::optional<p2p::HostPort> http;
  if (flags.isSet("http")) {
    auto h = p2p::parseHostPort(flags.get("http"), /*allow_port_zero=*/true);
    if (!h) return reportFailure(h.status().withContext("--http"));
    http = *h;
  }

  p2p::raiseFileLimit();
  p2p::NetworkThread net("loco-relay");
  std::unique_ptr<p2p::RelayServer> relay;
  {
    std::promise<Status> started;
    net.post([&] {
      auto r = p2p::RelayServer::start(net, *options);
      if (r) relay = std::move(r.value());
      started.set_value(r ? Status() : r.status());
    });
    if (Status st = started.get_future().get(); !st.isOk()) return reportFailure(st);
  }
  auto shutdown = [&] {
    std::promise<void> done;
    net.post([&] {
      relay.reset();
      done.set_value();
    });
    done.get_future().wait();
  };
  std::unique_ptr<ops::HttpServer> http_server;
  if (http) {
    auto server = ops::HttpServer::start(*http, ops::baseRoutes([] { return std::string(); }));
    if (!server) {
      shutdown();
      return reportFailure(server.status());
    }
    http_server = std::move(server.value());
  }
  LOG_INFO(kLogCli, "relay listening on {}:{} (at most {} peers, {} connections each, {})",
           options->listen.host, relay->port(), options->max_peers, options->max_pairs_per_peer,
           options->peer_rate_mbit > 0 ? fmt::format("{} Mbit/s each", options->peer_rate_mbit)
                                       : std::string("no rate cap"));
  if (flags.isSet("port-file")) {
    if (Status st = writeFileAtomic(flags.get("port-file"), fmt::format("{}\n", relay->port()));
        !st.isOk()) {
      http_server.reset();
      shutdown();
      return reportFailure(st);
    }
  }
  const int signal = waitForTerminationSignal(net);
  LOG_INFO(kLogCli, "signal {}: relay shutting down", signal);
  http_server.reset();
  shutdown();
  return 0;
}

}  // namespace loco::cli
