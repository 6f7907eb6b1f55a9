#include "cli/ops/status_json.h"

#include <nlohmann/json.hpp>

#include <cmath>

#include "p2p/topology.h"
#include "p2p/traversal.h"

namespace loco::ops {
namespace {

using nlohmann::json;

json number(double v) {
  return std::isfinite(v) ? json(v) : json(nullptr);
}

bool isRingEdge(const std::vector<std::string>& ring, const p2p::EdgeEstimate& e) {
  for (std::size_t i = 0; i < ring.size() && ring.size() > 1; ++i) {
    if (ring[i] == e.from && ring[(i + 1) % ring.size()] == e.to) return true;
  }
  return false;
}

json viewJson(const p2p::GroupView& v) {
  json out;
  out["epoch"] = v.epoch;
  out["world"] = v.world();
  out["pending"] = v.pending();
  json peers = json::array();
  std::size_t ring_position = 0;
  for (const auto& p : v.peers) {
    json jp;
    jp["id"] = p.id;
    jp["addr"] = p.addr;
    jp["state"] = p2p::peerStateName(p.state);
    jp["heartbeat_age_ms"] = p.heartbeat_age_ms;
    jp["streams"] = p.streams;
    // How others open connections to it (p2p/traversal.h).
    jp["reach"] = p2p::peerReachName(p.reach);
    // The coordinator's dial-back of the advertised address (p2p/reachability.cpp).
    jp["reachability"] = json(nullptr);
    for (const auto& [id, what] : v.reachability) {
      if (id == p.id) jp["reachability"] = what;
    }
    jp["ring_position"] =
        p.state == p2p::PeerState::kMember ? json(ring_position++) : json(nullptr);
    peers.push_back(std::move(jp));
  }
  out["peers"] = std::move(peers);
  json counters = json::object();
  for (const auto& [name, value] : v.counters) counters[name] = value;
  out["counters"] = std::move(counters);
  const auto ring = v.ringIds();
  p2p::BandwidthTable table;
  json links = json::array();
  for (const auto& e : v.edges) {
    table.update(e);
    links.push_back({{"from", e.from},
                     {"to", e.to},
                     {"mbit_s", std::round(e.bytes_per_s * 8e-6 * 10) / 10},
                     {"source", p2p::edgeSourceName(e.source)},
                     {"path", p2p::traversal::linkPathIn(v, e.from, e.to)},
                     {"in_ring", isRingEdge(ring, e)}});
  }
  out["links"] = std::move(links);
  const double slowest = p2p::ringBottleneck(ring, table);
  out["ring_slowest_mbit_s"] =
      ring.size() > 1 && slowest > 0 ? json(std::round(slowest * 8e-6 * 10) / 10) : json(nullptr);
  return out;
}

json reportJson(const p2p::PeerReportMsg& r, double age_s) {
  return {{"outer_step", r.outer_step},
          {"inner_step", r.inner_step},
          {"loss", number(r.loss)},
          {"val_loss", number(r.val_loss)},
          {"bytes_sent", number(r.bytes_sent)},
          {"tokens_per_s", number(r.tokens_per_s)},
          {"utilization", number(r.utilization)},
          {"round_s", number(r.round_s)},
          {"retries", r.retries},
          {"world", r.world},
          {"http", r.http},
          {"age_s", number(age_s)}};
}

}  // namespace

std::string groupViewJson(const p2p::GroupView& view) {
  return viewJson(view).dump();
}

std::string coordinatorStatusJson(const p2p::RunSnapshot& s, double now_unix_s) {
  json out = viewJson(s.view);
  out["role"] = "coordinator";
  out["version"] = LOCO_VERSION;
  out["now_unix_s"] = now_unix_s;
  out["heartbeat_interval_ms"] = s.heartbeat_interval.count();
  out["heartbeat_timeout_ms"] = s.heartbeat_timeout.count();
  for (auto& p : out["peers"]) {
    auto it = s.progress.find(p["id"].get<std::string>());
    p["progress"] = it == s.progress.end()
                        ? json(nullptr)
                        : reportJson(it->second.last, now_unix_s - it->second.unix_s);
  }
  json steps = json::array();
  for (const auto& st : s.steps) {
    steps.push_back({{"outer_step", st.outer_step},
                     {"inner_step", st.inner_step},
                     {"unix_s", st.unix_s},
                     {"loss", number(st.loss)},
                     {"val_loss", number(st.val_loss)},
                     {"bytes_sent", number(st.bytes_sent)},
                     {"world", st.world}});
  }
  out["steps"] = std::move(steps);
  json events = json::array();
  for (const auto& e : s.events) {
    events.push_back({{"unix_s", e.unix_s},
                      {"kind", e.kind},
                      {"peer", e.peer},
                      {"epoch", e.epoch},
                      {"detail", e.detail}});
  }
  out["events"] = std::move(events);
  return out.dump();
}

std::string peerStatusJson(const PeerStatus& s, double now_unix_s) {
  json out;
  out["role"] = s.role;
  out["version"] = LOCO_VERSION;
  out["id"] = s.id;
  out["state"] = s.state;
  out["coordinator"] = s.coordinator;
  out["epoch"] = s.epoch;
  out["world"] = s.world;
  out["now_unix_s"] = now_unix_s;
  out["last_round"] =
      s.last_round ? reportJson(*s.last_round, now_unix_s - s.last_round_unix_s) : json(nullptr);
  return out.dump();
}

}  // namespace loco::ops
