#include "p2p/messages.h"

#include <fmt/format.h>

#include <algorithm>

namespace loco::p2p {
namespace {
constexpr std::size_t kMaxIdLen = 64;
constexpr std::size_t kMaxVersionLen = 64;
constexpr std::size_t kMaxCounterNameLen = 128;
constexpr std::uint32_t kMaxPeers = 65536;
constexpr std::uint32_t kMaxCounters = 4096;
constexpr std::uint32_t kMaxEdges = 65536;

void writeEdges(ByteWriter& w, const std::vector<EdgeEstimate>& edges) {
  w.u32(static_cast<std::uint32_t>(edges.size()));
  for (const auto& e : edges) {
    w.str(e.from);
    w.str(e.to);
    w.u64(static_cast<std::uint64_t>(std::max(0.0, e.bytes_per_s)));
    w.u8(static_cast<std::uint8_t>(e.source));
  }
}

bool readEdges(ByteReader& r, std::vector<EdgeEstimate>& edges) {
  std::uint32_t n = 0;
  if (!r.u32(n) || n > kMaxEdges) return false;
  for (std::uint32_t i = 0; i < n; ++i) {
    EdgeEstimate e;
    std::uint64_t rate = 0;
    std::uint8_t source = 0;
    if (!(r.str(e.from, kMaxIdLen) && r.str(e.to, kMaxIdLen) && r.u64(rate) && r.u8(source))) return false;
    if (source != static_cast<std::uint8_t>(EdgeSource::kProbe) && source != static_cast<std::uint8_t>(EdgeSource::kPassive)) {
      return false;
    }
    e.bytes_per_s = static_cast<double>(rate);
    e.source = static_cast<EdgeSource>(source);
    edges.push_back(std::move(e));
  }
  return true;
}

Status malformed(std::string_view what) {
  return Status(StatusCode::kProtocolError, fmt::format("malformed {} payload", what));
}
}  // namespace

std::string_view peerStateName(PeerState s) {
  return s == PeerState::kMember ? "member" : "pending";
}

std::size_t GroupView::world() const {
  return static_cast<std::size_t>(
      std::count_if(peers.begin(), peers.end(), [](auto& p) { return p.state == PeerState::kMember; }));
}
std::size_t GroupView::pending() const { return peers.size() - world(); }

std::vector<std::uint8_t> encodeHello(const HelloMsg& m) {
  std::vector<std::uint8_t> out;
  ByteWriter w(out);
  w.str(m.peer_id);
  w.str(m.advertise);
  w.u32(m.streams);
  w.str(m.version);
  w.u64(m.last_epoch);
  return out;
}

Result<HelloMsg> decodeHello(ByteSpan in) {
  ByteReader r(in);
  HelloMsg m;
  if (!(r.str(m.peer_id, kMaxIdLen) && r.str(m.advertise, kMaxAddrLen) && r.u32(m.streams) &&
        r.str(m.version, kMaxVersionLen) && r.u64(m.last_epoch) && r.done())) {
    return malformed("Hello");
  }
  return m;
}

std::vector<std::uint8_t> encodeWelcome(const WelcomeMsg& m) {
  std::vector<std::uint8_t> out;
  ByteWriter w(out);
  w.u32(m.heartbeat_interval_ms);
  w.u32(m.heartbeat_timeout_ms);
  w.u64(m.epoch);
  return out;
}

Result<WelcomeMsg> decodeWelcome(ByteSpan in) {
  ByteReader r(in);
  WelcomeMsg m;
  if (!(r.u32(m.heartbeat_interval_ms) && r.u32(m.heartbeat_timeout_ms) && r.u64(m.epoch) && r.done())) {
    return malformed("Welcome");
  }
  return m;
}

std::vector<std::uint8_t> encodeRefused(const RefusedMsg& m) {
  std::vector<std::uint8_t> out;
  ByteWriter w(out);
  w.u32(static_cast<std::uint32_t>(m.code));
  w.str(m.reason);
  return out;
}

Result<RefusedMsg> decodeRefused(ByteSpan in) {
  ByteReader r(in);
  RefusedMsg m;
  std::uint32_t code = 0;
  if (!(r.u32(code) && r.str(m.reason, kMaxReasonLen) && r.done())) return malformed("Refused");
  if (code > static_cast<std::uint32_t>(StatusCode::kInternal)) code = static_cast<std::uint32_t>(StatusCode::kInternal);
  m.code = static_cast<StatusCode>(code);
  return m;
}

std::vector<std::uint8_t> encodeEvicted(const EvictedMsg& m) {
  std::vector<std::uint8_t> out;
  ByteWriter w(out);
  w.str(m.reason);
  return out;
}

Result<EvictedMsg> decodeEvicted(ByteSpan in) {
  ByteReader r(in);
  EvictedMsg m;
  if (!(r.str(m.reason, kMaxReasonLen) && r.done())) return malformed("Evicted");
  return m;
}

std::vector<std::uint8_t> encodeGroupView(const GroupView& v) {
  std::vector<std::uint8_t> out;
  ByteWriter w(out);
  w.u64(v.epoch);
  w.u32(static_cast<std::uint32_t>(v.peers.size()));
  for (const auto& p : v.peers) {
    w.str(p.id);
    w.str(p.addr);
    w.u8(static_cast<std::uint8_t>(p.state));
    w.i64(p.heartbeat_age_ms);
    w.u32(p.streams);
  }
  w.u32(static_cast<std::uint32_t>(v.counters.size()));
  for (const auto& [name, value] : v.counters) {
    w.str(name);
    w.u64(value);
  }
  writeEdges(w, v.edges);
  return out;
}

Result<GroupView> decodeGroupView(ByteSpan in) {
  ByteReader r(in);
  GroupView v;
  std::uint32_t n = 0;
  if (!(r.u64(v.epoch) && r.u32(n)) || n > kMaxPeers) return malformed("Membership");
  v.peers.reserve(std::min<std::size_t>(n, r.remaining() / 21));  // 21 = smallest encoded peer
  for (std::uint32_t i = 0; i < n; ++i) {
    PeerInfo p;
    std::uint8_t state = 0;
    if (!(r.str(p.id, kMaxIdLen) && r.str(p.addr, kMaxAddrLen) && r.u8(state) &&
          r.i64(p.heartbeat_age_ms) && r.u32(p.streams))) {
      return malformed("Membership");
    }
    if (state != static_cast<std::uint8_t>(PeerState::kPending) &&
        state != static_cast<std::uint8_t>(PeerState::kMember)) {
      return malformed("Membership");
    }
    p.state = static_cast<PeerState>(state);
    v.peers.push_back(std::move(p));
  }
  std::uint32_t c = 0;
  if (!r.u32(c) || c > kMaxCounters) return malformed("Membership");
  for (std::uint32_t i = 0; i < c; ++i) {
    std::string name;
    std::uint64_t value = 0;
    if (!(r.str(name, kMaxCounterNameLen) && r.u64(value))) return malformed("Membership");
    v.counters.emplace_back(std::move(name), value);
  }
  if (!readEdges(r, v.edges) || !r.done()) return malformed("Membership");
  return v;
}

std::vector<std::uint8_t> encodeLinkReport(const LinkReportMsg& m) {
  std::vector<std::uint8_t> out;
  ByteWriter w(out);
  writeEdges(w, m.edges);
  return out;
}

Result<LinkReportMsg> decodeLinkReport(ByteSpan in) {
  ByteReader r(in);
  LinkReportMsg m;
  if (!readEdges(r, m.edges) || !r.done()) return malformed("LinkReport");
  return m;
}

std::vector<std::uint8_t> encodeLinkHello(const LinkHelloMsg& m) {
  std::vector<std::uint8_t> out;
  ByteWriter w(out);
  w.str(m.link_id);
  w.str(m.from_peer);
  w.u32(m.stream_index);
  w.u32(m.stream_count);
  w.u32(m.chunk_bytes);
  return out;
}

Result<LinkHelloMsg> decodeLinkHello(ByteSpan in) {
  ByteReader r(in);
  LinkHelloMsg m;
  if (!(r.str(m.link_id, kMaxIdLen) && r.str(m.from_peer, kMaxIdLen) && r.u32(m.stream_index) &&
        r.u32(m.stream_count) && r.u32(m.chunk_bytes) && r.done())) {
    return malformed("LinkHello");
  }
  return m;
}

}  // namespace loco::p2p
