#pragma once
// ASIO plumbing shared by the coordinator, peers and links: the network thread, socket tuning,
// resolution and connecting with a deadline. Internal to p2p/: nothing above p2p/ sees ASIO.

#include <asio.hpp>

#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "p2p/address.h"
#include "p2p/base/clock.h"
#include "p2p/base/status.h"

namespace loco::p2p {

// One thread running one io_context (ARCHITECTURE.md §2: one network thread per process). Work is
// posted to it; the destructor stops and joins it.
class NetworkThread {
 public:
  explicit NetworkThread(std::string name = "loco-net");
  ~NetworkThread();
  NetworkThread(const NetworkThread&) = delete;
  NetworkThread& operator=(const NetworkThread&) = delete;

  asio::io_context& context() { return io_; }
  void post(std::function<void()> fn) { asio::post(io_, std::move(fn)); }
  bool inThisThread() const { return std::this_thread::get_id() == thread_.get_id(); }
  // Stops the loop (pending handlers are dropped) and joins. Idempotent.
  void stop();

 private:
  asio::io_context io_;
  asio::executor_work_guard<asio::io_context::executor_type> guard_;
  std::thread thread_;
};

// Completion handlers that capture `this` outlive their object when it is destroyed with
// operations still pending (they then run with operation_aborted). Such objects own a
// LifetimeGuard; handlers capture guard.watch() and return at once if it expired.
class LifetimeGuard {
 public:
  std::weak_ptr<void> watch() const { return token_; }

 private:
  std::shared_ptr<void> token_ = std::make_shared<int>(0);
};

// TCP_NODELAY always; TCP_USER_TIMEOUT (unacknowledged data older than this kills the
// connection) as the backstop behind application heartbeats. Errors are ignored: tuning is best
// effort and the connection works without it.
void tuneSocket(asio::ip::tcp::socket& socket, Millis user_timeout);
void setTcpUserTimeout(asio::ip::tcp::socket& socket, Millis user_timeout);

// Blocking name resolution (call it off the network thread). kInvalidArgument when the name
// does not resolve.
Result<std::vector<asio::ip::tcp::endpoint>> resolve(const HostPort& hp);

// Connects to the first endpoint that accepts, giving up at `deadline`. `done` runs on the
// socket's executor with the connected socket or kUnavailable (refused) / kTimeout.
void asyncConnect(asio::io_context& io, std::vector<asio::ip::tcp::endpoint> endpoints,
                  Deadline deadline,
                  std::function<void(Result<std::shared_ptr<asio::ip::tcp::socket>>)> done);

// Binds and listens; port 0 picks a free port. SO_REUSEADDR so a restarted coordinator can
// rebind at once.
Result<std::unique_ptr<asio::ip::tcp::acceptor>> listenOn(asio::io_context& io, const HostPort& hp);

// "1.2.3.4:5678" for an endpoint.
std::string endpointString(const asio::ip::tcp::endpoint& ep);

// Raises the soft open-files limit to the hard limit (floods and many links need fds).
void raiseFileLimit();

}  // namespace loco::p2p
