#include <fmt/format.h>

#include <cstdio>

#include "cli/commands.h"
#include "p2p/status_client.h"

namespace loco::cli {
namespace {

std::string jsonEscape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '"' || c == '\\') {
      out.push_back('\\');
      out.push_back(c);
    } else if (static_cast<unsigned char>(c) < 0x20) {
      out += fmt::format("\\u{:04x}", static_cast<unsigned>(static_cast<unsigned char>(c)));
    } else {
      out.push_back(c);
    }
  }
  return out;
}

std::string toJson(const p2p::GroupView& v) {
  std::string out = fmt::format("{{\"epoch\":{},\"world\":{},\"pending\":{},\"peers\":[", v.epoch, v.world(), v.pending());
  for (std::size_t i = 0; i < v.peers.size(); ++i) {
    const auto& p = v.peers[i];
    out += fmt::format("{}{{\"id\":\"{}\",\"addr\":\"{}\",\"state\":\"{}\",\"heartbeat_age_ms\":{}}}", i ? "," : "",
                       jsonEscape(p.id), jsonEscape(p.addr), p2p::peerStateName(p.state), p.heartbeat_age_ms);
  }
  out += "],\"counters\":{";
  for (std::size_t i = 0; i < v.counters.size(); ++i) {
    out += fmt::format("{}\"{}\":{}", i ? "," : "", jsonEscape(v.counters[i].first), v.counters[i].second);
  }
  out += "}}";
  return out;
}

std::string toTable(const p2p::GroupView& v) {
  std::string out = fmt::format("epoch {}   world {}   pending {}\n", v.epoch, v.world(), v.pending());
  if (v.peers.empty()) return out + "(no peers)\n";
  out += fmt::format("{:>4}  {:<32}  {:<8}  {:<22}  {:>9}\n", "RING", "PEER ID", "STATE", "ADDRESS", "HEARTBEAT");
  std::size_t ring = 0;
  for (const auto& p : v.peers) {
    std::string pos = p.state == p2p::PeerState::kMember ? std::to_string(ring++) : "-";
    out += fmt::format("{:>4}  {:<32}  {:<8}  {:<22}  {:>6} ms\n", pos, p.id, p2p::peerStateName(p.state), p.addr,
                       p.heartbeat_age_ms);
  }
  return out;
}

}  // namespace

int runStatus(const Args& args) {
  Flags flags("status", "show a run's membership as the coordinator sees it",
              {{"coordinator", "HOST:PORT of the run's coordinator", ""},
               {"json", "print one JSON object instead of a table", "", true},
               {"timeout", "ms to wait for the coordinator's answer", "5000"}});
  if (int rc = parseAndSetUp(flags, args, "status"); rc >= 0) return rc;
  if (!flags.isSet("coordinator")) {
    return reportFailure(Status(StatusCode::kInvalidArgument, "--coordinator HOST:PORT (or LOCO_COORDINATOR) is required"));
  }
  auto coordinator = p2p::parseHostPort(flags.get("coordinator"));
  if (!coordinator) return reportFailure(coordinator.status().withContext("--coordinator"));
  auto timeout = flags.getInt("timeout", 1, 3600000);
  if (!timeout) return reportFailure(timeout.status());
  auto view = p2p::fetchStatus(*coordinator, Deadline::after(Millis(*timeout)));
  if (!view) return reportFailure(view.status());
  std::string text = flags.getBool("json") ? toJson(*view) + "\n" : toTable(*view);
  std::fputs(text.c_str(), stdout);
  return 0;
}

}  // namespace loco::cli
