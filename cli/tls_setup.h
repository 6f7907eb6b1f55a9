#pragma once
// Transport security for the commands (ARCHITECTURE.md §10): which flags select TLS or
// plaintext, where a process's certificate comes from, and enrollment with a join string.
// Blocking (files, key generation, one enrollment round trip). Call before any connection.

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "cli/flags.h"
#include "crypto/ca.h"
#include "crypto/token.h"
#include "p2p/address.h"
#include "p2p/base/clock.h"
#include "p2p/base/status.h"

namespace loco::cli {

// --insecure, --tls-dir, and (with_ca) --ca.
std::vector<FlagSpec> securityFlagSpecs(bool with_ca);

// TLS from --ca (a certificate for `self_id` signed on the spot) or --tls-dir (ca.pem, cert.pem,
// key.pem), or plaintext with --insecure. kInvalidArgument when none or both are given.
// `warn_insecure` false: --insecure logs nothing (one-shot clients).
Status setUpSecurity(const Flags& flags, const std::string& self_id, bool warn_insecure = true);

// TLS from a directory holding ca.pem, cert.pem and key.pem (0600).
Status useTlsDir(const std::string& dir);

// Our key and a certificate for `id` signed by `ca`, written to `dir` (made 0700): key.pem
// (0600), cert.pem, ca.pem.
Status issueInto(const crypto::RunCa& ca, const std::string& id, const std::string& dir,
                 std::chrono::seconds lifetime);

// Whether `dir` holds a certificate for `id` from the CA pinned by `ca_fingerprint`, valid for
// at least `margin` more (or a third of its lifetime, when that is shorter).
bool tlsDirUsable(const std::string& dir, const std::string& id, const std::string& ca_fingerprint,
                  std::chrono::seconds margin);

// Enrolls `id` with the coordinator of `join` using `token` and writes the result to `dir`
// (as issueInto). kUnauthenticated with the reason when refused.
Status enrollInto(const crypto::JoinString& join, const std::string& token, const std::string& id,
                  const std::string& dir, Deadline deadline);

// "90s", "30m", "24h", "7d" in seconds; "0" means never. `flag` names it in the error.
Result<std::int64_t> parseDurationSeconds(const std::string& text, const std::string& flag);

// The join token from --join-token/LOCO_JOIN_TOKEN, --token-file, or the join string, in that
// order; "" when none.
Result<std::string> joinToken(const Flags& flags, const crypto::JoinString& join);

// Renews the certificate in `dir` (for `id`) with one of `coordinators` once two thirds of its
// lifetime have passed: a new key, the coordinator signs it over a connection that presents the
// current certificate, the files are replaced and the process's TLS contexts swapped
// (tls::use). Connections already open keep their sessions; new ones use the new certificate,
// so nothing is dropped. Failures are logged and retried (at most every 30 s) until expiry.
// A thread of its own; the destructor stops it (blocking at most one renewal attempt, 10 s).
class CertificateRenewer {
 public:
  CertificateRenewer(std::string dir, std::string id, std::vector<p2p::HostPort> coordinators);
  ~CertificateRenewer();
  CertificateRenewer(const CertificateRenewer&) = delete;
  CertificateRenewer& operator=(const CertificateRenewer&) = delete;

 private:
  // One look at the certificate (renewing it when due); returns how long to wait for the next.
  std::chrono::seconds step();

  const std::string dir_;
  const std::string id_;
  const std::vector<p2p::HostPort> coordinators_;
  bool expired_logged_ = false;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::thread thread_;  // last: starts after the members above exist
};

}  // namespace loco::cli
