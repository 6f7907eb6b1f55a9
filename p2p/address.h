#pragma once
// HOST:PORT parsing shared by every flag that takes an address. Pure; no name resolution.

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "p2p/base/status.h"

namespace loco::p2p {

struct HostPort {
  std::string host;  // name, IPv4, or IPv6 without brackets
  std::uint16_t port = 0;
  std::string toString() const;  // brackets IPv6 literals
};

// Accepts "host:port", "1.2.3.4:port", "[::1]:port". Port 0 means "any free port" and is allowed
// only where `allow_port_zero` (listen addresses). kInvalidArgument names the bad part.
Result<HostPort> parseHostPort(std::string_view text, bool allow_port_zero = false);

// A comma-separated list of addresses ("a:7000,b:7000"; spaces around commas allowed), in order,
// at least one, no duplicates. kInvalidArgument names the bad entry.
Result<std::vector<HostPort>> parseHostPortList(std::string_view text);

}  // namespace loco::p2p
