// Unit tests for the wire framing (p2p/frame.h, ARCHITECTURE.md §3): header validation, partial
// input, round trips, and a deterministic robustness run over random and mutated bytes.

#include "p2p/frame.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <vector>

#include "p2p/messages.h"

namespace loco::p2p {
namespace {

using Bytes = std::vector<std::uint8_t>;

constexpr std::uint8_t kFirstType = static_cast<std::uint8_t>(MsgType::kHello);
constexpr std::uint8_t kLastType = static_cast<std::uint8_t>(kLastMsgType);

std::vector<MsgType> allTypes() {
  std::vector<MsgType> out;
  for (int t = kFirstType; t <= kLastType; ++t) out.push_back(static_cast<MsgType>(t));
  return out;
}

FrameHeader sampleHeader(MsgType type) {
  FrameHeader h;
  h.type = type;
  h.chunk = 0xA1B2C3D4u;
  h.epoch = 0x0102030405060708ull;
  h.op_id = 0xF0E0D0C0B0A09080ull;
  return h;
}

Bytes headerBytes(const FrameHeader& h) {
  auto a = encodeFrameHeader(h);
  return Bytes(a.begin(), a.end());
}

HeaderParse parse(const Bytes& b) {
  return parseFrameHeader(
      std::span<const std::uint8_t, kFrameHeaderSize>(b.data(), kFrameHeaderSize));
}

void putU32(Bytes& b, std::size_t off, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) b[off + i] = static_cast<std::uint8_t>(v >> (8 * i));
}

// A valid payload of the largest size the type allows, capped so the tests stay small.
Bytes payloadFor(MsgType t, std::size_t cap = 300) {
  std::size_t n = std::min<std::size_t>(maxPayload(t), cap);
  Bytes p(n);
  for (std::size_t i = 0; i < n; ++i) p[i] = static_cast<std::uint8_t>(i * 7 + 3);
  return p;
}

// ---- header layout ---------------------------------------------------------------------------

TEST(Frame, HeaderLayoutMatchesTheDocumentedOffsets) {
  FrameHeader h = sampleHeader(MsgType::kData);
  h.length = 0x11223344u;
  Bytes b = headerBytes(h);
  ASSERT_EQ(b.size(), kFrameHeaderSize);
  EXPECT_EQ(b[0], 'L');
  EXPECT_EQ(b[1], 'O');
  EXPECT_EQ(b[2], 'C');
  EXPECT_EQ(b[3], 'O');
  EXPECT_EQ(b[4], kWireVersion);
  EXPECT_EQ(b[5], static_cast<std::uint8_t>(MsgType::kData));
  EXPECT_EQ(b[6], 0);
  EXPECT_EQ(b[7], 0);
  EXPECT_EQ(b[8], 0x44);  // length, little-endian
  EXPECT_EQ(b[11], 0x11);
  EXPECT_EQ(b[12], 0xD4);  // chunk
  EXPECT_EQ(b[15], 0xA1);
  EXPECT_EQ(b[16], 0x08);  // epoch
  EXPECT_EQ(b[23], 0x01);
  EXPECT_EQ(b[24], 0x80);  // op_id
  EXPECT_EQ(b[31], 0xF0);
}

TEST(Frame, ValidHeaderOfEveryTypeParsesWithAllFields) {
  for (MsgType t : allTypes()) {
    FrameHeader h = sampleHeader(t);
    h.length = maxPayload(t);
    HeaderParse p = parse(headerBytes(h));
    ASSERT_TRUE(p.ok()) << msgTypeName(t) << ": " << frameErrorName(p.error);
    EXPECT_EQ(p.header.type, t);
    EXPECT_EQ(p.header.flags, 0);
    EXPECT_EQ(p.header.length, maxPayload(t));
    EXPECT_EQ(p.header.chunk, h.chunk);
    EXPECT_EQ(p.header.epoch, h.epoch);
    EXPECT_EQ(p.header.op_id, h.op_id);
  }
}

TEST(Frame, EveryTypeHasANameAndEveryErrorHasAMetricName) {
  for (MsgType t : allTypes()) EXPECT_NE(msgTypeName(t), "Unknown") << static_cast<int>(t);
  for (FrameError e : {FrameError::kNone, FrameError::kBadMagic, FrameError::kBadVersion,
                       FrameError::kUnknownType, FrameError::kBadFlags, FrameError::kTooLong}) {
    EXPECT_FALSE(frameErrorName(e).empty());
  }
  EXPECT_EQ(frameErrorName(FrameError::kTooLong), "too_long");
}

TEST(Frame, TypesWithoutPayloadHaveMaxZeroAndDataAllowsAFullChunk) {
  for (MsgType t : {MsgType::kHeartbeat, MsgType::kSyncRequest, MsgType::kSyncDone, MsgType::kLeave,
                    MsgType::kLeaveAck, MsgType::kStatusRequest, MsgType::kLinkAccept,
                    MsgType::kStateComplete}) {
    EXPECT_EQ(maxPayload(t), 0u) << msgTypeName(t);
  }
  EXPECT_EQ(maxPayload(MsgType::kData), kMaxDataChunk);
  for (MsgType t : {MsgType::kHello, MsgType::kWelcome, MsgType::kRefused, MsgType::kEvicted,
                    MsgType::kMembership, MsgType::kStatusReply, MsgType::kLinkHello}) {
    EXPECT_GT(maxPayload(t), 0u) << msgTypeName(t);
  }
}

// The control messages' largest encodings must fit the frame type that carries them.
TEST(Frame, LargestControlMessagesFitTheirFrameMaximum) {
  RefusedMsg refused{StatusCode::kAlreadyExists, std::string(kMaxReasonLen, 'r')};
  EXPECT_LE(encodeRefused(refused).size(), maxPayload(MsgType::kRefused));
  EvictedMsg evicted{std::string(kMaxReasonLen, 'e')};
  EXPECT_LE(encodeEvicted(evicted).size(), maxPayload(MsgType::kEvicted));
  HelloMsg hello{std::string(32, 'a'), std::string(kMaxAddrLen, 'h'), 8, std::string(64, 'v')};
  hello.last_members.assign(kMaxLastMembers, std::string(64, 'm'));
  EXPECT_LE(encodeHello(hello).size(), maxPayload(MsgType::kHello));
  WelcomeMsg welcome{1000, 5000, ~0ull};
  EXPECT_LE(encodeWelcome(welcome).size(), maxPayload(MsgType::kWelcome));
  LinkHelloMsg link{std::string(64, 'l'), std::string(64, 'p'), 3, 4, 1u << 20};
  EXPECT_LE(encodeLinkHello(link).size(), maxPayload(MsgType::kLinkHello));
  StateComplaintMsg complaint{std::string(64, 'a'), ~0u, std::string(kMaxReasonLen, 'r')};
  EXPECT_LE(encodeStateComplaint(complaint).size(), maxPayload(MsgType::kStateComplaint));
  // The largest plan: every chunk hashed, the most sources with full bitmaps and addresses.
  StatePlanMsg plan;
  plan.reason = std::string(kMaxReasonLen, 'r');
  plan.canonical.assign(kMaxStateChunks, 0);
  for (std::size_t i = 0; i < kMaxStateSources; ++i) {
    plan.sources.push_back({std::string(64, 'p'), std::string(kMaxAddrLen, 'a'), 4,
                            std::vector<std::uint8_t>(kMaxStateChunks / 8, 0xFF)});
  }
  EXPECT_LE(encodeStatePlan(plan).size(), maxPayload(MsgType::kStatePlan));
  // The largest manifest: the most buffers with the longest names, the most chunks.
  StateManifestMsg manifest;
  manifest.chunk_bytes = 1u << 20;
  for (std::size_t i = 0; i < kMaxStateBuffers; ++i)
    manifest.buffers.push_back({std::string(kMaxStateNameLen, 'n'), 1, 4, 0});
  manifest.buffers[0].count = (std::uint64_t{kMaxStateChunks} << 20) / 4;
  manifest.hashes.assign(kMaxStateChunks, 0);
  EXPECT_LE(encodeStateManifest(manifest).size(), maxPayload(MsgType::kStateManifest));
}

// ---- malformed headers -----------------------------------------------------------------------

TEST(Frame, BadMagicIsRejected) {
  Bytes b = headerBytes(sampleHeader(MsgType::kHeartbeat));
  for (std::size_t i = 0; i < 4; ++i) {
    Bytes m = b;
    m[i] ^= 0x20;  // e.g. "loco" instead of "LOCO"
    EXPECT_EQ(parse(m).error, FrameError::kBadMagic) << "byte " << i;
    FrameDecode d = decodeFrame(m);
    EXPECT_EQ(d.kind, FrameDecode::Kind::kError);
    EXPECT_EQ(d.error, FrameError::kBadMagic);
  }
  Bytes zeros(kFrameHeaderSize, 0);
  EXPECT_EQ(parse(zeros).error, FrameError::kBadMagic);
}

TEST(Frame, BadVersionIsRejected) {
  for (int v : {0, 2, 0x7F, 0xFF}) {
    Bytes b = headerBytes(sampleHeader(MsgType::kHeartbeat));
    b[4] = static_cast<std::uint8_t>(v);
    EXPECT_EQ(parse(b).error, FrameError::kBadVersion) << "version " << v;
    FrameDecode d = decodeFrame(b);
    EXPECT_EQ(d.kind, FrameDecode::Kind::kError);
    EXPECT_EQ(d.error, FrameError::kBadVersion);
  }
}

TEST(Frame, UnknownTypeZeroAndEverythingAboveTheLastTypeAreRejected) {
  std::vector<int> bad = {0};
  for (int t = kLastType + 1; t <= 255; ++t) bad.push_back(t);
  ASSERT_EQ(bad.front(), 0);
  ASSERT_EQ(bad[1], kLastType + 1);
  for (int t : bad) {
    Bytes b = headerBytes(sampleHeader(MsgType::kHeartbeat));
    b[5] = static_cast<std::uint8_t>(t);
    EXPECT_EQ(parse(b).error, FrameError::kUnknownType) << "type " << t;
    FrameDecode d = decodeFrame(b);
    EXPECT_EQ(d.kind, FrameDecode::Kind::kError) << "type " << t;
    EXPECT_EQ(d.error, FrameError::kUnknownType) << "type " << t;
  }
}

TEST(Frame, FlagsATypeDoesNotDefineAreRejectedForEveryType) {
  for (MsgType t : allTypes()) {
    for (int bit = 0; bit < 16; ++bit) {
      if ((allowedFlags(t) >> bit) & 1u) continue;
      FrameHeader h = sampleHeader(t);
      h.flags = static_cast<std::uint16_t>(1u << bit);
      Bytes b = headerBytes(h);
      EXPECT_EQ(parse(b).error, FrameError::kBadFlags) << msgTypeName(t) << " bit " << bit;
      EXPECT_EQ(decodeFrame(b).kind, FrameDecode::Kind::kError);
    }
    FrameHeader h = sampleHeader(t);
    h.flags = 0xFFFF;
    EXPECT_EQ(parse(headerBytes(h)).error, FrameError::kBadFlags) << msgTypeName(t);
  }
}

TEST(Frame, DataMayCarryTheLastChunkFlagAndOnlyData) {
  FrameHeader h = sampleHeader(MsgType::kData);
  h.flags = kFlagLastChunk;
  auto p = parse(headerBytes(h));
  EXPECT_TRUE(p.ok());
  EXPECT_EQ(p.header.flags, kFlagLastChunk);
  for (MsgType t : allTypes()) {
    if (t != MsgType::kData) {
      EXPECT_EQ(allowedFlags(t), 0) << msgTypeName(t);
    }
  }
}

TEST(Frame, HeartbeatWithLengthOneIsTooLong) {
  FrameHeader h = sampleHeader(MsgType::kHeartbeat);
  h.length = 1;
  Bytes b = headerBytes(h);
  EXPECT_EQ(parse(b).error, FrameError::kTooLong);
  // Rejected from the header alone, without waiting for the payload byte.
  FrameDecode d = decodeFrame(b);
  EXPECT_EQ(d.kind, FrameDecode::Kind::kError);
  EXPECT_EQ(d.error, FrameError::kTooLong);
}

TEST(Frame, DataOneByteOverTheChunkMaximumIsTooLong) {
  FrameHeader h = sampleHeader(MsgType::kData);
  h.length = kMaxDataChunk + 1;
  Bytes b = headerBytes(h);
  EXPECT_EQ(parse(b).error, FrameError::kTooLong);
  FrameDecode d = decodeFrame(b);
  EXPECT_EQ(d.kind, FrameDecode::Kind::kError);
  EXPECT_EQ(d.error, FrameError::kTooLong);

  h.length = kMaxDataChunk;  // the maximum itself is fine: the frame is just incomplete
  EXPECT_TRUE(parse(headerBytes(h)).ok());
  EXPECT_EQ(decodeFrame(headerBytes(h)).kind, FrameDecode::Kind::kNeedMore);
}

TEST(Frame, LengthOneAboveTheMaximumIsTooLongForEveryType) {
  for (MsgType t : allTypes()) {
    FrameHeader h = sampleHeader(t);
    h.length = maxPayload(t) + 1;
    EXPECT_EQ(parse(headerBytes(h)).error, FrameError::kTooLong) << msgTypeName(t);
    h.length = maxPayload(t);
    EXPECT_TRUE(parse(headerBytes(h)).ok()) << msgTypeName(t);
  }
}

TEST(Frame, LengthAllOnesIsTooLongForEveryType) {
  for (MsgType t : allTypes()) {
    FrameHeader h = sampleHeader(t);
    h.length = 0xFFFFFFFFu;
    Bytes b = headerBytes(h);
    EXPECT_EQ(parse(b).error, FrameError::kTooLong) << msgTypeName(t);
    FrameDecode d = decodeFrame(b);
    EXPECT_EQ(d.kind, FrameDecode::Kind::kError) << msgTypeName(t);
    EXPECT_EQ(d.error, FrameError::kTooLong) << msgTypeName(t);
  }
}

TEST(Frame, ErrorsAreReportedInFieldOrder) {
  // Several things wrong at once: the first field that is wrong names the error.
  Bytes b = headerBytes(sampleHeader(MsgType::kHeartbeat));
  b[4] = 9;    // bad version
  b[5] = 200;  // unknown type
  b[6] = 1;    // flags
  putU32(b, 8, 0xFFFFFFFFu);
  EXPECT_EQ(parse(b).error, FrameError::kBadVersion);
  b[4] = kWireVersion;
  EXPECT_EQ(parse(b).error, FrameError::kUnknownType);
  b[5] = static_cast<std::uint8_t>(MsgType::kHeartbeat);
  EXPECT_EQ(parse(b).error, FrameError::kBadFlags);
  b[6] = 0;
  EXPECT_EQ(parse(b).error, FrameError::kTooLong);
  putU32(b, 8, 0);
  EXPECT_TRUE(parse(b).ok());
}

// ---- partial and concatenated input ------------------------------------------------------------

TEST(Frame, TruncatedHeaderNeedsMore) {
  Bytes full = encodeFrame(sampleHeader(MsgType::kHeartbeat), {});
  ASSERT_EQ(full.size(), kFrameHeaderSize);
  for (std::size_t n = 0; n < kFrameHeaderSize; ++n) {
    FrameDecode d = decodeFrame(ByteSpan(full.data(), n));
    EXPECT_EQ(d.kind, FrameDecode::Kind::kNeedMore) << "prefix " << n;
    EXPECT_EQ(d.consumed, 0u);
  }
  EXPECT_EQ(decodeFrame(ByteSpan()).kind, FrameDecode::Kind::kNeedMore);
}

TEST(Frame, CompleteHeaderWithTruncatedPayloadNeedsMore) {
  Bytes payload = payloadFor(MsgType::kHello, 100);
  Bytes full = encodeFrame(sampleHeader(MsgType::kHello), payload);
  ASSERT_EQ(full.size(), kFrameHeaderSize + payload.size());
  for (std::size_t n = kFrameHeaderSize; n < full.size(); ++n) {
    FrameDecode d = decodeFrame(ByteSpan(full.data(), n));
    EXPECT_EQ(d.kind, FrameDecode::Kind::kNeedMore) << "prefix " << n;
    EXPECT_EQ(d.consumed, 0u);
  }
  FrameDecode d = decodeFrame(full);
  ASSERT_EQ(d.kind, FrameDecode::Kind::kFrame);
  EXPECT_EQ(d.consumed, full.size());
}

TEST(Frame, TwoFramesBackToBackDecodeOneAtATime) {
  Bytes p1 = payloadFor(MsgType::kRefused, 40);
  Bytes p2 = payloadFor(MsgType::kData, 77);
  FrameHeader h1 = sampleHeader(MsgType::kRefused);
  FrameHeader h2 = sampleHeader(MsgType::kData);
  h2.chunk = 5;
  h2.epoch = 9;
  h2.op_id = 11;
  Bytes f1 = encodeFrame(h1, p1);
  Bytes f2 = encodeFrame(h2, p2);
  Bytes both = f1;
  both.insert(both.end(), f2.begin(), f2.end());
  // Plus a partial third frame, which must not disturb the first two.
  Bytes hb = encodeFrame(sampleHeader(MsgType::kHeartbeat), {});
  both.insert(both.end(), hb.begin(), hb.begin() + 10);

  FrameDecode d1 = decodeFrame(both);
  ASSERT_EQ(d1.kind, FrameDecode::Kind::kFrame);
  EXPECT_EQ(d1.header.type, MsgType::kRefused);
  EXPECT_EQ(d1.consumed, f1.size());
  EXPECT_EQ(Bytes(d1.payload.begin(), d1.payload.end()), p1);

  ByteSpan rest = ByteSpan(both).subspan(d1.consumed);
  FrameDecode d2 = decodeFrame(rest);
  ASSERT_EQ(d2.kind, FrameDecode::Kind::kFrame);
  EXPECT_EQ(d2.header.type, MsgType::kData);
  EXPECT_EQ(d2.header.chunk, 5u);
  EXPECT_EQ(d2.header.epoch, 9u);
  EXPECT_EQ(d2.header.op_id, 11u);
  EXPECT_EQ(d2.consumed, f2.size());
  EXPECT_EQ(Bytes(d2.payload.begin(), d2.payload.end()), p2);

  rest = rest.subspan(d2.consumed);
  EXPECT_EQ(rest.size(), 10u);
  EXPECT_EQ(decodeFrame(rest).kind, FrameDecode::Kind::kNeedMore);
}

TEST(Frame, PayloadViewPointsIntoTheInputWithoutCopying) {
  Bytes p = payloadFor(MsgType::kLinkHello, 50);
  Bytes f = encodeFrame(sampleHeader(MsgType::kLinkHello), p);
  FrameDecode d = decodeFrame(f);
  ASSERT_EQ(d.kind, FrameDecode::Kind::kFrame);
  EXPECT_EQ(d.payload.data(), f.data() + kFrameHeaderSize);
  EXPECT_EQ(d.payload.size(), p.size());
}

TEST(Frame, EveryMsgTypeRoundTrips) {
  for (MsgType t : allTypes()) {
    FrameHeader h = sampleHeader(t);
    h.length = 12345;  // encodeFrame must overwrite it with the payload size
    Bytes p = payloadFor(t);
    Bytes f = encodeFrame(h, p);
    ASSERT_EQ(f.size(), kFrameHeaderSize + p.size()) << msgTypeName(t);
    FrameDecode d = decodeFrame(f);
    ASSERT_EQ(d.kind, FrameDecode::Kind::kFrame)
        << msgTypeName(t) << ": " << frameErrorName(d.error);
    EXPECT_EQ(d.error, FrameError::kNone);
    EXPECT_EQ(d.header.type, t);
    EXPECT_EQ(d.header.flags, 0);
    EXPECT_EQ(d.header.length, p.size());
    EXPECT_EQ(d.header.chunk, h.chunk);
    EXPECT_EQ(d.header.epoch, h.epoch);
    EXPECT_EQ(d.header.op_id, h.op_id);
    EXPECT_EQ(d.consumed, f.size());
    EXPECT_EQ(Bytes(d.payload.begin(), d.payload.end()), p) << msgTypeName(t);
  }
}

TEST(Frame, DataFrameOfAFullChunkRoundTrips) {
  Bytes p(kMaxDataChunk);
  for (std::size_t i = 0; i < p.size(); i += 4093) p[i] = static_cast<std::uint8_t>(i);
  FrameHeader h = sampleHeader(MsgType::kData);
  Bytes f = encodeFrame(h, p);
  FrameDecode d = decodeFrame(f);
  ASSERT_EQ(d.kind, FrameDecode::Kind::kFrame);
  EXPECT_EQ(d.header.length, kMaxDataChunk);
  EXPECT_EQ(d.consumed, f.size());
  EXPECT_TRUE(std::equal(d.payload.begin(), d.payload.end(), p.begin(), p.end()));
}

TEST(Frame, HeaderEncodeParseRoundTripsExtremeFieldValues) {
  for (std::uint64_t v : {0ull, 1ull, 0x7FFFFFFFFFFFFFFFull, ~0ull}) {
    FrameHeader h = sampleHeader(MsgType::kData);
    h.chunk = static_cast<std::uint32_t>(v);
    h.epoch = v;
    h.op_id = ~v;
    HeaderParse p = parse(headerBytes(h));
    ASSERT_TRUE(p.ok());
    EXPECT_EQ(p.header.chunk, h.chunk);
    EXPECT_EQ(p.header.epoch, h.epoch);
    EXPECT_EQ(p.header.op_id, h.op_id);
  }
}

// ---- robustness ------------------------------------------------------------------------------

// Feeds `in` to decodeFrame and every message decoder and checks the invariants that must hold for
// any input. Returns the decodeFrame result kind for coverage accounting.
FrameDecode::Kind checkArbitraryInput(ByteSpan in) {
  FrameDecode d = decodeFrame(in);
  switch (d.kind) {
    case FrameDecode::Kind::kFrame:
      EXPECT_EQ(d.error, FrameError::kNone);
      EXPECT_LE(d.consumed, in.size());
      EXPECT_LE(d.header.length, maxPayload(d.header.type));
      EXPECT_EQ(d.consumed, kFrameHeaderSize + d.header.length);
      EXPECT_EQ(d.payload.size(), d.header.length);
      EXPECT_EQ(d.payload.data(), in.data() + kFrameHeaderSize);
      EXPECT_EQ(d.header.flags & ~allowedFlags(d.header.type), 0);
      break;
    case FrameDecode::Kind::kNeedMore:
      EXPECT_EQ(d.consumed, 0u);
      break;
    case FrameDecode::Kind::kError:
      EXPECT_NE(d.error, FrameError::kNone);
      EXPECT_EQ(d.consumed, 0u);
      break;
  }
  auto rejectsCleanly = [](const Status& s) {
    EXPECT_EQ(s.code(), StatusCode::kProtocolError) << s.toString();
  };
  if (auto r = decodeHello(in); !r) rejectsCleanly(r.status());
  if (auto r = decodeWelcome(in); !r) rejectsCleanly(r.status());
  if (auto r = decodeRefused(in); !r) {
    rejectsCleanly(r.status());
  } else {
    EXPECT_LE(static_cast<int>(r->code), static_cast<int>(kLastStatusCode));
    EXPECT_LE(r->reason.size(), kMaxReasonLen);
  }
  if (auto r = decodeEvicted(in); !r) {
    rejectsCleanly(r.status());
  } else {
    EXPECT_LE(r->reason.size(), kMaxReasonLen);
  }
  if (auto r = decodeGroupView(in); !r) {
    rejectsCleanly(r.status());
  } else {
    for (const auto& p : r->peers) {
      EXPECT_TRUE(p.state == PeerState::kPending || p.state == PeerState::kMember);
      EXPECT_LE(p.addr.size(), kMaxAddrLen);
    }
  }
  if (auto r = decodeLinkHello(in); !r) rejectsCleanly(r.status());
  return d.kind;
}

TEST(FrameRobustness, RandomBytesNeverCrashAndFramesStayInBounds) {
  std::mt19937 rng(20240611u);
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_int_distribution<int> len(0, 96);
  std::uniform_int_distribution<int> mode(0, 3);
  int kinds[3] = {0, 0, 0};
  Bytes buf;
  for (int iter = 0; iter < 200000; ++iter) {
    buf.resize(static_cast<std::size_t>(len(rng)));
    for (auto& b : buf) b = static_cast<std::uint8_t>(byte(rng));
    // Most fully random strings fail at the magic; bias some of them to reach deeper checks.
    int m = mode(rng);
    if (m >= 1 && buf.size() >= 6) {
      buf[0] = 'L';
      buf[1] = 'O';
      buf[2] = 'C';
      buf[3] = 'O';
      buf[4] = kWireVersion;
    }
    if (m >= 2 && buf.size() >= 12) {
      buf[5] = static_cast<std::uint8_t>(kFirstType + byte(rng) % (kLastType - kFirstType + 1));
      buf[6] = buf[7] = 0;
    }
    if (m == 3 && buf.size() >= 12) {
      // A small length so that complete frames occur.
      putU32(buf, 8, static_cast<std::uint32_t>(byte(rng) % 64));
    }
    auto k = checkArbitraryInput(buf);
    ++kinds[static_cast<int>(k)];
    if (HasFailure()) FAIL() << "stopped at iteration " << iter;
  }
  // The run must have exercised all three outcomes, or it tested less than it claims.
  EXPECT_GT(kinds[static_cast<int>(FrameDecode::Kind::kFrame)], 1000);
  EXPECT_GT(kinds[static_cast<int>(FrameDecode::Kind::kNeedMore)], 1000);
  EXPECT_GT(kinds[static_cast<int>(FrameDecode::Kind::kError)], 1000);
}

TEST(FrameRobustness, SingleByteMutationsOfValidFramesNeverCrash) {
  std::mt19937 rng(7u);
  std::vector<Bytes> frames;
  GroupView view;
  view.epoch = 42;
  view.peers.push_back({std::string(32, 'a'), "10.0.0.1:7000", PeerState::kMember, 12, 4});
  view.peers.push_back({std::string(32, 'b'), "[::1]:7001", PeerState::kPending, 0, 2});
  view.counters.push_back({"joins", 3});
  frames.push_back(encodeFrame(sampleHeader(MsgType::kHello),
                               encodeHello({std::string(32, 'c'), "host:1", 4, "0.1.0"})));
  frames.push_back(encodeFrame(sampleHeader(MsgType::kWelcome), encodeWelcome({500, 5000, 7})));
  frames.push_back(encodeFrame(sampleHeader(MsgType::kRefused),
                               encodeRefused({StatusCode::kAlreadyExists, "duplicate id"})));
  frames.push_back(encodeFrame(sampleHeader(MsgType::kEvicted), encodeEvicted({"no heartbeat"})));
  frames.push_back(encodeFrame(sampleHeader(MsgType::kMembership), encodeGroupView(view)));
  frames.push_back(encodeFrame(sampleHeader(MsgType::kStatusReply), encodeGroupView(view)));
  frames.push_back(encodeFrame(sampleHeader(MsgType::kLinkHello),
                               encodeLinkHello({"link1", std::string(32, 'd'), 0, 4, 1 << 20})));
  frames.push_back(encodeFrame(sampleHeader(MsgType::kData), payloadFor(MsgType::kData, 64)));
  for (MsgType t : {MsgType::kHeartbeat, MsgType::kSyncRequest, MsgType::kSyncDone, MsgType::kLeave,
                    MsgType::kLeaveAck, MsgType::kStatusRequest, MsgType::kLinkAccept,
                    MsgType::kStateComplete}) {
    frames.push_back(encodeFrame(sampleHeader(t), {}));
  }
  std::uniform_int_distribution<int> byte(0, 255);
  for (int iter = 0; iter < 50000; ++iter) {
    const Bytes& base = frames[static_cast<std::size_t>(iter) % frames.size()];
    Bytes m = base;
    std::size_t pos = std::uniform_int_distribution<std::size_t>(0, m.size() - 1)(rng);
    m[pos] = static_cast<std::uint8_t>(byte(rng));
    checkArbitraryInput(m);
    // The payload alone, mutated, goes to the message decoders too.
    if (m.size() > kFrameHeaderSize) checkArbitraryInput(ByteSpan(m).subspan(kFrameHeaderSize));
    // And a truncation at a random point.
    std::size_t cut = std::uniform_int_distribution<std::size_t>(0, m.size())(rng);
    checkArbitraryInput(ByteSpan(m.data(), cut));
    if (HasFailure()) FAIL() << "stopped at iteration " << iter;
  }
}

}  // namespace
}  // namespace loco::p2p
