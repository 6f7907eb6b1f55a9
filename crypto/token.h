#pragma once
// Join tokens and join strings (ARCHITECTURE.md §10).
//
// A token is 128 random bits ("lt_" + 32 hex digits). The CA directory stores only its SHA-256
// (file `tokens`, mode 0600), with an expiry, a use limit and a revoked flag; the coordinator
// redeems a token when a new peer enrolls. Every change goes through an exclusive flock and an
// atomic rewrite, so `loco token revoke` and a running coordinator can share the file.
//
// A join string carries everything a volunteer needs and pins the coordinator:
//   loco://HOST:PORT#sha256=<CA fingerprint, 64 hex>?token=<token>
// (the token part is optional: it may come from LOCO_JOIN_TOKEN or --token-file instead).
//
// Blocking (file I/O), thread-safe (the file lock serialises processes; calls hold no state).

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "p2p/base/status.h"

namespace loco::crypto {

struct TokenRecord {
  std::string hash;            // SHA-256 of the token, hex
  std::int64_t created = 0;    // unix seconds
  std::int64_t expires = 0;    // unix seconds; 0: never
  std::uint32_t max_uses = 0;  // 0: unlimited
  std::uint32_t used = 0;
  bool revoked = false;
  // The peer ids enrolled with this token (at most kMaxPeersPerToken, the latest kept): revoking
  // the token revokes them, and the coordinator evicts and refuses them from then on.
  std::vector<std::string> peers;
  std::string shortId() const { return hash.substr(0, 12); }  // what `loco token revoke` takes
};

// SHA-256 of `token`, hex.
std::string tokenHash(std::string_view token);
// "lt_" followed by 32 lowercase hex digits.
bool isWellFormedToken(std::string_view token);

inline constexpr std::size_t kMaxPeersPerToken = 256;

class TokenStore {
 public:
  explicit TokenStore(std::string ca_dir);

  // A new token valid for `lifetime_s` seconds from `now` (0: no expiry) and `max_uses`
  // enrollments (0: unlimited). Returns the token; only its hash is stored.
  Result<std::string> create(std::int64_t now, std::int64_t lifetime_s, std::uint32_t max_uses);
  // Marks revoked the token given in full, by a unique prefix (>= 8 hex digits) of its hash, or
  // by the id of a peer enrolled with it. kNotFound / kInvalidArgument (ambiguous prefix).
  Status revoke(std::string_view token_or_id);
  // Checks `token` at `now`, counts one use and records that `peer_id` enrolled with it.
  // kUnauthenticated says why it is refused (unknown, revoked, expired, used up) without
  // echoing the token.
  Status redeem(std::string_view token, std::int64_t now, const std::string& peer_id = "");
  // The peers enrolled with revoked tokens.
  Result<std::vector<std::string>> revokedPeers() const;
  Result<std::vector<TokenRecord>> list() const;

 private:
  std::string path_;
};

struct JoinString {
  std::string host;
  std::uint16_t port = 0;
  std::string ca_fingerprint;  // 64 lowercase hex digits
  std::string token;           // "" when not in the string
};
bool looksLikeJoinString(std::string_view s);  // starts with "loco://"
// kInvalidArgument names what is wrong (never echoing the token).
Result<JoinString> parseJoinString(std::string_view s);
std::string formatJoinString(const JoinString& j);

}  // namespace loco::crypto
