#include <fmt/format.h>
#include <pthread.h>
#include <signal.h>

#include <csignal>
#include <cstdlib>

#include <atomic>
#include <condition_variable>
#include <filesystem>
#include <future>
#include <mutex>
#include <optional>
#include <thread>

#include "cli/commands.h"
#include "cli/join_train.h"
#include "cli/ops/http_server.h"
#include "cli/ops/status_json.h"
#include "cli/tls_setup.h"
#include "cli/training_flags.h"
#include "crypto/identity.h"
#include "crypto/token.h"
#include "p2p/base/log.h"
#include "p2p/base/text.h"
#include "p2p/link.h"
#include "p2p/membership_client.h"
#include "p2p/reconnect.h"
#include "p2p/runtime.h"
#include "p2p/tls_stream.h"

namespace loco::cli {
namespace {

std::string describeView(const p2p::GroupView& v) {
  std::string members;
  for (const auto& p : v.peers) {
    if (!members.empty()) members += " ";
    members += shortId(p.id) + (p.state == p2p::PeerState::kPending ? "(pending)" : "");
  }
  return fmt::format("epoch={} world={} pending={} [{}]", v.epoch, v.world(), v.pending(), members);
}

// Wakes the main loop's sleeps when a signal arrives.
struct StopFlag {
  std::mutex mu;
  std::condition_variable cv;
  bool stop = false;
  int signal = 0;
  void set(int sig) {
    std::lock_guard lock(mu);
    stop = true;
    signal = sig;
    cv.notify_all();
  }
  bool sleepFor(Millis d) {  // false when stopped
    std::unique_lock lock(mu);
    return !cv.wait_for(lock, d, [&] { return stop; });
  }
  bool stopped() {
    std::lock_guard lock(mu);
    return stop;
  }
};

// SIGINT and SIGTERM, held back (blocked in this thread and the threads it starts) while a fresh
// identity's folder exists and nothing is in place yet to stop the peer through its own code:
// a volunteer who stops a peer while it enrolls still gets its key removed, once the peer can
// end properly (the idle loop's signal watch, or loco-train's handlers after the exec; the mask
// survives exec).
sigset_t stopSignals() {
  sigset_t stops;
  sigemptyset(&stops);
  sigaddset(&stops, SIGINT);
  sigaddset(&stops, SIGTERM);
  return stops;
}
void holdStops(bool hold) {
  const sigset_t stops = stopSignals();
  ::pthread_sigmask(hold ? SIG_BLOCK : SIG_UNBLOCK, &stops, nullptr);
}

std::string membershipStateName(p2p::MembershipClient::State s) {
  using State = p2p::MembershipClient::State;
  switch (s) {
    case State::kDisconnected:
      return "disconnected";
    case State::kConnecting:
      return "connecting";
    case State::kPending:
      return "pending";
    case State::kMember:
      return "member";
    case State::kReconnecting:
      return "looking for a coordinator";
    case State::kEvicted:
      return "evicted";
    case State::kLeft:
      return "left";
  }
  return "unknown";
}

}  // namespace

int runJoin(const Args& args) {
  std::vector<FlagSpec> specs{
      {"coordinator",
       "HOST:PORT of the run's coordinator; a comma-separated list adds standbys, tried in order "
       "when the coordinator is lost",
       ""},
      {"idle", "membership only: no training, a sync point every heartbeat", "", true},
      {"listen", "HOST:PORT for other peers' link streams (port 0: any)", "0.0.0.0:0"},
      {"advertise", "HOST:PORT other peers should connect to (default: derived)", ""},
      {"relay",
       "HOST:PORT of a relay (loco relay, or loco coordinator --relay) for when the "
       "coordinator cannot dial this peer back and its NAT changes ports (no hole punching): "
       "other peers then reach it through the relay. Behind a NAT that keeps ports no relay "
       "is needed: peers dial it back or punch through",
       ""},
      {"identity", "identity file (created on first run, mode 0600); default: a fresh id", ""},
      {"tls-dir-temporary",
       "internal: --tls-dir holds a fresh identity's key and certificate; removed at the end", "",
       true},
      {"streams", "parallel TCP streams per peer link", std::to_string(p2p::LinkOptions{}.streams)},
      {"connect-timeout", "ms to keep trying to reach the coordinator at start before failing",
       "10000"},
      {"coordinator-timeout",
       "ms to keep looking for a coordinator after losing it (or being evicted) before exiting "
       "(0: exit at once)",
       "600000"},
      {"http",
       "HOST:PORT for /metrics, /api/status and /healthz (off unless given; 127.0.0.1 keeps it "
       "on this machine)",
       ""}};
  for (auto& spec : trainingPeerFlagSpecs()) specs.push_back(std::move(spec));
  for (auto& spec : securityFlagSpecs(/*with_ca=*/false)) specs.push_back(std::move(spec));
  specs.push_back({"join-token",
                   "join token for enrolling (prefer LOCO_JOIN_TOKEN or --token-file: a flag "
                   "shows in ps)",
                   ""});
  specs.push_back({"token-file", "file holding the join token (mode 0600)", ""});
  Flags flags("join", "join a training run as a peer (trains unless --idle)", std::move(specs));
  if (int rc = parseAndSetUp(flags, args, "peer"); rc >= 0) return rc;

  // A join string (loco://HOST:PORT#sha256=...) pins the run CA and may carry the token.
  std::string coordinator_text = flags.get("coordinator");
  if (coordinator_text.empty() && flags.positional().size() == 1) {
    coordinator_text = flags.positional()[0];
  }
  if (coordinator_text.empty()) {
    return reportFailure(Status(
        StatusCode::kInvalidArgument,
        "a join string (loco://...) or --coordinator HOST:PORT (LOCO_COORDINATOR) is required"));
  }
  std::optional<crypto::JoinString> join;
  if (crypto::looksLikeJoinString(coordinator_text)) {
    auto j = crypto::parseJoinString(coordinator_text);
    if (!j) return reportFailure(j.status());
    if (flags.getBool("insecure")) {
      return reportFailure(Status(StatusCode::kInvalidArgument,
                                  "a join string is for TLS runs; --insecure contradicts it"));
    }
    join = *j;
    coordinator_text = p2p::HostPort{j->host, j->port}.toString();
  }
  auto coordinators = p2p::parseHostPortList(coordinator_text);
  if (!coordinators) return reportFailure(coordinators.status().withContext("--coordinator"));
  const p2p::HostPort& coordinator = coordinators->front();
  auto listen = p2p::parseHostPort(flags.get("listen"), true);
  if (!listen) return reportFailure(listen.status().withContext("--listen"));
  auto streams = flags.getInt("streams", 1, 64);
  if (!streams) return reportFailure(streams.status());
  auto connect_timeout = flags.getInt("connect-timeout", 100, 3600000);
  if (!connect_timeout) return reportFailure(connect_timeout.status());
  auto coordinator_timeout = flags.getInt("coordinator-timeout", 0, 7LL * 24 * 3600 * 1000);
  if (!coordinator_timeout) return reportFailure(coordinator_timeout.status());
  if (flags.isSet("advertise")) {
    auto adv = p2p::parseHostPort(flags.get("advertise"));
    if (!adv) return reportFailure(adv.status().withContext("--advertise"));
  }
  if (flags.isSet("relay")) {
    auto relay = p2p::parseHostPort(flags.get("relay"));
    if (!relay) return reportFailure(relay.status().withContext("--relay"));
  }
  std::optional<p2p::HostPort> http;
  if (flags.isSet("http")) {
    auto h = p2p::parseHostPort(flags.get("http"), /*allow_port_zero=*/true);
    if (!h) return reportFailure(h.status().withContext("--http"));
    http = *h;
  }

  // Enrolling writes our key and certificate next to the identity they bind.
  std::string tls_dir = flags.get("tls-dir");
  std::string identity_path = flags.get("identity");
  Args extra_args;  // for loco-train, so that it finds what we enrolled
  // A fresh identity's key and certificate are of no use once this peer ends: they go with it
  // (with loco-train's end when it takes over this process), so no private key is left behind.
  struct RemovedAtEnd {
    std::string dir;
    ~RemovedAtEnd() {
      std::error_code ec;
      if (!dir.empty()) std::filesystem::remove_all(dir, ec);
    }
  } temporary_tls_dir;
  // Only a folder this command made: an internal flag must not remove anyone's own folder.
  if (flags.getBool("tls-dir-temporary") &&
      std::filesystem::path(tls_dir).filename().string().rfind("loco-join-", 0) == 0)
    temporary_tls_dir.dir = tls_dir;
  if (join) {
    if (tls_dir.empty()) {
      if (!identity_path.empty()) {
        tls_dir = identity_path + ".tls";
      } else {
        std::string tmpl = "/tmp/loco-join-XXXXXX";
        if (::mkdtemp(tmpl.data()) == nullptr) {
          return reportFailure(Status(StatusCode::kIoError, "cannot create a TLS directory"));
        }
        tls_dir = tmpl;
        temporary_tls_dir.dir = tls_dir;
        holdStops(true);
        extra_args.push_back("--tls-dir-temporary");
      }
      extra_args.insert(extra_args.end(), {"--tls-dir", tls_dir});
    }
    if (identity_path.empty()) {
      identity_path = tls_dir + "/identity";
      extra_args.insert(extra_args.end(), {"--identity", identity_path});
    }
  }
  crypto::PeerIdentity identity;
  if (!identity_path.empty()) {
    auto loaded = crypto::loadOrCreateIdentity(identity_path);
    if (!loaded) return reportFailure(loaded.status());
    identity = *loaded;
  } else {
    identity = crypto::ephemeralIdentity();
  }
  auto level = parseLogLevel(flags.get("log-level"));
  auto format = parseLogFormat(flags.get("log-format"));
  configureLogging(*level, *format, "peer " + shortId(identity.id));
  if (join) {
    if (!tlsDirUsable(tls_dir, identity.id, join->ca_fingerprint, std::chrono::hours(1))) {
      auto token = joinToken(flags, *join);
      if (!token) return reportFailure(token.status());
      LOG_INFO(kLogPeer, "enrolling with {} (run CA sha256={}...)", coordinator_text,
               join->ca_fingerprint.substr(0, 16));
      Status enrolled = enrollInto(*join, *token, identity.id, tls_dir,
                                   Deadline::after(Millis(*connect_timeout)));
      if (!enrolled.isOk()) return reportFailure(enrolled);
    }
    if (Status st = useTlsDir(tls_dir); !st.isOk()) return reportFailure(st);
  } else if (Status st = setUpSecurity(flags, identity.id); !st.isOk()) {
    return reportFailure(st);
  }
  // Renewed before it expires, for as long as this process runs; not in a process about to
  // exec loco-train (which renews it itself): a renewal cut by exec could leave a new key
  // beside the old certificate.
#ifdef LOCO_TRAINING_BINARY
  const bool will_exec = false;
#else
  const bool will_exec = !flags.getBool("idle");
#endif
  std::optional<CertificateRenewer> renewer;
  if (!will_exec && !tls_dir.empty() && p2p::tls::mode() == p2p::tls::Mode::kTls)
    renewer.emplace(tls_dir, identity.id, *coordinators);

  p2p::raiseFileLimit();
  if (!flags.getBool("idle")) {
#ifdef LOCO_TRAINING_BINARY
    TrainingPeerSetup setup{*coordinators,
                            *listen,
                            flags.get("advertise"),
                            identity.id,
                            static_cast<std::uint32_t>(*streams),
                            Millis(*connect_timeout),
                            Millis(*coordinator_timeout),
                            http,
                            flags.get("relay")};
    return runTrainingPeer(flags, setup);
#else
    Args command{"join"};
    command.insert(command.end(), args.begin(), args.end());
    command.insert(command.end(), extra_args.begin(), extra_args.end());
    return execTrainingBinary(command);  // still holding stops back, for loco-train's handlers
#endif
  }
  p2p::NetworkThread net;
  StopFlag stop;

  // Link streams from other peers are accepted here; the collectives put them to work.
  p2p::LinkOptions link_opts;
  link_opts.streams = static_cast<std::uint32_t>(*streams);
  std::vector<std::shared_ptr<p2p::Link>> links;
  std::unique_ptr<p2p::LinkListener> listener;
  std::unique_ptr<p2p::SignalWatch> signals;
  Status setup;
  // The listener and signal set belong to the network thread; so does their destruction.
  auto cleanup = [&] {
    std::promise<void> done;
    signals.reset();
    net.post([&] {
      listener.reset();
      links.clear();
      done.set_value();
    });
    done.get_future().wait();
  };

  {
    std::promise<void> ready;
    net.post([&] {
      auto l = p2p::LinkListener::start(
          net, *listen, link_opts,
          [&links](std::shared_ptr<p2p::Link> link, const std::string& from, std::uint64_t) {
            LOG_INFO(kLogPeer, "link from peer {} ({} streams)", shortId(from),
                     link->streamCount());
            links.push_back(std::move(link));
          });
      if (l) {
        listener = std::move(l.value());
      } else {
        setup = l.status();
      }
      ready.set_value();
    });
    ready.get_future().wait();
  }
  signals = std::make_unique<p2p::SignalWatch>(net, std::initializer_list<int>{SIGINT, SIGTERM},
                                               [&stop](int sig) { stop.set(sig); });
  holdStops(false);  // a stop held back while enrolling arrives now
  if (!setup.isOk()) {
    cleanup();
    return reportFailure(setup);
  }

  std::string advertise = flags.isSet("advertise")
                              ? flags.get("advertise")
                              : p2p::advertiseAddress(*listen, coordinator, listener->port());
  p2p::MembershipClientOptions client_options{coordinator, identity.id, advertise,
                                              static_cast<std::uint32_t>(*streams)};
  client_options.standby_coordinators.assign(coordinators->begin() + 1, coordinators->end());
  client_options.coordinator_timeout = Millis(*coordinator_timeout);
  p2p::MembershipClient client(net, client_options);
  client.setViewCallback(
      [](const p2p::GroupView& v) { LOG_INFO(kLogPeer, "membership {}", describeView(v)); });

  // Abort blocking membership calls when a signal arrives (checked by a watcher thread so that
  // the signal handler itself stays trivial).
  std::thread watcher([&] {
    std::unique_lock lock(stop.mu);
    stop.cv.wait(lock, [&] { return stop.stop; });
    client.abort();
  });
  auto finish = [&](int code) {
    stop.set(0);
    watcher.join();
    cleanup();
    return code;
  };

  std::unique_ptr<ops::HttpServer> http_server;  // declared after the client: goes first
  if (http) {
    auto routes = ops::baseRoutes([] { return std::string(); });  // alive while it answers
    routes["/api/status"] = [&client, &identity, &coordinator_text] {
      ops::PeerStatus s;
      s.id = identity.id;
      s.role = "idle peer";
      s.state = membershipStateName(client.state());
      s.coordinator = coordinator_text;
      const auto view = client.view();
      s.epoch = view.epoch;
      s.world = view.world();
      return ops::HttpResponse{200, "application/json", ops::peerStatusJson(s, unixSeconds())};
    };
    auto server = ops::HttpServer::start(*http, std::move(routes));
    if (!server) return finish(reportFailure(server.status()));
    http_server = std::move(server.value());
  }

  LOG_INFO(kLogPeer, "joining via {} (advertising {}, {} streams)", coordinator_text, advertise,
           *streams);
  Status joined = client.join(Deadline::after(Millis(*connect_timeout)));
  if (!joined.isOk()) {
    if (joined.code() == StatusCode::kAborted) return finish(0);
    return finish(reportFailure(joined));
  }
  LOG_INFO(kLogPeer, "registered as pending; waiting for admission at the next sync point");

  const Millis interval = client.heartbeatInterval();
  const Millis timeout = client.heartbeatTimeout();
  // Waiting for admission (first, or after losing the group: the client registers again on its
  // own) is logged at most every 10 s; the client logs its reconnect attempts.
  p2p::LogThrottle waiting_log(Millis(10000));
  TimePoint waiting_since = Clock::now();
  (void)waiting_log.shouldLog(waiting_since);  // most admissions take less than one interval
  bool member = false;
  while (!stop.stopped()) {
    Status st;
    if (client.state() != p2p::MembershipClient::State::kMember) {
      if (member) {  // lost the group since the last round of this loop
        member = false;
        waiting_since = Clock::now();
        waiting_log.reset();
        (void)waiting_log.shouldLog(waiting_since);
      }
      st = client.waitForMembership(Deadline::after(interval));
      if (st.code() == StatusCode::kTimeout) {
        if (waiting_log.shouldLog(Clock::now())) {
          LOG_INFO(kLogPeer, "{} (waiting {:.0f} s)", st.message(),
                   toSeconds(Clock::now() - waiting_since));
        }
        continue;
      }
      if (st.isOk()) {
        LOG_INFO(kLogPeer, "admitted at epoch {}", client.epoch());
        member = true;
        continue;
      }
    } else {
      // --idle: a sync point every heartbeat; pending peers are admitted at these.
      auto synced = client.syncPoint(Deadline::after(2 * timeout));
      st = synced.status();
      if (synced.isOk() || (st.code() == StatusCode::kTimeout &&
                            client.state() == p2p::MembershipClient::State::kMember)) {
        if (!stop.sleepFor(interval)) break;
        continue;
      }
      // The client is on its way back on its own: wait for admission.
      if (st.code() == StatusCode::kPeerLost || st.code() == StatusCode::kEvicted) continue;
    }
    if (st.code() == StatusCode::kAborted) break;
    return finish(reportFailure(st));  // no coordinator came back, or our identity was taken
  }
  LOG_INFO(kLogPeer, "leaving the group (signal {})", stop.signal);
  Status left = client.leave(Deadline::after(Millis(1000)));
  if (!left.isOk()) LOG_WARN(kLogPeer, "leave: {}", left.message());
  return finish(0);
}

}  // namespace loco::cli
