#pragma once
// Small text helpers shared by every layer.

#include <string>
#include <string_view>

namespace loco {

// The first 8 characters of a peer id (32 hex digits): how logs and tables name a peer.
inline std::string shortId(std::string_view id) {
  return std::string(id.substr(0, 8));
}

}  // namespace loco
