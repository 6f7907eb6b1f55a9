#pragma once
// Transport security for the commands (ARCHITECTURE.md §10): which flags select TLS or
// plaintext, where a process's certificate comes from, and enrollment with a join string.
// Blocking (files, key generation, one enrollment round trip). Call before any connection.

#include <chrono>
#include <string>
#include <vector>

#include "cli/flags.h"
#include "crypto/ca.h"
#include "crypto/token.h"
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
// at least `margin` more.
bool tlsDirUsable(const std::string& dir, const std::string& id, const std::string& ca_fingerprint,
                  std::chrono::seconds margin);

// Enrolls `id` with the coordinator of `join` using `token` and writes the result to `dir`
// (as issueInto). kUnauthenticated with the reason when refused.
Status enrollInto(const crypto::JoinString& join, const std::string& token, const std::string& id,
                  const std::string& dir, Deadline deadline);

// The join token from --join-token/LOCO_JOIN_TOKEN, --token-file, or the join string, in that
// order; "" when none.
Result<std::string> joinToken(const Flags& flags, const crypto::JoinString& join);

}  // namespace loco::cli
