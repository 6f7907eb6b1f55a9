#pragma once
// A coordinator plus idle peers as real processes on 127.0.0.1, for integration and fault tests.

#include <memory>
#include <string>
#include <vector>

#include "tests/support/process.h"

namespace loco::testing {

class Swarm {
 public:
  Swarm(int heartbeat_interval_ms, int heartbeat_timeout_ms)
      : coordinator_(dir_, heartbeat_interval_ms, heartbeat_timeout_ms) {}

  // Starts `loco join --idle` with identity file `<name>.id` and log `<name>.log`.
  Process& addPeer(const std::string& name, const std::vector<std::string>& extra = {}) {
    std::vector<std::string> args = {
        "join",     "--idle",      "--coordinator", coordinator_.address(),
        "--listen", "127.0.0.1:0", "--identity",    dir_.file(name + ".id")};
    args.insert(args.end(), extra.begin(), extra.end());
    peers_.push_back(std::make_unique<Process>(args, dir_.file(name + ".log")));
    return *peers_.back();
  }

  // The peer id stored in `<name>.id` (created by the peer on first start).
  std::string peerId(const std::string& name) const {
    std::string text = readFile(dir_.file(name + ".id"));
    auto at = text.find("id ");
    return at == std::string::npos ? "" : text.substr(at + 3, 32);
  }

  bool waitFor(milliseconds timeout, std::size_t world, std::size_t pending = 0) {
    return eventually(timeout, [&] {
      auto v = coordinator_.view();
      return v && v->world() == world && v->pending() == pending;
    });
  }

  bool isMember(const std::string& id) {
    auto v = coordinator_.view();
    if (!v) return false;
    for (auto& p : v->peers) {
      if (p.id == id && p.state == p2p::PeerState::kMember) return true;
    }
    return false;
  }

  CoordinatorProcess& coordinator() { return coordinator_; }
  const TempDir& dir() const { return dir_; }

 private:
  TempDir dir_;
  CoordinatorProcess coordinator_;
  std::vector<std::unique_ptr<Process>> peers_;
};

}  // namespace loco::testing
