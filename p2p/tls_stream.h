#pragma once
// TLS 1.3 under the Stream interface (ARCHITECTURE.md §10). Every connection a process opens or
// accepts goes through wrap(): in TLS mode it becomes a TlsStream (asio::ssl over OpenSSL, TLS 1.3
// only, mutual authentication against the run CA), otherwise a plain TcpStream. Connection,
// links and the collectives above see the same Stream either way.
//
// The handshake runs lazily on the first read or write, so callers create a Connection exactly
// as before and its first-frame deadline bounds the handshake too. A failed handshake completes
// the pending read/write with an error and failureReason() says why ("certificate verify
// failed", "the far end presented id X, expected Y", "a plaintext client", ...).
//
// The mode is process-wide and set once at start, before any connection (a process is one
// peer with one certificate). Unset means plaintext, for in-process tests; the commands
// require TLS material or an explicit --insecure.
//
// Internal to p2p/ (ASIO types). Thread rules: use()/useInsecure() before connections exist;
// expectPeerAt() from any thread; streams on their network thread.

#include <asio.hpp>

#include <memory>
#include <string>

#include "p2p/base/status.h"
#include "p2p/stream.h"

namespace loco::p2p::tls {

struct Credentials {
  std::string ca_pem;    // the run CA: what the far end's chain must end in
  std::string cert_pem;  // ours, signed by the CA; carries our id (crypto/ca.h)
  std::string key_pem;
};

enum class Mode { kUnset, kInsecure, kTls };
// Builds the TLS contexts; kInvalidArgument when the material does not load or does not match.
Status use(const Credentials& credentials);
// Explicit plaintext (`--insecure`): logs a warning unless `warn` is false (one-shot clients
// whose output is read by machines, like `loco status --json`).
void useInsecure(bool warn = true);
Mode mode();
// The id in our own certificate ("" without TLS).
std::string selfId();

// The member id the coordinator announced at a link address ("HOST:PORT"): a dialed link
// stream must present a certificate for it. Unknown addresses accept any certificate of the run.
void expectPeerAt(const std::string& address, const std::string& id);
std::string expectedPeerAt(const std::string& address);

enum class Role { kClient, kServer };
struct WrapOptions {
  Role role = Role::kClient;
  // Client: the id the server's certificate must carry ("" any valid id of the run).
  std::string expected_id;
  // Server: a client without a certificate is refused in the handshake. The coordinator turns
  // it off to let a new peer enroll (it then accepts only Enroll from such a connection).
  bool require_client_cert = true;
};
std::unique_ptr<Stream> wrap(asio::ip::tcp::socket socket, const WrapOptions& options);

// A client stream for enrolling, without a certificate of our own: the server is accepted only
// when its chain holds a CA whose SHA-256 fingerprint is `pinned_ca_fingerprint` and its
// certificate, signed by that CA, carries the coordinator's id. Works in any mode.
std::unique_ptr<Stream> wrapPinned(asio::ip::tcp::socket socket,
                                   const std::string& pinned_ca_fingerprint);

}  // namespace loco::p2p::tls
