#include "cli/tls_setup.h"

#include <sys/stat.h>

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <ctime>
#include <fstream>
#include <sstream>

#include "crypto/identity.h"
#include "p2p/address.h"
#include "p2p/base/log.h"
#include "p2p/base/metrics.h"
#include "p2p/status_client.h"
#include "p2p/tls_stream.h"

namespace loco::cli {
namespace {

std::int64_t nowUnix() {
  return static_cast<std::int64_t>(std::time(nullptr));
}

std::string readFile(const std::string& path) {
  std::ifstream f(path);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

Status writeDir(const std::string& dir, const std::string& key_pem, const std::string& cert_pem,
                const std::string& ca_pem) {
  if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
    return Status(StatusCode::kIoError, fmt::format("cannot create {}", dir));
  }
  for (auto [name, text] : {std::pair{"/key.pem", &key_pem}, std::pair{"/cert.pem", &cert_pem},
                            std::pair{"/ca.pem", &ca_pem}}) {
    if (Status st = crypto::writePrivateFile(dir + name, *text); !st.isOk()) return st;
  }
  return Status();
}

}  // namespace

std::vector<FlagSpec> securityFlagSpecs(bool with_ca) {
  std::vector<FlagSpec> specs{
      {"insecure",
       "plaintext, unauthenticated connections (every side of a run must agree); logs a warning",
       "", true},
      {"tls-dir", "directory with this process's TLS material: ca.pem, cert.pem, key.pem (0600)",
       ""}};
  if (with_ca) {
    specs.push_back({"ca",
                     "the run CA's directory (loco ca init): TLS with a certificate signed on the "
                     "spot; the coordinator also enrolls peers presenting join tokens",
                     ""});
  }
  return specs;
}

Status setUpSecurity(const Flags& flags, const std::string& self_id, bool warn_insecure) {
  const bool insecure = flags.getBool("insecure");
  const bool has_ca = flags.isSet("ca") && !flags.get("ca").empty();
  const bool has_dir = flags.isSet("tls-dir") && !flags.get("tls-dir").empty();
  if (insecure && (has_ca || has_dir)) {
    return Status(StatusCode::kInvalidArgument,
                  "--insecure together with TLS material (--ca/--tls-dir): choose one");
  }
  if (insecure) {
    p2p::tls::useInsecure(warn_insecure);
    return Status();
  }
  p2p::tls::Credentials cr;
  if (has_ca) {
    auto ca = crypto::RunCa::load(flags.get("ca"));
    if (!ca) return ca.status();
    auto key = crypto::generateKeyPem();
    if (!key) return key.status();
    auto pub = crypto::publicKeyPem(*key);
    if (!pub) return pub.status();
    auto cert = ca->issue(self_id, *pub, std::chrono::hours(24 * 7));
    if (!cert) return cert.status();
    cr = {ca->certPem(), *cert, *key};
  } else if (has_dir) {
    return useTlsDir(flags.get("tls-dir"));
  } else {
    return Status(StatusCode::kInvalidArgument,
                  "connections are TLS: give a join string (loco://...), --tls-dir or --ca; or "
                  "--insecure (LOCO_INSECURE=1) on every side for plaintext");
  }
  Status st = p2p::tls::use(cr);
  if (!st.isOk()) return st.withContext("TLS setup");
  return Status();
}

Status useTlsDir(const std::string& dir) {
  auto key = crypto::readPrivateFile(dir + "/key.pem");
  if (!key) return key.status().withContext("TLS directory");
  Status st = p2p::tls::use({readFile(dir + "/ca.pem"), readFile(dir + "/cert.pem"), *key});
  if (!st.isOk()) return st.withContext(fmt::format("TLS material in {}", dir));
  return Status();
}

Status issueInto(const crypto::RunCa& ca, const std::string& id, const std::string& dir,
                 std::chrono::seconds lifetime) {
  auto key = crypto::generateKeyPem();
  if (!key) return key.status();
  auto pub = crypto::publicKeyPem(*key);
  if (!pub) return pub.status();
  auto cert = ca.issue(id, *pub, lifetime);
  if (!cert) return cert.status();
  return writeDir(dir, *key, *cert, ca.certPem());
}

bool tlsDirUsable(const std::string& dir, const std::string& id, const std::string& ca_fingerprint,
                  std::chrono::seconds margin) {
  const std::string ca_pem = readFile(dir + "/ca.pem");
  auto fp = crypto::certificateFingerprint(ca_pem);
  if (!fp || *fp != ca_fingerprint) return false;
  // Short-lived certificates (--cert-lifetime below the margin) count while a third of their
  // lifetime is left: the renewer (CertificateRenewer) takes over from there.
  const std::string cert_pem = readFile(dir + "/cert.pem");
  auto info = crypto::inspectCertificate(cert_pem);
  if (!info) return false;
  const std::int64_t lifetime = info->not_after - (info->not_before + 300);
  const std::int64_t need =
      std::min<std::int64_t>(static_cast<std::int64_t>(margin.count()), lifetime / 3);
  auto got = crypto::verifyCertificate(cert_pem, ca_pem, nowUnix() + need);
  if (!got || *got != id) return false;
  // key.pem and cert.pem are two writes: a crash between them (a renewal) leaves a new key
  // beside the old certificate, which only enrolling again repairs.
  auto key = crypto::readPrivateFile(dir + "/key.pem");
  return key && crypto::keyMatchesCertificate(*key, cert_pem);
}

Status enrollInto(const crypto::JoinString& join, const std::string& token, const std::string& id,
                  const std::string& dir, Deadline deadline) {
  if (token.empty()) {
    return Status(StatusCode::kInvalidArgument,
                  "joining needs a token: in the join string (?token=), LOCO_JOIN_TOKEN or "
                  "--token-file");
  }
  auto key = crypto::generateKeyPem();
  if (!key) return key.status();
  auto pub = crypto::publicKeyPem(*key);
  if (!pub) return pub.status();
  auto reply = p2p::enrollWith(p2p::HostPort{join.host, join.port}, join.ca_fingerprint,
                               p2p::EnrollMsg{token, id, *pub}, deadline);
  if (!reply) return reply.status();
  // Trust only what the pin vouches for.
  auto fp = crypto::certificateFingerprint(reply->ca_pem);
  if (!fp || *fp != join.ca_fingerprint) {
    return Status(StatusCode::kUnauthenticated,
                  "the coordinator sent a CA that does not match the join string's pin");
  }
  auto got = crypto::verifyCertificate(reply->cert_pem, reply->ca_pem, nowUnix());
  if (!got || *got != id) {
    return Status(StatusCode::kUnauthenticated,
                  "the coordinator sent a certificate that is not ours");
  }
  return writeDir(dir, *key, reply->cert_pem, reply->ca_pem);
}

Result<std::int64_t> parseDurationSeconds(const std::string& text, const std::string& flag) {
  auto bad =
      Status(StatusCode::kInvalidArgument,
             fmt::format("{}: '{}' is not a duration like 30m, 24h or 7d (0: never)", flag, text));
  if (text == "0") return 0;
  if (text.size() < 2) return bad;
  std::int64_t n = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size() - 1, n);
  if (ec != std::errc() || end != text.data() + text.size() - 1 || n <= 0) return bad;
  switch (text.back()) {
    case 's':
      return n;
    case 'm':
      return n * 60;
    case 'h':
      return n * 3600;
    case 'd':
      return n * 86400;
    default:
      return bad;
  }
}

Result<std::string> joinToken(const Flags& flags, const crypto::JoinString& join) {
  if (flags.isSet("join-token") && !flags.get("join-token").empty()) return flags.get("join-token");
  if (flags.isSet("token-file") && !flags.get("token-file").empty()) {
    auto text = crypto::readPrivateFile(flags.get("token-file"));
    if (!text) return text.status().withContext("--token-file");
    std::string t = *text;
    while (!t.empty() && (t.back() == '\n' || t.back() == '\r' || t.back() == ' ')) t.pop_back();
    return t;
  }
  return join.token;
}

CertificateRenewer::CertificateRenewer(std::string dir, std::string id,
                                       std::vector<p2p::HostPort> coordinators)
    : dir_(std::move(dir)),
      id_(std::move(id)),
      coordinators_(std::move(coordinators)),
      thread_([this] {
        std::unique_lock lock(mu_);
        while (!stop_) {
          lock.unlock();
          const std::chrono::seconds wait = step();
          lock.lock();
          cv_.wait_for(lock, wait, [this] { return stop_; });
        }
      }) {}

CertificateRenewer::~CertificateRenewer() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

std::chrono::seconds CertificateRenewer::step() {
  using std::chrono::seconds;
  const std::string ca_pem = readFile(dir_ + "/ca.pem");
  auto info = crypto::inspectCertificate(readFile(dir_ + "/cert.pem"));
  if (!info) {
    LOG_WARN(kLogPeer, "cannot read our certificate in {} to renew it: {}", dir_,
             info.status().message());
    return seconds(60);
  }
  // Certificates are backdated 5 minutes for clock skew (crypto/ca.h).
  const std::int64_t issued = info->not_before + 300;
  const std::int64_t renew_at = issued + (info->not_after - issued) * 2 / 3;
  const std::int64_t now = nowUnix();
  if (now < renew_at) return seconds(std::max<std::int64_t>(1, renew_at - now));
  const std::int64_t left = info->not_after - now;
  if (left <= 0) {
    if (!expired_logged_) {
      LOG_ERROR(kLogPeer,
                "our certificate expired without being renewed: open connections go on, new ones "
                "fail; join again with a new join token (loco token create)");
      expired_logged_ = true;
    }
    return seconds(60);
  }
  auto key = crypto::generateKeyPem();
  auto pub = key ? crypto::publicKeyPem(*key) : Result<std::string>(key.status());
  Status last = pub.status();
  for (std::size_t i = 0; pub && i < coordinators_.size(); ++i) {
    auto reply = p2p::renewWith(coordinators_[i], p2p::EnrollMsg{"", id_, *pub},
                                Deadline::after(Millis(10000)));
    if (!reply) {
      last = reply.status();
      continue;
    }
    auto got = crypto::verifyCertificate(reply->cert_pem, ca_pem, nowUnix());
    if (!got || *got != id_) {
      last = Status(StatusCode::kUnauthenticated,
                    "the coordinator sent a certificate that is not ours or not from our CA");
      continue;
    }
    Status st = writeDir(dir_, *key, reply->cert_pem, ca_pem);
    if (st.isOk()) st = p2p::tls::use({ca_pem, reply->cert_pem, *key});
    if (!st.isOk()) {
      last = st;
      break;
    }
    counter("tls.renewed").inc();
    auto renewed = crypto::inspectCertificate(reply->cert_pem);
    LOG_INFO(kLogPeer, "renewed our certificate with coordinator {}: valid for {} s more",
             coordinators_[i].toString(), renewed ? renewed->not_after - nowUnix() : 0);
    return seconds(1);
  }
  counter("tls.renew_failed").inc();
  const std::int64_t retry = std::clamp<std::int64_t>(left / 10, 1, 30);
  LOG_WARN(kLogPeer, "renewing our certificate failed ({} s before it expires): {}; again in {} s",
           left, last.message(), retry);
  return seconds(retry);
}

}  // namespace loco::cli
