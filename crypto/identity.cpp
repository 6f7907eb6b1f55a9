#include "crypto/identity.h"

#include <fcntl.h>
#include <openssl/rand.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <vector>

#include "p2p/base/log.h"
#include "p2p/base/text.h"

namespace loco::crypto {
namespace {
constexpr std::string_view kHeader = "loco-identity v1";

std::string errnoText() {
  return std::strerror(errno);
}

Result<PeerIdentity> parseIdentityFile(const std::string& path, const std::string& text) {
  std::istringstream in(text);
  std::string header;
  std::getline(in, header);
  if (header != kHeader) {
    return Status(StatusCode::kInvalidArgument,
                  fmt::format("identity file {} is not a loco identity (first line is not '{}'); "
                              "point --identity at another path or delete the file",
                              path, kHeader));
  }
  std::string key, value;
  PeerIdentity ident;
  while (in >> key >> value) {
    if (key == "id") ident.id = value;
  }
  if (!isValidPeerId(ident.id)) {
    return Status(
        StatusCode::kInvalidArgument,
        fmt::format("identity file {} has no valid 'id' line (want 32 hex digits)", path));
  }
  return ident;
}

Result<PeerIdentity> readIdentity(const std::string& path) {
  std::ifstream f(path);
  if (!f) {
    return Status(StatusCode::kIoError,
                  fmt::format("cannot read identity file {}: {}", path, errnoText()));
  }
  std::stringstream buf;
  buf << f.rdbuf();
  struct stat st {};
  if (::stat(path.c_str(), &st) == 0 && (st.st_mode & 077) != 0) {
    LOG_WARN(kLogPeer, "identity file {} is readable by others (mode {:o}); chmod 600 it", path,
             st.st_mode & 0777);
  }
  return parseIdentityFile(path, buf.str());
}
}  // namespace

std::string randomHex(std::size_t bytes) {
  std::vector<unsigned char> raw(bytes);
  if (RAND_bytes(raw.data(), static_cast<int>(raw.size())) != 1) {
    std::fprintf(stderr, "loco: OpenSSL RAND_bytes failed; cannot create random identifiers\n");
    std::abort();
  }
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(bytes * 2);
  for (unsigned char c : raw) {
    out.push_back(kHex[c >> 4]);
    out.push_back(kHex[c & 15]);
  }
  return out;
}

PeerIdentity ephemeralIdentity() {
  return PeerIdentity{randomHex(16)};
}

bool isValidPeerId(const std::string& id) {
  if (id.size() != 32) return false;
  for (char c : id) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

Result<PeerIdentity> loadOrCreateIdentity(const std::string& path) {
  if (::access(path.c_str(), F_OK) == 0) return readIdentity(path);

  // Write a private temp file, then link() it into place: link fails with EEXIST if another
  // process won the race, and then both use the winner's id.
  PeerIdentity ident = ephemeralIdentity();
  // mkstemp: a fresh name per call (threads, or a leftover from a crashed run with our pid),
  // created with mode 0600.
  std::string tmp = path + ".tmp.XXXXXX";
  int fd = ::mkostemp(tmp.data(), O_CLOEXEC);
  if (fd < 0) {
    return Status(StatusCode::kIoError,
                  fmt::format("cannot create identity file {}: {}", tmp, errnoText()));
  }
  std::string text = fmt::format("{}\nid {}\n", kHeader, ident.id);
  bool ok = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()) &&
            ::fsync(fd) == 0;
  int saved = errno;
  ::close(fd);
  if (!ok) {
    ::unlink(tmp.c_str());
    errno = saved;
    return Status(StatusCode::kIoError,
                  fmt::format("cannot write identity file {}: {}", tmp, errnoText()));
  }
  int rc = ::link(tmp.c_str(), path.c_str());
  saved = errno;
  ::unlink(tmp.c_str());
  if (rc != 0) {
    if (saved == EEXIST) return readIdentity(path);
    errno = saved;
    return Status(StatusCode::kIoError,
                  fmt::format("cannot create identity file {}: {}", path, errnoText()));
  }
  LOG_DEBUG(kLogPeer, "created identity {} in {}", shortId(ident.id), path);
  return ident;
}

}  // namespace loco::crypto
