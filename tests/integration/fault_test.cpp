// Fault tests: kills, stops, refused identities, unreachable coordinators, garbage on the wire,
// connection floods and join/leave churn against real `loco` processes on 127.0.0.1.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>

#include "p2p/frame.h"
#include "p2p/messages.h"
#include "p2p/status_client.h"
#include "tests/support/swarm.h"

namespace loco::testing {
namespace {

using std::chrono::steady_clock;

// A raw TCP client for speaking garbage to the coordinator.
class RawClient {
 public:
  explicit RawClient(std::uint16_t port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connected_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  }
  ~RawClient() {
    if (fd_ >= 0) ::close(fd_);
  }
  bool connected() const { return connected_; }
  void send(const std::vector<std::uint8_t>& bytes) {
    if (!bytes.empty()) (void)::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL);
  }
  // True if the remote closed the connection (EOF or reset) within `timeout`.
  bool closedByRemote(milliseconds timeout) {
    auto deadline = steady_clock::now() + timeout;
    while (steady_clock::now() < deadline) {
      pollfd p{fd_, POLLIN, 0};
      int r = ::poll(&p, 1, 50);
      if (r > 0) {
        char buf[4096];
        ssize_t n = ::recv(fd_, buf, sizeof(buf), 0);
        if (n <= 0) return true;  // EOF or error
      }
    }
    return false;
  }

 private:
  int fd_ = -1;
  bool connected_ = false;
};

std::vector<std::uint8_t> header(std::uint32_t magic, std::uint8_t version, std::uint8_t type,
                                 std::uint16_t flags, std::uint32_t length) {
  std::vector<std::uint8_t> out;
  ByteWriter w(out);
  w.u32(magic);
  w.u8(version);
  w.u8(type);
  w.u16(flags);
  w.u32(length);
  w.u32(0);
  w.u64(0);
  w.u64(0);
  return out;
}

TEST(Fault, KilledPeerIsEvictedAtOnce) {
  Swarm swarm(500, 3000);
  swarm.addPeer("a");
  swarm.addPeer("b");
  Process& victim = swarm.addPeer("victim");
  ASSERT_TRUE(swarm.waitFor(milliseconds(10000), 3));
  auto t0 = steady_clock::now();
  victim.signal(SIGKILL);
  ASSERT_TRUE(swarm.waitFor(milliseconds(5000), 2));
  double seen_s = secondsSince(t0);
  std::printf("kill -9 visible in status after %.3f s (target <= 1 s)\n", seen_s);
  EXPECT_LT(seen_s, 2.0);
  EXPECT_NE(swarm.coordinator().process().log().find("connection lost"), std::string::npos);
}

TEST(Fault, StoppedPeerIsEvictedAfterTheTimeoutAndRejoinsAfterSigcont) {
  Swarm swarm(500, 3000);
  swarm.addPeer("a");
  Process& sleeper = swarm.addPeer("sleeper");
  ASSERT_TRUE(swarm.waitFor(milliseconds(10000), 2));
  const std::string id = swarm.peerId("sleeper");
  auto t0 = steady_clock::now();
  sleeper.signal(SIGSTOP);
  ASSERT_TRUE(swarm.waitFor(milliseconds(10000), 1));
  double seen_s = secondsSince(t0);
  std::printf("SIGSTOP eviction visible in status after %.3f s (timeout 3 s, target <= 4 s)\n",
              seen_s);
  EXPECT_GE(seen_s, 2.5) << "evicted before its heartbeat timeout";
  EXPECT_LT(seen_s, 5.0);
  sleeper.signal(SIGCONT);
  ASSERT_TRUE(eventually(milliseconds(10000), [&] { return swarm.isMember(id); }))
      << "the woken peer must rejoin\n"
      << sleeper.log();
  EXPECT_NE(sleeper.log().find("evicted by the coordinator"), std::string::npos) << sleeper.log();
  EXPECT_NE(sleeper.log().find("rejoining as pending"), std::string::npos);
}

TEST(Fault, SecondLivePeerWithTheSameIdentityIsRefused) {
  Swarm swarm(250, 3000);
  swarm.addPeer("twin");
  ASSERT_TRUE(swarm.waitFor(milliseconds(10000), 1));
  Process& copy = swarm.addPeer("twin");  // same identity file
  auto rc = copy.waitExit(milliseconds(10000));
  ASSERT_TRUE(rc.has_value());
  EXPECT_NE(*rc, 0);
  EXPECT_NE(copy.log().find("already registered"), std::string::npos) << copy.log();
  EXPECT_NE(copy.log().find("same identity"), std::string::npos) << copy.log();
  EXPECT_TRUE(swarm.waitFor(milliseconds(2000), 1)) << "the original keeps its place";
}

TEST(Fault, UnreachableCoordinatorFailsWithAClearErrorInsteadOfHanging) {
  TempDir dir;
  auto t0 = steady_clock::now();
  // Port 1 on loopback: nothing listens, connections are refused.
  Process join({"join", "--idle", "--coordinator", "127.0.0.1:1", "--connect-timeout", "1000"},
               dir.file("join"));
  auto rc = join.waitExit(milliseconds(10000));
  ASSERT_TRUE(rc.has_value()) << "join hung";
  EXPECT_EQ(*rc, 1);
  EXPECT_LT(secondsSince(t0), 5.0);
  EXPECT_NE(join.log().find("127.0.0.1:1"), std::string::npos) << join.log();
  EXPECT_NE(join.log().find("refused"), std::string::npos) << join.log();

  Process bad({"join", "--idle", "--coordinator", "not an address"}, dir.file("bad"));
  EXPECT_EQ(bad.waitExit(milliseconds(5000)), 2);
  EXPECT_NE(bad.log().find("bad address"), std::string::npos) << bad.log();

  Process status({"status", "--coordinator", "127.0.0.1:1", "--timeout", "1000"},
                 dir.file("status"));
  auto src = status.waitExit(milliseconds(5000));
  ASSERT_TRUE(src.has_value());
  EXPECT_EQ(*src, 1);
}

TEST(Fault, GarbageClosesOnlyTheOffendingConnection) {
  Swarm swarm(250, 3000);
  swarm.addPeer("honest");
  ASSERT_TRUE(swarm.waitFor(milliseconds(10000), 1));
  auto& coord = swarm.coordinator();
  const std::uint16_t port = coord.port();

  struct Case {
    const char* name;
    std::vector<std::uint8_t> bytes;
    const char* counter;
  };
  std::vector<std::uint8_t> garbage(64);
  for (std::size_t i = 0; i < garbage.size(); ++i)
    garbage[i] = static_cast<std::uint8_t>(i * 37 + 11);
  std::vector<Case> cases = {
      {"garbage bytes", garbage, "p2p.frames_rejected.bad_magic"},
      {"absurd length", header(p2p::kFrameMagic, 1, 1, 0, 0xFFFFFFFFu),
       "p2p.frames_rejected.too_long"},
      {"unknown type", header(p2p::kFrameMagic, 1, 200, 0, 0), "p2p.frames_rejected.unknown_type"},
      {"bad version", header(p2p::kFrameMagic, 9, 1, 0, 0), "p2p.frames_rejected.bad_version"},
      {"unknown flags", header(p2p::kFrameMagic, 1, 4, 0x8000, 0), "p2p.frames_rejected.bad_flags"},
      {"data before hello", header(p2p::kFrameMagic, 1, 15, 0, 16),
       "p2p.frames_rejected.unexpected_type"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const auto before = coord.counter(c.counter);
    RawClient client(port);
    ASSERT_TRUE(client.connected());
    client.send(c.bytes);
    EXPECT_TRUE(client.closedByRemote(milliseconds(3000))) << "offending connection must be closed";
    EXPECT_TRUE(eventually(milliseconds(2000), [&] { return coord.counter(c.counter) > before; }));
    EXPECT_TRUE(swarm.waitFor(milliseconds(1000), 1)) << "the honest peer must stay a member";
  }

  {
    SCOPED_TRACE("truncated frame then hang-up");
    RawClient client(port);
    auto hello = header(p2p::kFrameMagic, 1, 1, 0, 100);
    hello.resize(hello.size() + 10, 0);  // promises 100 bytes, sends 10
    client.send(hello);
  }  // closed by us mid-frame
  {
    SCOPED_TRACE("Hello with a malformed payload");
    RawClient client(port);
    auto bytes = p2p::encodeFrame(p2p::FrameHeader{p2p::MsgType::kHello},
                                  std::vector<std::uint8_t>{1, 2, 3});
    client.send(bytes);
    EXPECT_TRUE(client.closedByRemote(milliseconds(3000)));
  }
  {
    SCOPED_TRACE("never completes its handshake");
    const auto before = coord.counter("p2p.handshake_timeouts");
    RawClient client(port);
    auto partial = header(p2p::kFrameMagic, 1, 1, 0, 50);
    partial.resize(16);  // half a header, then silence
    client.send(partial);
    auto t0 = steady_clock::now();
    EXPECT_TRUE(client.closedByRemote(milliseconds(6000)));
    EXPECT_LT(secondsSince(t0), 4.0) << "handshake deadline (2 s default) not enforced";
    EXPECT_GT(coord.counter("p2p.handshake_timeouts"), before);
  }
  EXPECT_TRUE(swarm.waitFor(milliseconds(1000), 1));
  EXPECT_TRUE(coord.process().running());
}

TEST(Fault, ConnectionFloodDoesNotLockOutPeersOrGrowMemoryWithoutBound) {
  Swarm swarm(250, 3000);
  swarm.addPeer("honest");
  ASSERT_TRUE(swarm.waitFor(milliseconds(10000), 1));
  auto& coord = swarm.coordinator();
  const long rss_before = rssKib(coord.process().pid());
  {
    // 600 silent connections: more than the coordinator keeps unidentified (256).
    std::vector<std::unique_ptr<RawClient>> flood;
    for (int i = 0; i < 600; ++i) flood.push_back(std::make_unique<RawClient>(coord.port()));
    // While the flood holds, a new peer still gets in and status still answers.
    swarm.addPeer("newcomer");
    EXPECT_TRUE(swarm.waitFor(milliseconds(10000), 2)) << coord.process().log();
    EXPECT_GT(coord.counter("coord.handshaking_dropped"), 0u);
    EXPECT_LT(openFdCount(coord.process().pid()), 400) << "unidentified connections are bounded";
  }
  const long rss_after = rssKib(coord.process().pid());
  std::printf("coordinator RSS before flood %ld KiB, after %ld KiB\n", rss_before, rss_after);
  EXPECT_LT(rss_after, rss_before + 16 * 1024);
  EXPECT_TRUE(coord.process().running());
}

TEST(Fault, HundredJoinLeaveCyclesLeakNoFdsOrMemory) {
  Swarm swarm(100, 2000);
  swarm.addPeer("steady");
  ASSERT_TRUE(swarm.waitFor(milliseconds(10000), 1));
  const pid_t cpid = swarm.coordinator().process().pid();
  auto cycle = [&](int i) {
    Process& p = swarm.addPeer("churn" + std::to_string(i));
    ASSERT_TRUE(swarm.waitFor(milliseconds(10000), 2)) << "cycle " << i;
    p.signal(i % 2 == 0 ? SIGTERM : SIGKILL);  // graceful leaves and crashes alternate
    ASSERT_TRUE(p.waitExit(milliseconds(5000)).has_value());
    ASSERT_TRUE(swarm.waitFor(milliseconds(10000), 1)) << "cycle " << i;
  };
  for (int i = 0; i < 10; ++i) cycle(i);  // warm-up: allocator arenas, counters, log buffers
  const int fds_start = openFdCount(cpid);
  const long rss_start = rssKib(cpid);
  for (int i = 10; i < 110; ++i) {
    cycle(i);
    if (HasFatalFailure()) return;
  }
  const int fds_end = openFdCount(cpid);
  const long rss_end = rssKib(cpid);
  std::printf("after 100 join/leave cycles: coordinator fds %d -> %d, RSS %ld -> %ld KiB\n",
              fds_start, fds_end, rss_start, rss_end);
  EXPECT_LE(fds_end, fds_start + fds_start / 10);
#if defined(__SANITIZE_ADDRESS__)
  // ASan keeps freed memory in quarantine, so RSS grows by design; only fds say something here.
  std::printf("RSS bound not checked under AddressSanitizer\n");
#else
  EXPECT_LE(rss_end, rss_start + rss_start / 10);
#endif
}

TEST(Fault, CoordinatorWithEightIdlePeersUsesLittleCpu) {
  Swarm swarm(500, 3000);
  for (int i = 0; i < 8; ++i) swarm.addPeer("idle" + std::to_string(i));
  ASSERT_TRUE(swarm.waitFor(milliseconds(15000), 8));
  std::this_thread::sleep_for(milliseconds(1000));
  const pid_t cpid = swarm.coordinator().process().pid();
  const long cpu0 = cpuMillis(cpid);
  auto t0 = steady_clock::now();
  std::this_thread::sleep_for(milliseconds(5000));
  const double wall_ms = secondsSince(t0) * 1000;
  const double percent = 100.0 * static_cast<double>(cpuMillis(cpid) - cpu0) / wall_ms;
  std::printf("coordinator CPU with 8 idle peers: %.2f%% of one core (target < 2%%)\n", percent);
  EXPECT_LT(percent, 2.0);
}

}  // namespace
}  // namespace loco::testing

namespace loco::testing {
namespace {

// ARCHITECTURE.md §4: the coordinator is restartable. Peers that lose it keep trying to rejoin for
// --connect-timeout; a new coordinator on the same address takes them back, and because each
// peer reports the highest epoch it saw, epochs never go backwards.
TEST(Fault, PeersRejoinARestartedCoordinatorAndEpochsKeepRising) {
  TempDir dir;
  std::string port_file = dir.file("port");
  auto start = [&](const std::string& listen) {
    ::unlink(port_file.c_str());
    auto p = std::make_unique<Process>(
        std::vector<std::string>{"coordinator", "--listen", listen, "--port-file", port_file,
                                 "--heartbeat-interval", "200", "--heartbeat-timeout", "2000"},
        dir.file("coordinator.log"));
    EXPECT_TRUE(eventually(milliseconds(10000), [&] { return !readFile(port_file).empty(); }));
    return p;
  };
  auto coordinator = start("127.0.0.1:0");
  const std::string port = std::to_string(std::atoi(readFile(port_file).c_str()));
  const p2p::HostPort addr{"127.0.0.1", static_cast<std::uint16_t>(std::stoi(port))};
  auto view = [&]() -> std::optional<p2p::GroupView> {
    auto v = p2p::fetchStatus(addr, Deadline::after(Millis(1000)));
    if (!v) return std::nullopt;
    return std::move(v.value());
  };
  std::vector<std::unique_ptr<Process>> peers;
  for (int i = 0; i < 3; ++i) {
    peers.push_back(std::make_unique<Process>(
        std::vector<std::string>{"join", "--idle", "--coordinator", "127.0.0.1:" + port,
                                 "--connect-timeout", "15000"},
        dir.file("peer" + std::to_string(i) + ".log")));
  }
  ASSERT_TRUE(eventually(milliseconds(10000), [&] {
    auto v = view();
    return v && v->world() == 3;
  }));
  const std::uint64_t epoch_before = view()->epoch;

  coordinator->signal(SIGKILL);
  ASSERT_TRUE(coordinator->waitExit(milliseconds(5000)).has_value());
  coordinator = start("127.0.0.1:" + port);
  ASSERT_TRUE(eventually(milliseconds(15000), [&] {
    auto v = view();
    return v && v->world() == 3 && v->pending() == 0;
  })) << peers[0]->log();
  EXPECT_GT(view()->epoch, epoch_before) << "epochs must keep rising across a coordinator restart";
  for (auto& p : peers) EXPECT_TRUE(p->running());
}

}  // namespace
}  // namespace loco::testing

namespace loco::testing {
namespace {

// A peer frozen (SIGSTOP) during an all-reduce: the coordinator evicts it after the heartbeat
// timeout and aborts the operation, so every survivor's wait ends with an error shortly after,
// instead of hanging on a link that never closes.
TEST(Fault, FrozenPeerDuringAllReduceFailsTheSurvivorsWithinTheHeartbeatTimeout) {
  TempDir dir;
  CoordinatorProcess coordinator(dir, 200, 1500);
  std::vector<std::unique_ptr<Process>> workers;
  for (int r = 0; r < 3; ++r) {
    workers.push_back(std::make_unique<Process>(
        std::vector<std::string>{
            "bench", "allreduce", "--worker", "--coordinator", coordinator.address(), "--listen",
            "127.0.0.1:0", "--rank", std::to_string(r), "--peers", "3", "--mib", "32", "--iters",
            "100000", "--out", dir.file("w" + std::to_string(r)), "--streams", "2"},
        dir.file("worker" + std::to_string(r) + ".log")));
  }
  // Wait until they are all-reducing (3 members), then let a few operations run.
  ASSERT_TRUE(eventually(milliseconds(20000), [&] {
    auto v = coordinator.view();
    return v && v->world() == 3;
  }));
  ASSERT_TRUE(eventually(milliseconds(20000),
                         [&] { return coordinator.counter("coord.ops_committed") >= 2; }));
  const std::uint64_t committed_before = coordinator.counter("coord.ops_committed");
  const auto t0 = std::chrono::steady_clock::now();
  workers[2]->signal(SIGSTOP);
  // Two correct outcomes, depending on where the freeze lands: inside an operation, the group
  // aborts it and both survivors' waits fail (the bench worker then exits non-zero); between
  // operations (at a sync point), the frozen peer is evicted and the two carry on together.
  bool survivors_failed = false, group_went_on = false;
  ASSERT_TRUE(eventually(milliseconds(8000),
                         [&] {
                           survivors_failed = !workers[0]->running() && !workers[1]->running();
                           auto v = coordinator.view();
                           group_went_on =
                               v && v->world() == 2 &&
                               coordinator.counter("coord.ops_committed") > committed_before;
                           return survivors_failed || group_went_on;
                         }))
      << "survivors neither failed nor went on\n"
      << workers[0]->log();
  const double seconds = secondsSince(t0);
  std::printf("frozen peer: survivors %s after %.2f s (heartbeat timeout 1.5 s)\n",
              survivors_failed ? "failed their operation" : "went on without it", seconds);
  EXPECT_LT(seconds, 1.5 + 2.5);
  if (survivors_failed) {
    for (int r = 0; r < 2; ++r) {
      EXPECT_NE(workers[r]->waitExit(milliseconds(1000)), 0)
          << "an aborted operation must not look like success";
      EXPECT_NE(workers[r]->log().find("the buffer is restored"), std::string::npos)
          << workers[r]->log();
    }
  }
  workers[2]->signal(SIGCONT);
}

}  // namespace
}  // namespace loco::testing
