#include <fmt/format.h>

#include <cctype>
#include <condition_variable>
#include <csignal>
#include <ctime>
#include <functional>
#include <future>
#include <mutex>
#include <optional>
#include <set>
#include <thread>

#include "cli/commands.h"
#include "cli/ops/dashboard.h"
#include "cli/ops/http_server.h"
#include "cli/ops/run_metrics.h"
#include "cli/ops/status_json.h"
#include "cli/relay_cmd.h"
#include "cli/tls_setup.h"
#include "crypto/identity.h"
#include "crypto/token.h"
#include "p2p/base/log.h"
#include "p2p/coordinator.h"
#include "p2p/runtime.h"

namespace loco::cli {
namespace {

// The coordinator lives on the io thread; HTTP handlers run on the server's threads and ask the
// io thread for a copy. nullopt when it does not answer in time (stalled, or shutting down).
std::optional<p2p::RunSnapshot> snapshotOf(p2p::NetworkThread& net, const p2p::Coordinator& coord) {
  auto promise = std::make_shared<std::promise<p2p::RunSnapshot>>();
  auto future = promise->get_future();
  net.post([promise, &coord] { promise->set_value(coord.snapshot()); });
  if (future.wait_for(std::chrono::seconds(2)) != std::future_status::ready) return std::nullopt;
  return future.get();
}

std::map<std::string, ops::HttpHandler> coordinatorRoutes(p2p::NetworkThread& net,
                                                          const p2p::Coordinator& coord) {
  auto routes = ops::baseRoutes([&net, &coord] {
    return snapshotOf(net, coord) ? std::string()
                                  : std::string("the coordinator's event loop does not answer");
  });
  const auto plain_metrics = routes["/metrics"];
  routes["/metrics"] = [&net, &coord, plain_metrics] {
    if (auto s = snapshotOf(net, coord)) ops::publishRunGauges(*s, unixSeconds());
    return plain_metrics();
  };
  routes["/api/status"] = [&net, &coord] {
    auto s = snapshotOf(net, coord);
    if (!s) return ops::HttpResponse{503, "text/plain", "the coordinator does not answer\n"};
    return ops::HttpResponse{200, "application/json",
                             ops::coordinatorStatusJson(*s, unixSeconds())};
  };
  routes["/"] = [] {
    return ops::HttpResponse{200, "text/html; charset=utf-8", std::string(ops::dashboardHtml())};
  };
  return routes;
}

}  // namespace

// Reads the CA directory's revoked peers every second on a thread of its own and hands every
// new set to `changed`. Stops (joins) in its destructor.
class RevocationWatcher {
 public:
  RevocationWatcher(std::string ca_dir, std::function<void(std::set<std::string>)> changed)
      : thread_([this, dir = std::move(ca_dir), changed = std::move(changed)] {
          std::set<std::string> known;
          std::string last_error;  // logged once, not every second
          std::unique_lock lock(mu_);
          while (!stop_) {
            lock.unlock();
            auto ids = crypto::TokenStore(dir).revokedPeers();
            if (!ids) {
              if (ids.status().message() != last_error) {
                last_error = ids.status().message();
                LOG_WARN(kLogCoord, "cannot read the revoked tokens (revocations wait): {}",
                         last_error);
              }
            } else if (std::set<std::string> now(ids->begin(), ids->end()); now != known) {
              last_error.clear();
              known = now;
              changed(std::move(now));
            }
            lock.lock();
            cv_.wait_for(lock, std::chrono::seconds(1), [this] { return stop_; });
          }
        }) {}
  ~RevocationWatcher() {
    {
      std::lock_guard lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::thread thread_;  // last: starts after the members above exist
};

int runCoordinator(const Args& args) {
  std::vector<FlagSpec> specs{
      {"listen", "HOST:PORT to accept peers on (port 0: any free port)", "0.0.0.0:7000"},
      {"heartbeat-interval", "ms between heartbeats", "500"},
      {"heartbeat-timeout", "ms of silence after which a peer is evicted", "3000"},
      {"handshake-timeout", "ms a new connection has to identify itself", "2000"},
      {"rebuild-window",
       "ms to wait for a lost group's members before admitting those that came back "
       "(default: heartbeat timeout + 4000)",
       ""},
      {"holder-wait",
       "ms peers that hold less than the run reached wait, with no member left, for a "
       "peer that holds it before the run goes on from what they hold",
       "60000"},
      {"quorum",
       "the quorum rule: a group trains only while it holds a strict majority of its last "
       "admitted members, so two coordinators (a standby) cannot both run the group across a "
       "partition; give it to every coordinator of the run",
       "", true},
      {"port-file", "write the bound port to this file once listening", ""},
      {"http",
       "HOST:PORT for the dashboard (/), /metrics, /api/status and /healthz (off unless "
       "given; 127.0.0.1 keeps it on this machine; port 0: any free port)",
       ""},
      {"http-port-file", "write the bound --http port to this file", ""},
      {"relay",
       "HOST:PORT: also run a relay (loco relay) for peers behind a NAT; they find it "
       "with loco join --relay",
       ""},
      {"relay-port-file", "write the bound --relay port to this file", ""},
      {"cert-lifetime",
       "how long an enrolled peer's certificate is valid (hours, or 90s/30m/24h/7d); peers "
       "renew theirs when two thirds of it have passed",
       "24"}};
  for (auto& spec : securityFlagSpecs(/*with_ca=*/true)) specs.push_back(std::move(spec));
  for (auto& f : relayLimitFlags()) specs.push_back(std::move(f));
  Flags flags("coordinator", "run the membership coordinator (never carries tensor data)",
              std::move(specs));
  if (int rc = parseAndSetUp(flags, args, "coordinator"); rc >= 0) return rc;
  if (Status st = setUpSecurity(flags, crypto::kCoordinatorId); !st.isOk()) {
    return reportFailure(st);
  }

  p2p::CoordinatorOptions opts;
  std::optional<p2p::HostPort> http;
  if (flags.isSet("http")) {
    auto h = p2p::parseHostPort(flags.get("http"), /*allow_port_zero=*/true);
    if (!h) return reportFailure(h.status().withContext("--http"));
    http = *h;
  }
  auto listen = p2p::parseHostPort(flags.get("listen"), /*allow_port_zero=*/true);
  if (!listen) return reportFailure(listen.status().withContext("--listen"));
  opts.listen = *listen;
  auto interval = flags.getInt("heartbeat-interval", 10, 600000);
  auto timeout = flags.getInt("heartbeat-timeout", 20, 3600000);
  auto handshake = flags.getInt("handshake-timeout", 10, 600000);
  auto holder_wait = flags.getInt("holder-wait", 0, 86400000);
  for (const auto* r : {&interval, &timeout, &handshake, &holder_wait}) {
    if (!*r) return reportFailure(r->status());
  }
  opts.heartbeat_interval = Millis(*interval);
  opts.heartbeat_timeout = Millis(*timeout);
  opts.handshake_timeout = Millis(*handshake);
  opts.holder_wait = Millis(*holder_wait);
  if (!flags.get("ca").empty()) {
    // A bare number is hours (the first form of this flag); "90s", "30m", "24h", "7d".
    std::string lifetime_text = flags.get("cert-lifetime");
    if (!lifetime_text.empty() && std::isdigit(static_cast<unsigned char>(lifetime_text.back())))
      lifetime_text += "h";
    auto lifetime_s = parseDurationSeconds(lifetime_text, "--cert-lifetime");
    if (!lifetime_s) return reportFailure(lifetime_s.status());
    if (*lifetime_s < 10) {
      return reportFailure(Status(StatusCode::kInvalidArgument, "--cert-lifetime: at least 10 s"));
    }
    const std::chrono::seconds lifetime(*lifetime_s);
    auto ca = crypto::RunCa::load(flags.get("ca"));
    if (!ca) return reportFailure(ca.status());
    LOG_INFO(kLogCoord, "TLS with the run CA sha256={}; enrolling peers with join tokens",
             ca->fingerprint());
    opts.renew = [ca = *ca, lifetime](const p2p::EnrollMsg& m) -> Result<p2p::EnrollReplyMsg> {
      auto cert = ca.issue(m.peer_id, m.public_key_pem, lifetime);
      if (!cert) return cert.status();
      return p2p::EnrollReplyMsg{*cert, ca.certPem()};
    };
    opts.enroll = [ca = std::move(*ca), hours = lifetime](
                      const p2p::EnrollMsg& m, const std::string&) -> Result<p2p::EnrollReplyMsg> {
      if (!crypto::isValidPeerId(m.peer_id)) {
        return Status(StatusCode::kInvalidArgument, "peer id must be 32 lowercase hex digits");
      }
      Status redeemed = crypto::TokenStore(ca.dir()).redeem(
          m.token, static_cast<std::int64_t>(std::time(nullptr)), m.peer_id);
      if (!redeemed.isOk()) return redeemed;
      auto cert = ca.issue(m.peer_id, m.public_key_pem, hours);
      if (!cert) return cert.status();
      return p2p::EnrollReplyMsg{*cert, ca.certPem()};
    };
  }
  opts.quorum = flags.getBool("quorum");
  if (flags.isSet("rebuild-window")) {
    auto window = flags.getInt("rebuild-window", 0, 3600000);
    if (!window) return reportFailure(window.status());
    opts.rebuild_window = Millis(*window);
  }

  p2p::raiseFileLimit();
  p2p::NetworkThread net("loco-coord");
  std::unique_ptr<p2p::Coordinator> coord;
  {
    std::promise<Status> started;
    net.post([&] {
      auto c = p2p::Coordinator::start(net.context(), opts);
      if (c) coord = std::move(c.value());
      started.set_value(c ? Status() : c.status());
    });
    if (Status st = started.get_future().get(); !st.isOk()) return reportFailure(st);
  }
  // --relay: a relay on the same network thread (p2p/relay.h); it never touches membership.
  std::unique_ptr<p2p::RelayServer> relay;
  // The coordinator (and relay) are created, used and destroyed on the network thread.
  auto shutdown = [&] {
    std::promise<void> done;
    net.post([&] {
      relay.reset();
      coord->shutdown();
      coord.reset();
      done.set_value();
    });
    done.get_future().wait();
  };
  if (flags.isSet("relay")) {
    auto ropts = relayOptions(flags, flags.get("relay"));
    std::promise<Status> started;
    net.post([&] {
      if (!ropts) return started.set_value(ropts.status().withContext("--relay"));
      auto r = p2p::RelayServer::start(net, *ropts);
      if (r) relay = std::move(r.value());
      started.set_value(r ? Status() : r.status());
    });
    Status st = started.get_future().get();
    if (st.isOk() && flags.isSet("relay-port-file"))
      st = writeFileAtomic(flags.get("relay-port-file"), fmt::format("{}\n", relay->port()));
    if (!st.isOk()) {
      shutdown();
      return reportFailure(st);
    }
    LOG_INFO(kLogCoord, "relay for peers behind a NAT on {}:{}", ropts->listen.host, relay->port());
  }
  ops::describeRunMetrics(/*coordinator=*/true);
  std::unique_ptr<ops::HttpServer> http_server;  // stopped before the coordinator goes
  if (http) {
    auto server = ops::HttpServer::start(*http, coordinatorRoutes(net, *coord));
    if (!server) {
      shutdown();
      return reportFailure(server.status());
    }
    http_server = std::move(server.value());
    LOG_INFO(kLogCoord, "dashboard at {}/", http_server->url());
    if (flags.isSet("http-port-file")) {
      if (Status st = writeFileAtomic(flags.get("http-port-file"),
                                      fmt::format("{}\n", http_server->port()));
          !st.isOk()) {
        http_server.reset();
        shutdown();
        return reportFailure(st);
      }
    }
  }
  // The port file comes last: whoever waits for it finds --http up too.
  if (flags.isSet("port-file")) {
    if (Status st = writeFileAtomic(flags.get("port-file"), fmt::format("{}\n", coord->port()));
        !st.isOk()) {
      http_server.reset();
      shutdown();
      return reportFailure(st);
    }
  }
  // --ca: `loco token revoke` takes effect on running members too. The token file is read off
  // the network thread (file I/O), once a second.
  std::optional<RevocationWatcher> revocations;
  if (!flags.get("ca").empty()) {
    revocations.emplace(flags.get("ca"), [&](std::set<std::string> ids) {
      net.post([&coord, ids = std::move(ids)] {
        if (coord) coord->revokePeers(ids);
      });
    });
  }
  const int signal = waitForTerminationSignal(net);
  LOG_INFO(kLogCoord, "signal {}: shutting down", signal);
  revocations.reset();
  http_server.reset();
  shutdown();
  LOG_INFO(kLogCoord, "stopped");
  return 0;
}

}  // namespace loco::cli
