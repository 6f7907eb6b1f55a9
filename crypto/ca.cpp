#include "crypto/ca.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <memory>
#include <sstream>

#include "crypto/identity.h"

namespace loco::crypto {
namespace {

constexpr std::string_view kIdUriPrefix = "loco:id:";
constexpr const char* kCaKeyFile = "/ca.key";
constexpr const char* kCaCertFile = "/ca.pem";

struct Free {
  void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
  void operator()(X509* p) const { X509_free(p); }
  void operator()(BIO* p) const { BIO_free(p); }
  void operator()(X509_EXTENSION* p) const { X509_EXTENSION_free(p); }
  void operator()(GENERAL_NAMES* p) const { GENERAL_NAMES_free(p); }
};
template <typename T>
using Ptr = std::unique_ptr<T, Free>;

Status sslError(StatusCode code, std::string_view what) {
  return Status(code, fmt::format("{} (OpenSSL error)", what));
}

Ptr<BIO> memBio(const std::string& text) {
  return Ptr<BIO>(BIO_new_mem_buf(text.data(), static_cast<int>(text.size())));
}

std::string bioText(BIO* bio) {
  char* data = nullptr;
  long n = BIO_get_mem_data(bio, &data);
  return std::string(data, static_cast<std::size_t>(n));
}

Ptr<EVP_PKEY> readKey(const std::string& pem) {
  auto bio = memBio(pem);
  return Ptr<EVP_PKEY>(PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr));
}

Ptr<EVP_PKEY> readPublicKey(const std::string& pem) {
  auto bio = memBio(pem);
  return Ptr<EVP_PKEY>(PEM_read_bio_PUBKEY(bio.get(), nullptr, nullptr, nullptr));
}

Ptr<X509> readCert(const std::string& text) {
  auto bio = memBio(text);
  Ptr<X509> cert(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
  if (cert) return cert;
  const auto* der = reinterpret_cast<const unsigned char*>(text.data());
  return Ptr<X509>(d2i_X509(nullptr, &der, static_cast<long>(text.size())));
}

std::string certPem(X509* cert) {
  Ptr<BIO> bio(BIO_new(BIO_s_mem()));
  PEM_write_bio_X509(bio.get(), cert);
  return bioText(bio.get());
}

std::int64_t asn1Unix(const ASN1_TIME* t) {
  struct tm tm {};
  if (ASN1_TIME_to_tm(t, &tm) != 1) return 0;
  return static_cast<std::int64_t>(timegm(&tm));
}

std::string idOf(X509* cert) {
  Ptr<GENERAL_NAMES> names(
      static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(cert, NID_subject_alt_name, nullptr, nullptr)));
  if (!names) return "";
  for (int i = 0; i < sk_GENERAL_NAME_num(names.get()); ++i) {
    const GENERAL_NAME* n = sk_GENERAL_NAME_value(names.get(), i);
    if (n->type != GEN_URI) continue;
    const ASN1_IA5STRING* uri = n->d.uniformResourceIdentifier;
    std::string s(reinterpret_cast<const char*>(ASN1_STRING_get0_data(uri)),
                  static_cast<std::size_t>(ASN1_STRING_length(uri)));
    if (s.starts_with(kIdUriPrefix)) return s.substr(kIdUriPrefix.size());
  }
  return "";
}

bool addExtension(X509* cert, X509* issuer, int nid, const char* value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  Ptr<X509_EXTENSION> ext(X509V3_EXT_conf_nid(nullptr, &ctx, nid, value));
  return ext && X509_add_ext(cert, ext.get(), -1) == 1;
}

bool validIdForCert(const std::string& id) {
  return id == kCoordinatorId || isValidPeerId(id);
}

// A certificate for `id` over `pubkey`, signed by `signer` (self-signed when `issuer` is null).
Result<std::string> makeCert(const std::string& id, EVP_PKEY* pubkey, EVP_PKEY* signer,
                             X509* issuer, std::chrono::seconds lifetime, bool is_ca) {
  Ptr<X509> cert(X509_new());
  if (!cert) return sslError(StatusCode::kInternal, "cannot allocate a certificate");
  X509_set_version(cert.get(), 2);
  // A random 127-bit serial.
  std::string serial_hex = randomHex(16);
  serial_hex[0] = '1';
  BIGNUM* bn = nullptr;
  BN_hex2bn(&bn, serial_hex.c_str());
  BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(cert.get()));
  BN_free(bn);
  X509_gmtime_adj(X509_getm_notBefore(cert.get()), -300);
  X509_gmtime_adj(X509_getm_notAfter(cert.get()), static_cast<long>(lifetime.count()));
  X509_set_pubkey(cert.get(), pubkey);
  X509_NAME* name = X509_get_subject_name(cert.get());
  const std::string cn = is_ca ? "loco run CA" : "loco " + id;
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>(cn.c_str()), -1, -1, 0);
  X509_set_issuer_name(cert.get(), issuer ? X509_get_subject_name(issuer) : name);
  X509* iss = issuer ? issuer : cert.get();
  bool ok = true;
  if (is_ca) {
    ok = addExtension(cert.get(), iss, NID_basic_constraints, "critical,CA:TRUE,pathlen:0") &&
         addExtension(cert.get(), iss, NID_key_usage, "critical,keyCertSign,cRLSign") &&
         addExtension(cert.get(), iss, NID_subject_key_identifier, "hash");
  } else {
    const std::string san = fmt::format("URI:{}{}", kIdUriPrefix, id);
    ok = addExtension(cert.get(), iss, NID_basic_constraints, "critical,CA:FALSE") &&
         addExtension(cert.get(), iss, NID_key_usage, "critical,digitalSignature") &&
         addExtension(cert.get(), iss, NID_ext_key_usage, "serverAuth,clientAuth") &&
         addExtension(cert.get(), iss, NID_subject_alt_name, san.c_str());
  }
  if (!ok) return sslError(StatusCode::kInternal, "cannot add certificate extensions");
  if (X509_sign(cert.get(), signer, EVP_sha256()) == 0) {
    return sslError(StatusCode::kInternal, "cannot sign the certificate");
  }
  return certPem(cert.get());
}

std::string errnoText() {
  return std::strerror(errno);
}

}  // namespace

Result<std::string> generateKeyPem() {
  Ptr<EVP_PKEY> key(EVP_EC_gen("P-256"));
  if (!key) return sslError(StatusCode::kInternal, "cannot generate an EC P-256 key");
  Ptr<BIO> bio(BIO_new(BIO_s_mem()));
  if (PEM_write_bio_PrivateKey(bio.get(), key.get(), nullptr, nullptr, 0, nullptr, nullptr) != 1)
    return sslError(StatusCode::kInternal, "cannot encode a private key");
  return bioText(bio.get());
}

Result<std::string> publicKeyPem(const std::string& key_pem) {
  auto key = readKey(key_pem);
  if (!key) return Status(StatusCode::kInvalidArgument, "not a PEM private key");
  Ptr<BIO> bio(BIO_new(BIO_s_mem()));
  if (PEM_write_bio_PUBKEY(bio.get(), key.get()) != 1)
    return sslError(StatusCode::kInternal, "cannot encode a public key");
  return bioText(bio.get());
}

bool keyMatchesCertificate(const std::string& key_pem, const std::string& cert_pem) {
  auto key = readKey(key_pem);
  auto cert = readCert(cert_pem);
  return key && cert && X509_check_private_key(cert.get(), key.get()) == 1;
}

Result<std::string> certificateFingerprint(const std::string& cert_pem) {
  auto cert = readCert(cert_pem);
  if (!cert) return Status(StatusCode::kInvalidArgument, "not a certificate");
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  if (X509_digest(cert.get(), EVP_sha256(), md, &n) != 1)
    return sslError(StatusCode::kInternal, "cannot hash the certificate");
  return toHex(md, n);
}

Result<CertificateInfo> inspectCertificate(const std::string& text) {
  auto cert = readCert(text);
  if (!cert) return Status(StatusCode::kInvalidArgument, "not a certificate");
  CertificateInfo info;
  info.id = idOf(cert.get());
  info.not_before = asn1Unix(X509_get0_notBefore(cert.get()));
  info.not_after = asn1Unix(X509_get0_notAfter(cert.get()));
  return info;
}

Result<std::string> verifyCertificate(const std::string& cert_pem, const std::string& ca_pem,
                                      std::int64_t now_unix) {
  auto cert = readCert(cert_pem);
  auto ca = readCert(ca_pem);
  if (!cert || !ca) return Status(StatusCode::kUnauthenticated, "not a certificate");
  Ptr<EVP_PKEY> ca_key(X509_get_pubkey(ca.get()));
  if (!ca_key || X509_verify(cert.get(), ca_key.get()) != 1) {
    return Status(StatusCode::kUnauthenticated, "certificate is not signed by the run's CA");
  }
  const std::int64_t nb = asn1Unix(X509_get0_notBefore(cert.get()));
  const std::int64_t na = asn1Unix(X509_get0_notAfter(cert.get()));
  if (now_unix < nb) return Status(StatusCode::kUnauthenticated, "certificate not yet valid");
  if (now_unix > na) return Status(StatusCode::kUnauthenticated, "certificate expired");
  std::string id = idOf(cert.get());
  if (!validIdForCert(id)) {
    return Status(StatusCode::kUnauthenticated, "certificate carries no loco id");
  }
  return id;
}

Status writePrivateFile(const std::string& path, const std::string& content) {
  std::string tmp = path + ".tmp.XXXXXX";
  int fd = ::mkostemp(tmp.data(), O_CLOEXEC);  // mode 0600
  if (fd < 0) {
    return Status(StatusCode::kIoError, fmt::format("cannot create {}: {}", tmp, errnoText()));
  }
  bool ok = ::write(fd, content.data(), content.size()) == static_cast<ssize_t>(content.size()) &&
            ::fsync(fd) == 0;
  int saved = errno;
  ::close(fd);
  if (!ok || ::rename(tmp.c_str(), path.c_str()) != 0) {
    if (ok) saved = errno;
    ::unlink(tmp.c_str());
    errno = saved;
    return Status(StatusCode::kIoError, fmt::format("cannot write {}: {}", path, errnoText()));
  }
  return Status();
}

Result<std::string> readPrivateFile(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    return Status(StatusCode::kNotFound, fmt::format("cannot read {}: {}", path, errnoText()));
  }
  if ((st.st_mode & 077) != 0) {
    return Status(StatusCode::kFailedPrecondition,
                  fmt::format("{} holds a secret but others may read it (mode {:o}); chmod 600 it",
                              path, st.st_mode & 0777));
  }
  std::ifstream f(path);
  std::stringstream buf;
  buf << f.rdbuf();
  if (!f) return Status(StatusCode::kIoError, fmt::format("cannot read {}", path));
  return buf.str();
}

Result<RunCa> RunCa::init(const std::string& dir, std::chrono::seconds lifetime) {
  if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
    return Status(StatusCode::kIoError, fmt::format("cannot create {}: {}", dir, errnoText()));
  }
  if (::access((dir + kCaKeyFile).c_str(), F_OK) == 0) {
    return Status(
        StatusCode::kAlreadyExists,
        fmt::format("{} already holds a CA ({}); use another --dir", dir, dir + kCaKeyFile));
  }
  auto key_pem = generateKeyPem();
  if (!key_pem) return key_pem.status();
  auto key = readKey(*key_pem);
  auto cert = makeCert("ca", key.get(), key.get(), nullptr, lifetime, /*is_ca=*/true);
  if (!cert) return cert.status();
  if (Status st = writePrivateFile(dir + kCaKeyFile, *key_pem); !st.isOk()) return st;
  std::ofstream(dir + kCaCertFile) << *cert;
  return load(dir);
}

Result<RunCa> RunCa::load(const std::string& dir) {
  auto key = readPrivateFile(dir + kCaKeyFile);
  if (!key) return key.status().withContext("run CA");
  std::ifstream f(dir + kCaCertFile);
  std::stringstream buf;
  buf << f.rdbuf();
  RunCa ca;
  ca.dir_ = dir;
  ca.key_pem_ = std::move(*key);
  ca.cert_pem_ = buf.str();
  auto fp = certificateFingerprint(ca.cert_pem_);
  if (!fp) return fp.status().withContext(fmt::format("run CA certificate {}{}", dir, kCaCertFile));
  ca.fingerprint_ = *fp;
  if (!readKey(ca.key_pem_)) {
    return Status(StatusCode::kInvalidArgument,
                  fmt::format("{}{} is not a PEM private key", dir, kCaKeyFile));
  }
  return ca;
}

Result<std::string> RunCa::issue(const std::string& id, const std::string& public_key_pem,
                                 std::chrono::seconds lifetime) const {
  if (!validIdForCert(id)) {
    return Status(StatusCode::kInvalidArgument, fmt::format("'{}' is not a peer id", id));
  }
  auto pub = readPublicKey(public_key_pem);
  if (!pub) return Status(StatusCode::kInvalidArgument, "not a PEM public key");
  auto key = readKey(key_pem_);
  auto ca = readCert(cert_pem_);
  if (!key || !ca) return Status(StatusCode::kInternal, "the run CA does not load");
  return makeCert(id, pub.get(), key.get(), ca.get(), lifetime, /*is_ca=*/false);
}

}  // namespace loco::crypto
