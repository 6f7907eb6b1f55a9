// Reachability at admission (p2p/reachability.cpp): the coordinator dials every joiner's
// advertised address back and `loco status` shows the outcome; an unreachable peer is still
// admitted (links to it take another path, p2p/relay.h).
#include <gtest/gtest.h>

#include "tests/support/process.h"
#include "tests/support/swarm.h"

namespace loco::testing {
namespace {

std::string reachabilityOf(const p2p::GroupView& v, const std::string& id) {
  for (const auto& [peer, what] : v.reachability) {
    if (peer == id) return what;
  }
  return "";
}

TEST(Reachability, CoordinatorDialsBackEveryJoinerAndStatusShowsIt) {
  Swarm swarm(250, 3000);
  swarm.addPeer("open");
  // Port 9 on loopback: nothing listens, so the dial-back is refused.
  swarm.addPeer("closed", {"--advertise", "127.0.0.1:9"});
  ASSERT_TRUE(swarm.waitFor(milliseconds(10000), 2)) << "both admitted, reachable or not";
  const std::string open = swarm.peerId("open"), closed = swarm.peerId("closed");
  ASSERT_EQ(open.size(), 32u);
  ASSERT_EQ(closed.size(), 32u);
  std::optional<p2p::GroupView> v;
  ASSERT_TRUE(eventually(milliseconds(5000), [&] {
    v = swarm.coordinator().view();
    return v && reachabilityOf(*v, open) == "reachable" &&
           reachabilityOf(*v, closed).rfind("unreachable: ", 0) == 0;
  })) << (v ? reachabilityOf(*v, open) + " / " + reachabilityOf(*v, closed) : "no view");
  EXPECT_EQ(swarm.coordinator().counter("coord.peers_unreachable"), 1u);

  TempDir out;
  Process table({"status", "--coordinator", swarm.coordinator().address()}, out.file("table"));
  ASSERT_EQ(table.waitExit(milliseconds(5000)), 0);
  EXPECT_NE(table.log().find("REACHABLE"), std::string::npos) << table.log();
  EXPECT_NE(table.log().find("unreachable: "), std::string::npos) << table.log();
  Process json({"status", "--coordinator", swarm.coordinator().address(), "--json"},
               out.file("json"));
  ASSERT_EQ(json.waitExit(milliseconds(5000)), 0);
  EXPECT_NE(json.log().find("\"reachability\":\"reachable\""), std::string::npos) << json.log();
}

}  // namespace
}  // namespace loco::testing
