// `loco ca init` and `loco token create|revoke|list`: the run CA and its join tokens
// (ARCHITECTURE.md §10).

#include <fmt/format.h>

#include <charconv>
#include <cstdio>
#include <ctime>

#include "cli/commands.h"
#include "cli/tls_setup.h"
#include "crypto/ca.h"
#include "crypto/token.h"
#include "p2p/address.h"

namespace loco::cli {
namespace {

std::int64_t nowUnix() {
  return static_cast<std::int64_t>(std::time(nullptr));
}

int caInit(const Args& args) {
  Flags flags("ca init", "create a run's certificate authority",
              {{"dir", "directory for the CA (ca.key 0600, ca.pem, tokens)", ""},
               {"lifetime-days", "validity of the CA certificate", "365"}});
  if (int rc = parseAndSetUp(flags, args, "ca"); rc >= 0) return rc;
  if (flags.get("dir").empty()) {
    return reportFailure(Status(StatusCode::kInvalidArgument, "--dir is required"));
  }
  auto days = flags.getInt("lifetime-days", 1, 3650);
  if (!days) return reportFailure(days.status());
  auto ca = crypto::RunCa::init(flags.get("dir"), std::chrono::hours(24 * *days));
  if (!ca) return reportFailure(ca.status());
  std::printf("run CA in %s\nsha256=%s\n", ca->dir().c_str(), ca->fingerprint().c_str());
  return 0;
}

int tokenCreate(const Args& args) {
  Flags flags(
      "token create", "make a join token (only its hash is stored in the CA directory)",
      {{"ca", "the run CA's directory", ""},
       {"uses", "how many peers may enroll with it (0: unlimited)", "1"},
       {"expires", "lifetime: 30m, 24h, 7d; 0: never", "24h"},
       {"coordinator", "HOST:PORT peers reach the coordinator at: print the join string", ""}});
  if (int rc = parseAndSetUp(flags, args, "token"); rc >= 0) return rc;
  if (flags.get("ca").empty()) {
    return reportFailure(Status(StatusCode::kInvalidArgument, "--ca DIR is required"));
  }
  auto uses = flags.getInt("uses", 0, 1000000);
  if (!uses) return reportFailure(uses.status());
  auto expires = parseDurationSeconds(flags.get("expires"), "--expires");
  if (!expires) return reportFailure(expires.status());
  auto ca = crypto::RunCa::load(flags.get("ca"));
  if (!ca) return reportFailure(ca.status());
  std::optional<p2p::HostPort> coordinator;
  if (!flags.get("coordinator").empty()) {
    auto hp = p2p::parseHostPort(flags.get("coordinator"));
    if (!hp) return reportFailure(hp.status().withContext("--coordinator"));
    coordinator = *hp;
  }
  crypto::TokenStore store(flags.get("ca"));
  auto token = store.create(nowUnix(), *expires, static_cast<std::uint32_t>(*uses));
  if (!token) return reportFailure(token.status());
  std::fprintf(stderr, "token %s: %s use(s), expires %s\n",
               crypto::tokenHash(*token).substr(0, 12).c_str(),
               *uses == 0 ? "unlimited" : std::to_string(*uses).c_str(),
               *expires == 0 ? "never" : ("in " + flags.get("expires")).c_str());
  if (coordinator) {
    std::printf("%s\n",
                crypto::formatJoinString(crypto::JoinString{coordinator->host, coordinator->port,
                                                            ca->fingerprint(), *token})
                    .c_str());
  } else {
    std::printf("%s\n", token->c_str());
  }
  return 0;
}

int tokenRevoke(const Args& args) {
  Flags flags("token revoke",
              "revoke a join token (the token, its id from token list, or the id of a peer "
              "enrolled with it); a running coordinator --ca evicts and refuses its peers within "
              "a second",
              {{"ca", "the run CA's directory", ""}});
  if (int rc = parseAndSetUp(flags, args, "token"); rc >= 0) return rc;
  if (flags.get("ca").empty() || flags.positional().size() != 1) {
    return reportFailure(Status(StatusCode::kInvalidArgument,
                                "usage: loco token revoke --ca DIR TOKEN-OR-ID-OR-PEER-ID"));
  }
  Status st = crypto::TokenStore(flags.get("ca")).revoke(flags.positional()[0]);
  if (!st.isOk()) return reportFailure(st);
  std::printf("revoked\n");
  return 0;
}

int tokenList(const Args& args) {
  Flags flags("token list", "list join tokens (ids and limits; tokens are stored hashed)",
              {{"ca", "the run CA's directory", ""}});
  if (int rc = parseAndSetUp(flags, args, "token"); rc >= 0) return rc;
  auto list = crypto::TokenStore(flags.get("ca")).list();
  if (!list) return reportFailure(list.status());
  for (const auto& r : *list) {
    std::string peers;
    for (const auto& p : r.peers) peers += (peers.empty() ? "" : ",") + p;
    std::printf("%s uses=%u/%s expires=%lld peers=%s %s\n", r.shortId().c_str(), r.used,
                r.max_uses == 0 ? "unlimited" : std::to_string(r.max_uses).c_str(),
                static_cast<long long>(r.expires), peers.empty() ? "-" : peers.c_str(),
                r.revoked ? "revoked" : "");
  }
  return 0;
}

}  // namespace

int runCa(const Args& args) {
  if (!args.empty() && args[0] == "init") return caInit(Args(args.begin() + 1, args.end()));
  std::fprintf(stderr, "usage: loco ca init --dir DIR\n");
  return 2;
}

int runToken(const Args& args) {
  const Args rest = args.empty() ? Args{} : Args(args.begin() + 1, args.end());
  if (!args.empty() && args[0] == "create") return tokenCreate(rest);
  if (!args.empty() && args[0] == "revoke") return tokenRevoke(rest);
  if (!args.empty() && args[0] == "list") return tokenList(rest);
  std::fprintf(stderr, "usage: loco token create|revoke|list --ca DIR ...\n");
  return 2;
}

}  // namespace loco::cli
