// Unit tests for the control-message codecs (p2p/messages.h): every message round trips, and
// every decoder rejects truncation, trailing bytes, over-long strings and bad counts/enums with
// kProtocolError.

#include "p2p/messages.h"
#include "p2p/traversal.h"

#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <string>
#include <vector>

namespace loco::p2p {
namespace {

using Bytes = std::vector<std::uint8_t>;

// A decoder reduced to "accepted or not", so the generic malformed-input checks can loop over all.
struct Codec {
  const char* name;
  Bytes valid;  // a valid, non-trivial encoding
  std::function<Status(ByteSpan)> decode;
};

template <typename T>
Status statusOf(const Result<T>& r) {
  return r.isOk() ? Status::ok() : r.status();
}

GroupView sampleView() {
  GroupView v;
  v.epoch = 0x1122334455667788ull;
  v.peers.push_back(
      {"0123456789abcdef0123456789abcdef", "10.0.0.1:7000", PeerState::kMember, 15, 4});
  v.peers.push_back(
      {"fedcba9876543210fedcba9876543210", "[fe80::1%eth0]:7001", PeerState::kMember, 0, 1});
  v.peers.push_back(
      {"00000000000000000000000000000000", "node-3.example:7002", PeerState::kPending, -5, 8});
  v.counters.push_back({"coord.joins", 3});
  v.counters.push_back({"coord.evictions", ~0ull});
  v.edges.push_back({"0123456789abcdef0123456789abcdef", "fedcba9876543210fedcba9876543210",
                     12500000, EdgeSource::kPassive});
  return v;
}

StateManifestMsg sampleManifest() {
  StateManifestMsg m;
  m.sync_id = 77;
  m.strategy = StateStrategy::kSendOnly;
  m.revision = 41;
  m.chunk_bytes = 1000;
  m.buffers.push_back({"weights", 1, 4, 600});  // 2400 bytes: 3 chunks
  m.buffers.push_back({"step", 6, 8, 1});       // 1 chunk
  m.buffers.push_back({"empty", 7, 1, 0});      // none
  m.hashes = {0x1111111111111111ull, 2, ~0ull, 4};
  return m;
}

StatePlanMsg samplePlan() {
  StatePlanMsg p;
  p.sync_id = 78;
  p.revision = 42;
  p.elected_revision = 41;
  p.canonical = {1, 2, 3, 4, 5, 6, 7, 8, 9};
  p.sources.push_back({"0123456789abcdef0123456789abcdef", "10.0.0.1:7000", 4, {0xFF, 0x01}});
  p.sources.push_back({"fedcba9876543210fedcba9876543210", "[::1]:7001", 1, {0x0F, 0x00}});
  return p;
}

PeerReportMsg sampleReport() {
  PeerReportMsg m;
  m.outer_step = 17;
  m.inner_step = 510;
  m.loss = 2.25;
  m.val_loss = std::nan("");
  m.bytes_sent = 1.5e8;
  m.tokens_per_s = 7357.5;
  m.utilization = 0.83;
  m.round_s = 4.5;
  m.retries = 2;
  m.world = 4;
  m.http = "10.0.0.7:9100";
  return m;
}

std::vector<Codec> allCodecs() {
  return {
      {"StateManifest", encodeStateManifest(sampleManifest()),
       [](ByteSpan b) { return statusOf(decodeStateManifest(b)); }},
      {"StatePlan", encodeStatePlan(samplePlan()),
       [](ByteSpan b) { return statusOf(decodeStatePlan(b)); }},
      {"StateComplaint",
       encodeStateComplaint({"0123456789abcdef0123456789abcdef", 3, "bad hashes"}),
       [](ByteSpan b) { return statusOf(decodeStateComplaint(b)); }},
      {"Hello", encodeHello({"0123456789abcdef0123456789abcdef", "peer-1:7000", 4, "0.1.0"}),
       [](ByteSpan b) { return statusOf(decodeHello(b)); }},
      {"Welcome", encodeWelcome({500, 5000, 12}),
       [](ByteSpan b) { return statusOf(decodeWelcome(b)); }},
      {"Refused", encodeRefused({StatusCode::kAlreadyExists, "peer id already registered"}),
       [](ByteSpan b) { return statusOf(decodeRefused(b)); }},
      {"Evicted", encodeEvicted({"no heartbeat for 5000 ms"}),
       [](ByteSpan b) { return statusOf(decodeEvicted(b)); }},
      {"GroupView", encodeGroupView(sampleView()),
       [](ByteSpan b) { return statusOf(decodeGroupView(b)); }},
      {"LinkHello",
       encodeLinkHello({"9f8e7d6c", "0123456789abcdef0123456789abcdef", 2, 4, 1u << 20}),
       [](ByteSpan b) { return statusOf(decodeLinkHello(b)); }},
      {"LinkReport",
       encodeLinkReport({{{"0123456789abcdef0123456789abcdef", "fedcba9876543210fedcba9876543210",
                           1e6, EdgeSource::kProbe},
                          {"fedcba9876543210fedcba9876543210", "0123456789abcdef0123456789abcdef",
                           3e9, EdgeSource::kPassive}}}),
       [](ByteSpan b) { return statusOf(decodeLinkReport(b)); }},
      {"PeerReport", encodePeerReport(sampleReport()),
       [](ByteSpan b) { return statusOf(decodePeerReport(b)); }},
      {"DialBack", encodeDialBack({"10.0.0.7:7100", 0x0123456789abcdefull}),
       [](ByteSpan b) { return statusOf(decodeDialBack(b)); }},
      {"DialBackResult",
       encodeDialBackResult(
           {StatusCode::kUnavailable, "connection refused", "10.0.0.7:51234", 1796070024254}),
       [](ByteSpan b) { return statusOf(decodeDialBackResult(b)); }},
      {"Connect",
       encodeConnect({"0123456789abcdef0123456789abcdef", 0x1122334455667788ull,
                      ConnectMode::kPunch, 40001, "10.213.0.3:40001", ""}),
       [](ByteSpan b) { return statusOf(decodeConnect(b)); }},
  };
}

// Hello's version-1 form is a prefix of its version-2 form (messages.h: extensions are
// appended), so exactly that prefix is a whole message.
std::size_t helloV1Size(const HelloMsg& m) {
  HelloMsg v1{m.peer_id, m.advertise, m.streams, m.version, m.last_epoch};
  return 4 + v1.peer_id.size() + 4 + v1.advertise.size() + 4 + 4 + v1.version.size() + 8;
}

// ---- round trips -------------------------------------------------------------------------------

TEST(Messages, LinkReportRoundTripsInWholeBytesPerSecond) {
  LinkReportMsg m{
      {{"aa", "bb", 1234567.9, EdgeSource::kPassive}, {"bb", "aa", 42, EdgeSource::kProbe}}};
  auto r = decodeLinkReport(encodeLinkReport(m));
  ASSERT_TRUE(r.isOk()) << r.status().toString();
  ASSERT_EQ(r->edges.size(), 2u);
  EXPECT_EQ(r->edges[0].from, "aa");
  EXPECT_EQ(r->edges[0].to, "bb");
  EXPECT_EQ(r->edges[0].bytes_per_s, 1234567.0);
  EXPECT_EQ(r->edges[0].source, EdgeSource::kPassive);
  EXPECT_EQ(r->edges[1].source, EdgeSource::kProbe);
}

TEST(Messages, OpReportRoundTripsWithAndWithoutMembers) {
  for (const OpReportMsg& m :
       {OpReportMsg{true, {}}, OpReportMsg{false, {}},
        OpReportMsg{true,
                    {"0123456789abcdef0123456789abcdef", "fedcba9876543210fedcba9876543210"}}}) {
    auto bytes = encodeOpReport(m);
    if (m.members.empty()) EXPECT_EQ(bytes.size(), 1u) << "the verdict byte older peers send";
    auto r = decodeOpReport(bytes);
    ASSERT_TRUE(r.isOk()) << r.status().toString();
    EXPECT_EQ(r->ok, m.ok);
    EXPECT_EQ(r->members, m.members);
  }
  // Garbage: a verdict other than 0/1, no members after a count, a count beyond the limit,
  // trailing bytes.
  auto bytes = encodeOpReport(OpReportMsg{true, {"aa", "bb"}});
  for (std::size_t cut = 2; cut < bytes.size(); ++cut)
    EXPECT_FALSE(decodeOpReport(ByteSpan(bytes).first(cut)).isOk()) << cut;
  EXPECT_FALSE(decodeOpReport(std::vector<std::uint8_t>{2}).isOk());
  EXPECT_FALSE(decodeOpReport(std::vector<std::uint8_t>{1, 0, 0}).isOk());
  EXPECT_FALSE(decodeOpReport(std::vector<std::uint8_t>{1, 200, 0}).isOk());
  bytes.push_back(0);
  EXPECT_FALSE(decodeOpReport(bytes).isOk());
}

TEST(Messages, LinkReportWithAnUnknownSourceIsMalformed) {
  auto bytes = encodeLinkReport({{{"aa", "bb", 10, EdgeSource::kProbe}}});
  bytes.back() = 9;  // the source byte is last
  EXPECT_EQ(decodeLinkReport(bytes).status().code(), StatusCode::kProtocolError);
}

TEST(Messages, HelloRoundTrips) {
  HelloMsg m{"0123456789abcdef0123456789abcdef", "[::1]:7000", 16, "0.1.0+dev",
             0x0102030405060708ull};
  auto r = decodeHello(encodeHello(m));
  ASSERT_TRUE(r.isOk()) << r.status().toString();
  EXPECT_EQ(r->peer_id, m.peer_id);
  EXPECT_EQ(r->advertise, m.advertise);
  EXPECT_EQ(r->streams, m.streams);
  EXPECT_EQ(r->version, m.version);
  EXPECT_EQ(r->last_epoch, m.last_epoch);
}

TEST(Messages, HelloVersion2RoundTripsEveryReregistrationField) {
  HelloMsg m{"0123456789abcdef0123456789abcdef", "10.0.0.7:7001", 4, "0.2.0", 41};
  m.incarnation = 0xA1B2C3D4E5F60718ull;
  m.attempt = 7;
  m.last_members = {"0123456789abcdef0123456789abcdef", "fedcba9876543210fedcba9876543210"};
  m.state_revision = 123;
  m.state_digest = 0xDEADBEEFCAFEF00Dull;
  m.progress = 19;
  auto r = decodeHello(encodeHello(m));
  ASSERT_TRUE(r.isOk()) << r.status().toString();
  EXPECT_EQ(r->last_epoch, 41u);
  EXPECT_EQ(r->incarnation, m.incarnation);
  EXPECT_EQ(r->attempt, 7u);
  EXPECT_EQ(r->last_members, m.last_members);
  EXPECT_EQ(r->state_revision, 123u);
  EXPECT_EQ(r->state_digest, m.state_digest);
  EXPECT_EQ(r->progress, 19u);
}

// An older peer's Hello (version 1: it ends after last_epoch) is still understood; it reports
// nothing for a rebuild and never replaces a registration (incarnation 0).
TEST(Messages, HelloVersion1FromAnOlderPeerDecodesWithDefaults) {
  Bytes b;
  ByteWriter w(b);
  w.str("0123456789abcdef0123456789abcdef");
  w.str("h:1");
  w.u32(2);
  w.str("0.1.0");
  w.u64(9);
  auto r = decodeHello(b);
  ASSERT_TRUE(r.isOk()) << r.status().toString();
  EXPECT_EQ(r->last_epoch, 9u);
  EXPECT_EQ(r->incarnation, 0u);
  EXPECT_TRUE(r->last_members.empty());
}

// A newer peer may append fields behind a higher version byte: the ones this decoder knows are
// read, the rest skipped. A version below 2 in that place is malformed.
TEST(Messages, HelloFromANewerPeerIsReadAndAnImpossibleVersionRejected) {
  HelloMsg m{"0123456789abcdef0123456789abcdef", "h:1", 1, "9.9", 5};
  m.incarnation = 3;
  m.attempt = 1;
  m.last_members = {"aa"};
  Bytes b = encodeHello(m);
  const std::size_t version_at = helloV1Size(m);
  ASSERT_EQ(b[version_at], kHelloVersion);
  Bytes newer = b;
  newer[version_at] = kHelloVersion + 1;
  newer.insert(newer.end(), {1, 2, 3, 4, 5});
  auto r = decodeHello(newer);
  ASSERT_TRUE(r.isOk()) << r.status().toString();
  EXPECT_EQ(r->incarnation, 3u);
  EXPECT_EQ(r->last_members, std::vector<std::string>{"aa"});
  for (std::uint8_t bad : {0, 1}) {
    Bytes x = b;
    x[version_at] = bad;
    EXPECT_EQ(decodeHello(x).status().code(), StatusCode::kProtocolError) << int(bad);
  }
}

// Version 3 adds the peer's reach (p2p/traversal.h); a version-2 Hello (an older peer) ends
// before it and means direct; a reach byte this decoder does not know is malformed.
TEST(Messages, HelloCarriesTheReachAndAnOlderPeersHelloMeansDirect) {
  HelloMsg m{"0123456789abcdef0123456789abcdef", "h:1", 1, "9.9", 5};
  m.reach = PeerReach::kReverse;
  Bytes b = encodeHello(m);
  auto r = decodeHello(b);
  ASSERT_TRUE(r.isOk()) << r.status().toString();
  EXPECT_EQ(r->reach, PeerReach::kReverse);
  Bytes v2 = b;
  v2[helloV1Size(m)] = 2;
  v2.pop_back();
  r = decodeHello(v2);
  ASSERT_TRUE(r.isOk()) << r.status().toString();
  EXPECT_EQ(r->reach, PeerReach::kDirect);
  Bytes bad = b;
  bad.back() = 3;
  EXPECT_EQ(decodeHello(bad).status().code(), StatusCode::kProtocolError);
}

TEST(Messages, GroupViewCarriesEachPeersReach) {
  GroupView v;
  v.epoch = 4;
  v.peers = {{"aa", "10.0.0.1:7000", PeerState::kMember, 5, 4, PeerReach::kDirect},
             {"bb", "10.0.0.2:7000", PeerState::kMember, 6, 4, PeerReach::kReverse},
             {"cc", "10.0.0.9:40000", PeerState::kPending, 7, 4, PeerReach::kRelayed}};
  auto r = decodeGroupView(encodeGroupView(v));
  ASSERT_TRUE(r.isOk()) << r.status().toString();
  ASSERT_EQ(r->peers.size(), 3u);
  EXPECT_EQ(r->peers[0].reach, PeerReach::kDirect);
  EXPECT_EQ(r->peers[1].reach, PeerReach::kReverse);
  EXPECT_EQ(r->peers[2].reach, PeerReach::kRelayed);
  EXPECT_EQ(peerReachName(PeerReach::kReverse), "reverse");
}

TEST(Messages, ConnectRoundTripsAndAnUnknownModeIsMalformed) {
  ConnectMsg m{"0123456789abcdef0123456789abcdef", 7, ConnectMode::kReverse, 0, "", "no route"};
  auto r = decodeConnect(encodeConnect(m));
  ASSERT_TRUE(r.isOk()) << r.status().toString();
  EXPECT_EQ(r->peer, m.peer);
  EXPECT_EQ(r->token, 7u);
  EXPECT_EQ(r->mode, ConnectMode::kReverse);
  EXPECT_EQ(r->error, "no route");
  Bytes b = encodeConnect(m);
  b[4 + m.peer.size() + 8] = 9;  // the mode byte
  EXPECT_EQ(decodeConnect(b).status().code(), StatusCode::kProtocolError);
}

// Which path a link takes between two peers' reach (p2p/traversal.h), and what status shows.
TEST(Traversal, LinkPathFollowsBothEndsReach) {
  using traversal::LinkPath;
  using traversal::linkPath;
  for (PeerReach from : {PeerReach::kDirect, PeerReach::kReverse, PeerReach::kRelayed}) {
    EXPECT_EQ(linkPath(from, PeerReach::kDirect), LinkPath::kDirect);
    EXPECT_EQ(linkPath(from, PeerReach::kRelayed), LinkPath::kRelayed);
  }
  EXPECT_EQ(linkPath(PeerReach::kDirect, PeerReach::kReverse), LinkPath::kReverse);
  EXPECT_EQ(linkPath(PeerReach::kRelayed, PeerReach::kReverse), LinkPath::kReverse);
  EXPECT_EQ(linkPath(PeerReach::kReverse, PeerReach::kReverse), LinkPath::kPunched);
  GroupView v;
  v.peers = {{"a", "h:1", PeerState::kMember, 0, 4, PeerReach::kReverse},
             {"b", "h:2", PeerState::kMember, 0, 4, PeerReach::kReverse},
             {"c", "h:3", PeerState::kMember, 0, 4, PeerReach::kDirect}};
  EXPECT_EQ(traversal::linkPathIn(v, "a", "b"), "punched");
  EXPECT_EQ(traversal::linkPathIn(v, "c", "a"), "reverse");
  EXPECT_EQ(traversal::linkPathIn(v, "a", "c"), "direct");
  EXPECT_EQ(traversal::linkPathIn(v, "a", "zz"), "");
}

// The ring is planned with relayed links at half their measured rate: of a direct and a
// relayed link measured alike, the direct one wins.
TEST(Traversal, RingPlanningCountsARelayedLinkAtHalfItsRate) {
  GroupView v;
  v.peers = {{"a", "h:1", PeerState::kMember, 0, 4, PeerReach::kDirect},
             {"b", "h:2", PeerState::kMember, 0, 4, PeerReach::kRelayed},
             {"c", "h:3", PeerState::kMember, 0, 4, PeerReach::kReverse}};
  BandwidthTable measured;
  measured.update({"a", "b", 10e6, EdgeSource::kPassive});
  measured.update({"a", "c", 10e6, EdgeSource::kPassive});
  measured.update({"c", "b", 4e6, EdgeSource::kProbe});
  const BandwidthTable planned = traversal::planningRates(measured, v);
  EXPECT_DOUBLE_EQ(*planned.rate("a", "b"), 5e6);   // relayed
  EXPECT_DOUBLE_EQ(*planned.rate("a", "c"), 10e6);  // dialed back: a direct TCP connection
  EXPECT_DOUBLE_EQ(*planned.rate("c", "b"), 2e6);
  EXPECT_EQ(planned.edges().size(), 3u);
  EXPECT_EQ(planned.edges()[2].source, EdgeSource::kProbe);
}

TEST(Messages, HelloListingTooManyLastMembersIsRejected) {
  HelloMsg m{"0123456789abcdef0123456789abcdef", "h:1", 1, "v", 1};
  m.last_members.assign(kMaxLastMembers, "0123456789abcdef0123456789abcdef");
  EXPECT_TRUE(decodeHello(encodeHello(m)).isOk());
  m.last_members.push_back("x");
  EXPECT_EQ(decodeHello(encodeHello(m)).status().code(), StatusCode::kProtocolError);
}

TEST(Messages, HelloWithEmptyStringsRoundTrips) {
  auto r = decodeHello(encodeHello(HelloMsg{}));
  ASSERT_TRUE(r.isOk()) << r.status().toString();
  EXPECT_EQ(r->peer_id, "");
  EXPECT_EQ(r->advertise, "");
  EXPECT_EQ(r->streams, 0u);
}

TEST(Messages, WelcomeRoundTrips) {
  WelcomeMsg m{250, 3000, 0xFFFFFFFFFFFFFFFEull};
  auto r = decodeWelcome(encodeWelcome(m));
  ASSERT_TRUE(r.isOk()) << r.status().toString();
  EXPECT_EQ(r->heartbeat_interval_ms, 250u);
  EXPECT_EQ(r->heartbeat_timeout_ms, 3000u);
  EXPECT_EQ(r->epoch, m.epoch);
}

TEST(Messages, RefusedRoundTripsEveryStatusCode) {
  for (int c = 0; c <= static_cast<int>(kLastStatusCode); ++c) {
    RefusedMsg m{static_cast<StatusCode>(c), "reason " + std::to_string(c)};
    auto r = decodeRefused(encodeRefused(m));
    ASSERT_TRUE(r.isOk()) << r.status().toString();
    EXPECT_EQ(r->code, m.code);
    EXPECT_EQ(r->reason, m.reason);
  }
}

TEST(Messages, RefusedWithUnknownCodeDecodesAsInternal) {
  // A newer coordinator may send a code this build does not know: it must not become an
  // out-of-range enum value.
  Bytes b = encodeRefused({StatusCode::kInternal, "x"});
  b[0] = 0xFF;
  b[1] = 0xFF;
  b[2] = 0xFF;
  b[3] = 0xFF;
  auto r = decodeRefused(b);
  ASSERT_TRUE(r.isOk()) << r.status().toString();
  EXPECT_EQ(r->code, StatusCode::kInternal);
  EXPECT_EQ(r->reason, "x");
}

TEST(Messages, ProgressRoundTripsAndToleratesANewerPeersFields) {
  ProgressMsg m{77, 0xDEADBEEFCAFEF00Dull, 600, true};
  auto r = decodeProgress(encodeProgress(m));
  ASSERT_TRUE(r.isOk()) << r.status().toString();
  EXPECT_EQ(r->state_revision, 77u);
  EXPECT_EQ(r->state_digest, m.state_digest);
  EXPECT_EQ(r->progress, 600u);
  EXPECT_TRUE(r->finished);
  Bytes newer = encodeProgress(m);
  newer[0] = 2;  // a newer version appends fields
  newer.push_back(0x42);
  auto n = decodeProgress(newer);
  ASSERT_TRUE(n.isOk()) << n.status().toString();
  EXPECT_EQ(n->progress, 600u);
  Bytes trailing = encodeProgress(m);
  trailing.push_back(0);
  EXPECT_EQ(decodeProgress(trailing).status().code(), StatusCode::kProtocolError);
  Bytes bad_flags = encodeProgress(m);
  bad_flags.back() = 3;
  EXPECT_EQ(decodeProgress(bad_flags).status().code(), StatusCode::kProtocolError);
  Bytes truncated = encodeProgress(m);
  truncated.pop_back();
  EXPECT_EQ(decodeProgress(truncated).status().code(), StatusCode::kProtocolError);
  EXPECT_EQ(decodeProgress({}).status().code(), StatusCode::kProtocolError);
}

TEST(Messages, EvictedRoundTrips) {
  EvictedMsg m{"no heartbeat for 5100 ms (timeout 5000 ms)"};
  auto r = decodeEvicted(encodeEvicted(m));
  ASSERT_TRUE(r.isOk()) << r.status().toString();
  EXPECT_EQ(r->reason, m.reason);
}

TEST(Messages, GroupViewRoundTripsPeersStatesAgesAndCounters) {
  GroupView v = sampleView();
  auto r = decodeGroupView(encodeGroupView(v));
  ASSERT_TRUE(r.isOk()) << r.status().toString();
  EXPECT_EQ(r->epoch, v.epoch);
  ASSERT_EQ(r->peers.size(), v.peers.size());
  for (std::size_t i = 0; i < v.peers.size(); ++i) {
    EXPECT_EQ(r->peers[i].id, v.peers[i].id);
    EXPECT_EQ(r->peers[i].addr, v.peers[i].addr);
    EXPECT_EQ(r->peers[i].state, v.peers[i].state);
    EXPECT_EQ(r->peers[i].heartbeat_age_ms, v.peers[i].heartbeat_age_ms);
    EXPECT_EQ(r->peers[i].streams, v.peers[i].streams);
  }
  EXPECT_EQ(r->counters, v.counters);
  EXPECT_EQ(r->world(), 2u);
  EXPECT_EQ(r->pending(), 1u);
}

TEST(Messages, EmptyGroupViewRoundTrips) {
  auto r = decodeGroupView(encodeGroupView(GroupView{}));
  ASSERT_TRUE(r.isOk()) << r.status().toString();
  EXPECT_EQ(r->epoch, 0u);
  EXPECT_TRUE(r->peers.empty());
  EXPECT_TRUE(r->counters.empty());
  EXPECT_EQ(r->world(), 0u);
  EXPECT_EQ(r->pending(), 0u);
}

TEST(Messages, LinkHelloRoundTrips) {
  LinkHelloMsg m{"a1b2c3d4e5f60718", "0123456789abcdef0123456789abcdef", 3, 8, 4u << 20};
  auto r = decodeLinkHello(encodeLinkHello(m));
  ASSERT_TRUE(r.isOk()) << r.status().toString();
  EXPECT_EQ(r->link_id, m.link_id);
  EXPECT_EQ(r->from_peer, m.from_peer);
  EXPECT_EQ(r->stream_index, 3u);
  EXPECT_EQ(r->stream_count, 8u);
  EXPECT_EQ(r->chunk_bytes, 4u << 20);
}

TEST(Messages, StateManifestRoundTrips) {
  StateManifestMsg m = sampleManifest();
  auto r = decodeStateManifest(encodeStateManifest(m));
  ASSERT_TRUE(r.isOk()) << r.status().toString();
  EXPECT_EQ(r->sync_id, 77u);
  EXPECT_EQ(r->strategy, StateStrategy::kSendOnly);
  EXPECT_EQ(r->revision, 41u);
  EXPECT_EQ(r->chunk_bytes, 1000u);
  EXPECT_EQ(r->buffers, m.buffers);
  EXPECT_EQ(r->hashes, m.hashes);
  EXPECT_EQ(stateChunkCount(m.buffers, 1000), 4u);
}

TEST(Messages, StateManifestWhoseHashCountDisagreesWithItsLayoutIsRejected) {
  StateManifestMsg m = sampleManifest();
  m.hashes.push_back(5);
  EXPECT_EQ(decodeStateManifest(encodeStateManifest(m)).status().code(),
            StatusCode::kProtocolError);
  m = sampleManifest();
  m.chunk_bytes = 0;
  EXPECT_FALSE(decodeStateManifest(encodeStateManifest(m)).isOk());
  m = sampleManifest();
  m.strategy = static_cast<StateStrategy>(9);
  EXPECT_FALSE(decodeStateManifest(encodeStateManifest(m)).isOk());
  m = sampleManifest();
  m.buffers[0].elem_bytes = 0;
  EXPECT_FALSE(decodeStateManifest(encodeStateManifest(m)).isOk());
  m = sampleManifest();
  m.buffers[0].name = std::string(kMaxStateNameLen + 1, 'n');
  EXPECT_FALSE(decodeStateManifest(encodeStateManifest(m)).isOk());
  // Element counts that would overflow the byte size are refused, not wrapped.
  m = sampleManifest();
  m.buffers[0].count = ~0ull / 2;
  EXPECT_FALSE(decodeStateManifest(encodeStateManifest(m)).isOk());
}

TEST(Messages, StatePlanRoundTripsWithSourcesAndBitmaps) {
  StatePlanMsg p = samplePlan();
  auto r = decodeStatePlan(encodeStatePlan(p));
  ASSERT_TRUE(r.isOk()) << r.status().toString();
  EXPECT_EQ(r->sync_id, 78u);
  EXPECT_EQ(r->code, StatusCode::kOk);
  EXPECT_EQ(r->revision, 42u);
  EXPECT_EQ(r->elected_revision, 41u);
  EXPECT_EQ(r->canonical, p.canonical);
  ASSERT_EQ(r->sources.size(), 2u);
  EXPECT_EQ(r->sources[1].addr, "[::1]:7001");
  EXPECT_EQ(r->sources[0].holds, p.sources[0].holds);
  EXPECT_TRUE(r->sources[0].holdsChunk(8));
  EXPECT_FALSE(r->sources[1].holdsChunk(8));
  EXPECT_TRUE(r->sources[1].holdsChunk(3));
  EXPECT_FALSE(r->sources[1].holdsChunk(100));
}

TEST(Messages, StatePlanErrorRoundTripsAndTooManySourcesAreRejected) {
  StatePlanMsg p;
  p.code = StatusCode::kInvalidArgument;
  p.reason = "buffer 'w' differs";
  auto r = decodeStatePlan(encodeStatePlan(p));
  ASSERT_TRUE(r.isOk());
  EXPECT_EQ(r->code, StatusCode::kInvalidArgument);
  EXPECT_EQ(r->reason, p.reason);
  p = samplePlan();
  while (p.sources.size() <= kMaxStateSources) p.sources.push_back(p.sources[0]);
  EXPECT_FALSE(decodeStatePlan(encodeStatePlan(p)).isOk());
}

TEST(Messages, StateComplaintRoundTrips) {
  auto r = decodeStateComplaint(encodeStateComplaint({"abc", 7, "why"}));
  ASSERT_TRUE(r.isOk());
  EXPECT_EQ(r->accused, "abc");
  EXPECT_EQ(r->bad_chunks, 7u);
  EXPECT_EQ(r->reason, "why");
}

TEST(Messages, GroupViewCarriesReachabilityOnlyWhenThereIsSome) {
  GroupView v;
  v.epoch = 3;
  v.peers.push_back(PeerInfo{"0123456789abcdef0123456789abcdef", "h:1", PeerState::kMember, 5, 4});
  const auto plain = encodeGroupView(v);
  v.reachability = {{"0123456789abcdef0123456789abcdef", "unreachable: timed out"}};
  const auto with = encodeGroupView(v);
  EXPECT_GT(with.size(), plain.size());
  auto back = decodeGroupView(with);
  ASSERT_TRUE(back.isOk()) << back.status().toString();
  EXPECT_EQ(back->reachability, v.reachability);
  auto old = decodeGroupView(plain);
  ASSERT_TRUE(old.isOk());
  EXPECT_TRUE(old->reachability.empty()) << "membership broadcasts carry none";
}

TEST(Messages, PeerStateNames) {
  EXPECT_EQ(peerStateName(PeerState::kMember), "member");
  EXPECT_EQ(peerStateName(PeerState::kPending), "pending");
}

// ---- generic malformed input
// ---------------------------------------------------------------------

TEST(Messages, EveryDecoderAcceptsItsValidEncoding) {
  for (const Codec& c : allCodecs()) {
    Status s = c.decode(c.valid);
    EXPECT_TRUE(s.isOk()) << c.name << ": " << s.toString();
  }
}

TEST(Messages, EveryDecoderRejectsEveryTruncation) {
  const std::size_t hello_v1 =
      helloV1Size({"0123456789abcdef0123456789abcdef", "peer-1:7000", 4, "0.1.0"});
  for (const Codec& c : allCodecs()) {
    for (std::size_t n = 0; n < c.valid.size(); ++n) {
      if (std::string(c.name) == "Hello" && n == hello_v1) {
        EXPECT_TRUE(c.decode(ByteSpan(c.valid.data(), n)).isOk()) << "the version-1 Hello";
        continue;
      }
      Status s = c.decode(ByteSpan(c.valid.data(), n));
      EXPECT_EQ(s.code(), StatusCode::kProtocolError) << c.name << " truncated to " << n;
    }
  }
}

TEST(Messages, EveryDecoderRejectsTrailingBytes) {
  for (const Codec& c : allCodecs()) {
    for (std::size_t extra : {1u, 4u, 100u}) {
      Bytes b = c.valid;
      b.insert(b.end(), extra, 0);
      Status s = c.decode(b);
      EXPECT_EQ(s.code(), StatusCode::kProtocolError) << c.name << " + " << extra << " bytes";
    }
  }
}

TEST(Messages, RejectionMessageNamesTheMessage) {
  for (const Codec& c : allCodecs()) {
    Status s = c.decode(ByteSpan());
    EXPECT_EQ(s.code(), StatusCode::kProtocolError);
    std::string expect = std::string(c.name) == "GroupView" ? "Membership" : c.name;
    EXPECT_NE(s.message().find(expect), std::string::npos) << s.message();
  }
}

// ---- over-long strings ------------------------------------------------------------------------

TEST(Messages, HelloAdvertiseAtTheLimitIsAcceptedAndOneMoreIsRejected) {
  HelloMsg m{"0123456789abcdef0123456789abcdef", std::string(kMaxAddrLen, 'h'), 1, "v"};
  EXPECT_TRUE(decodeHello(encodeHello(m)).isOk());
  m.advertise.push_back('h');
  auto r = decodeHello(encodeHello(m));
  ASSERT_FALSE(r.isOk());
  EXPECT_EQ(r.status().code(), StatusCode::kProtocolError);
}

TEST(Messages, HelloOverLongPeerIdOrVersionIsRejected) {
  HelloMsg m{std::string(4096, 'a'), "h:1", 1, "v"};
  EXPECT_EQ(decodeHello(encodeHello(m)).status().code(), StatusCode::kProtocolError);
  m = HelloMsg{"0123456789abcdef0123456789abcdef", "h:1", 1, std::string(4096, 'v')};
  EXPECT_EQ(decodeHello(encodeHello(m)).status().code(), StatusCode::kProtocolError);
}

TEST(Messages, ReasonAtTheLimitIsAcceptedAndOneMoreIsRejected) {
  std::string at(kMaxReasonLen, 'r');
  std::string over(kMaxReasonLen + 1, 'r');
  EXPECT_TRUE(decodeRefused(encodeRefused({StatusCode::kAborted, at})).isOk());
  EXPECT_TRUE(decodeEvicted(encodeEvicted({at})).isOk());
  EXPECT_EQ(decodeRefused(encodeRefused({StatusCode::kAborted, over})).status().code(),
            StatusCode::kProtocolError);
  EXPECT_EQ(decodeEvicted(encodeEvicted({over})).status().code(), StatusCode::kProtocolError);
}

TEST(Messages, GroupViewOverLongPeerAddrOrIdOrCounterNameIsRejected) {
  GroupView v = sampleView();
  v.peers[1].addr = std::string(kMaxAddrLen + 1, 'a');
  EXPECT_EQ(decodeGroupView(encodeGroupView(v)).status().code(), StatusCode::kProtocolError);
  v = sampleView();
  v.peers[1].addr = std::string(kMaxAddrLen, 'a');
  EXPECT_TRUE(decodeGroupView(encodeGroupView(v)).isOk());
  v = sampleView();
  v.peers[2].id = std::string(4096, 'f');
  EXPECT_EQ(decodeGroupView(encodeGroupView(v)).status().code(), StatusCode::kProtocolError);
  v = sampleView();
  v.counters[0].first = std::string(4096, 'c');
  EXPECT_EQ(decodeGroupView(encodeGroupView(v)).status().code(), StatusCode::kProtocolError);
}

TEST(Messages, LinkHelloOverLongIdsAreRejected) {
  LinkHelloMsg m{std::string(4096, 'l'), "p", 0, 1, 1};
  EXPECT_EQ(decodeLinkHello(encodeLinkHello(m)).status().code(), StatusCode::kProtocolError);
  m = LinkHelloMsg{"l", std::string(4096, 'p'), 0, 1, 1};
  EXPECT_EQ(decodeLinkHello(encodeLinkHello(m)).status().code(), StatusCode::kProtocolError);
}

TEST(Messages, StringLengthPrefixLargerThanTheInputIsRejected) {
  // Hello whose peer_id claims 60 bytes (under any limit) but the payload ends after 10.
  Bytes b = {60, 0, 0, 0};
  b.insert(b.end(), 10, 'a');
  EXPECT_EQ(decodeHello(b).status().code(), StatusCode::kProtocolError);
  // And a length prefix of 0xFFFFFFFF.
  Bytes huge = {0xFF, 0xFF, 0xFF, 0xFF, 'a', 'b'};
  EXPECT_EQ(decodeEvicted(huge).status().code(), StatusCode::kProtocolError);
}

// ---- GroupView counts and enums ----------------------------------------------------------------

// epoch, peer count, then `n` minimal peers (empty id and addr), then zero counters.
Bytes groupViewWithPeers(std::uint32_t count_field, std::uint32_t actual) {
  Bytes b;
  ByteWriter w(b);
  w.u64(1);
  w.u32(count_field);
  for (std::uint32_t i = 0; i < actual; ++i) {
    w.str("");
    w.str("");
    w.u8(static_cast<std::uint8_t>(PeerState::kMember));
    w.i64(0);
    w.u32(1);
    w.u8(static_cast<std::uint8_t>(PeerReach::kDirect));
  }
  w.u32(0);  // counters
  w.u32(0);  // link estimates
  return b;
}

TEST(Messages, GroupViewPeerCountAboveTheLimitIsRejected) {
  // The limit is kMaxPeers = 65536 in messages.cpp. Even with every peer present, one more is
  // refused.
  Bytes over = groupViewWithPeers(65537, 65537);
  EXPECT_EQ(decodeGroupView(over).status().code(), StatusCode::kProtocolError);
  auto at = decodeGroupView(groupViewWithPeers(65536, 65536));
  ASSERT_TRUE(at.isOk()) << at.status().toString();
  EXPECT_EQ(at->peers.size(), 65536u);
}

TEST(Messages, GroupViewHugePeerCountWithoutPeersIsRejectedCheaply) {
  // Must fail from the count alone, without trying to reserve 4 billion entries.
  for (std::uint32_t n : {0xFFFFFFFFu, 0x80000000u, 65536u, 3u}) {
    EXPECT_EQ(decodeGroupView(groupViewWithPeers(n, 0)).status().code(), StatusCode::kProtocolError)
        << n;
  }
}

TEST(Messages, GroupViewCounterCountAboveTheInputIsRejected) {
  Bytes b;
  ByteWriter w(b);
  w.u64(1);
  w.u32(0);
  w.u32(0xFFFFFFFFu);
  EXPECT_EQ(decodeGroupView(b).status().code(), StatusCode::kProtocolError);
}

TEST(Messages, GroupViewInvalidPeerStateByteIsRejected) {
  for (int state : {0, 3, 4, 0x7F, 0xFF}) {
    Bytes b = groupViewWithPeers(1, 1);
    // epoch(8) count(4) id len(4) addr len(4), then the state byte.
    std::size_t state_off = 8 + 4 + 4 + 4;
    ASSERT_EQ(b[state_off], static_cast<std::uint8_t>(PeerState::kMember));
    b[state_off] = static_cast<std::uint8_t>(state);
    auto r = decodeGroupView(b);
    EXPECT_EQ(r.status().code(), StatusCode::kProtocolError) << "state " << state;
  }
  {
    // The reach byte closes the peer (after its i64 age and u32 streams): 3 is unknown.
    Bytes b = groupViewWithPeers(1, 1);
    b[8 + 4 + 4 + 4 + 1 + 8 + 4] = 3;
    EXPECT_EQ(decodeGroupView(b).status().code(), StatusCode::kProtocolError);
  }
  for (PeerState ok : {PeerState::kPending, PeerState::kMember}) {
    Bytes b = groupViewWithPeers(1, 1);
    b[8 + 4 + 4 + 4] = static_cast<std::uint8_t>(ok);
    auto r = decodeGroupView(b);
    ASSERT_TRUE(r.isOk()) << r.status().toString();
    EXPECT_EQ(r->peers[0].state, ok);
  }
}

TEST(Messages, EncodingIsLittleEndianAndLengthPrefixed) {
  Bytes b = encodeWelcome({0x01020304u, 0x0A0B0C0Du, 0x1122334455667788ull});
  Bytes want = {0x04, 0x03, 0x02, 0x01, 0x0D, 0x0C, 0x0B, 0x0A,
                0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11};
  EXPECT_EQ(b, want);
  Bytes e = encodeEvicted({"ab"});
  Bytes want_e = {2, 0, 0, 0, 'a', 'b'};
  EXPECT_EQ(e, want_e);
}

}  // namespace
}  // namespace loco::p2p

namespace loco::p2p {
namespace {

TEST(Messages, PeerReportRoundTripsWithNaN) {
  auto d = decodePeerReport(encodePeerReport(sampleReport()));
  ASSERT_TRUE(d.isOk()) << d.status().toString();
  EXPECT_EQ(d->outer_step, 17u);
  EXPECT_EQ(d->inner_step, 510u);
  EXPECT_EQ(d->loss, 2.25);
  EXPECT_TRUE(std::isnan(d->val_loss));
  EXPECT_EQ(d->bytes_sent, 1.5e8);
  EXPECT_EQ(d->tokens_per_s, 7357.5);
  EXPECT_EQ(d->utilization, 0.83);
  EXPECT_EQ(d->round_s, 4.5);
  EXPECT_EQ(d->retries, 2u);
  EXPECT_EQ(d->world, 4u);
  EXPECT_EQ(d->http, "10.0.0.7:9100");
}

TEST(Messages, NewerPeerReportAndDialBackVersionsAreReadAndTheirExtrasSkipped) {
  for (auto bytes : {encodePeerReport(sampleReport()), encodeDialBack({"1.2.3.4:5", 9})}) {
    bytes[0] = 2;  // a newer version that appends a field
    bytes.insert(bytes.end(), {1, 2, 3});
    const bool report = bytes.size() > 40;
    Status s = report ? statusOf(decodePeerReport(bytes)) : statusOf(decodeDialBack(bytes));
    EXPECT_TRUE(s.isOk()) << s.toString();
    bytes[0] = 0;  // version 0 never existed
    s = report ? statusOf(decodePeerReport(bytes)) : statusOf(decodeDialBack(bytes));
    EXPECT_EQ(s.code(), StatusCode::kProtocolError);
  }
}

TEST(Messages, DialBackResultRoundTripsAndClampsUnknownCodes) {
  auto bytes = encodeDialBackResult({StatusCode::kTimeout, "no answer", "10.0.0.7:51234", -5});
  auto d = decodeDialBackResult(bytes);
  ASSERT_TRUE(d.isOk());
  EXPECT_EQ(d->code, StatusCode::kTimeout);
  EXPECT_EQ(d->detail, "no answer");
  EXPECT_EQ(d->seen_from, "10.0.0.7:51234");
  EXPECT_EQ(d->coordinator_unix_ms, -5);
  bytes[1] = 250;
  d = decodeDialBackResult(bytes);
  ASSERT_TRUE(d.isOk());
  EXPECT_EQ(d->code, StatusCode::kInternal);
}

}  // namespace
}  // namespace loco::p2p
