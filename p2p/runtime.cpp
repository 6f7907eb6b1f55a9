#include "p2p/runtime.h"

#include <pthread.h>
#include <sys/resource.h>

#include <future>
#include <thread>

#include "p2p/base/log.h"
#include "p2p/net.h"

namespace loco::p2p {

struct NetworkThread::Impl {
  asio::io_context io;
  asio::executor_work_guard<asio::io_context::executor_type> guard{asio::make_work_guard(io)};
  std::thread thread;
};

NetworkThread::NetworkThread(std::string name) : impl_(std::make_unique<Impl>()) {
  impl_->thread = std::thread([io = &impl_->io, name] {
    // For top, perf and gdb (15 characters at most).
    ::pthread_setname_np(::pthread_self(), name.substr(0, 15).c_str());
    for (;;) {
      try {
        io->run();
        return;
      } catch (const std::exception& e) {
        // A handler threw: a bug, but one connection's bug must not kill the process.
        LOG_ERROR(kLogP2p, "network thread: handler threw '{}'; continuing", e.what());
      }
    }
  });
}

NetworkThread::~NetworkThread() {
  stop();
}

void NetworkThread::post(std::function<void()> fn) {
  asio::post(impl_->io, std::move(fn));
}

bool NetworkThread::inThisThread() const {
  return std::this_thread::get_id() == impl_->thread.get_id();
}

void NetworkThread::stop() {
  impl_->guard.reset();
  impl_->io.stop();
  if (impl_->thread.joinable() && !inThisThread()) impl_->thread.join();
}

asio::io_context& NetworkThread::context() {
  return impl_->io;
}

// ---- Timer -------------------------------------------------------------------------------------

struct Timer::Impl {
  explicit Impl(asio::io_context& io) : timer(io) {}
  asio::steady_timer timer;
  // Bumped by every start and cancel: a completion that was already queued when its timer was
  // cancelled or restarted sees a newer generation and does nothing.
  std::uint64_t generation = 0;
};

Timer::Timer(NetworkThread& net) : impl_(std::make_shared<Impl>(net.context())) {}

Timer::~Timer() {
  cancel();
}

void Timer::startAfter(Millis delay, std::function<void()> fn) {
  startAt(Clock::now() + delay, std::move(fn));
}

void Timer::startAt(TimePoint at, std::function<void()> fn) {
  const std::uint64_t gen = ++impl_->generation;
  impl_->timer.expires_at(at);
  std::weak_ptr<Impl> weak = impl_;
  impl_->timer.async_wait([weak, gen, fn = std::move(fn)](const std::error_code& ec) {
    auto impl = weak.lock();
    if (ec || !impl || impl->generation != gen) return;
    fn();
  });
}

void Timer::cancel() {
  ++impl_->generation;
  impl_->timer.cancel();
}

// ---- SignalWatch -------------------------------------------------------------------------------

struct SignalWatch::Impl {
  explicit Impl(asio::io_context& io) : signals(io) {}
  asio::signal_set signals;
  std::function<void(int)> on_signal;
  LifetimeGuard lifetime;

  void arm() {
    signals.async_wait([this, alive = lifetime.watch()](const std::error_code& ec, int sig) {
      if (ec || alive.expired()) return;
      on_signal(sig);
      arm();
    });
  }
};

namespace {
// Runs `fn` on the network thread and waits for it (directly when already there).
void runOn(NetworkThread& net, const std::function<void()>& fn) {
  if (net.inThisThread()) return fn();
  std::promise<void> done;
  net.post([&] {
    fn();
    done.set_value();
  });
  done.get_future().wait();
}
}  // namespace

SignalWatch::SignalWatch(NetworkThread& net, std::initializer_list<int> signals,
                         std::function<void(int)> on_signal)
    : net_(net) {
  std::vector<int> list(signals);
  runOn(net_, [&] {
    impl_ = std::make_unique<Impl>(net_.context());
    impl_->on_signal = std::move(on_signal);
    for (int sig : list) impl_->signals.add(sig);
    impl_->arm();
  });
}

SignalWatch::~SignalWatch() {
  runOn(net_, [&] { impl_.reset(); });
}

// ---- process-wide helpers ----------------------------------------------------------------------

void raiseFileLimit() {
  rlimit rl{};
  if (::getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &rl);
  }
}

std::string advertiseAddress(const HostPort& listen, const HostPort& toward, std::uint16_t port) {
  if (listen.host != "0.0.0.0" && listen.host != "::")
    return HostPort{listen.host, port}.toString();
  auto eps = resolve(toward);
  if (eps) {
    asio::io_context io;
    asio::ip::udp::socket s(io);
    std::error_code ec;
    s.connect(asio::ip::udp::endpoint(eps->front().address(), eps->front().port()), ec);
    if (!ec) {
      auto local = s.local_endpoint(ec);
      if (!ec) return HostPort{local.address().to_string(), port}.toString();
    }
  }
  return HostPort{"127.0.0.1", port}.toString();
}

}  // namespace loco::p2p
