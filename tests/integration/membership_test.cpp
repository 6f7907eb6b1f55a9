// Integration: real `loco` processes on 127.0.0.1 forming a group.
#include <gtest/gtest.h>
#include <signal.h>

#include <set>

#include "tests/support/swarm.h"

namespace loco::testing {
namespace {

using std::chrono::duration_cast;
using std::chrono::steady_clock;

TEST(Membership, FourPeersJoinAndFormOneRing) {
  Swarm swarm(250, 3000);
  for (int i = 1; i <= 4; ++i) swarm.addPeer("peer" + std::to_string(i));
  ASSERT_TRUE(swarm.waitFor(milliseconds(10000), 4)) << swarm.coordinator().process().log();
  auto v = swarm.coordinator().view();
  ASSERT_TRUE(v);
  std::set<std::string> ids;
  for (auto& p : v->peers) {
    EXPECT_EQ(p.state, p2p::PeerState::kMember);
    EXPECT_EQ(p.id.size(), 32u);
    EXPECT_NE(p.addr.find("127.0.0.1:"), std::string::npos) << p.addr;
    ids.insert(p.id);
  }
  EXPECT_EQ(ids.size(), 4u);
  for (int i = 1; i <= 4; ++i) EXPECT_EQ(ids.count(swarm.peerId("peer" + std::to_string(i))), 1u);
}

TEST(Membership, NewPeerIsAdmittedAtTheNextSyncPoint) {
  Swarm swarm(500, 3000);
  for (int i = 1; i <= 3; ++i) swarm.addPeer("peer" + std::to_string(i));
  ASSERT_TRUE(swarm.waitFor(milliseconds(10000), 3));
  const auto epoch_before = swarm.coordinator().view()->epoch;
  auto t0 = steady_clock::now();
  swarm.addPeer("late");
  ASSERT_TRUE(swarm.waitFor(milliseconds(10000), 4));
  double admitted_s = secondsSince(t0);
  std::printf("admission of a new peer took %.3f s (target <= 2 s)\n", admitted_s);
  EXPECT_LT(admitted_s, 4.0);  // generous bound; the benchmark figure is printed above
  EXPECT_EQ(swarm.coordinator().view()->epoch, epoch_before + 1) << "one admission, one epoch";
}

TEST(Membership, SigtermLeavesGracefullyAndAtOnce) {
  Swarm swarm(500, 3000);
  swarm.addPeer("stay");
  Process& leaver = swarm.addPeer("leaver");
  ASSERT_TRUE(swarm.waitFor(milliseconds(10000), 2));
  auto t0 = steady_clock::now();
  leaver.signal(SIGTERM);
  ASSERT_TRUE(swarm.waitFor(milliseconds(5000), 1));
  double seen_s = secondsSince(t0);
  std::printf("SIGTERM leave visible in status after %.3f s (target <= 0.5 s)\n", seen_s);
  EXPECT_LT(seen_s, 1.5);
  EXPECT_EQ(leaver.waitExit(milliseconds(5000)), 0);
  EXPECT_NE(swarm.coordinator().process().log().find("left"), std::string::npos);
}

TEST(Membership, RestartedPeerRejoinsWithItsIdentity) {
  Swarm swarm(250, 3000);
  swarm.addPeer("anchor");
  Process& first = swarm.addPeer("phoenix");
  ASSERT_TRUE(swarm.waitFor(milliseconds(10000), 2));
  const std::string id = swarm.peerId("phoenix");
  ASSERT_EQ(id.size(), 32u);
  ASSERT_TRUE(swarm.isMember(id));
  first.signal(SIGTERM);
  ASSERT_EQ(first.waitExit(milliseconds(5000)), 0);
  ASSERT_TRUE(swarm.waitFor(milliseconds(5000), 1));
  swarm.addPeer("phoenix");
  ASSERT_TRUE(swarm.waitFor(milliseconds(10000), 2));
  EXPECT_TRUE(swarm.isMember(id)) << "the restarted peer must come back under the same id";
}

TEST(Membership, IdentityFileIsPrivate) {
  Swarm swarm(250, 3000);
  swarm.addPeer("p");
  ASSERT_TRUE(swarm.waitFor(milliseconds(10000), 1));
  struct stat st {};
  ASSERT_EQ(::stat(swarm.dir().file("p.id").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
}

TEST(Membership, StatusCommandPrintsJsonAndTable) {
  Swarm swarm(250, 3000);
  swarm.addPeer("a");
  swarm.addPeer("b");
  ASSERT_TRUE(swarm.waitFor(milliseconds(10000), 2));
  TempDir out;
  Process json({"status", "--coordinator", swarm.coordinator().address(), "--json"},
               out.file("json"));
  ASSERT_EQ(json.waitExit(milliseconds(5000)), 0);
  std::string j = json.log();
  EXPECT_EQ(j.rfind("{\"epoch\":", 0), 0u) << j;
  EXPECT_NE(j.find("\"world\":2,\"pending\":0,\"peers\":[{\"id\":\""), std::string::npos) << j;
  EXPECT_NE(j.find("\"state\":\"member\",\"heartbeat_age_ms\":"), std::string::npos) << j;
  Process table({"status", "--coordinator", swarm.coordinator().address()}, out.file("table"));
  ASSERT_EQ(table.waitExit(milliseconds(5000)), 0);
  EXPECT_NE(table.log().find("world 2"), std::string::npos) << table.log();
  EXPECT_NE(table.log().find(swarm.peerId("a")), std::string::npos);
}

TEST(Membership, EveryFlagHasAnEnvironmentTwin) {
  Swarm swarm(250, 3000);
  TempDir out;
  ::setenv("LOCO_COORDINATOR", swarm.coordinator().address().c_str(), 1);
  ::setenv("LOCO_JSON", "true", 1);
  Process status({"status"}, out.file("status"));
  ::unsetenv("LOCO_COORDINATOR");
  ::unsetenv("LOCO_JSON");
  ASSERT_EQ(status.waitExit(milliseconds(5000)), 0) << status.log();
  EXPECT_EQ(status.log().rfind("{\"epoch\":", 0), 0u) << status.log();
}

TEST(Membership, JsonLogsAreOneObjectPerLine) {
  Swarm swarm(250, 3000);
  Process& p = swarm.addPeer("p", {"--log-format", "json"});
  ASSERT_TRUE(swarm.waitFor(milliseconds(10000), 1));
  p.signal(SIGTERM);
  ASSERT_EQ(p.waitExit(milliseconds(5000)), 0);
  std::istringstream lines(p.log());
  std::string line;
  int n = 0;
  while (std::getline(lines, line)) {
    ++n;
    EXPECT_EQ(line.front(), '{') << line;
    EXPECT_EQ(line.back(), '}') << line;
    EXPECT_NE(line.find("\"msg\":\""), std::string::npos) << line;
  }
  EXPECT_GT(n, 2);
}

TEST(Membership, LocalSwarmRunsItsScenarioAndExitsCleanly) {
  TempDir dir;
  Process local({"local", "--idle", "--peers", "4", "--hold-ms", "300", "--out", dir.file("run")},
                dir.file("local.log"));
  auto rc = local.waitExit(milliseconds(60000));
  std::string out = local.log();
  ASSERT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("world 4  pending 0"), std::string::npos) << out;
  EXPECT_NE(out.find("world 3  pending 0"), std::string::npos) << out;
  EXPECT_NE(out.find("all processes exited cleanly"), std::string::npos) << out;
}

}  // namespace
}  // namespace loco::testing
