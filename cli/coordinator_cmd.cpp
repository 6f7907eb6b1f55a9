#include <fmt/format.h>

#include <condition_variable>
#include <csignal>
#include <future>
#include <mutex>

#include "cli/commands.h"
#include "p2p/base/log.h"
#include "p2p/coordinator.h"
#include "p2p/runtime.h"

namespace loco::cli {

int runCoordinator(const Args& args) {
  Flags flags("coordinator", "run the membership coordinator (never carries tensor data)",
              {{"listen", "HOST:PORT to accept peers on (port 0: any free port)", "0.0.0.0:7000"},
               {"heartbeat-interval", "ms between heartbeats", "500"},
               {"heartbeat-timeout", "ms of silence after which a peer is evicted", "3000"},
               {"handshake-timeout", "ms a new connection has to identify itself", "2000"},
               {"port-file", "write the bound port to this file once listening", ""}});
  if (int rc = parseAndSetUp(flags, args, "coordinator"); rc >= 0) return rc;

  p2p::CoordinatorOptions opts;
  auto listen = p2p::parseHostPort(flags.get("listen"), /*allow_port_zero=*/true);
  if (!listen) return reportFailure(listen.status().withContext("--listen"));
  opts.listen = *listen;
  auto interval = flags.getInt("heartbeat-interval", 10, 600000);
  auto timeout = flags.getInt("heartbeat-timeout", 20, 3600000);
  auto handshake = flags.getInt("handshake-timeout", 10, 600000);
  for (const auto* r : {&interval, &timeout, &handshake}) {
    if (!*r) return reportFailure(r->status());
  }
  opts.heartbeat_interval = Millis(*interval);
  opts.heartbeat_timeout = Millis(*timeout);
  opts.handshake_timeout = Millis(*handshake);

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
  // The coordinator is created, used and destroyed on the network thread.
  auto shutdown = [&] {
    std::promise<void> done;
    net.post([&] {
      coord->shutdown();
      coord.reset();
      done.set_value();
    });
    done.get_future().wait();
  };
  if (flags.isSet("port-file")) {
    if (Status st = writeFileAtomic(flags.get("port-file"), fmt::format("{}\n", coord->port()));
        !st.isOk()) {
      shutdown();
      return reportFailure(st);
    }
  }
  std::mutex mu;
  std::condition_variable cv;
  int signal = 0;
  {
    p2p::SignalWatch signals(net, {SIGINT, SIGTERM}, [&](int sig) {
      std::lock_guard lock(mu);
      signal = sig;
      cv.notify_all();
    });
    std::unique_lock lock(mu);
    cv.wait(lock, [&] { return signal != 0; });
  }
  LOG_INFO(kLogCoord, "signal {}: shutting down", signal);
  shutdown();
  LOG_INFO(kLogCoord, "stopped");
  return 0;
}

}  // namespace loco::cli
