#include "p2p/tls_stream.h"

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include <fmt/format.h>
#include <asio/ssl.hpp>

#include <map>
#include <mutex>

#include "crypto/ca.h"
#include "crypto/identity.h"
#include "p2p/base/log.h"
#include "p2p/base/metrics.h"
#include "p2p/base/text.h"
#include "p2p/frame.h"
#include "p2p/messages.h"
#include "p2p/net.h"

namespace loco::p2p::tls {
namespace {

using SslStream = asio::ssl::stream<asio::ip::tcp::socket>;

// TLS 1.3 suites, AES-GCM first (AES-NI); no older protocol version is ever negotiated.
constexpr const char* kCipherSuites =
    "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256";
constexpr std::uint8_t kTlsHandshakeRecord = 0x16;

struct Contexts {
  std::shared_ptr<asio::ssl::context> client;
  std::string self_id;
  std::string ca_pem, cert_pem;  // public; the key is the client context's, already parsed
  // The server sides are built when first needed: a joining peer needs only the client side to
  // be admitted (each context costs OpenSSL 3 one to two milliseconds of setup and key parsing,
  // a quarter of a loopback admission), and only a coordinator ever serves enrolling clients.
  struct Server {
    std::once_flag once;
    std::shared_ptr<asio::ssl::context> ctx;
  };
  mutable Server server_strict;  // client certificate required
  mutable Server server_open;    // client certificate optional (enrolling)
};

struct Global {
  std::mutex mu;
  Mode mode = Mode::kUnset;
  std::shared_ptr<const Contexts> contexts;
  std::map<std::string, std::string> expected;  // link address -> member id
};
Global& global() {
  static Global g;
  return g;
}

std::string opensslError() {
  unsigned long e = ERR_get_error();
  if (e == 0) return "unknown OpenSSL error";
  char buf[256];
  ERR_error_string_n(e, buf, sizeof(buf));
  ERR_clear_error();
  return buf;
}

void baseSetup(asio::ssl::context& ctx) {
  SSL_CTX* c = ctx.native_handle();
  SSL_CTX_set_min_proto_version(c, TLS1_3_VERSION);
  SSL_CTX_set_max_proto_version(c, TLS1_3_VERSION);
  SSL_CTX_set_ciphersuites(c, kCipherSuites);
  // Links open many connections between the same pair: no session cache worth keeping, and no
  // tickets to hold keys longer than needed.
  SSL_CTX_set_session_cache_mode(c, SSL_SESS_CACHE_OFF);
  SSL_CTX_set_num_tickets(c, 0);
}

// Our certificate chain and key into `ctx`, and the run CA as what the far end must chain to.
// The key comes as PEM (the first context) or already parsed (`key`, from that context), so the
// private key's text is not kept around for the contexts built later.
Status loadInto(asio::ssl::context& ctx, const std::string& ca_pem, const std::string& cert_pem,
                bool with_ca_in_chain, const std::string& key_pem, EVP_PKEY* key = nullptr) {
  std::error_code ec;
  ctx.add_certificate_authority(asio::buffer(ca_pem), ec);
  if (ec) return Status(StatusCode::kInvalidArgument, "the run CA certificate does not load");
  // The chain sent to the far end includes the CA, so a peer that pins only its fingerprint
  // (enrolling) can check it.
  const std::string chain = with_ca_in_chain ? cert_pem + ca_pem : cert_pem;
  ctx.use_certificate_chain(asio::buffer(chain), ec);
  if (ec) return Status(StatusCode::kInvalidArgument, "our certificate does not load");
  if (key != nullptr) {
    if (SSL_CTX_use_PrivateKey(ctx.native_handle(), key) != 1) ec = asio::error::invalid_argument;
  } else {
    ctx.use_private_key(asio::buffer(key_pem), asio::ssl::context::pem, ec);
  }
  if (ec) return Status(StatusCode::kInvalidArgument, "our private key does not load");
  if (SSL_CTX_check_private_key(ctx.native_handle()) != 1) {
    return Status(StatusCode::kInvalidArgument, "our private key does not match our certificate");
  }
  return Status();
}

std::string derOf(X509* cert) {
  unsigned char* der = nullptr;
  int n = cert ? i2d_X509(cert, &der) : 0;
  if (n <= 0) return "";
  std::string bytes(reinterpret_cast<char*>(der), static_cast<std::size_t>(n));
  OPENSSL_free(der);
  return bytes;
}

std::string certId(X509* cert) {
  if (!cert) return "";
  auto info = crypto::inspectCertificate(derOf(cert));
  return info ? info->id : "";
}

bool validRunId(const std::string& id) {
  return id == crypto::kCoordinatorId || crypto::isValidPeerId(id);
}

// The pinned-fingerprint check for enrolling (wrapPinned): replaces OpenSSL's chain building,
// since the enrolling peer has no CA certificate yet, only its fingerprint.
struct Pin {
  std::string fingerprint;
  std::string failure;
};

int pinnedVerify(X509_STORE_CTX* store_ctx, void* arg) {
  auto* pin = static_cast<Pin*>(arg);
  X509* leaf = X509_STORE_CTX_get0_cert(store_ctx);
  STACK_OF(X509)* chain = X509_STORE_CTX_get0_untrusted(store_ctx);
  X509* ca = nullptr;
  for (int i = 0; chain && i < sk_X509_num(chain); ++i) {
    X509* c = sk_X509_value(chain, i);
    auto hex = crypto::certificateFingerprint(derOf(c));
    if (hex && *hex == pin->fingerprint) ca = c;
  }
  auto refuse = [&](std::string why) {
    pin->failure = std::move(why);
    X509_STORE_CTX_set_error(store_ctx, X509_V_ERR_CERT_UNTRUSTED);
    return 0;
  };
  if (!ca || !leaf) {
    return refuse(fmt::format(
        "the coordinator's certificate does not chain to the pinned CA sha256={}: a different "
        "run, or a man in the middle; check the join string",
        pin->fingerprint.substr(0, 16)));
  }
  X509_STORE* store = X509_STORE_new();
  X509_STORE_add_cert(store, ca);
  X509_STORE_CTX* v = X509_STORE_CTX_new();
  X509_STORE_CTX_init(v, store, leaf, nullptr);
  const int ok = X509_verify_cert(v);
  const int err = X509_STORE_CTX_get_error(v);
  X509_STORE_CTX_free(v);
  X509_STORE_free(store);
  if (ok != 1) {
    return refuse(
        fmt::format("the coordinator's certificate does not verify against the pinned "
                    "CA: {}",
                    X509_verify_cert_error_string(err)));
  }
  if (certId(leaf) != crypto::kCoordinatorId) {
    return refuse("the server's certificate is not a coordinator's (it is a peer's)");
  }
  return 1;
}

struct Impl : std::enable_shared_from_this<Impl> {
  Impl(asio::ip::tcp::socket s, std::shared_ptr<asio::ssl::context> c, WrapOptions o,
       std::shared_ptr<Pin> p)
      : ctx(std::move(c)), ssl(std::move(s), *ctx), options(std::move(o)), pin(std::move(p)) {}

  enum class State { kIdle, kHandshaking, kReady, kFailed };
  std::shared_ptr<asio::ssl::context> ctx;
  SslStream ssl;
  WrapOptions options;
  std::shared_ptr<Pin> pin;
  State state = State::kIdle;
  std::string peer_id;
  std::string failure;
  std::error_code failure_ec;
  std::array<std::uint8_t, 1> peek{};
  // Connection keeps at most one read and one write outstanding.
  std::function<void()> pending_read;
  std::function<void()> pending_write;
  std::function<void(const std::error_code&)> pending_read_fail;
  std::function<void(const std::error_code&)> pending_write_fail;

  asio::ip::tcp::socket& socket() { return ssl.next_layer(); }

  void start() {
    if (state != State::kIdle) return;
    state = State::kHandshaking;
    if (options.role == Role::kServer) return peekFirstByte();
    handshake();
  }

  // A plaintext loco client sends a frame ('L', the magic's first byte) where TLS sends a
  // handshake record: answer it in its own language, so it can say what is wrong.
  void peekFirstByte() {
    auto self = shared_from_this();
    socket().async_receive(asio::buffer(peek), asio::socket_base::message_peek,
                           [self](const std::error_code& ec, std::size_t n) {
                             if (self->state != State::kHandshaking) return;
                             // Closed before sending anything: a port check (the
                             // coordinator's reachability dial, a scanner), not a refusal.
                             if (ec || n == 0) return self->fail(ec ? ec : asio::error::eof, "");
                             if (self->peek[0] == kTlsHandshakeRecord) return self->handshake();
                             self->refusePlaintext();
                           });
  }

  void refusePlaintext() {
    const std::string why =
        "this endpoint requires TLS and a plaintext (--insecure) client connected; run every "
        "side with TLS (a join string or --tls-dir), or every side with --insecure";
    RefusedMsg refused{StatusCode::kUnauthenticated, why};
    auto payload = encodeRefused(refused);
    FrameHeader h;
    h.type = MsgType::kRefused;
    h.length = static_cast<std::uint32_t>(payload.size());
    auto frame = std::make_shared<std::vector<std::uint8_t>>(encodeFrame(h, payload));
    auto self = shared_from_this();
    counter("tls.refused", {{"reason", "plaintext_client"}}).inc();
    asio::async_write(socket(), asio::buffer(*frame),
                      [self, frame, why](const std::error_code&, std::size_t) {
                        self->fail(asio::error::access_denied, why);
                      });
  }

  void handshake() {
    auto self = shared_from_this();
    ssl.async_handshake(options.role == Role::kClient ? asio::ssl::stream_base::client
                                                      : asio::ssl::stream_base::server,
                        [self](const std::error_code& ec) { self->onHandshake(ec); });
  }

  void onHandshake(const std::error_code& ec) {
    if (state != State::kHandshaking) return;
    if (ec) return fail(ec, describeHandshakeError(ec));
    X509* cert = SSL_get1_peer_certificate(ssl.native_handle());
    peer_id = certId(cert);
    const bool had_cert = cert != nullptr;
    X509_free(cert);
    if (had_cert && !validRunId(peer_id)) {
      counter("tls.refused", {{"reason", "no_id"}}).inc();
      return fail(asio::error::access_denied, "the far end's certificate carries no loco id");
    }
    if (options.role == Role::kClient && !options.expected_id.empty() &&
        peer_id != options.expected_id) {
      counter("tls.refused", {{"reason", "wrong_id"}}).inc();
      return fail(asio::error::access_denied,
                  fmt::format("the far end's certificate is for {}, expected {}: another "
                              "process holds this address, or a stolen certificate",
                              shortId(peer_id), shortId(options.expected_id)));
    }
    state = State::kReady;
    counter("tls.handshakes").inc();
    if (auto r = std::move(pending_read)) r();
    if (auto w = std::move(pending_write)) w();
    pending_read_fail = nullptr;
    pending_write_fail = nullptr;
  }

  std::string describeHandshakeError(const std::error_code& ec) {
    if (pin && !pin->failure.empty()) {
      counter("tls.refused", {{"reason", "pin_mismatch"}}).inc();
      return pin->failure;
    }
    const long verify = SSL_get_verify_result(ssl.native_handle());
    if (verify != X509_V_OK) {
      counter("tls.refused", {{"reason", "certificate"}}).inc();
      return fmt::format(
          "TLS handshake: the far end's certificate is refused ({}); is it from "
          "this run's CA?",
          X509_verify_cert_error_string(verify));
    }
    if (ec == asio::error::eof || ec == asio::ssl::error::stream_truncated ||
        ec == asio::error::connection_reset) {
      counter("tls.refused", {{"reason", "closed"}}).inc();
      return "the far end closed the connection during the TLS handshake: it refused our "
             "certificate, or it runs with --insecure (every side needs the same setting)";
    }
    if (ec == asio::error::operation_aborted) return "TLS handshake aborted";
    counter("tls.refused", {{"reason", "handshake"}}).inc();
    return fmt::format("TLS handshake failed: {}", ec.message());
  }

  void fail(const std::error_code& ec, std::string why) {
    if (state == State::kFailed) return;
    state = State::kFailed;
    failure = std::move(why);
    failure_ec = ec ? ec : asio::error::access_denied;
    // The owner logs the refusal once, with its own context (coordinator, link listener).
    std::error_code ignored;
    socket().close(ignored);
    pending_read = nullptr;
    pending_write = nullptr;
    // Posted, not called: fail() may run inside the owner's close().
    auto ex = socket().get_executor();
    if (auto r = std::move(pending_read_fail)) asio::post(ex, [r, ec = failure_ec] { r(ec); });
    if (auto w = std::move(pending_write_fail)) asio::post(ex, [w, ec = failure_ec] { w(ec); });
  }
};

class TlsStream final : public Stream {
 public:
  explicit TlsStream(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {
    auto& s = impl_->socket();
    std::error_code ec;
    auto r = s.remote_endpoint(ec);
    remote_ = ec ? "?" : endpointString(r);
    auto l = s.local_endpoint(ec);
    local_ = ec ? "?" : endpointString(l);
  }
  ~TlsStream() override { close(); }

  void asyncReadSome(asio::mutable_buffer buf, IoHandler done) override {
    auto impl = impl_;
    switch (impl->state) {
      case Impl::State::kReady:
        return impl->ssl.async_read_some(buf, std::move(done));
      case Impl::State::kFailed:
        return asio::post(impl->socket().get_executor(),
                          [done = std::move(done), ec = impl->failure_ec] { done(ec, 0); });
      default:
        break;
    }
    auto shared = std::make_shared<IoHandler>(std::move(done));
    impl->pending_read = [impl, buf, shared] { impl->ssl.async_read_some(buf, *shared); };
    impl->pending_read_fail = [shared](const std::error_code& ec) { (*shared)(ec, 0); };
    impl->start();
  }

  void asyncWriteAll(const std::vector<asio::const_buffer>& bufs, IoHandler done) override {
    auto impl = impl_;
    switch (impl->state) {
      case Impl::State::kReady:
        return asio::async_write(impl->ssl, bufs, std::move(done));
      case Impl::State::kFailed:
        return asio::post(impl->socket().get_executor(),
                          [done = std::move(done), ec = impl->failure_ec] { done(ec, 0); });
      default:
        break;
    }
    auto shared = std::make_shared<IoHandler>(std::move(done));
    impl->pending_write = [impl, bufs, shared] { asio::async_write(impl->ssl, bufs, *shared); };
    impl->pending_write_fail = [shared](const std::error_code& ec) { (*shared)(ec, 0); };
    impl->start();
  }

  void close() override {
    std::error_code ignored;
    impl_->socket().shutdown(asio::ip::tcp::socket::shutdown_both, ignored);
    impl_->socket().close(ignored);
    if (impl_->state == Impl::State::kIdle || impl_->state == Impl::State::kHandshaking) {
      impl_->fail(asio::error::operation_aborted, "closed during the TLS handshake");
    }
  }
  std::string remoteAddress() const override { return remote_; }
  std::string localAddress() const override { return local_; }
  void setUserTimeout(Millis timeout) override { setTcpUserTimeout(impl_->socket(), timeout); }
  double rttSeconds() const override {
    tcp_info info{};
    socklen_t len = sizeof(info);
    if (::getsockopt(impl_->socket().native_handle(), IPPROTO_TCP, TCP_INFO, &info, &len) != 0) {
      return 0;
    }
    return info.tcpi_rtt * 1e-6;
  }
  std::string peerId() const override { return impl_->peer_id; }
  std::string failureReason() const override { return impl_->failure; }

 private:
  std::shared_ptr<Impl> impl_;
  std::string remote_;
  std::string local_;
};

// The server context for `options`, built on first use from the material the client context
// already loaded; if it should still fail, every handshake on it fails, said once in the log.
std::shared_ptr<asio::ssl::context> serverContext(const Contexts& contexts,
                                                  const WrapOptions& options) {
  Contexts::Server& server =
      options.require_client_cert ? contexts.server_strict : contexts.server_open;
  std::call_once(server.once, [&] {
    auto ctx = std::make_shared<asio::ssl::context>(asio::ssl::context::tls_server);
    baseSetup(*ctx);
    EVP_PKEY* key = SSL_CTX_get0_privatekey(contexts.client->native_handle());
    if (Status st = loadInto(*ctx, contexts.ca_pem, contexts.cert_pem, true, "", key); !st.isOk()) {
      LOG_ERROR(kLogP2p, "TLS server context: {}", st.withContext(opensslError()).message());
    }
    ctx->set_verify_mode(options.require_client_cert
                             ? asio::ssl::verify_peer | asio::ssl::verify_fail_if_no_peer_cert
                             : asio::ssl::verify_peer);
    server.ctx = std::move(ctx);
  });
  return server.ctx;
}

}  // namespace

Status use(const Credentials& cr) {
  auto contexts = std::make_shared<Contexts>();
  auto self = crypto::verifyCertificate(cr.cert_pem, cr.ca_pem,
                                        static_cast<std::int64_t>(std::time(nullptr)));
  if (!self) return self.status().withContext("our TLS certificate");
  contexts->self_id = *self;
  contexts->ca_pem = cr.ca_pem;
  contexts->cert_pem = cr.cert_pem;
  contexts->client = std::make_shared<asio::ssl::context>(asio::ssl::context::tls_client);
  baseSetup(*contexts->client);
  if (Status st = loadInto(*contexts->client, cr.ca_pem, cr.cert_pem, false, cr.key_pem);
      !st.isOk()) {
    return st.withContext(opensslError());
  }
  contexts->client->set_verify_mode(asio::ssl::verify_peer);
  std::lock_guard lock(global().mu);
  global().contexts = std::move(contexts);
  global().mode = Mode::kTls;
  return Status();
}

void useInsecure(bool warn) {
  {
    std::lock_guard lock(global().mu);
    global().mode = Mode::kInsecure;
    global().contexts.reset();
  }
  if (!warn) return;
  LOG_WARN(kLogP2p,
           "--insecure: every connection of this process is plaintext and unauthenticated; anyone "
           "who reaches its ports can read the model and join the run");
}

Mode mode() {
  std::lock_guard lock(global().mu);
  return global().mode;
}

std::string selfId() {
  std::lock_guard lock(global().mu);
  return global().contexts ? global().contexts->self_id : "";
}

void expectPeerAt(const std::string& address, const std::string& id) {
  std::lock_guard lock(global().mu);
  global().expected[address] = id;
}

std::string expectedPeerAt(const std::string& address) {
  std::lock_guard lock(global().mu);
  auto it = global().expected.find(address);
  return it == global().expected.end() ? "" : it->second;
}

std::unique_ptr<Stream> wrap(asio::ip::tcp::socket socket, const WrapOptions& options) {
  std::shared_ptr<const Contexts> contexts;
  {
    std::lock_guard lock(global().mu);
    if (global().mode == Mode::kTls) contexts = global().contexts;
  }
  if (!contexts) return std::make_unique<TcpStream>(std::move(socket));
  auto ctx = options.role == Role::kClient ? contexts->client : serverContext(*contexts, options);
  return std::make_unique<TlsStream>(
      std::make_shared<Impl>(std::move(socket), std::move(ctx), options, nullptr));
}

std::unique_ptr<Stream> wrapPinned(asio::ip::tcp::socket socket,
                                   const std::string& pinned_ca_fingerprint) {
  auto ctx = std::make_shared<asio::ssl::context>(asio::ssl::context::tls_client);
  baseSetup(*ctx);
  auto pin = std::make_shared<Pin>();
  pin->fingerprint = pinned_ca_fingerprint;
  ctx->set_verify_mode(asio::ssl::verify_peer);
  SSL_CTX_set_cert_verify_callback(ctx->native_handle(), pinnedVerify, pin.get());
  WrapOptions options;
  options.role = Role::kClient;
  options.expected_id = crypto::kCoordinatorId;
  return std::make_unique<TlsStream>(
      std::make_shared<Impl>(std::move(socket), std::move(ctx), options, std::move(pin)));
}

}  // namespace loco::p2p::tls
