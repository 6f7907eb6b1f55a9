#include "cli/ops/doctor_tls.h"

#include <fmt/format.h>

#include <ctime>

#include "crypto/ca.h"
#include "p2p/base/text.h"

namespace loco::ops {
namespace {

std::string utc(std::int64_t unix_s) {
  std::time_t t = static_cast<std::time_t>(unix_s);
  std::tm tm{};
  ::gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%d %H:%M:%S UTC", &tm);
  return buf;
}

std::string duration(std::int64_t s) {
  if (s >= 2 * 86400) return fmt::format("{} days", s / 86400);
  if (s >= 2 * 3600) return fmt::format("{} h", s / 3600);
  if (s >= 120) return fmt::format("{} min", s / 60);
  return fmt::format("{} s", s);
}

constexpr const char* kClockFix =
    "synchronise this clock: `timedatectl set-ntp true` (or `chronyc makestep`), then check "
    "`date -u`";

}  // namespace

std::vector<Check> tlsChecks(const TlsDoctorInputs& in, bool* certificate_usable) {
  std::vector<Check> out;
  bool usable = false;
  const std::string join_example =
      in.join ? fmt::format("loco join 'loco://{}:{}#sha256={}?token=...'", in.join->host,
                            in.join->port, in.join->ca_fingerprint)
              : "loco join 'loco://HOST:PORT#sha256=...?token=...'";
  const std::string new_string_fix =
      in.join ? fmt::format(
                    "ask the organiser for a new join string (they run `loco token create --ca "
                    "RUN_CA --uses 1 --coordinator {}:{}`), then {}",
                    in.join->host, in.join->port, join_example)
              : "ask the organiser for a new join string (`loco token create --ca RUN_CA "
                "--coordinator HOST:PORT`)";

  // The join string.
  if (!in.join_text.empty()) {
    Check c{"join string", CheckLevel::kOk, "", ""};
    if (!in.join) {
      c.level = CheckLevel::kFail;
      c.message = in.join_error;
      c.fix =
          "copy the whole string from the organiser, in single quotes so the shell keeps # ? &: "
          "loco doctor 'loco://HOST:PORT#sha256=<64 hex digits>?token=lt_...'";
    } else {
      c.message = fmt::format("coordinator {}:{}, run CA pinned sha256={}...", in.join->host,
                              in.join->port, in.join->ca_fingerprint.substr(0, 16));
    }
    out.push_back(std::move(c));
  }

  // The certificate this machine holds already.
  Check cert{"certificate", CheckLevel::kOk, "", ""};
  if (in.tls_dir.empty() || !in.tls_dir_exists || in.cert_pem.empty()) {
    cert.level = CheckLevel::kInfo;
    cert.message = in.tls_dir.empty()
                       ? "none: `loco join` enrolls with the join token on its first start"
                       : fmt::format(
                             "none in {} yet: `loco join` enrolls with the join token on "
                             "its first start and keeps it there",
                             in.tls_dir);
  } else if (!in.key_error.empty()) {
    cert.level = CheckLevel::kFail;
    cert.message = in.key_error;
    cert.fix = fmt::format("chmod 600 {}/key.pem (and chmod 700 {})", in.tls_dir, in.tls_dir);
  } else {
    auto info = crypto::inspectCertificate(in.cert_pem);
    auto ca_fp = crypto::certificateFingerprint(in.ca_pem);
    auto verified = crypto::verifyCertificate(in.cert_pem, in.ca_pem, in.now_unix);
    const std::string reenroll = fmt::format(
        "move {} aside (`mv {} {}.old`) and join again with a join string: `loco join` "
        "enrolls anew",
        in.tls_dir, in.tls_dir, in.tls_dir);
    if (!info || !ca_fp) {
      cert.level = CheckLevel::kFail;
      cert.message = fmt::format("{}/cert.pem or ca.pem does not parse", in.tls_dir);
      cert.fix = reenroll;
    } else if (in.join && *ca_fp != in.join->ca_fingerprint) {
      cert.level = CheckLevel::kFail;
      cert.message = fmt::format(
          "the certificate in {} is from another run's CA (sha256={}...), not the one the join "
          "string pins (sha256={}...)",
          in.tls_dir, ca_fp->substr(0, 16), in.join->ca_fingerprint.substr(0, 16));
      cert.fix = fmt::format("use another --identity for this run, or {}", reenroll);
    } else if (!in.identity_id.empty() && info->id != in.identity_id) {
      cert.level = CheckLevel::kFail;
      cert.message = fmt::format("the certificate is for peer {}, but --identity holds peer {}",
                                 shortId(info->id), shortId(in.identity_id));
      cert.fix = reenroll;
    } else if (in.now_unix < info->not_before) {
      cert.level = CheckLevel::kFail;
      cert.message = fmt::format(
          "the certificate is valid only from {} and this clock says {}: this clock is behind "
          "(by more than the 5 minutes certificates allow)",
          utc(info->not_before), utc(in.now_unix));
      cert.fix = kClockFix;
    } else if (in.now_unix >= info->not_after) {
      const bool has_token = !in.token.empty() && crypto::isWellFormedToken(in.token);
      cert.level = has_token ? CheckLevel::kWarn : CheckLevel::kFail;
      cert.message = fmt::format(
          "the certificate expired at {} ({} ago){}", utc(info->not_after),
          duration(in.now_unix - info->not_after),
          has_token ? "; joining enrolls again with the token (one use of it)"
                    : ", and there is no join token to enroll again with (or this clock is "
                      "ahead: compare `date -u` with the coordinator's)");
      if (!has_token) cert.fix = new_string_fix;
    } else if (!verified) {
      cert.level = CheckLevel::kFail;
      cert.message =
          fmt::format("the certificate does not verify: {}", verified.status().message());
      cert.fix = reenroll;
    } else {
      usable = true;
      cert.message = fmt::format(
          "for peer {}, valid until {} ({} more); a running peer renews it before then",
          shortId(info->id), utc(info->not_after), duration(info->not_after - in.now_unix));
    }
  }

  // The token: needed only without a usable certificate.
  Check tok{"join token", CheckLevel::kOk, "", ""};
  if (!in.token_error.empty()) {
    tok.level = usable ? CheckLevel::kWarn : CheckLevel::kFail;
    tok.message = in.token_error;
    tok.fix = in.token_source.starts_with("--token-file ")
                  ? fmt::format("chmod 600 {}", in.token_source.substr(13))
                  : new_string_fix;
  } else if (in.token.empty()) {
    tok.level = usable ? CheckLevel::kOk : CheckLevel::kFail;
    tok.message = usable ? "not needed: the certificate above lets this machine join"
                         : "none: the join string has no ?token=, and neither LOCO_JOIN_TOKEN "
                           "nor --token-file gives one";
    if (!usable)
      tok.fix =
          "add the token the organiser gave you: `LOCO_JOIN_TOKEN=lt_... loco join 'loco://...'` "
          "or --token-file FILE (mode 0600), or use the whole join string with ?token=";
  } else if (!crypto::isWellFormedToken(in.token)) {
    tok.level = usable ? CheckLevel::kWarn : CheckLevel::kFail;
    tok.message = fmt::format(
        "the token from {} is not 'lt_' and 32 hex digits ({} characters): cut off or "
        "changed when it was copied",
        in.token_source, in.token.size());
    tok.fix = "copy it again, whole (in single quotes); " + new_string_fix;
  } else {
    tok.message = fmt::format(
        "well-formed, from {}; {}", in.token_source,
        usable ? "not needed while the certificate is valid"
               : "the coordinator checks its expiry, uses and revocation when this machine "
                 "joins (doctor does not spend a use)");
  }
  out.push_back(std::move(cert));
  // (A join string that does not parse has its own FAIL above; its token is part of it.)
  const bool join_broken = !in.join_text.empty() && !in.join;
  if (!join_broken && (!in.join_text.empty() || !in.token.empty() || !in.token_error.empty()))
    out.push_back(std::move(tok));
  if (certificate_usable) *certificate_usable = usable;
  return out;
}

}  // namespace loco::ops
