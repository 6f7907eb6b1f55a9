#pragma once
// `loco doctor`'s TLS checks (cli/doctor_cmd.cpp gathers the inputs): the join string, the join
// token, and the certificate this machine already holds, each failure with what to do. Pure
// functions of their inputs (files are read by the caller), so unit tests give them any state.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "cli/ops/doctor_checks.h"
#include "crypto/token.h"

namespace loco::ops {

struct TlsDoctorInputs {
  // The join string as given ("" none); parsed when it parses.
  std::string join_text;
  std::optional<crypto::JoinString> join;
  std::string join_error;  // why it does not parse
  // The token: where it came from ("the join string", "LOCO_JOIN_TOKEN", "--token-file FILE"),
  // the token itself, or why it could not be read (a token file others may read).
  std::string token_source;
  std::string token;
  std::string token_error;
  // The certificate directory `loco join` would use (IDENTITY.tls, or --tls-dir); "" none.
  std::string tls_dir;
  bool tls_dir_exists = false;
  std::string cert_pem, ca_pem;
  std::string key_error;    // readPrivateFile's complaint about key.pem ("" fine)
  std::string identity_id;  // the id in --identity ("" none yet)
  std::int64_t now_unix = 0;
};

// "join string", "token" and "certificate" checks. `certificate_usable` (out, optional): whether
// the certificate lets this machine connect without enrolling again.
std::vector<Check> tlsChecks(const TlsDoctorInputs& in, bool* certificate_usable = nullptr);

}  // namespace loco::ops
