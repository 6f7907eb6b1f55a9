#pragma once
// Peer identities. A peer id is 128 random bits from OpenSSL's CSPRNG, written as 32 hex digits.
// It persists in an identity file so a restarted peer rejoins as itself; with TLS, its key and
// the run CA's certificate for that id live next to it (crypto/ca.h, `IDENTITY.tls/`).
//
// All functions are blocking (file I/O) and thread-safe.

#include <string>

#include "p2p/base/status.h"

namespace loco::crypto {

struct PeerIdentity {
  std::string id;  // 32 lowercase hex digits
};

// `bytes` random bytes from OpenSSL's RAND_bytes, hex-encoded. Aborts the process if the CSPRNG
// cannot be seeded (nothing sensible can continue without randomness).
std::string randomHex(std::size_t bytes);
// Lowercase hex of `n` bytes.
std::string toHex(const unsigned char* data, std::size_t n);

// A fresh identity that lives only as long as this process.
PeerIdentity ephemeralIdentity();

// Loads the identity at `path`, creating it (mode 0600, atomically) when the file does not exist.
// Errors: kInvalidArgument if the file exists but is not a loco identity file; kIoError if it
// cannot be read or created. Two processes creating the same file at once end up with one id.
Result<PeerIdentity> loadOrCreateIdentity(const std::string& path);

bool isValidPeerId(const std::string& id);

}  // namespace loco::crypto
