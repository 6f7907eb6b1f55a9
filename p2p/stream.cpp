#include "p2p/stream.h"

#include <netinet/in.h>
#include <netinet/tcp.h>

#include "p2p/net.h"

namespace loco::p2p {

TcpStream::TcpStream(asio::ip::tcp::socket socket) : socket_(std::move(socket)) {
  std::error_code ec;
  auto r = socket_.remote_endpoint(ec);
  remote_ = ec ? "?" : endpointString(r);
  auto l = socket_.local_endpoint(ec);
  local_ = ec ? "?" : endpointString(l);
}

void TcpStream::asyncReadSome(asio::mutable_buffer buf, IoHandler done) {
  socket_.async_read_some(buf, std::move(done));
}

void TcpStream::asyncWriteAll(const std::vector<asio::const_buffer>& bufs, IoHandler done) {
  asio::async_write(socket_, bufs, transferAllAtOnce, std::move(done));
}

void TcpStream::setUserTimeout(Millis timeout) {
  setTcpUserTimeout(socket_, timeout);
}

double TcpStream::rttSeconds() const {
  tcp_info info{};
  socklen_t len = sizeof(info);
  if (::getsockopt(const_cast<asio::ip::tcp::socket&>(socket_).native_handle(), IPPROTO_TCP,
                   TCP_INFO, &info, &len) != 0) {
    return 0;
  }
  return info.tcpi_rtt * 1e-6;
}

void TcpStream::close() {
  std::error_code ignored;
  socket_.shutdown(asio::ip::tcp::socket::shutdown_both, ignored);
  socket_.close(ignored);
}

}  // namespace loco::p2p
