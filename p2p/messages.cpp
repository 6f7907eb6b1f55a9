#include "p2p/messages.h"

#include <fmt/format.h>

#include <algorithm>
#include <bit>

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
    if (!(r.str(e.from, kMaxIdLen) && r.str(e.to, kMaxIdLen) && r.u64(rate) && r.u8(source)))
      return false;
    if (source != static_cast<std::uint8_t>(EdgeSource::kProbe) &&
        source != static_cast<std::uint8_t>(EdgeSource::kPassive)) {
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

std::string_view peerReachName(PeerReach r) {
  switch (r) {
    case PeerReach::kReverse:
      return "reverse";
    case PeerReach::kRelayed:
      return "relayed";
    case PeerReach::kDirect:
      break;
  }
  return "direct";
}

bool validPeerReach(std::uint8_t r) {
  return r <= static_cast<std::uint8_t>(PeerReach::kRelayed);
}

std::size_t GroupView::world() const {
  return static_cast<std::size_t>(std::count_if(
      peers.begin(), peers.end(), [](auto& p) { return p.state == PeerState::kMember; }));
}
std::vector<std::string> GroupView::ringIds() const {
  std::vector<std::string> ids;
  for (const auto& p : peers) {
    if (p.state == PeerState::kMember) ids.push_back(p.id);
  }
  return ids;
}
std::size_t GroupView::pending() const {
  return peers.size() - world();
}

std::vector<std::uint8_t> encodeHello(const HelloMsg& m) {
  std::vector<std::uint8_t> out;
  ByteWriter w(out);
  w.str(m.peer_id);
  w.str(m.advertise);
  w.u32(m.streams);
  w.str(m.version);
  w.u64(m.last_epoch);
  w.u8(kHelloVersion);
  w.u64(m.incarnation);
  w.u64(m.attempt);
  w.u64(m.state_revision);
  w.u64(m.state_digest);
  w.u64(m.progress);
  w.u32(static_cast<std::uint32_t>(m.last_members.size()));
  for (const auto& id : m.last_members) w.str(id);
  w.u8(static_cast<std::uint8_t>(m.reach));
  return out;
}

Result<HelloMsg> decodeHello(ByteSpan in) {
  ByteReader r(in);
  HelloMsg m;
  if (!(r.str(m.peer_id, kMaxIdLen) && r.str(m.advertise, kMaxAddrLen) && r.u32(m.streams) &&
        r.str(m.version, kMaxVersionLen) && r.u64(m.last_epoch))) {
    return malformed("Hello");
  }
  if (r.done()) return m;  // version 1: a peer that reports nothing more
  std::uint8_t version = 0;
  std::uint32_t n = 0;
  if (!(r.u8(version) && version >= 2 && r.u64(m.incarnation) && r.u64(m.attempt) &&
        r.u64(m.state_revision) && r.u64(m.state_digest) && r.u64(m.progress) && r.u32(n)) ||
      n > kMaxLastMembers || n > r.remaining() / 4) {
    return malformed("Hello");
  }
  m.last_members.resize(n);
  for (auto& id : m.last_members) {
    if (!r.str(id, kMaxIdLen)) return malformed("Hello");
  }
  if (version == 2) {
    if (!r.done()) return malformed("Hello");
    return m;
  }
  std::uint8_t reach = 0;
  if (!r.u8(reach) || !validPeerReach(reach)) return malformed("Hello");
  m.reach = static_cast<PeerReach>(reach);
  // A newer peer's fields beyond version 3 are not ours to read.
  if (version == 3 && !r.done()) return malformed("Hello");
  return m;
}

std::vector<std::uint8_t> encodeProgress(const ProgressMsg& m) {
  std::vector<std::uint8_t> out;
  ByteWriter w(out);
  w.u8(1);  // version
  w.u64(m.state_revision);
  w.u64(m.state_digest);
  w.u64(m.progress);
  w.u8(m.finished ? 1 : 0);
  return out;
}

Result<ProgressMsg> decodeProgress(ByteSpan in) {
  ByteReader r(in);
  ProgressMsg m;
  std::uint8_t version = 0, flags = 0;
  if (!(r.u8(version) && version >= 1 && r.u64(m.state_revision) && r.u64(m.state_digest) &&
        r.u64(m.progress) && r.u8(flags)) ||
      flags > 1) {
    return malformed("Progress");
  }
  m.finished = flags == 1;
  // A newer peer's fields beyond version 1 are not ours to read.
  if (version == 1 && !r.done()) return malformed("Progress");
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
  if (!(r.u32(m.heartbeat_interval_ms) && r.u32(m.heartbeat_timeout_ms) && r.u64(m.epoch) &&
        r.done())) {
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
  if (code > static_cast<std::uint32_t>(kLastStatusCode))
    code = static_cast<std::uint32_t>(StatusCode::kInternal);
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
    w.u8(static_cast<std::uint8_t>(p.reach));
  }
  w.u32(static_cast<std::uint32_t>(v.counters.size()));
  for (const auto& [name, value] : v.counters) {
    w.str(name);
    w.u64(value);
  }
  writeEdges(w, v.edges);
  if (!v.reachability.empty()) {
    w.u32(static_cast<std::uint32_t>(v.reachability.size()));
    for (const auto& [id, what] : v.reachability) {
      w.str(id);
      w.str(what);
    }
  }
  return out;
}

Result<GroupView> decodeGroupView(ByteSpan in) {
  ByteReader r(in);
  GroupView v;
  std::uint32_t n = 0;
  if (!(r.u64(v.epoch) && r.u32(n)) || n > kMaxPeers) return malformed("Membership");
  v.peers.reserve(std::min<std::size_t>(n, r.remaining() / 22));  // 22 = smallest encoded peer
  for (std::uint32_t i = 0; i < n; ++i) {
    PeerInfo p;
    std::uint8_t state = 0, reach = 0;
    if (!(r.str(p.id, kMaxIdLen) && r.str(p.addr, kMaxAddrLen) && r.u8(state) &&
          r.i64(p.heartbeat_age_ms) && r.u32(p.streams) && r.u8(reach)) ||
        !validPeerReach(reach)) {
      return malformed("Membership");
    }
    p.reach = static_cast<PeerReach>(reach);
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
  if (!readEdges(r, v.edges)) return malformed("Membership");
  if (!r.done()) {
    std::uint32_t n_reach = 0;
    // The encoder writes the list only when non-empty: a zero count is trailing garbage.
    if (!r.u32(n_reach) || n_reach == 0 || n_reach > kMaxPeers) return malformed("Membership");
    for (std::uint32_t i = 0; i < n_reach; ++i) {
      std::string id, what;
      if (!(r.str(id, kMaxIdLen) && r.str(what, kMaxReasonLen))) return malformed("Membership");
      v.reachability.emplace_back(std::move(id), std::move(what));
    }
  }
  if (!r.done()) return malformed("Membership");
  return v;
}

std::vector<std::uint8_t> encodeConnect(const ConnectMsg& m) {
  std::vector<std::uint8_t> out;
  ByteWriter w(out);
  w.str(m.peer);
  w.u64(m.token);
  w.u8(static_cast<std::uint8_t>(m.mode));
  w.u16(m.port);
  w.str(m.endpoint);
  w.str(m.error);
  return out;
}

Result<ConnectMsg> decodeConnect(ByteSpan in) {
  ByteReader r(in);
  ConnectMsg m;
  std::uint8_t mode = 0;
  if (!(r.str(m.peer, kMaxIdLen) && r.u64(m.token) && r.u8(mode) && r.u16(m.port) &&
        r.str(m.endpoint, kMaxAddrLen) && r.str(m.error, kMaxReasonLen) && r.done()) ||
      (mode != static_cast<std::uint8_t>(ConnectMode::kReverse) &&
       mode != static_cast<std::uint8_t>(ConnectMode::kPunch))) {
    return malformed("Connect");
  }
  m.mode = static_cast<ConnectMode>(mode);
  return m;
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

std::vector<std::uint8_t> encodeOpReport(const OpReportMsg& m) {
  std::vector<std::uint8_t> out;
  ByteWriter w(out);
  w.u8(m.ok ? 1 : 0);
  if (m.members.empty()) return out;
  w.u16(static_cast<std::uint16_t>(m.members.size()));
  for (const auto& id : m.members) w.str(id);
  return out;
}

Result<OpReportMsg> decodeOpReport(ByteSpan in) {
  ByteReader r(in);
  OpReportMsg m;
  std::uint8_t verdict = 0;
  if (!r.u8(verdict) || verdict > 1) return malformed("OpReport");
  m.ok = verdict == 1;
  if (r.done()) return m;
  std::uint16_t count = 0;
  if (!r.u16(count) || count == 0 || count > kMaxOpMembers) return malformed("OpReport");
  m.members.resize(count);
  for (auto& id : m.members) {
    if (!r.str(id, kMaxIdLen)) return malformed("OpReport");
  }
  if (!r.done()) return malformed("OpReport");
  return m;
}

// ---- operations ---------------------------------------------------------------------------------

namespace {
constexpr std::uint8_t kPeerReportVersion = 1;
constexpr std::uint8_t kDialBackVersion = 1;

void putF64(ByteWriter& w, double v) {
  w.u64(std::bit_cast<std::uint64_t>(v));
}
bool getF64(ByteReader& r, double& v) {
  std::uint64_t bits = 0;
  if (!r.u64(bits)) return false;
  v = std::bit_cast<double>(bits);
  return true;
}
}  // namespace

std::vector<std::uint8_t> encodePeerReport(const PeerReportMsg& m) {
  std::vector<std::uint8_t> out;
  ByteWriter w(out);
  w.u8(kPeerReportVersion);
  w.u64(m.outer_step);
  w.u64(m.inner_step);
  for (double v : {m.loss, m.val_loss, m.bytes_sent, m.tokens_per_s, m.utilization, m.round_s})
    putF64(w, v);
  w.u32(m.retries);
  w.u32(m.world);
  w.str(m.http);
  return out;
}

Result<PeerReportMsg> decodePeerReport(ByteSpan in) {
  ByteReader r(in);
  PeerReportMsg m;
  std::uint8_t version = 0;
  if (!r.u8(version) || version < 1) return malformed("PeerReport");
  bool ok = r.u64(m.outer_step) && r.u64(m.inner_step);
  for (double* v :
       {&m.loss, &m.val_loss, &m.bytes_sent, &m.tokens_per_s, &m.utilization, &m.round_s})
    ok = ok && getF64(r, *v);
  ok = ok && r.u32(m.retries) && r.u32(m.world) && r.str(m.http, kMaxAddrLen);
  // A newer peer may append fields: skipped.
  if (!ok || (version == kPeerReportVersion && !r.done())) return malformed("PeerReport");
  return m;
}

std::vector<std::uint8_t> encodeDialBack(const DialBackMsg& m) {
  std::vector<std::uint8_t> out;
  ByteWriter w(out);
  w.u8(kDialBackVersion);
  w.str(m.addr);
  w.u64(m.token);
  return out;
}

Result<DialBackMsg> decodeDialBack(ByteSpan in) {
  ByteReader r(in);
  DialBackMsg m;
  std::uint8_t version = 0;
  if (!r.u8(version) || version < 1 || !r.str(m.addr, kMaxAddrLen) || !r.u64(m.token) ||
      (version == kDialBackVersion && !r.done()))
    return malformed("DialBack");
  return m;
}

std::vector<std::uint8_t> encodeDialBackResult(const DialBackResultMsg& m) {
  std::vector<std::uint8_t> out;
  ByteWriter w(out);
  w.u8(kDialBackVersion);
  w.u8(static_cast<std::uint8_t>(m.code));
  w.str(m.detail);
  w.str(m.seen_from);
  w.i64(m.coordinator_unix_ms);
  return out;
}

Result<DialBackResultMsg> decodeDialBackResult(ByteSpan in) {
  ByteReader r(in);
  DialBackResultMsg m;
  std::uint8_t version = 0, code = 0;
  if (!r.u8(version) || version < 1 || !r.u8(code) || !r.str(m.detail, kMaxReasonLen) ||
      !r.str(m.seen_from, kMaxAddrLen) || !r.i64(m.coordinator_unix_ms) ||
      (version == kDialBackVersion && !r.done()))
    return malformed("DialBackResult");
  m.code = static_cast<StatusCode>(
      std::min<std::uint8_t>(code, static_cast<std::uint8_t>(StatusCode::kInternal)));
  return m;
}

// ---- shared state -------------------------------------------------------------------------------

std::string_view stateStrategyName(StateStrategy s) {
  switch (s) {
    case StateStrategy::kEnforcePopular:
      return "enforce-popular";
    case StateStrategy::kReceiveOnly:
      return "receive-only";
    case StateStrategy::kSendOnly:
      return "send-only";
  }
  return "?";
}

std::uint64_t stateChunkCount(const std::vector<StateBufferInfo>& buffers,
                              std::uint32_t chunk_bytes) {
  if (chunk_bytes == 0) return 0;
  std::uint64_t n = 0;
  for (const auto& b : buffers) n += (b.bytes() + chunk_bytes - 1) / chunk_bytes;
  return n;
}

namespace {
// Element counts beyond this would overflow count * elem_bytes (and no machine holds them).
constexpr std::uint64_t kMaxStateElements = std::uint64_t{1} << 56;

void writeHashes(ByteWriter& w, const std::vector<std::uint64_t>& hashes) {
  w.u32(static_cast<std::uint32_t>(hashes.size()));
  for (std::uint64_t h : hashes) w.u64(h);
}

bool readHashes(ByteReader& r, std::vector<std::uint64_t>& hashes) {
  std::uint32_t n = 0;
  if (!r.u32(n) || n > kMaxStateChunks || n > r.remaining() / 8) return false;
  hashes.resize(n);
  for (auto& h : hashes) {
    if (!r.u64(h)) return false;
  }
  return true;
}
}  // namespace

std::vector<std::uint8_t> encodeStateManifest(const StateManifestMsg& m) {
  std::vector<std::uint8_t> out;
  ByteWriter w(out);
  w.u64(m.sync_id);
  w.u8(static_cast<std::uint8_t>(m.strategy));
  w.u64(m.revision);
  w.u32(m.chunk_bytes);
  w.u32(static_cast<std::uint32_t>(m.buffers.size()));
  for (const auto& b : m.buffers) {
    w.str(b.name);
    w.u8(b.dtype);
    w.u8(b.elem_bytes);
    w.u64(b.count);
  }
  writeHashes(w, m.hashes);
  return out;
}

Result<StateManifestMsg> decodeStateManifest(ByteSpan in) {
  ByteReader r(in);
  StateManifestMsg m;
  std::uint8_t strategy = 0;
  std::uint32_t n = 0;
  if (!(r.u64(m.sync_id) && r.u8(strategy) && r.u64(m.revision) && r.u32(m.chunk_bytes) &&
        r.u32(n)))
    return malformed("StateManifest");
  if (strategy < 1 || strategy > 3 || m.chunk_bytes == 0 || n > kMaxStateBuffers ||
      n > r.remaining() / 14) {
    return malformed("StateManifest");
  }
  m.strategy = static_cast<StateStrategy>(strategy);
  m.buffers.resize(n);
  for (auto& b : m.buffers) {
    if (!(r.str(b.name, kMaxStateNameLen) && r.u8(b.dtype) && r.u8(b.elem_bytes) &&
          r.u64(b.count))) {
      return malformed("StateManifest");
    }
    if (b.elem_bytes == 0 || b.elem_bytes > 16 || b.count > kMaxStateElements)
      return malformed("StateManifest");
  }
  if (!readHashes(r, m.hashes) || !r.done()) return malformed("StateManifest");
  if (stateChunkCount(m.buffers, m.chunk_bytes) != m.hashes.size())
    return malformed("StateManifest");
  return m;
}

std::vector<std::uint8_t> encodeStatePlan(const StatePlanMsg& m) {
  std::vector<std::uint8_t> out;
  ByteWriter w(out);
  w.u64(m.sync_id);
  w.u32(static_cast<std::uint32_t>(m.code));
  w.str(m.reason);
  w.u64(m.revision);
  w.u64(m.elected_revision);
  writeHashes(w, m.canonical);
  w.u32(static_cast<std::uint32_t>(m.sources.size()));
  for (const auto& s : m.sources) {
    w.str(s.peer_id);
    w.str(s.addr);
    w.u32(s.streams);
    w.bytes(s.holds);  // its length follows from the chunk count
  }
  return out;
}

Result<StatePlanMsg> decodeStatePlan(ByteSpan in) {
  ByteReader r(in);
  StatePlanMsg m;
  std::uint32_t code = 0, n = 0;
  if (!(r.u64(m.sync_id) && r.u32(code) && r.str(m.reason, kMaxReasonLen) && r.u64(m.revision) &&
        r.u64(m.elected_revision) && readHashes(r, m.canonical) && r.u32(n))) {
    return malformed("StatePlan");
  }
  if (code > static_cast<std::uint32_t>(kLastStatusCode) || n > kMaxStateSources)
    return malformed("StatePlan");
  m.code = static_cast<StatusCode>(code);
  const std::size_t bitmap = (m.canonical.size() + 7) / 8;
  m.sources.resize(n);
  for (auto& s : m.sources) {
    if (!(r.str(s.peer_id, kMaxIdLen) && r.str(s.addr, kMaxAddrLen) && r.u32(s.streams)) ||
        r.remaining() < bitmap) {
      return malformed("StatePlan");
    }
    s.holds.resize(bitmap);
    for (auto& b : s.holds) {
      if (!r.u8(b)) return malformed("StatePlan");
    }
  }
  if (!r.done()) return malformed("StatePlan");
  return m;
}

std::vector<std::uint8_t> encodeStateComplaint(const StateComplaintMsg& m) {
  std::vector<std::uint8_t> out;
  ByteWriter w(out);
  w.str(m.accused);
  w.u32(m.bad_chunks);
  w.str(m.reason);
  return out;
}

Result<StateComplaintMsg> decodeStateComplaint(ByteSpan in) {
  ByteReader r(in);
  StateComplaintMsg m;
  if (!(r.str(m.accused, kMaxIdLen) && r.u32(m.bad_chunks) && r.str(m.reason, kMaxReasonLen) &&
        r.done())) {
    return malformed("StateComplaint");
  }
  return m;
}

}  // namespace loco::p2p
