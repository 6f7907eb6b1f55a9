#pragma once
// Payloads of the control messages (see MsgType in frame.h). encode* never fails; decode* is a
// pure function that rejects anything malformed, truncated or with trailing bytes (kProtocolError).

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "p2p/base/bytes.h"
#include "p2p/base/status.h"
#include "p2p/topology.h"

namespace loco::p2p {

inline constexpr std::size_t kMaxAddrLen = 262;  // "[v6]:port" or a DNS name with port
inline constexpr std::size_t kMaxReasonLen = 1024;

inline constexpr std::size_t kMaxLastMembers = 1024;  // ids a Hello may list (kMaxRing is 64)

// Extending a message: new fields go behind a version byte appended to the old payload, so a
// decoder accepts the older form (the new fields keep their defaults) and a newer one (fields it
// does not know are skipped). Hello is at version 3.
inline constexpr std::uint8_t kHelloVersion = 3;

// How other peers open connections to a peer (p2p/traversal.h), decided by the peer at start
// (p2p/connect_strategy.h) and announced in its Hello and every membership view.
enum class PeerReach : std::uint8_t {
  kDirect = 0,   // dial its advertised address
  kReverse = 1,  // unreachable behind a port-preserving NAT: it dials out on request (reverse
                 // dial) or punches a hole with a dialer that is behind a NAT itself
  kRelayed = 2,  // its advertised address is a relay's (p2p/relay.h): dial it like kDirect
};
std::string_view peerReachName(PeerReach r);  // "direct", "reverse", "relayed"
bool validPeerReach(std::uint8_t r);

struct HelloMsg {
  std::string peer_id;    // 32 hex digits
  std::string advertise;  // HOST:PORT other peers reach this peer's links at
  std::uint32_t streams = 0;
  std::string version;  // loco's version, for logs
  // The highest epoch this peer has seen (0 if none): a restarted coordinator continues above
  // it, so epochs never go backwards for anyone.
  std::uint64_t last_epoch = 0;
  // ---- version 2: re-registration after the coordinator was lost (ARCHITECTURE.md §4) ----
  // Random per process: a Hello with the same id and incarnation is this process reconnecting
  // (its old connection is dead), not a second process using the same identity.
  std::uint64_t incarnation = 0;
  // Counts this process's connection attempts: a stale attempt that a stalled coordinator
  // finds in its backlog later cannot replace a newer one.
  std::uint64_t attempt = 0;
  // The members of the last view this peer saw (at last_epoch): a coordinator that lost its
  // group waits for them before it admits anyone, so the group comes back whole.
  std::vector<std::string> last_members;
  // What the peer holds, for the coordinator's log and status: the shared-state revision and
  // digest after its last sync, and the application's progress (training: outer steps applied).
  // The coordinator decides nothing from them; the next shared-state sync elects the state.
  std::uint64_t state_revision = 0;
  std::uint64_t state_digest = 0;
  std::uint64_t progress = 0;
  // ---- version 3 ----
  PeerReach reach = PeerReach::kDirect;
};

// kProgress, peer -> coordinator, after every round the peer applied (and when it resumes from a
// checkpoint): what it holds now. The coordinator keeps the most advanced report of the run (its
// high-water mark, membership.h), so that a peer that comes back behind it, with nobody holding
// the newer state, does not train those rounds again alone. Versioned like Hello: version 1, then
// whatever a newer peer appends.
struct ProgressMsg {
  std::uint64_t state_revision = 0;
  std::uint64_t state_digest = 0;
  std::uint64_t progress = 0;  // the application's (training: outer steps applied)
  bool finished = false;       // this peer reached the run's last step
};

struct WelcomeMsg {
  std::uint32_t heartbeat_interval_ms = 0;
  std::uint32_t heartbeat_timeout_ms = 0;
  std::uint64_t epoch = 0;
};

// Sent before the coordinator closes a connection it will not serve.
struct RefusedMsg {
  StatusCode code = StatusCode::kInternal;
  std::string reason;
};

struct EvictedMsg {
  std::string reason;
};

enum class PeerState : std::uint8_t { kPending = 1, kMember = 2 };
std::string_view peerStateName(PeerState s);

struct PeerInfo {
  std::string id;
  std::string addr;
  PeerState state = PeerState::kPending;
  std::int64_t heartbeat_age_ms = 0;
  std::uint32_t streams = 0;
  PeerReach reach = PeerReach::kDirect;
};

// The group as the coordinator sees it: members in ring order, then pending peers. Broadcast as
// kMembership on every change; returned by kStatusReply with the coordinator's counters added.
struct GroupView {
  std::uint64_t epoch = 0;
  std::vector<PeerInfo> peers;
  std::vector<std::pair<std::string, std::uint64_t>> counters;
  // Status replies only: the coordinator's link bandwidth estimates (topology.h).
  std::vector<EdgeEstimate> edges;
  // Status replies only: each registered peer's reachability at its advertised address, as the
  // coordinator's dial-back found it (coordinator.h Reachability::describe()). Appended to the
  // encoding only when non-empty, so membership broadcasts are unchanged.
  std::vector<std::pair<std::string, std::string>> reachability;

  std::size_t world() const;                 // members
  std::vector<std::string> ringIds() const;  // member ids in ring order (rank r sends to r+1)
  std::size_t pending() const;
};

struct LinkHelloMsg {
  std::string link_id;  // random, names the link both ends build
  std::string from_peer;
  std::uint32_t stream_index = 0;
  std::uint32_t stream_count = 0;
  std::uint32_t chunk_bytes = 0;
};

// kOpReport: this peer's part of an operation is done (ok) or failed. `members` names who takes
// part when that is not every member of the epoch (an exchange between a few peers); empty
// otherwise, and then the payload is the single verdict byte.
inline constexpr std::size_t kMaxOpMembers = 16;
struct OpReportMsg {
  bool ok = false;
  std::vector<std::string> members;
};
std::vector<std::uint8_t> encodeOpReport(const OpReportMsg& m);
Result<OpReportMsg> decodeOpReport(ByteSpan in);

// ---- shared state (state_sync.h) ---------------------------------------------------------------

inline constexpr std::size_t kMaxStateBuffers = 16384;
inline constexpr std::size_t kMaxStateNameLen = 256;
inline constexpr std::size_t kMaxStateChunks = 1u << 20;  // 1 TiB at 1 MiB chunks
inline constexpr std::size_t kMaxStateSources = 32;       // per plan

enum class StateStrategy : std::uint8_t { kEnforcePopular = 1, kReceiveOnly = 2, kSendOnly = 3 };
std::string_view stateStrategyName(StateStrategy s);

struct StateBufferInfo {
  std::string name;
  std::uint8_t dtype = 0;       // opaque to p2p/: compared, never interpreted
  std::uint8_t elem_bytes = 0;  // 1..16
  std::uint64_t count = 0;      // elements
  std::uint64_t bytes() const { return count * elem_bytes; }
  bool operator==(const StateBufferInfo&) const = default;
};

// Chunks of a layout: every buffer is cut into chunk_bytes pieces on its own (the last one
// shorter), buffers in order. 0 chunks for an empty buffer.
std::uint64_t stateChunkCount(const std::vector<StateBufferInfo>& buffers,
                              std::uint32_t chunk_bytes);

// What one peer holds: sent to the coordinator at every shared-state sync.
struct StateManifestMsg {
  std::uint64_t sync_id = 0;  // the peer's own number for this sync; echoed in its plan
  StateStrategy strategy = StateStrategy::kEnforcePopular;
  std::uint64_t revision = 0;
  std::uint32_t chunk_bytes = 0;
  std::vector<StateBufferInfo> buffers;
  std::vector<std::uint64_t> hashes;  // one per chunk (stateChunkCount)
};

// A peer that holds canonical chunks. `holds` has one bit per chunk (bit c of byte c/8).
struct StateSource {
  std::string peer_id;
  std::string addr;
  std::uint32_t streams = 0;
  std::vector<std::uint8_t> holds;
  bool holdsChunk(std::size_t c) const {
    return c / 8 < holds.size() && (holds[c / 8] >> (c % 8)) & 1;
  }
};

// The coordinator's verdict for one peer. code != kOk: this peer's sync fails with `reason`
// (layout mismatch, a send-only peer that lost); everything else is empty then.
struct StatePlanMsg {
  std::uint64_t sync_id = 0;  // the manifest's, so a plan for an abandoned sync is recognised
  StatusCode code = StatusCode::kOk;
  std::string reason;
  std::uint64_t revision = 0;            // every peer's revision after this sync
  std::uint64_t elected_revision = 0;    // the revision of the peers whose content won
  std::vector<std::uint64_t> canonical;  // the winning hash of every chunk
  std::vector<StateSource> sources;      // empty when this peer needs nothing
};

struct StateComplaintMsg {
  std::string accused;  // peer id
  std::uint32_t bad_chunks = 0;
  std::string reason;
};

// A peer's bandwidth measurements: passive ones of its own outgoing ring link, probe results of
// links into it. Rates travel as whole bytes per second.
struct LinkReportMsg {
  std::vector<EdgeEstimate> edges;
};

// ---- operations (what the coordinator's dashboard and `loco doctor` need) ----------------------

// kPeerReport: a training peer's progress after each round, for the coordinator's /api/status
// and dashboard. The coordinator decides nothing from it. Version byte first (1).
struct PeerReportMsg {
  std::uint64_t outer_step = 0;
  std::uint64_t inner_step = 0;
  double loss = 0;            // the group's mean train loss of the round (NaN: none)
  double val_loss = 0;        // NaN unless this peer evaluated this round
  double bytes_sent = 0;      // all peers' collective bytes so far, as the round's statistics say
  double tokens_per_s = 0;    // this peer's inner-loop throughput
  double utilization = 0;     // share of the round this peer spent computing, 0..1
  double round_s = 0;         // wall time of the round on this peer
  std::uint32_t retries = 0;  // failed attempts before the round went through
  std::uint32_t world = 0;
  std::string http;  // this peer's --http address ("" when off)
};

// kDialBack (doctor -> coordinator) asks the coordinator to open a TCP connection to `addr` and
// send kDialBackProbe with the same token; kDialBackResult says how that went. The coordinator
// dials only the address the request came from (with the port asked for), so it cannot be used
// to probe third parties.
struct DialBackMsg {
  std::string addr;  // HOST:PORT (kDialBack); unused in kDialBackProbe
  std::uint64_t token = 0;
};
struct DialBackResultMsg {
  StatusCode code = StatusCode::kOk;     // kOk: connected and the probe was sent
  std::string detail;                    // what failed, in words
  std::string seen_from;                 // the requester's address as the coordinator sees it
  std::int64_t coordinator_unix_ms = 0;  // the coordinator's wall clock when it answered
};

// kConnectRequest / kConnectReply (p2p/traversal.h): a dialer asks, through the coordinator, a
// peer that cannot accept connections to open one. Sent by a peer, `peer` names the other end;
// forwarded by the coordinator, it names the sender, and the coordinator fills `endpoint` in
// from what it knows (the sender's advertised address, or the address it sees the sender at with
// the sender's port), so nobody can make a peer dial an address of its choosing.
enum class ConnectMode : std::uint8_t {
  kReverse = 1,  // the receiver dials `endpoint` and sends the token first
  kPunch = 2,    // both connect to each other at once (TCP simultaneous open)
};
struct ConnectMsg {
  std::string peer;
  std::uint64_t token = 0;
  ConnectMode mode = ConnectMode::kReverse;
  std::uint16_t port = 0;  // sent by a peer: its local port for a punch (0 otherwise)
  std::string endpoint;    // forwarded: HOST:PORT to connect to ("" in a failed reply)
  std::string error;       // a reply that failed: why
};
std::vector<std::uint8_t> encodeConnect(const ConnectMsg& m);
Result<ConnectMsg> decodeConnect(ByteSpan in);

std::vector<std::uint8_t> encodePeerReport(const PeerReportMsg& m);
Result<PeerReportMsg> decodePeerReport(ByteSpan in);
std::vector<std::uint8_t> encodeDialBack(const DialBackMsg& m);
Result<DialBackMsg> decodeDialBack(ByteSpan in);
std::vector<std::uint8_t> encodeDialBackResult(const DialBackResultMsg& m);
Result<DialBackResultMsg> decodeDialBackResult(ByteSpan in);

std::vector<std::uint8_t> encodeHello(const HelloMsg& m);
Result<HelloMsg> decodeHello(ByteSpan in);
std::vector<std::uint8_t> encodeProgress(const ProgressMsg& m);
Result<ProgressMsg> decodeProgress(ByteSpan in);
std::vector<std::uint8_t> encodeWelcome(const WelcomeMsg& m);
Result<WelcomeMsg> decodeWelcome(ByteSpan in);
std::vector<std::uint8_t> encodeRefused(const RefusedMsg& m);
Result<RefusedMsg> decodeRefused(ByteSpan in);
std::vector<std::uint8_t> encodeEvicted(const EvictedMsg& m);
Result<EvictedMsg> decodeEvicted(ByteSpan in);
std::vector<std::uint8_t> encodeGroupView(const GroupView& v);
Result<GroupView> decodeGroupView(ByteSpan in);
std::vector<std::uint8_t> encodeLinkHello(const LinkHelloMsg& m);
Result<LinkHelloMsg> decodeLinkHello(ByteSpan in);
std::vector<std::uint8_t> encodeLinkReport(const LinkReportMsg& m);
Result<LinkReportMsg> decodeLinkReport(ByteSpan in);
std::vector<std::uint8_t> encodeStateManifest(const StateManifestMsg& m);
Result<StateManifestMsg> decodeStateManifest(ByteSpan in);
std::vector<std::uint8_t> encodeStatePlan(const StatePlanMsg& m);
Result<StatePlanMsg> decodeStatePlan(ByteSpan in);
std::vector<std::uint8_t> encodeStateComplaint(const StateComplaintMsg& m);
Result<StateComplaintMsg> decodeStateComplaint(ByteSpan in);

}  // namespace loco::p2p
