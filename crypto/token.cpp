#include "crypto/token.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/file.h>
#include <unistd.h>

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <sstream>

#include "crypto/ca.h"
#include "crypto/identity.h"

namespace loco::crypto {
namespace {

constexpr std::string_view kHeader = "loco-tokens v1";
constexpr std::string_view kTokenPrefix = "lt_";

bool isHex(std::string_view s) {
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return !s.empty();
}

// Holds an exclusive flock on the token file (created 0600 if missing) for its lifetime.
class LockedFile {
 public:
  explicit LockedFile(const std::string& path) {
    fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd_ >= 0 && ::flock(fd_, LOCK_EX) != 0) {
      ::close(fd_);
      fd_ = -1;
    }
  }
  ~LockedFile() {
    if (fd_ >= 0) ::close(fd_);
  }
  LockedFile(const LockedFile&) = delete;
  LockedFile& operator=(const LockedFile&) = delete;
  bool ok() const { return fd_ >= 0; }

 private:
  int fd_ = -1;
};

Result<std::vector<TokenRecord>> parse(const std::string& path, const std::string& text) {
  std::vector<TokenRecord> out;
  if (text.empty()) return out;
  std::istringstream in(text);
  std::string line;
  std::getline(in, line);
  if (line != kHeader) {
    return Status(
        StatusCode::kInvalidArgument,
        fmt::format("{} is not a loco token file (first line is not '{}')", path, kHeader));
  }
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    std::istringstream l(line);
    TokenRecord r;
    int revoked = 0;
    if (!(l >> r.hash >> r.created >> r.expires >> r.max_uses >> r.used >> revoked) ||
        r.hash.size() != 64 || !isHex(r.hash)) {
      return Status(StatusCode::kInvalidArgument,
                    fmt::format("{}: malformed token line; restore it or remove the file", path));
    }
    r.revoked = revoked != 0;
    // Optional since the first version: the enrolled peers, comma-separated.
    if (std::string peers; l >> peers) {
      for (std::size_t at = 0; at < peers.size();) {
        std::size_t end = std::min(peers.find(',', at), peers.size());
        std::string id = peers.substr(at, end - at);
        if (!isValidPeerId(id)) {
          return Status(StatusCode::kInvalidArgument,
                        fmt::format("{}: malformed peer id in a token line", path));
        }
        r.peers.push_back(std::move(id));
        at = end + 1;
      }
    }
    out.push_back(std::move(r));
  }
  return out;
}

std::string render(const std::vector<TokenRecord>& records) {
  std::string out = std::string(kHeader) + "\n";
  for (const auto& r : records) {
    out += fmt::format("{} {} {} {} {} {}", r.hash, r.created, r.expires, r.max_uses, r.used,
                       r.revoked ? 1 : 0);
    for (std::size_t i = 0; i < r.peers.size(); ++i) out += (i ? "," : " ") + r.peers[i];
    out += "\n";
  }
  return out;
}

Result<std::vector<TokenRecord>> load(const std::string& path) {
  auto text = readPrivateFile(path);
  if (!text) {
    if (text.status().code() == StatusCode::kNotFound) return std::vector<TokenRecord>{};
    return text.status();
  }
  return parse(path, *text);
}

Status lockFailed(const std::string& path) {
  return Status(StatusCode::kIoError,
                fmt::format("cannot open and lock {}: {}", path, std::strerror(errno)));
}

}  // namespace

std::string tokenHash(std::string_view token) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  EVP_Digest(token.data(), token.size(), md, &n, EVP_sha256(), nullptr);
  return toHex(md, n);
}

bool isWellFormedToken(std::string_view token) {
  return token.size() == kTokenPrefix.size() + 32 && token.starts_with(kTokenPrefix) &&
         isHex(token.substr(kTokenPrefix.size()));
}

TokenStore::TokenStore(std::string ca_dir) : path_(std::move(ca_dir) + "/tokens") {}

Result<std::string> TokenStore::create(std::int64_t now, std::int64_t lifetime_s,
                                       std::uint32_t max_uses) {
  LockedFile lock(path_ + ".lock");
  if (!lock.ok()) return lockFailed(path_ + ".lock");
  auto records = load(path_);
  if (!records) return records.status();
  std::string token = std::string(kTokenPrefix) + randomHex(16);
  TokenRecord r;
  r.hash = tokenHash(token);
  r.created = now;
  r.expires = lifetime_s > 0 ? now + lifetime_s : 0;
  r.max_uses = max_uses;
  records->push_back(r);
  if (Status st = writePrivateFile(path_, render(*records)); !st.isOk()) return st;
  return token;
}

Status TokenStore::revoke(std::string_view token_or_id) {
  LockedFile lock(path_ + ".lock");
  if (!lock.ok()) return lockFailed(path_ + ".lock");
  auto records = load(path_);
  if (!records) return records.status();
  const bool full = isWellFormedToken(token_or_id);
  if (!full && (token_or_id.size() < 8 || !isHex(token_or_id))) {
    return Status(StatusCode::kInvalidArgument,
                  "give the token itself, at least 8 hex digits of its id (loco token list), or "
                  "the id of a peer enrolled with it");
  }
  if (isValidPeerId(std::string(token_or_id))) {
    for (auto& r : *records) {
      if (std::find(r.peers.begin(), r.peers.end(), token_or_id) == r.peers.end()) continue;
      r.revoked = true;
      return writePrivateFile(path_, render(*records));
    }
  }
  const std::string key = full ? tokenHash(token_or_id) : std::string(token_or_id);
  TokenRecord* match = nullptr;
  for (auto& r : *records) {
    if (!r.hash.starts_with(key)) continue;
    if (match) return Status(StatusCode::kInvalidArgument, "that id prefix matches two tokens");
    match = &r;
  }
  if (!match) return Status(StatusCode::kNotFound, "no such token in this CA directory");
  match->revoked = true;
  return writePrivateFile(path_, render(*records));
}

Status TokenStore::redeem(std::string_view token, std::int64_t now, const std::string& peer_id) {
  if (!isWellFormedToken(token)) {
    return Status(StatusCode::kUnauthenticated, "malformed join token");
  }
  LockedFile lock(path_ + ".lock");
  if (!lock.ok()) return lockFailed(path_ + ".lock");
  auto records = load(path_);
  if (!records) return records.status();
  const std::string hash = tokenHash(token);
  for (auto& r : *records) {
    if (r.hash != hash) continue;
    if (r.revoked) {
      return Status(StatusCode::kUnauthenticated,
                    fmt::format("join token {} was revoked", r.shortId()));
    }
    if (r.expires != 0 && now >= r.expires) {
      return Status(StatusCode::kUnauthenticated,
                    fmt::format("join token {} expired", r.shortId()));
    }
    if (r.max_uses != 0 && r.used >= r.max_uses) {
      return Status(StatusCode::kUnauthenticated,
                    fmt::format("join token {} is used up ({} uses)", r.shortId(), r.max_uses));
    }
    ++r.used;
    if (!peer_id.empty() && std::find(r.peers.begin(), r.peers.end(), peer_id) == r.peers.end()) {
      if (r.peers.size() >= kMaxPeersPerToken) r.peers.erase(r.peers.begin());
      r.peers.push_back(peer_id);
    }
    return writePrivateFile(path_, render(*records));
  }
  return Status(StatusCode::kUnauthenticated, "unknown join token");
}

Result<std::vector<TokenRecord>> TokenStore::list() const {
  return load(path_);
}

Result<std::vector<std::string>> TokenStore::revokedPeers() const {
  auto records = load(path_);
  if (!records) return records.status();
  std::vector<std::string> out;
  for (const auto& r : *records) {
    if (r.revoked) out.insert(out.end(), r.peers.begin(), r.peers.end());
  }
  return out;
}

bool looksLikeJoinString(std::string_view s) {
  return s.starts_with("loco://");
}

Result<JoinString> parseJoinString(std::string_view s) {
  auto bad = [](std::string_view why) {
    return Status(StatusCode::kInvalidArgument,
                  fmt::format("malformed join string ({}); want "
                              "loco://HOST:PORT#sha256=<64 hex digits>[?token=...]",
                              why));
  };
  if (!looksLikeJoinString(s)) return bad("it does not start with loco://");
  s.remove_prefix(7);
  const auto hash = s.find('#');
  if (hash == std::string_view::npos) return bad("no #sha256= pin of the run's CA");
  std::string_view hostport = s.substr(0, hash);
  std::string_view rest = s.substr(hash + 1);
  JoinString j;
  const auto colon = hostport.rfind(':');
  if (colon == std::string_view::npos || colon == 0) return bad("no HOST:PORT");
  std::string_view host = hostport.substr(0, colon);
  if (host.starts_with('[')) {
    if (!host.ends_with(']') || host.size() < 3) return bad("unbalanced [ ] around the host");
    host = host.substr(1, host.size() - 2);
  } else if (host.find(':') != std::string_view::npos) {
    return bad("an IPv6 host needs [ ]");
  }
  std::string_view port_text = hostport.substr(colon + 1);
  unsigned port = 0;
  auto [end, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
  if (ec != std::errc() || end != port_text.data() + port_text.size() || port == 0 ||
      port > 65535) {
    return bad("the port is not a number in 1..65535");
  }
  j.host = std::string(host);
  j.port = static_cast<std::uint16_t>(port);
  if (!rest.starts_with("sha256=")) return bad("the part after # is not sha256=");
  rest.remove_prefix(7);
  const auto q = rest.find('?');
  std::string_view fp = rest.substr(0, q);
  if (fp.size() != 64 || !isHex(fp)) return bad("the fingerprint is not 64 lowercase hex digits");
  j.ca_fingerprint = std::string(fp);
  if (q != std::string_view::npos) {
    std::string_view query = rest.substr(q + 1);
    if (!query.starts_with("token=")) return bad("the part after ? is not token=");
    query.remove_prefix(6);
    if (!isWellFormedToken(query)) return bad("the token is not lt_ and 32 hex digits");
    j.token = std::string(query);
  }
  return j;
}

std::string formatJoinString(const JoinString& j) {
  const bool v6 = j.host.find(':') != std::string::npos;
  std::string out = fmt::format("loco://{}{}{}:{}#sha256={}", v6 ? "[" : "", j.host, v6 ? "]" : "",
                                j.port, j.ca_fingerprint);
  if (!j.token.empty()) out += "?token=" + j.token;
  return out;
}

}  // namespace loco::crypto
