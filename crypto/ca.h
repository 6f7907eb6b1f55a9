#pragma once
// The run's certificate authority (ARCHITECTURE.md §10). `loco ca init` makes a self-signed
// EC P-256 CA in a directory (ca.key mode 0600, ca.pem); the coordinator signs short-lived
// certificates with it. Every certificate binds one identity: its subject alternative name is
// the URI "loco:id:<id>" (a peer id of 32 hex digits, or "coordinator"), so a certificate stolen
// from one peer cannot be used under another id.
//
// PEM text in, PEM text out: no OpenSSL type leaves crypto/. All functions are blocking (file
// I/O, key generation) and thread-safe; RunCa is immutable after load.

#include <chrono>
#include <cstdint>
#include <string>

#include "p2p/base/status.h"

namespace loco::crypto {

// The id a coordinator's certificate carries; never a valid peer id (isValidPeerId).
inline constexpr const char* kCoordinatorId = "coordinator";

// A fresh EC P-256 private key (PEM, PKCS#8).
Result<std::string> generateKeyPem();
// The public half of a private key (PEM SubjectPublicKeyInfo).
Result<std::string> publicKeyPem(const std::string& key_pem);

// Whether `cert_pem` certifies the public half of `key_pem` (a key and certificate written by
// two writes can disagree after a crash between them).
bool keyMatchesCertificate(const std::string& key_pem, const std::string& cert_pem);

// SHA-256 of the certificate's DER, 64 lowercase hex digits (what a join string pins).
Result<std::string> certificateFingerprint(const std::string& cert_pem);

struct CertificateInfo {
  std::string id;               // from the "loco:id:" URI; "" when it has none
  std::int64_t not_before = 0;  // unix seconds
  std::int64_t not_after = 0;
};
// Reads a certificate (PEM or DER). kInvalidArgument when it does not parse.
Result<CertificateInfo> inspectCertificate(const std::string& cert);

// Checks that `cert_pem` is signed by `ca_pem`, valid at `now_unix` and carries an id; returns
// the id. kUnauthenticated says why not.
Result<std::string> verifyCertificate(const std::string& cert_pem, const std::string& ca_pem,
                                      std::int64_t now_unix);

// Writes `content` to `path` with mode 0600 (created fresh through a temporary file and
// rename). kIoError on failure.
Status writePrivateFile(const std::string& path, const std::string& content);
// Reads a file that holds a secret; kFailedPrecondition when group or others may read it.
Result<std::string> readPrivateFile(const std::string& path);

class RunCa {
 public:
  // Creates the CA in `dir` (made 0700 if missing). kAlreadyExists if it holds one already.
  static Result<RunCa> init(const std::string& dir, std::chrono::seconds lifetime);
  // Loads the CA from `dir`; refuses a key file others may read.
  static Result<RunCa> load(const std::string& dir);

  const std::string& dir() const { return dir_; }
  const std::string& certPem() const { return cert_pem_; }
  const std::string& fingerprint() const { return fingerprint_; }

  // A certificate for `id` over `public_key_pem`, valid from 5 minutes ago (clock skew) for
  // `lifetime`, usable for TLS client and server authentication.
  Result<std::string> issue(const std::string& id, const std::string& public_key_pem,
                            std::chrono::seconds lifetime) const;

 private:
  std::string dir_;
  std::string key_pem_;
  std::string cert_pem_;
  std::string fingerprint_;
};

}  // namespace loco::crypto
