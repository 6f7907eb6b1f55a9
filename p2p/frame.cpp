#include "p2p/frame.h"

#include <cstring>

namespace loco::p2p {

std::string_view msgTypeName(MsgType t) {
  switch (t) {
    case MsgType::kHello:
      return "Hello";
    case MsgType::kWelcome:
      return "Welcome";
    case MsgType::kRefused:
      return "Refused";
    case MsgType::kHeartbeat:
      return "Heartbeat";
    case MsgType::kSyncRequest:
      return "SyncRequest";
    case MsgType::kSyncDone:
      return "SyncDone";
    case MsgType::kMembership:
      return "Membership";
    case MsgType::kLeave:
      return "Leave";
    case MsgType::kLeaveAck:
      return "LeaveAck";
    case MsgType::kEvicted:
      return "Evicted";
    case MsgType::kStatusRequest:
      return "StatusRequest";
    case MsgType::kStatusReply:
      return "StatusReply";
    case MsgType::kLinkHello:
      return "LinkHello";
    case MsgType::kLinkAccept:
      return "LinkAccept";
    case MsgType::kData:
      return "Data";
    case MsgType::kOpReport:
      return "OpReport";
    case MsgType::kOpDecision:
      return "OpDecision";
    case MsgType::kStateManifest:
      return "StateManifest";
    case MsgType::kStatePlan:
      return "StatePlan";
    case MsgType::kStateDone:
      return "StateDone";
    case MsgType::kStateComplete:
      return "StateComplete";
    case MsgType::kStateComplaint:
      return "StateComplaint";
    case MsgType::kLinkReport:
      return "LinkReport";
    case MsgType::kProgress:
      return "Progress";
    case MsgType::kPeerReport:
      return "PeerReport";
    case MsgType::kDialBack:
      return "DialBack";
    case MsgType::kDialBackProbe:
      return "DialBackProbe";
    case MsgType::kDialBackResult:
      return "DialBackResult";
    case MsgType::kEnroll:
      return "Enroll";
    case MsgType::kEnrollReply:
      return "EnrollReply";
    case MsgType::kConnectRequest:
      return "ConnectRequest";
    case MsgType::kConnectReply:
      return "ConnectReply";
  }
  return "Unknown";
}

std::uint32_t maxPayload(MsgType t) {
  switch (t) {
    case MsgType::kHello:
      return 128u << 10;  // version 2 lists up to kMaxLastMembers ids of up to 64 bytes
    case MsgType::kWelcome:
      return 256;
    case MsgType::kRefused:
      return 4096;
    case MsgType::kEvicted:
      return 4096;
    case MsgType::kMembership:
      return 4u << 20;  // ~20k peers
    case MsgType::kStatusReply:
      return 8u << 20;
    case MsgType::kLinkHello:
      return 1024;
    case MsgType::kData:
      return kMaxDataChunk;
    case MsgType::kOpReport:
      return 4096;  // a verdict and up to kMaxOpMembers ids (messages.h)
    case MsgType::kOpDecision:
      return 1;
    // Hashes of up to kMaxStateChunks chunks plus names; sources' bitmaps (see messages.h).
    case MsgType::kStateManifest:
    case MsgType::kStatePlan:
      return kMaxStateMessage;
    case MsgType::kStateDone:
      return 1;
    case MsgType::kStateComplete:
      return 0;
    case MsgType::kStateComplaint:
      return 4096;
    case MsgType::kLinkReport:
      return 64u << 10;
    case MsgType::kProgress:
      return 256;  // version 1 is 26 bytes; room for fields a newer peer appends
    case MsgType::kPeerReport:
    case MsgType::kDialBack:
    case MsgType::kDialBackProbe:
      return 1024;
    case MsgType::kDialBackResult:
    case MsgType::kConnectRequest:
    case MsgType::kConnectReply:
      return 4096;
    case MsgType::kEnroll:
    case MsgType::kEnrollReply:
      return 16u << 10;  // PEM certificates and keys of a few hundred bytes each
    case MsgType::kHeartbeat:
    case MsgType::kSyncRequest:
    case MsgType::kSyncDone:
    case MsgType::kLeave:
    case MsgType::kLeaveAck:
    case MsgType::kStatusRequest:
    case MsgType::kLinkAccept:
      return 0;
  }
  return 0;
}

std::uint16_t allowedFlags(MsgType t) {
  return t == MsgType::kData ? kFlagLastChunk : 0;
}

std::string_view frameErrorName(FrameError e) {
  switch (e) {
    case FrameError::kNone:
      return "none";
    case FrameError::kBadMagic:
      return "bad_magic";
    case FrameError::kBadVersion:
      return "bad_version";
    case FrameError::kUnknownType:
      return "unknown_type";
    case FrameError::kBadFlags:
      return "bad_flags";
    case FrameError::kTooLong:
      return "too_long";
  }
  return "unknown";
}

namespace {
bool knownType(std::uint8_t t) {
  return t >= static_cast<std::uint8_t>(MsgType::kHello) &&
         t <= static_cast<std::uint8_t>(kLastMsgType);
}
}  // namespace

HeaderParse parseFrameHeader(std::span<const std::uint8_t, kFrameHeaderSize> bytes) {
  ByteReader r(bytes);
  std::uint32_t magic = 0;
  std::uint8_t version = 0, type = 0;
  HeaderParse out;
  FrameHeader& h = out.header;
  // The reader cannot fail here: the span has exactly kFrameHeaderSize bytes.
  (void)(r.u32(magic) && r.u8(version) && r.u8(type) && r.u16(h.flags) && r.u32(h.length) &&
         r.u32(h.chunk) && r.u64(h.epoch) && r.u64(h.op_id));
  if (magic != kFrameMagic) {
    out.error = FrameError::kBadMagic;
  } else if (version != kWireVersion) {
    out.error = FrameError::kBadVersion;
  } else if (!knownType(type)) {
    out.error = FrameError::kUnknownType;
  } else {
    h.type = static_cast<MsgType>(type);
    if ((h.flags & ~allowedFlags(h.type)) != 0) {
      out.error = FrameError::kBadFlags;
    } else if (h.length > maxPayload(h.type)) {
      out.error = FrameError::kTooLong;
    }
  }
  return out;
}

std::array<std::uint8_t, kFrameHeaderSize> encodeFrameHeader(const FrameHeader& h) {
  std::vector<std::uint8_t> buf;
  buf.reserve(kFrameHeaderSize);
  ByteWriter w(buf);
  w.u32(kFrameMagic);
  w.u8(kWireVersion);
  w.u8(static_cast<std::uint8_t>(h.type));
  w.u16(h.flags);
  w.u32(h.length);
  w.u32(h.chunk);
  w.u64(h.epoch);
  w.u64(h.op_id);
  std::array<std::uint8_t, kFrameHeaderSize> out{};
  std::memcpy(out.data(), buf.data(), kFrameHeaderSize);
  return out;
}

FrameDecode decodeFrame(ByteSpan in) {
  FrameDecode out;
  if (in.size() < kFrameHeaderSize) return out;  // kNeedMore
  HeaderParse hp = parseFrameHeader(in.first<kFrameHeaderSize>());
  if (!hp.ok()) {
    out.kind = FrameDecode::Kind::kError;
    out.error = hp.error;
    return out;
  }
  if (in.size() - kFrameHeaderSize < hp.header.length) return out;  // kNeedMore
  out.kind = FrameDecode::Kind::kFrame;
  out.header = hp.header;
  out.payload = in.subspan(kFrameHeaderSize, hp.header.length);
  out.consumed = kFrameHeaderSize + hp.header.length;
  return out;
}

std::vector<std::uint8_t> encodeFrame(FrameHeader h, ByteSpan payload) {
  h.length = static_cast<std::uint32_t>(payload.size());
  auto hdr = encodeFrameHeader(h);
  std::vector<std::uint8_t> out(kFrameHeaderSize + payload.size());
  std::memcpy(out.data(), hdr.data(), kFrameHeaderSize);
  if (!payload.empty()) std::memcpy(out.data() + kFrameHeaderSize, payload.data(), payload.size());
  return out;
}

}  // namespace loco::p2p
