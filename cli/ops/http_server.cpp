#include "cli/ops/http_server.h"

#include <fmt/format.h>
#include <httplib.h>

#include "p2p/base/log.h"
#include "p2p/base/metrics.h"

namespace loco::ops {
namespace {

constexpr int kThreads = 4;             // Prometheus, a browser or two, a health check
constexpr int kIoTimeoutS = 5;          // per read or write on one connection
constexpr std::size_t kKeepAlive = 20;  // requests per connection before it is closed

}  // namespace

Result<std::unique_ptr<HttpServer>> HttpServer::start(const p2p::HostPort& listen,
                                                      std::map<std::string, HttpHandler> routes) {
  std::unique_ptr<HttpServer> self(new HttpServer());
  self->server_ = std::make_unique<httplib::Server>();
  auto& svr = *self->server_;
  svr.new_task_queue = [] { return new httplib::ThreadPool(kThreads); };
  svr.set_read_timeout(kIoTimeoutS, 0);
  svr.set_write_timeout(kIoTimeoutS, 0);
  svr.set_keep_alive_max_count(kKeepAlive);
  svr.set_keep_alive_timeout(kIoTimeoutS);
  svr.set_payload_max_length(4096);  // GET only: nothing legitimate has a body
  svr.set_default_headers({{"Cache-Control", "no-store"}, {"X-Content-Type-Options", "nosniff"}});
  for (auto& [path, handler] : routes) {
    svr.Get(path, [handler = std::move(handler)](const httplib::Request&, httplib::Response& res) {
      HttpResponse r = handler();
      res.status = r.status;
      res.set_content(std::move(r.body), r.content_type.c_str());
    });
  }
  svr.set_exception_handler(
      [](const httplib::Request& req, httplib::Response& res, std::exception_ptr ep) {
        std::string what = "unknown exception";
        try {
          std::rethrow_exception(ep);
        } catch (const std::exception& e) {
          what = e.what();
        } catch (...) {
        }
        LOG_WARN(kLogCli, "http {}: {}", req.path, what);
        res.status = 500;
        res.set_content("internal error\n", "text/plain");
      });
  const std::string& host = listen.host;
  if (listen.port == 0) {
    int port = svr.bind_to_any_port(host);
    if (port <= 0) {
      return Status(
          StatusCode::kUnavailable,
          fmt::format("--http {}: cannot bind (is the address local?)", listen.toString()));
    }
    self->port_ = static_cast<std::uint16_t>(port);
  } else {
    if (!svr.bind_to_port(host, listen.port)) {
      return Status(StatusCode::kUnavailable,
                    fmt::format("--http {}: cannot bind (port in use, or the address is not local)",
                                listen.toString()));
    }
    self->port_ = listen.port;
  }
  self->host_ = host;
  self->thread_ = std::thread([&svr] { svr.listen_after_bind(); });
  LOG_INFO(kLogCli, "http: serving {} (/metrics, /api/status, /healthz)", self->url());
  return self;
}

HttpServer::~HttpServer() {
  if (server_) server_->stop();
  if (thread_.joinable()) thread_.join();
}

std::string HttpServer::url() const {
  std::string host = host_;
  if (host == "0.0.0.0" || host.empty()) host = "127.0.0.1";
  if (host == "::") host = "::1";
  if (host.find(':') != std::string::npos) host = "[" + host + "]";
  return fmt::format("http://{}:{}", host, port_);
}

std::map<std::string, HttpHandler> baseRoutes(std::function<std::string()> healthy) {
  std::map<std::string, HttpHandler> routes;
  routes["/metrics"] = [] {
    return HttpResponse{200, "text/plain; version=0.0.4; charset=utf-8", renderPrometheus()};
  };
  routes["/healthz"] = [healthy = std::move(healthy)] {
    std::string why = healthy();
    if (why.empty()) return HttpResponse{200, "text/plain; charset=utf-8", "ok\n"};
    return HttpResponse{503, "text/plain; charset=utf-8", why + "\n"};
  };
  return routes;
}

}  // namespace loco::ops
