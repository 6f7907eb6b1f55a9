#pragma once
// A reliable, ordered byte stream: plain TCP today, TLS (asio::ssl::stream) later. Everything
// above works on this interface, so TLS slots in by adding one implementation here.
// All calls and completions happen on the owning network thread.

#include <asio.hpp>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "p2p/base/clock.h"

namespace loco::p2p {

class Stream {
 public:
  using IoHandler = std::function<void(const std::error_code&, std::size_t)>;
  virtual ~Stream() = default;
  // Completes after at least one byte (or an error).
  virtual void asyncReadSome(asio::mutable_buffer buf, IoHandler done) = 0;
  // Completes after every byte of `bufs` was written (or an error).
  virtual void asyncWriteAll(const std::vector<asio::const_buffer>& bufs, IoHandler done) = 0;
  // Cancels outstanding operations (they complete with operation_aborted) and closes.
  virtual void close() = 0;
  virtual std::string remoteAddress() const = 0;
  virtual std::string localAddress() const = 0;
  // Kernel-level backstop behind heartbeats: unacknowledged data older than this kills the
  // connection (TCP_USER_TIMEOUT for TCP). 0 restores the system default.
  virtual void setUserTimeout(Millis timeout) = 0;
  // The transport's smoothed round-trip time in seconds; 0 when it has none (TCP_INFO for TCP).
  virtual double rttSeconds() const { return 0; }
};

class TcpStream final : public Stream {
 public:
  explicit TcpStream(asio::ip::tcp::socket socket);
  void asyncReadSome(asio::mutable_buffer buf, IoHandler done) override;
  void asyncWriteAll(const std::vector<asio::const_buffer>& bufs, IoHandler done) override;
  void close() override;
  std::string remoteAddress() const override { return remote_; }
  std::string localAddress() const override { return local_; }
  void setUserTimeout(Millis timeout) override;
  double rttSeconds() const override;

 private:
  asio::ip::tcp::socket socket_;
  std::string remote_;
  std::string local_;
};

}  // namespace loco::p2p
