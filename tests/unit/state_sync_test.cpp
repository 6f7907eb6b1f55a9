// Unit tests for the coordinator's shared-state election and rounds (p2p/state_sync.h): pure
// functions over manifests, no sockets.
#include "p2p/state_sync.h"

#include <gtest/gtest.h>

namespace loco::p2p {
namespace {

std::string id(int i) {
  return std::string(31, '0') + static_cast<char>('a' + i);
}
PeerInfo peer(int i) {
  return PeerInfo{id(i), "10.0.0." + std::to_string(i + 1) + ":7000", PeerState::kMember, 0, 4};
}

// A layout of one 8-chunk buffer; `hashes` gives the content.
StateManifestMsg manifest(std::vector<std::uint64_t> hashes, std::uint64_t revision = 0,
                          StateStrategy strategy = StateStrategy::kEnforcePopular) {
  StateManifestMsg m;
  m.strategy = strategy;
  m.revision = revision;
  m.chunk_bytes = 100;
  m.buffers.push_back({"weights", 1, 4, hashes.size() * 25});
  m.hashes = std::move(hashes);
  return m;
}

std::vector<std::uint64_t> content(std::uint64_t base, std::size_t n = 8) {
  std::vector<std::uint64_t> h(n);
  for (std::size_t i = 0; i < n; ++i) h[i] = base + i;
  return h;
}

std::vector<StateParticipant> group(std::vector<StateManifestMsg> ms) {
  std::vector<StateParticipant> out;
  for (std::size_t i = 0; i < ms.size(); ++i)
    out.push_back({peer(static_cast<int>(i)), std::move(ms[i])});
  return out;
}

std::size_t needs(const StatePlanMsg& p, const StateManifestMsg& m) {
  std::size_t n = 0;
  for (std::size_t c = 0; c < m.hashes.size(); ++c) n += p.canonical[c] != m.hashes[c] ? 1 : 0;
  return n;
}

TEST(StateElection, EqualPeersNeedNothingAndTheRevisionAdvancesByOne) {
  auto in =
      group({manifest(content(100), 7), manifest(content(100), 7), manifest(content(100), 7)});
  auto plans = electSharedState(in);
  for (std::size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(plans[i].code, StatusCode::kOk);
    EXPECT_EQ(plans[i].revision, 8u);
    EXPECT_EQ(plans[i].elected_revision, 7u);
    EXPECT_EQ(plans[i].canonical, content(100));
    EXPECT_TRUE(plans[i].sources.empty());
    EXPECT_FALSE(planNeedsChunks(plans[i], in[i].manifest));
  }
}

TEST(StateElection, OneFlippedChunkIsRepairedFromEveryOtherPeer) {
  auto flipped = content(100);
  flipped[5] = 999;
  auto in = group({manifest(content(100), 3), manifest(content(100), 3), manifest(flipped, 3),
                   manifest(content(100), 3)});
  auto plans = electSharedState(in);
  EXPECT_EQ(plans[2].canonical, content(100));
  EXPECT_EQ(needs(plans[2], in[2].manifest), 1u);
  ASSERT_EQ(plans[2].sources.size(), 3u);
  for (const auto& s : plans[2].sources) {
    EXPECT_NE(s.peer_id, id(2));
    EXPECT_TRUE(s.holdsChunk(5));
  }
  EXPECT_EQ(plans[2].sources[0].addr, "10.0.0.1:7000");
  EXPECT_TRUE(plans[0].sources.empty());
}

TEST(StateElection, EachChunkIsElectedOnItsOwn) {
  // Three peers, each with a different chunk damaged: the majority per chunk is the truth.
  std::vector<StateManifestMsg> ms;
  for (int i = 0; i < 3; ++i) {
    auto h = content(100);
    h[static_cast<std::size_t>(i)] = 5000 + static_cast<std::uint64_t>(i);
    ms.push_back(manifest(h, 2));
  }
  auto in = group(ms);
  auto plans = electSharedState(in);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(plans[i].canonical, content(100));
    EXPECT_EQ(needs(plans[i], in[i].manifest), 1u);
    // Both others hold the chunk this peer lacks.
    std::size_t holders = 0;
    for (const auto& s : plans[i].sources)
      holders += s.holdsChunk(static_cast<std::size_t>(i)) ? 1 : 0;
    EXPECT_EQ(holders, 2u);
  }
}

TEST(StateElection, ANewcomerTakesEverythingAndItsBytesDoNotVote) {
  auto in = group({manifest(content(100), 5), manifest(content(100), 5),
                   manifest(content(0), 0, StateStrategy::kReceiveOnly),
                   manifest(content(0), 0, StateStrategy::kReceiveOnly),
                   manifest(content(0), 0, StateStrategy::kReceiveOnly)});
  auto plans = electSharedState(in);
  EXPECT_EQ(plans[2].canonical, content(100));
  EXPECT_EQ(plans[2].revision, 6u);
  EXPECT_EQ(needs(plans[2], in[2].manifest), 8u);
  ASSERT_EQ(plans[2].sources.size(), 2u) << "receive-only peers are never sources";
}

TEST(StateElection, TheHighestRevisionWinsOverPopularity) {
  auto in =
      group({manifest(content(100), 3), manifest(content(100), 3), manifest(content(200), 4)});
  auto plans = electSharedState(in);
  EXPECT_EQ(plans[0].canonical, content(200));
  EXPECT_EQ(plans[0].revision, 5u);
  ASSERT_EQ(plans[0].sources.size(), 1u);
  EXPECT_EQ(plans[0].sources[0].peer_id, id(2));
}

TEST(StateElection, RevisionZeroEverywhereMeansThePopularContentWins) {
  auto in = group({manifest(content(300)), manifest(content(100)), manifest(content(100))});
  auto plans = electSharedState(in);
  EXPECT_EQ(plans[0].canonical, content(100));
  EXPECT_EQ(plans[0].revision, 1u);
  EXPECT_EQ(needs(plans[0], in[0].manifest), 8u);
}

TEST(StateElection, LayoutMismatchIsRefusedNamingTheFirstMismatchingBuffer) {
  auto good = manifest(content(100), 1);
  good.buffers.push_back({"bias", 1, 4, 25});
  good.hashes.push_back(77);
  auto bad = good;
  bad.buffers[1].count = 26;  // 104 bytes: two chunks
  bad.hashes.push_back(78);
  auto in = group({good, good, bad});
  auto plans = electSharedState(in);
  EXPECT_EQ(plans[0].code, StatusCode::kOk);
  EXPECT_EQ(plans[2].code, StatusCode::kInvalidArgument);
  EXPECT_NE(plans[2].reason.find("'bias'"), std::string::npos) << plans[2].reason;
  EXPECT_NE(plans[2].reason.find("26 elements"), std::string::npos) << plans[2].reason;

  auto renamed = good;
  renamed.buffers[0].name = "weights2";
  plans = electSharedState(group({good, renamed, good}));
  EXPECT_NE(plans[1].reason.find("'weights2'"), std::string::npos) << plans[1].reason;
  auto dtype = good;
  dtype.buffers[1].dtype = 2;
  plans = electSharedState(group({good, good, dtype}));
  EXPECT_NE(plans[2].reason.find("'bias'"), std::string::npos) << plans[2].reason;
  auto missing = good;
  missing.buffers.pop_back();
  missing.hashes.pop_back();
  plans = electSharedState(group({good, missing, good}));
  EXPECT_NE(plans[1].reason.find("'bias'"), std::string::npos) << plans[1].reason;
  EXPECT_NE(plans[1].reason.find("missing"), std::string::npos) << plans[1].reason;
}

TEST(StateElection, ASendOnlyPeerThatLosesGetsAClearErrorAndOneThatTiesWins) {
  auto in = group({manifest(content(100), 2), manifest(content(100), 2),
                   manifest(content(900), 2, StateStrategy::kSendOnly)});
  auto plans = electSharedState(in);
  EXPECT_EQ(plans[2].code, StatusCode::kAborted);
  EXPECT_NE(plans[2].reason.find("send-only"), std::string::npos) << plans[2].reason;
  EXPECT_NE(plans[2].reason.find("'weights'"), std::string::npos) << plans[2].reason;
  EXPECT_EQ(plans[0].code, StatusCode::kOk);

  in = group({manifest(content(100), 0), manifest(content(900), 0, StateStrategy::kSendOnly)});
  plans = electSharedState(in);
  EXPECT_EQ(plans[1].code, StatusCode::kOk);
  EXPECT_EQ(plans[0].canonical, content(900)) << "a tie goes to the send-only peer";
}

TEST(StateElection, NobodyHoldingTheStateIsAnError) {
  auto in = group({manifest(content(0), 0, StateStrategy::kReceiveOnly),
                   manifest(content(0), 0, StateStrategy::kReceiveOnly)});
  for (const auto& p : electSharedState(in)) EXPECT_EQ(p.code, StatusCode::kNotFound);
}

TEST(StateElection, SourcesAreCappedAndTheBestCoverageComesFirst) {
  std::vector<StateManifestMsg> ms;
  ms.push_back(manifest(content(0), 0, StateStrategy::kReceiveOnly));
  auto partial = content(100);
  partial[0] = 1;
  ms.push_back(manifest(partial, 1));  // lacks chunk 0
  for (std::size_t i = 0; i < kMaxStateSources + 5; ++i) ms.push_back(manifest(content(100), 1));
  auto in = group(ms);
  auto plans = electSharedState(in);
  ASSERT_EQ(plans[0].sources.size(), kMaxStateSources);
  for (const auto& s : plans[0].sources)
    EXPECT_NE(s.peer_id, id(1)) << "the partial holder covers less";
  // The partial holder itself needs chunk 0.
  EXPECT_EQ(needs(plans[1], in[1].manifest), 1u);
}

// ---- rounds ----

std::vector<PeerInfo> members(int n) {
  std::vector<PeerInfo> out;
  for (int i = 0; i < n; ++i) out.push_back(peer(i));
  return out;
}

TEST(StateRounds, PlansWhenEveryMemberSentAManifestAndCompletesAtOnceWhenNobodyNeedsAnything) {
  StateSyncRounds r;
  auto m = members(3);
  EXPECT_TRUE(r.manifest(id(0), manifest(content(1), 1), m).plans.empty());
  EXPECT_TRUE(r.manifest(id(1), manifest(content(1), 1), m).plans.empty());
  auto fx = r.manifest(id(2), manifest(content(1), 1), m);
  EXPECT_EQ(fx.round, 1u);
  EXPECT_EQ(fx.plans.size(), 3u);
  EXPECT_EQ(fx.complete.size(), 3u);
  EXPECT_EQ(fx.complete_round, 1u);
  EXPECT_EQ(r.round(), 2u);
  EXPECT_FALSE(r.planned());
}

TEST(StateRounds, ARoundWithADownloaderCompletesWhenItIsDoneOrGone) {
  for (bool dies : {false, true}) {
    StateSyncRounds r;
    auto m = members(3);
    (void)r.manifest(id(0), manifest(content(1), 1), m);
    (void)r.manifest(id(1), manifest(content(1), 1), m);
    auto fx = r.manifest(id(2), manifest(content(0), 0, StateStrategy::kReceiveOnly), m);
    ASSERT_EQ(fx.plans.size(), 3u);
    EXPECT_TRUE(fx.complete.empty());
    EXPECT_TRUE(r.planned());
    EXPECT_TRUE(r.done(id(2), 99, m).complete.empty()) << "a report for another round is ignored";
    StateSyncEffects end;
    if (dies) {
      m.pop_back();
      end = r.membersChanged(m);
      EXPECT_EQ(end.complete.size(), 2u);
    } else {
      end = r.done(id(2), 1, m);
      EXPECT_EQ(end.complete.size(), 3u);
    }
    EXPECT_EQ(end.complete_round, 1u);
    EXPECT_FALSE(r.planned());
  }
}

TEST(StateRounds, AMemberThatLeavesBeforeSendingItsManifestDoesNotBlockTheRound) {
  StateSyncRounds r;
  auto m = members(3);
  (void)r.manifest(id(0), manifest(content(1), 1), m);
  (void)r.manifest(id(1), manifest(content(1), 1), m);
  m.pop_back();
  auto fx = r.membersChanged(m);
  EXPECT_EQ(fx.plans.size(), 2u);
}

TEST(StateRounds, ANonMemberIsRefusedAndAWithdrawnManifestNoLongerCounts) {
  StateSyncRounds r;
  auto m = members(2);
  auto fx = r.manifest(id(7), manifest(content(1), 1), m);
  ASSERT_EQ(fx.plans.size(), 1u);
  EXPECT_EQ(fx.plans[0].second.code, StatusCode::kInvalidArgument);
  (void)r.manifest(id(0), manifest(content(1), 1), m);
  (void)r.done(id(0), 0, m);  // gave up before the plan
  EXPECT_EQ(r.waitingManifests(), 0u);
  EXPECT_TRUE(r.manifest(id(1), manifest(content(1), 1), m).plans.empty()) << "peer 0 withdrew";
  EXPECT_EQ(r.manifest(id(0), manifest(content(1), 1), m).plans.size(), 2u);
}

TEST(StateRounds, PlansEchoTheManifestsSyncIdAndAWithdrawalThatCrossedAPlanEndsItsPart) {
  StateSyncRounds r;
  auto m = members(2);
  auto a = manifest(content(1), 1);
  a.sync_id = 5;
  auto b = manifest(content(0), 0, StateStrategy::kReceiveOnly);
  b.sync_id = 9;
  (void)r.manifest(id(0), a, m);
  auto fx = r.manifest(id(1), b, m);
  ASSERT_EQ(fx.plans.size(), 2u);
  EXPECT_EQ(fx.plans[0].second.sync_id, 5u);
  EXPECT_EQ(fx.plans[1].second.sync_id, 9u);
  ASSERT_TRUE(r.planned());
  // Peer 1 gave up before its plan arrived: the round must not wait for it.
  fx = r.done(id(1), 0, m);
  EXPECT_EQ(fx.complete_round, 1u);
  EXPECT_FALSE(r.planned());
}

TEST(StateRounds, AManifestDuringAPlannedRoundFailsThatRoundForItAndOpensTheNext) {
  StateSyncRounds r;
  auto m = members(2);
  (void)r.manifest(id(0), manifest(content(1), 1), m);
  auto fx = r.manifest(id(1), manifest(content(0), 0, StateStrategy::kReceiveOnly), m);
  ASSERT_TRUE(r.planned());
  // Peer 1 timed out and syncs again: round 1 completes, round 2 gathers its manifest.
  fx = r.manifest(id(1), manifest(content(0), 0, StateStrategy::kReceiveOnly), m);
  EXPECT_EQ(fx.complete_round, 1u);
  EXPECT_FALSE(r.planned());
  EXPECT_EQ(r.waitingManifests(), 1u);
  fx = r.manifest(id(0), manifest(content(1), 2), m);
  EXPECT_EQ(fx.round, 2u);
  EXPECT_EQ(fx.plans.size(), 2u);
}

}  // namespace
}  // namespace loco::p2p
