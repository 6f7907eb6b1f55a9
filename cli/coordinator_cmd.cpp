#include <fmt/format.h>
#include <asio.hpp>

#include "cli/commands.h"
#include "p2p/base/log.h"
#include "p2p/coordinator.h"
#include "p2p/net.h"

namespace loco::cli {

int runCoordinator(const Args& args) {
  Flags flags("coordinator", "run the membership coordinator (never carries tensor data)",
              {{"listen", "HOST:PORT to accept peers on (port 0: any free port)", "0.0.0.0:7000"},
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
               {"port-file", "write the bound port to this file once listening", ""}});
  if (int rc = parseAndSetUp(flags, args, "coordinator"); rc >= 0) return rc;

  p2p::CoordinatorOptions opts;
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
  if (flags.isSet("rebuild-window")) {
    auto window = flags.getInt("rebuild-window", 0, 3600000);
    if (!window) return reportFailure(window.status());
    opts.rebuild_window = Millis(*window);
  }

  p2p::raiseFileLimit();
  asio::io_context io;
  auto coord = p2p::Coordinator::start(io, opts);
  if (!coord) return reportFailure(coord.status());
  if (flags.isSet("port-file")) {
    if (Status st = writeFileAtomic(flags.get("port-file"), fmt::format("{}\n", (*coord)->port()));
        !st.isOk()) {
      return reportFailure(st);
    }
  }
  asio::signal_set signals(io, SIGINT, SIGTERM);
  signals.async_wait([&](const std::error_code& ec, int sig) {
    if (ec) return;
    LOG_INFO(kLogCoord, "signal {}: shutting down", sig);
    (*coord)->shutdown();
    io.stop();
  });
  io.run();
  LOG_INFO(kLogCoord, "stopped");
  return 0;
}

}  // namespace loco::cli
