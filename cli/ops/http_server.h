#pragma once
// The `--http HOST:PORT` endpoint of every loco process (coordinator, peers): a few GET routes
// (/metrics, /api/status, /healthz, the coordinator's dashboard at /) served by Debian's
// cpp-httplib on a small pool of its own threads, never on the network or training thread.
//
// Off unless --http is given; `loco local` binds it to 127.0.0.1. Only GET and HEAD are
// answered; requests are bounded (read/write timeouts, payload limit, keep-alive count), so a
// slow or hostile client ties up one pool thread for a few seconds at most.
//
// Thread rules: handlers run on the server's threads, concurrently; they must be thread-safe and
// return within a few seconds (they answer 503 when what they wait for does not come in time).
// start() and the destructor are called from one thread; the destructor stops and joins.

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>

#include "p2p/address.h"
#include "p2p/base/status.h"

namespace httplib {
class Server;
}

namespace loco::ops {

struct HttpResponse {
  int status = 200;
  std::string content_type = "text/plain; charset=utf-8";
  std::string body;
};

using HttpHandler = std::function<HttpResponse()>;

class HttpServer {
 public:
  // Binds `listen` (port 0: any free port) and serves `routes` (exact paths). Errors:
  // kUnavailable when the address cannot be bound (in use, not local).
  static Result<std::unique_ptr<HttpServer>> start(const p2p::HostPort& listen,
                                                   std::map<std::string, HttpHandler> routes);
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  std::uint16_t port() const { return port_; }
  // "http://HOST:PORT" as a browser on this machine would open it (a wildcard host: 127.0.0.1).
  std::string url() const;

 private:
  HttpServer() = default;
  std::unique_ptr<httplib::Server> server_;
  std::thread thread_;
  std::string host_;
  std::uint16_t port_ = 0;
};

// The HTTP routes every process serves: /metrics (the registry in Prometheus text format) and
// /healthz, which answers 200 "ok" while `healthy` returns an empty string and 503 with its
// reason otherwise.
std::map<std::string, HttpHandler> baseRoutes(std::function<std::string()> healthy);

}  // namespace loco::ops
