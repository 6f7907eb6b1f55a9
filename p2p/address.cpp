#include "p2p/address.h"

#include <fmt/format.h>

#include <charconv>

namespace loco::p2p {

std::string HostPort::toString() const {
  if (host.find(':') != std::string::npos) return fmt::format("[{}]:{}", host, port);
  return fmt::format("{}:{}", host, port);
}

Result<HostPort> parseHostPort(std::string_view text, bool allow_port_zero) {
  auto bad = [&](std::string_view why) {
    return Status(
        StatusCode::kInvalidArgument,
        fmt::format("bad address '{}': {} (want HOST:PORT, e.g. 127.0.0.1:7000)", text, why));
  };
  HostPort hp;
  std::string_view port_text;
  if (!text.empty() && text.front() == '[') {
    auto close = text.find(']');
    if (close == std::string_view::npos) return bad("missing ']'");
    hp.host = std::string(text.substr(1, close - 1));
    if (close + 1 >= text.size() || text[close + 1] != ':') return bad("missing ':PORT'");
    port_text = text.substr(close + 2);
  } else {
    auto colon = text.rfind(':');
    if (colon == std::string_view::npos) return bad("missing ':PORT'");
    hp.host = std::string(text.substr(0, colon));
    if (hp.host.find(':') != std::string::npos) return bad("IPv6 addresses need brackets");
    port_text = text.substr(colon + 1);
  }
  if (hp.host.empty()) return bad("empty host");
  if (hp.host.size() > 253) return bad("host name too long");
  for (char c : hp.host) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '-' || c == ':' || c == '_' || c == '%';
    if (!ok) return bad("host has characters a host name cannot have");
  }
  unsigned long port = 0;
  auto [ptr, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
  if (port_text.empty() || ec != std::errc() || ptr != port_text.data() + port_text.size() ||
      port > 65535) {
    return bad("port must be a number from 1 to 65535");
  }
  if (port == 0 && !allow_port_zero) return bad("port 0 is only allowed for listen addresses");
  hp.port = static_cast<std::uint16_t>(port);
  return hp;
}

Result<std::vector<HostPort>> parseHostPortList(std::string_view text) {
  std::vector<HostPort> out;
  std::size_t at = 0;
  for (;;) {
    std::size_t comma = text.find(',', at);
    std::string_view item =
        text.substr(at, comma == std::string_view::npos ? text.npos : comma - at);
    while (!item.empty() && item.front() == ' ') item.remove_prefix(1);
    while (!item.empty() && item.back() == ' ') item.remove_suffix(1);
    auto hp = parseHostPort(item);
    if (!hp) return hp.status();
    for (const auto& seen : out) {
      if (seen.toString() == hp->toString()) {
        return Status(StatusCode::kInvalidArgument,
                      fmt::format("address {} is listed twice", hp->toString()));
      }
    }
    out.push_back(std::move(hp.value()));
    if (comma == std::string_view::npos) return out;
    at = comma + 1;
  }
}

}  // namespace loco::p2p
