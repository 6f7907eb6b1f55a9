#pragma once
// The network thread as code above p2p/ sees it (ARCHITECTURE.md §2): post work to it, run a
// callback on it after a delay (Timer) or when a signal arrives (SignalWatch). No ASIO type is
// visible here; p2p/'s own code reaches the io_context through p2p/net.h.

#include <functional>
#include <initializer_list>
#include <memory>
#include <string>

#include "p2p/address.h"
#include "p2p/base/clock.h"

namespace asio {
class io_context;
}

namespace loco::p2p {

// One thread running one io_context (one network thread per process). Work is posted to it; the
// destructor stops and joins it.
class NetworkThread {
 public:
  explicit NetworkThread(std::string name = "loco-net");
  ~NetworkThread();
  NetworkThread(const NetworkThread&) = delete;
  NetworkThread& operator=(const NetworkThread&) = delete;

  // Thread-safe. `fn` runs on the network thread, in posting order.
  void post(std::function<void()> fn);
  bool inThisThread() const;
  // Stops the loop (pending handlers are dropped) and joins. Idempotent.
  void stop();
  // For p2p/ internals (net.h); opaque above p2p/.
  asio::io_context& context();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// A one-shot timer on a network thread. Thread rules: construct, start, cancel and destroy on
// that thread; the callback runs there, and never after cancel(), a restart or destruction (a
// callback already due but not yet run is dropped too).
class Timer {
 public:
  explicit Timer(NetworkThread& net);
  ~Timer();
  Timer(const Timer&) = delete;
  Timer& operator=(const Timer&) = delete;

  // Replaces whatever was pending.
  void startAfter(Millis delay, std::function<void()> fn);
  void startAt(TimePoint at, std::function<void()> fn);
  void cancel();

 private:
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

// Calls `on_signal(signal)` on the network thread when one of `signals` arrives (SIGINT,
// SIGTERM, ...), until destroyed. Construct and destroy on any thread but the network thread's
// own handlers (both block until the network thread has done its part).
class SignalWatch {
 public:
  SignalWatch(NetworkThread& net, std::initializer_list<int> signals,
              std::function<void(int)> on_signal);
  ~SignalWatch();
  SignalWatch(const SignalWatch&) = delete;
  SignalWatch& operator=(const SignalWatch&) = delete;

 private:
  struct Impl;
  NetworkThread& net_;
  std::unique_ptr<Impl> impl_;
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

// Raises the soft open-files limit to the hard limit (floods and many links need fds).
void raiseFileLimit();

// HOST:PORT other peers should use to reach `port` of a listener bound to `listen`: its own host
// unless that is a wildcard, else the local address of the route to `toward` (a UDP connect
// sends no packet; it only picks the route), else 127.0.0.1. Blocking (name resolution).
std::string advertiseAddress(const HostPort& listen, const HostPort& toward, std::uint16_t port);

}  // namespace loco::p2p
