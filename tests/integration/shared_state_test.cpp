// Shared state over real sockets: a coordinator process and Communicators in this process (each
// with its own network thread, as separate peers would have); for kill -9, peers run as
// `loco bench join --worker` processes.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <atomic>
#include <cstring>
#include <fstream>
#include <functional>
#include <sstream>
#include <thread>

#include "collectives/communicator.h"
#include "crypto/identity.h"
#include "p2p/base/metrics.h"
#include "p2p/base/seeded_fill.h"
#include "tests/support/process.h"

namespace loco::testing {
namespace {

using collectives::Communicator;
using collectives::DType;
using collectives::SharedState;
using collectives::SyncOptions;
using collectives::SyncReport;
using collectives::SyncStrategy;

std::unique_ptr<Communicator> makePeer(const CoordinatorProcess& coordinator) {
  collectives::CommunicatorOptions o;
  o.coordinator = {"127.0.0.1", coordinator.port()};
  o.peer_id = crypto::randomHex(16);
  o.listen = {"127.0.0.1", 0};
  auto c = Communicator::create(o, Deadline::after(Millis(10000)));
  EXPECT_TRUE(c.isOk()) << c.status().toString();
  return c ? std::move(c.value()) : nullptr;
}

// Every peer reaches sync points until the group has `n` members.
void admitAll(std::vector<Communicator*> peers, std::size_t n) {
  std::vector<std::thread> threads;
  for (auto* p : peers) {
    threads.emplace_back([p, n] {
      EXPECT_TRUE(p->waitForMembership(Deadline::after(Millis(20000))).isOk());
      for (int k = 0; k < 200 && p->world() < n; ++k) {
        (void)p->syncPoint(Deadline::after(Millis(5000)));
        if (p->world() < n) std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
    });
  }
  for (auto& t : threads) t.join();
}

// One peer's shared state: "params" (f32) and "step" (i64), like `loco bench join`'s.
struct PeerState {
  std::vector<float> params;
  std::int64_t step = 0;
  SharedState state;

  PeerState(std::size_t bytes, std::uint64_t seed, std::uint32_t chunk_bytes)
      : params(bytes / sizeof(float), 0.0f), state(chunk_bytes) {
    if (seed != 0) {
      fillSeeded(params, seed);
      step = 1000;
    }
    EXPECT_TRUE(state.add("params", DType::kF32, params.data(), params.size()).isOk());
    EXPECT_TRUE(state.add("step", DType::kI64, &step, 1).isOk());
  }
};

struct Group {
  TempDir dir;
  CoordinatorProcess coordinator{dir, 200, 2000};
  std::vector<std::unique_ptr<Communicator>> peers;

  explicit Group(int n) {
    for (int i = 0; i < n; ++i) peers.push_back(makePeer(coordinator));
    admitAll(raw(), static_cast<std::size_t>(n));
  }
  std::vector<Communicator*> raw() {
    std::vector<Communicator*> out;
    for (auto& p : peers) {
      if (p) out.push_back(p.get());
    }
    return out;
  }
};

// Runs one sync on each listed peer at once.
std::vector<Result<SyncReport>> syncAll(Group& g, std::vector<SharedState*> states,
                                        std::vector<SyncOptions> options = {},
                                        Millis timeout = Millis(60000)) {
  options.resize(states.size());
  std::vector<Result<SyncReport>> out(states.size(), Status(StatusCode::kInternal, "not run"));
  std::vector<std::thread> threads;
  for (std::size_t i = 0; i < states.size(); ++i) {
    threads.emplace_back([&, i] {
      out[i] = g.peers[i]->syncSharedState(*states[i], options[i], Deadline::after(timeout));
    });
  }
  for (auto& t : threads) t.join();
  return out;
}

constexpr std::size_t kMiB = 1u << 20;

TEST(SharedState, JoinerDownloadsFromEverySourceAndEndsWithEqualHashes) {
  Group g(3);
  std::vector<std::unique_ptr<PeerState>> st;
  for (int i = 0; i < 3; ++i) st.push_back(std::make_unique<PeerState>(16 * kMiB, 7, 256 * 1024));
  auto first = syncAll(g, {&st[0]->state, &st[1]->state, &st[2]->state});
  for (auto& r : first) {
    ASSERT_TRUE(r.isOk()) << r.status().toString();
    EXPECT_EQ(r->revision, 1u);
    EXPECT_EQ(r->bytes_received, 0u);
  }
  // A newcomer with nothing joins.
  g.peers.push_back(makePeer(g.coordinator));
  admitAll(g.raw(), 4);
  ASSERT_EQ(g.peers[0]->world(), 4u);
  st.push_back(std::make_unique<PeerState>(16 * kMiB, 0, 256 * 1024));
  ASSERT_NE(st[3]->state.digest(), st[0]->state.digest());
  std::vector<SyncOptions> opts(4);
  opts[3].strategy = SyncStrategy::kReceiveOnly;
  auto r = syncAll(g, {&st[0]->state, &st[1]->state, &st[2]->state, &st[3]->state}, opts);
  std::uint64_t sent = 0;
  for (int i = 0; i < 4; ++i) {
    ASSERT_TRUE(r[i].isOk()) << "peer " << i << ": " << r[i].status().toString();
    EXPECT_EQ(r[i]->revision, 2u);
    EXPECT_EQ(st[i]->state.revision(), 2u);
    if (i < 3) {
      EXPECT_GT(r[i]->bytes_sent, 0u)
          << "source " << i << " served nothing: the download was not striped";
      EXPECT_EQ(r[i]->bytes_received, 0u);
      sent += r[i]->bytes_sent;
    }
  }
  EXPECT_EQ(r[3]->bytes_received, st[3]->state.bytes());
  EXPECT_EQ(r[3]->sources_used, 3u);
  EXPECT_EQ(r[3]->chunks_rejected, 0u);
  EXPECT_FALSE(r[3]->drift) << "a newcomer's download is not drift";
  EXPECT_EQ(sent, st[3]->state.bytes());
  EXPECT_EQ(st[3]->state.digest(), st[0]->state.digest());
  EXPECT_EQ(st[3]->params, st[0]->params);
  EXPECT_EQ(st[3]->step, 1000);
  // Steady again: nobody moves a byte.
  r = syncAll(g, {&st[0]->state, &st[1]->state, &st[2]->state, &st[3]->state});
  for (auto& x : r) {
    ASSERT_TRUE(x.isOk()) << x.status().toString();
    EXPECT_EQ(x->bytes_received + x->bytes_sent, 0u);
    EXPECT_EQ(x->revision, 3u);
  }
}

TEST(SharedState, OneFlippedByteIsFoundAtTheNextSyncAndRepairedWithOneChunk) {
  Group g(3);
  std::vector<std::unique_ptr<PeerState>> st;
  for (int i = 0; i < 3; ++i) st.push_back(std::make_unique<PeerState>(8 * kMiB, 11, 1u << 20));
  for (auto& r : syncAll(g, {&st[0]->state, &st[1]->state, &st[2]->state}))
    ASSERT_TRUE(r.isOk()) << r.status().toString();
  const std::uint64_t drift_before = counter("collectives.state_drift_syncs").value();
  auto* bytes = reinterpret_cast<std::uint8_t*>(st[1]->params.data());
  bytes[5 * kMiB + 12345] ^= 0x10;
  auto r = syncAll(g, {&st[0]->state, &st[1]->state, &st[2]->state});
  for (auto& x : r) ASSERT_TRUE(x.isOk()) << x.status().toString();
  EXPECT_EQ(r[1]->chunks_received, 1u);
  EXPECT_LE(r[1]->bytes_received, 2 * kMiB) << "at most 2 chunks";
  EXPECT_TRUE(r[1]->drift);
  EXPECT_EQ(r[0]->bytes_received, 0u);
  EXPECT_FALSE(r[0]->drift);
  EXPECT_EQ(counter("collectives.state_drift_syncs").value(), drift_before + 1);
  EXPECT_EQ(st[1]->params, st[0]->params);
  EXPECT_EQ(st[1]->state.digest(), st[2]->state.digest());
  std::printf("flipped byte repaired: %llu bytes in %zu chunk(s)\n",
              static_cast<unsigned long long>(r[1]->bytes_received), r[1]->chunks_received);
}

TEST(SharedState, HundredSteadySyncsOf64MiBReceiveNothing) {
  Group g(3);
  std::vector<std::unique_ptr<PeerState>> st;
  for (int i = 0; i < 3; ++i) st.push_back(std::make_unique<PeerState>(64 * kMiB, 3, 1u << 20));
  for (auto& r : syncAll(g, {&st[0]->state, &st[1]->state, &st[2]->state}))
    ASSERT_TRUE(r.isOk()) << r.status().toString();
  const std::uint64_t drift_before = counter("collectives.state_drift_syncs").value();
  std::uint64_t received = 0, sent = 0;
  const auto t0 = std::chrono::steady_clock::now();
  for (int k = 0; k < 100; ++k) {
    for (auto& r : syncAll(g, {&st[0]->state, &st[1]->state, &st[2]->state})) {
      ASSERT_TRUE(r.isOk()) << "sync " << k << ": " << r.status().toString();
      received += r->bytes_received;
      sent += r->bytes_sent;
    }
  }
  const double per_sync_ms = secondsSince(t0) * 10;
  EXPECT_EQ(received, 0u);
  EXPECT_EQ(sent, 0u);
  EXPECT_EQ(st[0]->state.revision(), 101u);
  EXPECT_EQ(counter("collectives.state_drift_syncs").value(), drift_before);
  std::printf("100 steady syncs of 64 MiB on 3 peers: 0 bytes received, %.1f ms per sync\n",
              per_sync_ms);
}

TEST(SharedState, LayoutMismatchIsRefusedNamingTheFirstMismatchingBuffer) {
  Group g(3);
  std::vector<float> w(1000, 1.0f), b(10, 0.5f), w2(1000, 1.0f), b2(11, 0.5f);
  SharedState s0(4096), s1(4096), s2(4096);
  ASSERT_TRUE(s0.add("weights", DType::kF32, w.data(), w.size()).isOk());
  ASSERT_TRUE(s0.add("bias", DType::kF32, b.data(), b.size()).isOk());
  ASSERT_TRUE(s1.add("weights", DType::kF32, w.data(), w.size()).isOk());
  ASSERT_TRUE(s1.add("bias", DType::kF32, b.data(), b.size()).isOk());
  ASSERT_TRUE(s2.add("weights", DType::kF32, w2.data(), w2.size()).isOk());
  ASSERT_TRUE(s2.add("bias", DType::kF32, b2.data(), b2.size()).isOk());
  auto r = syncAll(g, {&s0, &s1, &s2});
  EXPECT_TRUE(r[0].isOk()) << r[0].status().toString();
  EXPECT_TRUE(r[1].isOk()) << r[1].status().toString();
  ASSERT_FALSE(r[2].isOk());
  EXPECT_EQ(r[2].status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(r[2].status().message().find("'bias'"), std::string::npos) << r[2].status().message();
  EXPECT_EQ(s2.revision(), 0u);
  // A different dtype is named too.
  std::vector<std::uint16_t> half(1000);
  SharedState s3(4096);
  ASSERT_TRUE(s3.add("weights", DType::kBF16, half.data(), half.size()).isOk());
  ASSERT_TRUE(s3.add("bias", DType::kF32, b.data(), b.size()).isOk());
  r = syncAll(g, {&s0, &s1, &s3});
  ASSERT_FALSE(r[2].isOk());
  EXPECT_NE(r[2].status().message().find("'weights'"), std::string::npos)
      << r[2].status().message();
}

TEST(SharedState, SendOnlyPeerThatLosesGetsAClearErrorAndOneThatWinsIsCopied) {
  Group g(3);
  std::vector<std::unique_ptr<PeerState>> st;
  st.push_back(std::make_unique<PeerState>(2 * kMiB, 5, 256 * 1024));
  st.push_back(std::make_unique<PeerState>(2 * kMiB, 5, 256 * 1024));
  st.push_back(std::make_unique<PeerState>(2 * kMiB, 6, 256 * 1024));  // a different checkpoint
  std::vector<SyncOptions> opts(3);
  opts[2].strategy = SyncStrategy::kSendOnly;
  auto r = syncAll(g, {&st[0]->state, &st[1]->state, &st[2]->state}, opts);
  ASSERT_TRUE(r[0].isOk()) << r[0].status().toString();
  ASSERT_FALSE(r[2].isOk());
  EXPECT_EQ(r[2].status().code(), StatusCode::kAborted);
  EXPECT_NE(r[2].status().message().find("send-only"), std::string::npos)
      << r[2].status().message();
  EXPECT_NE(st[2]->params, st[0]->params) << "a send-only peer never downloads";

  // Restoring a checkpoint: the send-only peer wins against newcomers that hold nothing.
  Group h(3);
  std::vector<std::unique_ptr<PeerState>> fresh;
  fresh.push_back(std::make_unique<PeerState>(2 * kMiB, 9, 256 * 1024));
  fresh.push_back(std::make_unique<PeerState>(2 * kMiB, 0, 256 * 1024));
  fresh.push_back(std::make_unique<PeerState>(2 * kMiB, 0, 256 * 1024));
  std::vector<SyncOptions> o2(3);
  o2[0].strategy = SyncStrategy::kSendOnly;
  o2[1].strategy = o2[2].strategy = SyncStrategy::kReceiveOnly;
  auto r2 = syncAll(h, {&fresh[0]->state, &fresh[1]->state, &fresh[2]->state}, o2);
  for (auto& x : r2) ASSERT_TRUE(x.isOk()) << x.status().toString();
  EXPECT_EQ(fresh[1]->params, fresh[0]->params);
  EXPECT_EQ(fresh[2]->state.digest(), fresh[0]->state.digest());
}

TEST(SharedState, SyncOutsideTheRulesIsAClearError) {
  Group g(1);
  SharedState empty;
  auto r = g.peers[0]->syncSharedState(empty, {}, Deadline::after(Millis(5000)));
  ASSERT_FALSE(r.isOk());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  std::vector<float> buf(1000, 1.0f);
  auto op = g.peers[0]->allReduce(buf.data(), buf.size(), collectives::DType::kF32,
                                  collectives::ReduceOp::kSum, collectives::Wire::kRaw);
  ASSERT_TRUE(op.isOk());
  ASSERT_TRUE((*op)->wait(Deadline::after(Millis(5000))).isOk());
  SharedState s;
  EXPECT_FALSE(s.add("x", DType::kF32, nullptr, 10).isOk());
  ASSERT_TRUE(s.add("x", DType::kF32, buf.data(), buf.size()).isOk());
  EXPECT_FALSE(s.add("x", DType::kF32, buf.data(), buf.size()).isOk()) << "duplicate name";
  // Alone, a peer is the group: its content wins and nothing moves.
  auto alone = g.peers[0]->syncSharedState(s, {}, Deadline::after(Millis(5000)));
  ASSERT_TRUE(alone.isOk()) << alone.status().toString();
  EXPECT_EQ(alone->bytes_received, 0u);
  EXPECT_EQ(s.revision(), 1u);
}

TEST(SharedState, ASyncThatTimedOutLeavesTheNextOneWorking) {
  Group g(2);
  std::vector<std::unique_ptr<PeerState>> st;
  st.push_back(std::make_unique<PeerState>(1 * kMiB, 4, 64 * 1024));
  st.push_back(std::make_unique<PeerState>(1 * kMiB, 0, 64 * 1024));
  // Peer 1 is late: peer 0 gives up, and its manifest is withdrawn.
  auto lonely = g.peers[0]->syncSharedState(st[0]->state, {}, Deadline::after(Millis(300)));
  ASSERT_FALSE(lonely.isOk());
  EXPECT_EQ(lonely.status().code(), StatusCode::kTimeout);
  EXPECT_EQ(st[0]->state.revision(), 0u);
  std::vector<SyncOptions> opts(2);
  opts[1].strategy = SyncStrategy::kReceiveOnly;
  auto r = syncAll(g, {&st[0]->state, &st[1]->state}, opts, Millis(20000));
  for (auto& x : r) ASSERT_TRUE(x.isOk()) << x.status().toString();
  EXPECT_EQ(st[1]->params, st[0]->params);
  EXPECT_EQ(st[1]->state.revision(), 1u);
}

TEST(SharedStateFault, CorruptSourceIsRejectedRefetchedAndEvicted) {
  Group g(4);
  std::vector<std::unique_ptr<PeerState>> st;
  for (int i = 0; i < 3; ++i) st.push_back(std::make_unique<PeerState>(16 * kMiB, 21, 256 * 1024));
  st.push_back(std::make_unique<PeerState>(16 * kMiB, 0, 256 * 1024));
  std::vector<SyncOptions> opts(4);
  opts[2].corrupt_served_chunks_for_tests = true;
  opts[3].strategy = SyncStrategy::kReceiveOnly;
  auto r = syncAll(g, {&st[0]->state, &st[1]->state, &st[2]->state, &st[3]->state}, opts);
  ASSERT_TRUE(r[0].isOk()) << r[0].status().toString();
  ASSERT_TRUE(r[1].isOk()) << r[1].status().toString();
  ASSERT_TRUE(r[3].isOk()) << r[3].status().toString();
  EXPECT_GE(r[3]->chunks_rejected, collectives::kMaxCorruptChunksPerSource);
  EXPECT_GE(r[3]->sources_dropped, 1u);
  EXPECT_EQ(st[3]->state.digest(), st[0]->state.digest())
      << "every chunk verified; the corrupt ones came from others";
  EXPECT_EQ(st[3]->params, st[0]->params);
  // The corrupt source was reported and evicted.
  EXPECT_FALSE(r[2].isOk());
  EXPECT_EQ(g.coordinator.counter("coord.state_complaints"), 1u);
  EXPECT_TRUE(eventually(milliseconds(5000), [&] {
    auto v = g.coordinator.view();
    return v && v->world() == 3;
  }));
  std::printf("corrupt source: %zu chunk(s) rejected and fetched elsewhere; source evicted (%s)\n",
              r[3]->chunks_rejected, r[2].status().toString().c_str());
}

// Sources are `loco bench join --worker` processes serving at a paced 50 Mbit/s each, so one can
// be killed with SIGKILL in the middle of the download; the joiner is here.
TEST(SharedStateFault, SourceKilledMidTransferIsReplacedByTheOthers) {
  TempDir dir;
  CoordinatorProcess coordinator(dir, 200, 2000);
  std::vector<std::unique_ptr<Process>> sources;
  for (int i = 0; i < 3; ++i) {
    sources.push_back(
        std::make_unique<Process>(std::vector<std::string>{"bench",
                                                           "join",
                                                           "--worker",
                                                           "--role",
                                                           "source",
                                                           "--coordinator",
                                                           coordinator.address(),
                                                           "--listen",
                                                           "127.0.0.1:0",
                                                           "--peers",
                                                           "4",
                                                           "--sources",
                                                           "3",
                                                           "--mib",
                                                           "24",
                                                           "--chunk-kib",
                                                           "256",
                                                           "--serve-mbit",
                                                           "50",
                                                           "--ready",
                                                           dir.file("ready-" + std::to_string(i)),
                                                           "--out",
                                                           dir.file("out-" + std::to_string(i)),
                                                           "--log-level",
                                                           "warn"},
                                  dir.file("source-" + std::to_string(i) + ".log")));
  }
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(eventually(milliseconds(30000), [&] {
      return !readFile(dir.file("ready-" + std::to_string(i))).empty();
    })) << sources[i]->log();
  }
  const std::string source_digest = readFile(dir.file("ready-0")).substr(0, 16);
  auto joiner = makePeer(coordinator);
  ASSERT_TRUE(joiner->waitForMembership(Deadline::after(Millis(20000))).isOk());
  PeerState st(24 * kMiB, 0, 256 * 1024);
  Result<SyncReport> r = Status(StatusCode::kInternal, "not run");
  Counter& received = counter("collectives.state_bytes_received");
  const std::uint64_t received_before = received.value();
  std::thread t([&] {
    r = joiner->syncSharedState(st.state, {.strategy = SyncStrategy::kReceiveOnly},
                                Deadline::after(Millis(60000)));
  });
  // 24 MiB at 3 x 50 Mbit/s takes about 1.3 s: kill one source well inside it, once chunks flow.
  EXPECT_TRUE(eventually(milliseconds(20000), [&] { return received.value() > received_before; }));
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  sources[0]->signal(SIGKILL);
  t.join();
  ASSERT_TRUE(r.isOk()) << r.status().toString();
  EXPECT_EQ(r->sources_dropped, 1u) << "the kill must land mid-transfer";
  EXPECT_EQ(r->bytes_received, st.state.bytes());
  EXPECT_EQ(fmt::format("{:016x}", st.state.digest()), source_digest);
  for (int i = 1; i < 3; ++i) {
    EXPECT_EQ(sources[i]->waitExit(milliseconds(20000)), 0) << sources[i]->log();
    EXPECT_EQ(readFile(dir.file("out-" + std::to_string(i))).substr(0, 16), source_digest);
  }
  std::printf(
      "source killed 300 ms into the download: download finished in %.2f s from the other two\n",
      r->transfer_seconds);
}

// The joiner is a process killed mid-download; the sources are here. They lose only the bytes
// already sent: their sync succeeds, and the group goes on (all-reduce, next sync).
TEST(SharedStateFault, JoinerVanishingMidDownloadCostsTheSourcesNothing) {
  Group g(3);
  std::vector<std::unique_ptr<PeerState>> st;
  for (int i = 0; i < 3; ++i) st.push_back(std::make_unique<PeerState>(24 * kMiB, 42, 256 * 1024));
  for (auto& r : syncAll(g, {&st[0]->state, &st[1]->state, &st[2]->state}))
    ASSERT_TRUE(r.isOk()) << r.status().toString();
  Process joiner({"bench",
                  "join",
                  "--worker",
                  "--role",
                  "joiner",
                  "--coordinator",
                  g.coordinator.address(),
                  "--listen",
                  "127.0.0.1:0",
                  "--peers",
                  "4",
                  "--sources",
                  "3",
                  "--mib",
                  "24",
                  "--chunk-kib",
                  "256",
                  "--ready",
                  g.dir.file("joiner-ready"),
                  "--out",
                  g.dir.file("joiner-out"),
                  "--log-level",
                  "warn"},
                 g.dir.file("joiner.log"));
  admitAll(g.raw(), 4);
  ASSERT_EQ(g.peers[0]->world(), 4u) << joiner.log();
  std::vector<Result<SyncReport>> r(3, Status(StatusCode::kInternal, "not run"));
  std::vector<std::thread> threads;
  for (int i = 0; i < 3; ++i) {
    threads.emplace_back([&, i] {
      SyncOptions o;
      o.max_serve_mbit = 50;
      r[i] = g.peers[i]->syncSharedState(st[i]->state, o, Deadline::after(Millis(60000)));
    });
  }
  Counter& served = counter("collectives.state_bytes_sent");
  const std::uint64_t served_before = served.value();
  ASSERT_TRUE(eventually(milliseconds(20000), [&] { return served.value() > served_before; }))
      << joiner.log();
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  joiner.signal(SIGKILL);
  const auto killed_at = std::chrono::steady_clock::now();
  for (auto& t : threads) t.join();
  const double after_kill = secondsSince(killed_at);
  std::uint64_t sent = 0;
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(r[i].isOk()) << "source " << i << ": " << r[i].status().toString();
    EXPECT_EQ(r[i]->bytes_received, 0u);
    sent += r[i]->bytes_sent;
  }
  EXPECT_GT(sent, 0u);
  EXPECT_LT(sent, 24 * kMiB) << "the sources stopped when the joiner vanished";
  EXPECT_LT(after_kill, 5.0) << "the round ended when the joiner was gone, not at a timeout";
  // The group goes on: after losing a member, the survivors meet at a sync point (the new epoch
  // starts there) before their next collective.
  admitAll(g.raw(), 3);
  threads.clear();
  for (int i = 0; i < 3; ++i) {
    threads.emplace_back(
        [&, i] { EXPECT_TRUE(g.peers[i]->syncPoint(Deadline::after(Millis(10000))).isOk()); });
  }
  for (auto& t : threads) t.join();
  std::vector<std::vector<float>> bufs(3, std::vector<float>(1000, 1.0f));
  std::vector<Status> ar(3);
  threads.clear();
  for (int i = 0; i < 3; ++i) {
    threads.emplace_back([&, i] {
      auto h = g.peers[i]->allReduce(bufs[i].data(), bufs[i].size(), collectives::DType::kF32,
                                     collectives::ReduceOp::kSum, collectives::Wire::kRaw);
      ar[i] = h ? (*h)->wait(Deadline::after(Millis(20000))) : h.status();
    });
  }
  for (auto& t : threads) t.join();
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(ar[i].isOk()) << ar[i].toString();
    EXPECT_EQ(bufs[i][0], 3.0f);
  }
  for (auto& x : syncAll(g, {&st[0]->state, &st[1]->state, &st[2]->state})) {
    ASSERT_TRUE(x.isOk()) << x.status().toString();
    EXPECT_EQ(x->bytes_received, 0u);
  }
  std::printf(
      "joiner killed mid-download: sources sent %llu of %zu bytes, round over %.2f s after the "
      "kill\n",
      static_cast<unsigned long long>(sent), 24 * kMiB, after_kill);
}

}  // namespace
}  // namespace loco::testing
