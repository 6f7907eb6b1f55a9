#pragma once
// The wire framing (ARCHITECTURE.md §3). Every message on every loco TCP stream is one frame:
//
//   offset size field
//        0    4 magic    "LOCO" (0x4F434F4C little-endian)
//        4    1 version  kWireVersion
//        5    1 type     MsgType
//        6    2 flags    per-type (allowedFlags); unknown bits are rejected
//        8    4 length   payload bytes that follow the header
//       12    4 chunk    chunk index (Data frames)
//       16    8 epoch    membership epoch the sender was in
//       24    8 op_id    operation id / transfer tag
//
// All integers little-endian. The length is checked against the type's maximum before anything is
// allocated. Parsing is a pure function over bytes: no sockets, no allocation, fuzzable.

#include <array>
#include <cstdint>
#include <string_view>
#include <vector>

#include "p2p/base/bytes.h"
#include "p2p/base/status.h"

namespace loco::p2p {

inline constexpr std::uint32_t kFrameMagic = 0x4F434F4C;  // bytes 'L','O','C','O'
inline constexpr std::uint8_t kWireVersion = 1;
inline constexpr std::size_t kFrameHeaderSize = 32;

enum class MsgType : std::uint8_t {
  kHello = 1,           // peer -> coordinator: register (HelloMsg)
  kWelcome = 2,         // coordinator -> peer: registered (WelcomeMsg)
  kRefused = 3,         // coordinator -> peer: registration refused (RefusedMsg), then close
  kHeartbeat = 4,       // either way, empty
  kSyncRequest = 5,     // peer -> coordinator: reached a sync point in `epoch`
  kSyncDone = 6,        // coordinator -> peers: all members synced; continue in `epoch`
  kMembership = 7,      // coordinator -> peers: the group's view (MembershipMsg)
  kLeave = 8,           // peer -> coordinator: graceful leave
  kLeaveAck = 9,        // coordinator -> peer
  kEvicted = 10,        // coordinator -> peer: you were removed (EvictedMsg), then close
  kStatusRequest = 11,  // client -> coordinator
  kStatusReply = 12,    // coordinator -> client (StatusMsg)
  kLinkHello = 13,      // peer -> peer: open one stream of a link (LinkHelloMsg)
  kLinkAccept = 14,     // peer -> peer: stream accepted
  kData = 15,           // bulk bytes: op_id = transfer tag, chunk = chunk index
  kOpReport = 16,       // peer -> coordinator: my part of (epoch, op_id) is done (1) or failed (0)
  kOpDecision = 17,     // coordinator -> peers: (epoch, op_id) commits (1) or aborts (0)
  // Shared state (state_sync.h). The coordinator sees hashes and layouts, never tensor bytes.
  kStateManifest = 18,  // peer -> coordinator: layout, revision and chunk hashes (StateManifestMsg)
  kStatePlan = 19,  // coordinator -> peer: op_id = round; what to fetch from whom (StatePlanMsg)
  kStateDone = 20,  // peer -> coordinator: op_id = round (0: withdraw); 1 byte: ok
  kStateComplete = 21,   // coordinator -> peers: round op_id is over; sources may stop serving (0:
                         // withdrawal seen)
  kStateComplaint = 22,  // peer -> coordinator: a source served corrupt chunks (StateComplaintMsg)
  kLinkReport =
      23,          // peer -> coordinator: bandwidth estimates of links it measured (LinkReportMsg)
  kProgress = 24,  // peer -> coordinator: what it holds after a round it applied (ProgressMsg)
  // Operations (a coordinator that predates these closes the connection: peers and `loco doctor`
  // must run the coordinator's version).
  kPeerReport = 25,      // peer -> coordinator: progress after a round (PeerReportMsg)
  kDialBack = 26,        // doctor -> coordinator, before Hello: dial me back (DialBackMsg)
  kDialBackProbe = 27,   // coordinator -> the dialled address: the request's token (DialBackMsg)
  kDialBackResult = 28,  // coordinator -> doctor: how the dial went (DialBackResultMsg), then close
  // Enrollment over a TLS connection that pinned the run CA (p2p/enroll.h, tls_stream.h).
  kEnroll = 29,       // new peer -> coordinator, before Hello: token, id, public key (EnrollMsg)
  kEnrollReply = 30,  // coordinator -> peer: its certificate and the CA (EnrollReplyMsg), close
  // NAT traversal (p2p/traversal.h), relayed by the coordinator between two registered peers.
  kConnectRequest = 31,  // dialer -> coordinator -> the peer to reach (ConnectMsg)
  kConnectReply = 32,    // that peer -> coordinator -> the dialer: a punch's port, or failure
};
inline constexpr MsgType kLastMsgType = MsgType::kConnectReply;

std::string_view msgTypeName(MsgType t);

struct FrameHeader {
  MsgType type = MsgType::kHeartbeat;
  std::uint16_t flags = 0;
  std::uint32_t length = 0;
  std::uint32_t chunk = 0;
  std::uint64_t epoch = 0;
  std::uint64_t op_id = 0;
};

// Data: this chunk is the last of its transfer (the receiver checks its buffer size by it).
inline constexpr std::uint16_t kFlagLastChunk = 1;
// The flag bits a type may carry; any other bit is a protocol error.
std::uint16_t allowedFlags(MsgType t);

// Largest payload accepted for each type; 0 for types without payload.
std::uint32_t maxPayload(MsgType t);
inline constexpr std::uint32_t kMaxDataChunk = 16u << 20;
inline constexpr std::uint32_t kMaxStateMessage = 16u << 20;

// Why a header was rejected; each reason has its own metric ("p2p.frames_rejected.<name>").
enum class FrameError { kNone, kBadMagic, kBadVersion, kUnknownType, kBadFlags, kTooLong };
std::string_view frameErrorName(FrameError e);

struct HeaderParse {
  FrameError error = FrameError::kNone;
  FrameHeader header;
  bool ok() const { return error == FrameError::kNone; }
};

// Validates one header. Use decodeFrame for input that may be partial.
HeaderParse parseFrameHeader(std::span<const std::uint8_t, kFrameHeaderSize> bytes);

std::array<std::uint8_t, kFrameHeaderSize> encodeFrameHeader(const FrameHeader& h);

// Decodes the first frame in `in`, which may hold a partial frame, several frames or garbage.
struct FrameDecode {
  enum class Kind { kFrame, kNeedMore, kError } kind = Kind::kNeedMore;
  FrameError error = FrameError::kNone;
  FrameHeader header;
  ByteSpan payload;
  std::size_t consumed = 0;  // bytes of `in` this frame used (header + payload)
};
FrameDecode decodeFrame(ByteSpan in);

// Header + payload in one buffer, ready to write (tests and small control messages).
std::vector<std::uint8_t> encodeFrame(FrameHeader h, ByteSpan payload);

}  // namespace loco::p2p
