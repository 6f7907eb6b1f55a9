#include <fmt/format.h>

#include <cstdio>

#include "cli/commands.h"
#include "cli/tls_setup.h"
#include "crypto/identity.h"
#include "p2p/base/json.h"
#include "p2p/base/text.h"
#include "p2p/status_client.h"
#include "p2p/traversal.h"

namespace loco::cli {
namespace {

p2p::BandwidthTable tableOf(const p2p::GroupView& v) {
  p2p::BandwidthTable t;
  for (const auto& e : v.edges) t.update(e);
  return t;
}

bool isRingEdge(const std::vector<std::string>& ring, const p2p::EdgeEstimate& e) {
  for (std::size_t i = 0; i < ring.size() && ring.size() > 1; ++i) {
    if (ring[i] == e.from && ring[(i + 1) % ring.size()] == e.to) return true;
  }
  return false;
}

// What the coordinator's dial-back found for `id` (p2p/reachability.cpp); "" when unknown.
std::string reachabilityOf(const p2p::GroupView& v, const std::string& id) {
  for (const auto& [peer, what] : v.reachability) {
    if (peer == id) return what;
  }
  return "";
}

std::string toJson(const p2p::GroupView& v) {
  Json peers = Json::array();
  for (const auto& p : v.peers) {
    peers.push_back({{"id", p.id},
                     {"addr", p.addr},
                     {"state", p2p::peerStateName(p.state)},
                     {"heartbeat_age_ms", p.heartbeat_age_ms},
                     {"reach", p2p::peerReachName(p.reach)},
                     {"reachability", reachabilityOf(v, p.id)}});
  }
  Json counters = Json::object();
  for (const auto& [name, value] : v.counters) counters[name] = value;
  Json links = Json::array();
  const auto ring = v.ringIds();
  for (const auto& e : v.edges) {
    links.push_back({{"from", e.from},
                     {"to", e.to},
                     {"mbit_s", jsonFixed(e.bytes_per_s * 8e-6, 1)},
                     {"source", p2p::edgeSourceName(e.source)},
                     {"path", p2p::traversal::linkPathIn(v, e.from, e.to)},
                     {"in_ring", isRingEdge(ring, e)}});
  }
  const double slowest = p2p::ringBottleneck(ring, tableOf(v));
  return jsonDump({{"epoch", v.epoch},
                   {"world", v.world()},
                   {"pending", v.pending()},
                   {"peers", std::move(peers)},
                   {"counters", std::move(counters)},
                   {"links", std::move(links)},
                   {"ring_slowest_mbit_s",
                    ring.size() > 1 && slowest > 0 ? jsonFixed(slowest * 8e-6, 1) : Json()}});
}

std::string toTable(const p2p::GroupView& v) {
  std::string out =
      fmt::format("epoch {}   world {}   pending {}\n", v.epoch, v.world(), v.pending());
  if (v.peers.empty()) return out + "(no peers)\n";
  out += fmt::format("{:>4}  {:<32}  {:<8}  {:<22}  {:>9}  {:<7}  {}\n", "RING", "PEER ID", "STATE",
                     "ADDRESS", "HEARTBEAT", "REACH", "REACHABLE");
  std::size_t ring = 0;
  for (const auto& p : v.peers) {
    std::string pos = p.state == p2p::PeerState::kMember ? std::to_string(ring++) : "-";
    std::string reach = reachabilityOf(v, p.id);
    out += fmt::format("{:>4}  {:<32}  {:<8}  {:<22}  {:>6} ms  {:<7}  {}\n", pos, p.id,
                       p2p::peerStateName(p.state), p.addr, p.heartbeat_age_ms,
                       p2p::peerReachName(p.reach), reach.empty() ? "-" : reach);
  }
  if (v.edges.empty()) return out;
  // The bandwidth estimates the ring order is chosen from; '*' marks the ring's own links.
  const auto ring_ids = v.ringIds();
  out += fmt::format("\nLINKS (estimated; * = in the ring)\n{:<8}    {:<8}  {:>10}  {:<7}  {}\n",
                     "FROM", "TO", "MBIT/S", "PATH", "SOURCE");
  for (const auto& e : v.edges) {
    const std::string path = p2p::traversal::linkPathIn(v, e.from, e.to);
    out += fmt::format("{:<8} -> {:<8}  {:>10.1f}  {:<7}  {}{}\n", shortId(e.from), shortId(e.to),
                       e.bytes_per_s * 8e-6, path.empty() ? "-" : path,
                       p2p::edgeSourceName(e.source), isRingEdge(ring_ids, e) ? " *" : "");
  }
  const double slowest = p2p::ringBottleneck(ring_ids, tableOf(v));
  if (ring_ids.size() > 1 && slowest > 0)
    out += fmt::format("ring's slowest link: {:.1f} Mbit/s\n", slowest * 8e-6);
  return out;
}

}  // namespace

int runStatus(const Args& args) {
  std::vector<FlagSpec> specs{
      {"coordinator",
       "HOST:PORT of the run's coordinator (a comma-separated list: the first that answers)", ""},
      {"json", "print one JSON object instead of a table", "", true},
      {"timeout", "ms to wait for the coordinator's answer", "5000"}};
  for (auto& spec : securityFlagSpecs(/*with_ca=*/true)) specs.push_back(std::move(spec));
  Flags flags("status", "show a run's membership as the coordinator sees it", std::move(specs));
  if (int rc = parseAndSetUp(flags, args, "status"); rc >= 0) return rc;
  // A TLS run answers only its own certificates: --ca signs a throwaway one for this request.
  if (Status st = setUpSecurity(flags, crypto::ephemeralIdentity().id, /*warn_insecure=*/false);
      !st.isOk()) {
    return reportFailure(st);
  }
  if (!flags.isSet("coordinator")) {
    return reportFailure(Status(StatusCode::kInvalidArgument,
                                "--coordinator HOST:PORT (or LOCO_COORDINATOR) is required"));
  }
  auto coordinators = p2p::parseHostPortList(flags.get("coordinator"));
  if (!coordinators) return reportFailure(coordinators.status().withContext("--coordinator"));
  auto timeout = flags.getInt("timeout", 1, 3600000);
  if (!timeout) return reportFailure(timeout.status());
  // A standby answers too (with no peers): the first coordinator that has peers wins, else the
  // first that answers.
  Result<p2p::GroupView> view = Status(StatusCode::kInternal, "no coordinator asked");
  for (const auto& c : *coordinators) {
    auto v = p2p::fetchStatus(c, Deadline::after(Millis(*timeout)));
    if (v && !v->peers.empty()) {
      view = std::move(v);
      break;
    }
    if (v ? !view.isOk() : view.status().code() == StatusCode::kInternal) view = std::move(v);
  }
  if (!view) return reportFailure(view.status());
  std::string text = flags.getBool("json") ? toJson(*view) + "\n" : toTable(*view);
  std::fputs(text.c_str(), stdout);
  return 0;
}

}  // namespace loco::cli
