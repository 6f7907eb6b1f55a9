// The run goes on (ARCHITECTURE.md §4): a training group outlives its coordinator (kill -9 and a
// restart on the same address, a stall longer than the heartbeat timeout, a standby taking over)
// and brings back a peer it evicted. Real `loco coordinator` and `loco join` processes on
// 127.0.0.1 train a tiny GPT; every test checks the peers' JSON lines: outer steps strictly
// increasing (no round applied twice) and, on peers that never left, contiguous (no round lost),
// with equal shared-state digests on every peer that reported a step.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <regex>
#include <set>
#include <thread>

#include "tests/support/process.h"
#include "tests/support/training_run.h"

namespace loco::testing {
namespace {

constexpr int kInterval = 200;
constexpr int kTimeout = 1500;  // heartbeat timeout of every coordinator here
constexpr int kInner = 10;

class TrainingGroup {
 public:
  // `coordinators_of`: a coordinator list of its own for some ranks (a path that can be cut).
  TrainingGroup(const TempDir& dir, int peers, const std::string& coordinators, int rounds,
                std::vector<std::string> extra = {},
                const std::map<int, std::string>& coordinators_of = {})
      : dir_(dir), rounds_(rounds) {
    const std::string corpus = writeCorpus(dir);
    for (int r = 0; r < peers; ++r) {
      auto own = coordinators_of.find(r);
      std::vector<std::string> args = {"join",
                                       "--coordinator",
                                       own != coordinators_of.end() ? own->second : coordinators,
                                       "--listen",
                                       "127.0.0.1:0",
                                       "--identity",
                                       dir.file("peer" + std::to_string(r) + ".id"),
                                       "--rank",
                                       std::to_string(r),
                                       "--wait-for",
                                       std::to_string(peers),
                                       "--metrics",
                                       jsonl(r),
                                       "--measure-topology",
                                       "off",
                                       "--inner-steps",
                                       std::to_string(kInner),
                                       "--steps",
                                       std::to_string(rounds * kInner),
                                       "--eval-every",
                                       "1000000"};
      for (const auto& f : tiny(corpus)) args.push_back(f);
      for (const auto& f : extra) args.push_back(f);
      peers_.push_back(std::make_unique<Process>(args, log(r)));
      args_.push_back(std::move(args));
    }
  }

  // Starts peer r again (its process must have ended): the same identity, rank and metrics file,
  // plus `extra` (e.g. --resume).
  void restart(int r, const std::vector<std::string>& extra) {
    auto args = args_[r];
    args.insert(args.end(), extra.begin(), extra.end());
    peers_[r] = std::make_unique<Process>(args, log(r));
  }

  std::string jsonl(int r) const { return dir_.file("peer" + std::to_string(r) + ".jsonl"); }
  std::string log(int r) const { return dir_.file("peer" + std::to_string(r) + ".log"); }
  Process& peer(int r) { return *peers_[r]; }
  int size() const { return static_cast<int>(peers_.size()); }
  std::uint64_t finalStep() const { return static_cast<std::uint64_t>(rounds_); }

  std::vector<std::size_t> counts() const {
    std::vector<std::size_t> c;
    for (int r = 0; r < size(); ++r) c.push_back(readJsonl(jsonl(r)).size());
    return c;
  }
  bool waitRounds(std::size_t k, milliseconds timeout) {
    return eventually(timeout, [&] {
      for (auto c : counts()) {
        if (c < k) return false;
      }
      return true;
    });
  }
  // Every peer in `who` (all by default) reports a round beyond `after`.
  bool waitProgress(const std::vector<std::size_t>& after, milliseconds timeout,
                    std::set<int> who = {}) {
    return eventually(timeout, [&] {
      auto now = counts();
      for (int r = 0; r < size(); ++r) {
        if ((who.empty() || who.count(r)) && now[r] <= after[r]) return false;
      }
      return true;
    });
  }
  std::int64_t maxEpoch() const {
    std::int64_t e = -1;
    for (int r = 0; r < size(); ++r) {
      for (const auto& l : readJsonl(jsonl(r))) e = std::max(e, l.epoch);
    }
    return e;
  }
  bool allRunning() {
    for (auto& p : peers_) {
      if (!p->running()) return false;
    }
    return true;
  }
  std::string logs() const {
    std::string out;
    for (int r = 0; r < size(); ++r)
      out += "--- peer " + std::to_string(r) + "\n" + readFile(log(r));
    return out;
  }

  // The run reaches its last round on every peer, each exits 0, and the JSON lines hold.
  void expectFinishedConsistently(const std::set<int>& left = {}) {
    for (int r = 0; r < size(); ++r) {
      auto rc = peers_[r]->waitExit(milliseconds(120000));
      ASSERT_TRUE(rc.has_value()) << "peer " << r << " did not finish\n" << logs();
      EXPECT_EQ(*rc, 0) << "peer " << r << "\n" << logs();
    }
    std::map<std::uint64_t, std::set<std::string>> digests;
    for (int r = 0; r < size(); ++r) {
      auto lines = readJsonl(jsonl(r));
      ASSERT_FALSE(lines.empty()) << "peer " << r;
      EXPECT_EQ(lines.back().step, finalStep()) << "peer " << r << " did not reach the end";
      for (std::size_t i = 1; i < lines.size(); ++i) {
        EXPECT_GT(lines[i].step, lines[i - 1].step) << "peer " << r << ": a round applied twice";
        if (!left.count(r)) {
          EXPECT_EQ(lines[i].step, lines[i - 1].step + 1) << "peer " << r << ": a round lost";
        }
      }
      for (const auto& l : lines) digests[l.step].insert(l.digest);
    }
    for (const auto& [step, d] : digests) EXPECT_EQ(d.size(), 1u) << "digests differ at " << step;
  }

 private:
  const TempDir& dir_;
  int rounds_;
  std::vector<std::unique_ptr<Process>> peers_;
  std::vector<std::vector<std::string>> args_;
};

// Every outer step reported by any peer has one digest, and no peer reports a step twice.
void expectOneHistory(const TrainingGroup& group) {
  std::map<std::uint64_t, std::set<std::string>> digests;
  for (int r = 0; r < group.size(); ++r) {
    std::set<std::uint64_t> seen;
    for (const auto& l : readJsonl(group.jsonl(r))) {
      EXPECT_TRUE(seen.insert(l.step).second)
          << "peer " << r << " applied step " << l.step << " twice\n"
          << group.logs();
      digests[l.step].insert(l.digest);
    }
  }
  for (const auto& [step, d] : digests)
    EXPECT_EQ(d.size(), 1u) << "two histories at outer step " << step << "\n" << group.logs();
}

TEST(Resilience, CoordinatorKilledAndRestartedOnTheSameAddressLosesNoRound) {
  TempDir dir;
  auto coordinator = std::make_unique<CoordinatorProcess>(dir, kInterval, kTimeout,
                                                          std::vector<std::string>{}, "coord-a");
  const std::uint16_t port = coordinator->port();
  TrainingGroup group(dir, 3, coordinator->address(), 120);
  ASSERT_TRUE(group.waitRounds(15, milliseconds(60000))) << group.logs();
  const std::int64_t epoch_before = group.maxEpoch();

  coordinator->process().signal(SIGKILL);
  ASSERT_TRUE(coordinator->process().waitExit(milliseconds(5000)).has_value());
  const auto at_kill = group.counts();
  std::this_thread::sleep_for(milliseconds(2000));
  EXPECT_TRUE(group.allRunning()) << "peers must outlive their coordinator\n" << group.logs();
  for (std::size_t c : at_kill) EXPECT_LT(c, group.finalStep()) << "the kill came too late";

  coordinator = std::make_unique<CoordinatorProcess>(dir, kInterval, kTimeout,
                                                     std::vector<std::string>{}, "coord-b", port);
  const auto listening = std::chrono::steady_clock::now();
  ASSERT_TRUE(group.waitProgress(group.counts(), milliseconds(20000))) << group.logs();
  std::printf("coordinator kill -9 + restart: training resumed %.2f s after it listened\n",
              secondsSince(listening));
  group.expectFinishedConsistently();
  EXPECT_GT(group.maxEpoch(), epoch_before) << "epochs keep rising across the restart";
  const std::string log = coordinator->process().log();
  EXPECT_NE(log.find("group rebuilt"), std::string::npos) << log;
  EXPECT_NE(log.find("3 of the 3 members"), std::string::npos) << log;
  EXPECT_NE(readFile(group.log(0)).find("lost the coordinator"), std::string::npos);
}

TEST(Resilience, CoordinatorStalledLongerThanTheHeartbeatTimeoutLosesNoRound) {
  TempDir dir;
  CoordinatorProcess coordinator(dir, kInterval, kTimeout);
  TrainingGroup group(dir, 3, coordinator.address(), 100);
  ASSERT_TRUE(group.waitRounds(15, milliseconds(60000))) << group.logs();
  coordinator.process().signal(SIGSTOP);
  std::this_thread::sleep_for(milliseconds(3 * kTimeout));
  EXPECT_TRUE(group.allRunning()) << group.logs();
  coordinator.process().signal(SIGCONT);
  const auto woken = std::chrono::steady_clock::now();
  ASSERT_TRUE(group.waitProgress(group.counts(), milliseconds(20000))) << group.logs();
  std::printf("coordinator SIGSTOP %d ms: training resumed %.2f s after SIGCONT\n", 3 * kTimeout,
              secondsSince(woken));
  group.expectFinishedConsistently();
  EXPECT_NE(readFile(group.log(0)).find("nothing received"), std::string::npos)
      << "the stall was noticed (not shorter than the heartbeat timeout)\n"
      << group.logs();
  EXPECT_NE(coordinator.process().log().find("group rebuilt"), std::string::npos);
}

void standbyTakesOver(const std::vector<std::string>& coordinator_flags) {
  TempDir dir;
  CoordinatorProcess primary(dir, kInterval, kTimeout, coordinator_flags, "coord-a");
  CoordinatorProcess standby(dir, kInterval, kTimeout, coordinator_flags, "coord-standby");
  TrainingGroup group(dir, 3, primary.address() + "," + standby.address(), 100);
  ASSERT_TRUE(group.waitRounds(15, milliseconds(60000))) << group.logs();
  auto idle = standby.view();
  ASSERT_TRUE(idle.has_value());
  ASSERT_EQ(idle->peers.size(), 0u) << "the standby is idle until it is needed";

  const auto killed = std::chrono::steady_clock::now();
  primary.process().signal(SIGKILL);
  ASSERT_TRUE(group.waitProgress(group.counts(), milliseconds(20000))) << group.logs();
  std::printf("standby failover after kill -9: training resumed %.2f s after the kill\n",
              secondsSince(killed));
  auto v = standby.view();
  ASSERT_TRUE(v.has_value());
  EXPECT_EQ(v->world(), 3u) << "every peer moved to the standby";
  group.expectFinishedConsistently();
  EXPECT_NE(standby.process().log().find("group rebuilt"), std::string::npos)
      << standby.process().log();
}

TEST(Resilience, StandbyCoordinatorTakesOverWithoutAnOperator) {
  standbyTakesOver({});
}

// What `loco local --standby on` runs: every peer of the group comes to the standby, a majority.
TEST(Resilience, StandbyCoordinatorWithTheQuorumRuleTakesOverAsFast) {
  standbyTakesOver({"--quorum"});
}

// A TCP forwarder on 127.0.0.1 that a test can cut (every forwarded connection is shut down and
// new ones are closed at once) and heal: a partition between some peers and one coordinator,
// without network namespaces. Threads end within a poll interval of a cut or the destructor.
class CuttableProxy {
 public:
  explicit CuttableProxy(std::uint16_t target) : target_(target) {
    listen_fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(a);
    if (::bind(listen_fd_, reinterpret_cast<sockaddr*>(&a), len) != 0 ||
        ::listen(listen_fd_, 64) != 0 ||
        ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
      ADD_FAILURE() << "proxy: cannot listen on 127.0.0.1";
    }
    port_ = ntohs(a.sin_port);
    acceptor_ = std::thread([this] { acceptLoop(); });
  }
  ~CuttableProxy() {
    stop_ = true;
    cut();
    acceptor_.join();
    std::vector<std::thread> pumps;
    {
      std::lock_guard lock(mu_);
      pumps = std::move(pumps_);
    }
    for (auto& t : pumps) t.join();
    ::close(listen_fd_);
  }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  void cut() {
    cut_ = true;
    std::lock_guard lock(mu_);
    for (int fd : open_) ::shutdown(fd, SHUT_RDWR);
  }
  void heal() { cut_ = false; }

 private:
  void acceptLoop() {
    while (!stop_) {
      pollfd p{listen_fd_, POLLIN, 0};
      if (::poll(&p, 1, 100) <= 0) continue;
      int in = ::accept(listen_fd_, nullptr, nullptr);
      if (in < 0) continue;
      if (cut_) {
        ::close(in);
        continue;
      }
      int out = ::socket(AF_INET, SOCK_STREAM, 0);
      sockaddr_in a{};
      a.sin_family = AF_INET;
      a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      a.sin_port = htons(target_);
      if (::connect(out, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
        ::close(in);
        ::close(out);
        continue;
      }
      std::lock_guard lock(mu_);
      open_.insert(in);
      open_.insert(out);
      pumps_.emplace_back([this, in, out] { pump(in, out); });
    }
  }
  void pump(int a, int b) {
    std::vector<char> buf(64 << 10);
    bool open = true;
    while (open && !stop_ && !cut_) {
      pollfd p[2] = {{a, POLLIN, 0}, {b, POLLIN, 0}};
      if (::poll(p, 2, 100) <= 0) continue;
      for (int i = 0; i < 2 && open; ++i) {
        if ((p[i].revents & (POLLIN | POLLHUP | POLLERR)) == 0) continue;
        const ssize_t n = ::read(p[i].fd, buf.data(), buf.size());
        if (n <= 0) {
          open = false;
          break;
        }
        const int to = i == 0 ? b : a;
        for (ssize_t sent = 0; sent < n && open;) {
          const ssize_t w =
              ::send(to, buf.data() + sent, static_cast<std::size_t>(n - sent), MSG_NOSIGNAL);
          if (w <= 0) open = false;
          sent += std::max<ssize_t>(w, 0);
        }
      }
    }
    std::lock_guard lock(mu_);
    open_.erase(a);
    open_.erase(b);
    ::close(a);
    ::close(b);
  }

  std::uint16_t target_;
  int listen_fd_ = -1;
  std::uint16_t port_ = 0;
  std::atomic<bool> stop_{false}, cut_{false};
  std::mutex mu_;
  std::set<int> open_;
  std::vector<std::thread> pumps_;
  std::thread acceptor_;
};

// The 1-hour soak's split brain: a peer cut off from the coordinator that holds the group finds
// the standby, which must not make a second group of it: two groups would apply the same outer
// steps with different states. With the quorum rule the standby holds it (1 of the 3 members it
// reports) and sends it away, the primary trains on with 2 of 3, and after the heal the peer
// comes back to the primary. Every outer step has one digest across all peers.
TEST(Resilience, APeerCutOffFromTheCoordinatorFormsNoSecondGroupWithTheStandby) {
  TempDir dir;
  const std::vector<std::string> quorum{"--quorum"};
  CoordinatorProcess primary(dir, kInterval, kTimeout, quorum, "coord-a");
  CoordinatorProcess standby(dir, kInterval, kTimeout, quorum, "coord-standby");
  CuttableProxy path(primary.port());
  // Rounds take milliseconds here: the run is stopped once the cut-off peer is back.
  TrainingGroup group(dir, 3, primary.address() + "," + standby.address(), 1000000, {},
                      {{2, path.address() + "," + standby.address()}});
  ASSERT_TRUE(group.waitRounds(6, milliseconds(60000))) << group.logs();

  path.cut();
  const auto cut_at = std::chrono::steady_clock::now();
  const auto at_cut = group.counts();
  // Longer than the standby's rebuild window (timeout + 4 s), after which the old rule formed
  // a group of whoever had come.
  ASSERT_TRUE(eventually(milliseconds(20000),
                         [&] {
                           return standby.counter("coord.sent_away_for_quorum") >= 1 ||
                                  standby.counter("coord.peers_admitted") >= 1;
                         }))
      << "the cut-off peer never reached the standby\n"
      << standby.process().log() << group.logs();
  ASSERT_TRUE(group.waitProgress(at_cut, milliseconds(30000), {0, 1})) << group.logs();
  std::this_thread::sleep_for(milliseconds(2000));
  std::printf("cut for %.1f s: the primary's side went from %zu to %zu rounds\n",
              secondsSince(cut_at), at_cut[0], group.counts()[0]);
  EXPECT_EQ(standby.counter("coord.peers_admitted"), 0u)
      << "the standby made a group of a minority\n"
      << standby.process().log();

  path.heal();
  const auto healed = std::chrono::steady_clock::now();
  EXPECT_TRUE(group.waitProgress(group.counts(), milliseconds(30000), {2}))
      << "the cut-off peer did not come back to the group\n"
      << group.logs();
  std::printf("after the heal the cut-off peer contributed again %.2f s later\n",
              secondsSince(healed));
  auto back = group.counts();
  back[2] += 20;
  EXPECT_TRUE(group.waitProgress(back, milliseconds(30000))) << group.logs();
  for (int r = 0; r < group.size(); ++r) group.peer(r).signal(SIGTERM);
  for (int r = 0; r < group.size(); ++r)
    ASSERT_TRUE(group.peer(r).waitExit(milliseconds(20000)).has_value()) << group.logs();
  expectOneHistory(group);
  EXPECT_EQ(standby.counter("coord.peers_admitted"), 0u) << standby.process().log();
  EXPECT_NE(readFile(group.log(2)).find("sent this peer away"), std::string::npos)
      << readFile(group.log(2));
}

TEST(Resilience, StoppedTrainingPeerIsEvictedRejoinsAndContributesAgain) {
  TempDir dir;
  CoordinatorProcess coordinator(dir, kInterval, kTimeout);
  // Enough steps that the run outlasts the stop (3 heartbeat timeouts) with rounds to spare: a
  // peer that wakes after the run's end trains nothing, which is another test.
  TrainingGroup group(dir, 3, coordinator.address(), 600);
  ASSERT_TRUE(group.waitRounds(15, milliseconds(60000))) << group.logs();
  const int victim = 2;
  const auto stopped = std::chrono::steady_clock::now();
  group.peer(victim).signal(SIGSTOP);
  ASSERT_TRUE(eventually(milliseconds(10000), [&] {
    auto v = coordinator.view();
    return v && v->world() == 2;
  }));
  const double evicted_s = secondsSince(stopped);
  EXPECT_LT(evicted_s, kTimeout / 1000.0 + 1.5);
  ASSERT_TRUE(group.waitProgress(group.counts(), milliseconds(10000), {0, 1}))
      << "the others go on without it";
  std::this_thread::sleep_for(milliseconds(3 * kTimeout) -
                              (std::chrono::steady_clock::now() - stopped));
  const std::size_t victim_rounds = group.counts()[victim];
  group.peer(victim).signal(SIGCONT);
  const auto woken = std::chrono::steady_clock::now();
  ASSERT_TRUE(eventually(milliseconds(10000), [&] {
    auto v = coordinator.view();
    return v && v->world() == 3;
  })) << group.logs();
  const double member_s = secondsSince(woken);
  ASSERT_TRUE(group.waitProgress(group.counts(), milliseconds(10000), {victim})) << group.logs();
  std::printf(
      "SIGSTOP of a training peer: evicted after %.2f s; member again %.2f s and a round "
      "%.2f s after SIGCONT (heartbeat timeout %.1f s)\n",
      evicted_s, member_s, secondsSince(woken), kTimeout / 1000.0);
  EXPECT_LT(member_s, 2.0 * kTimeout / 1000.0 + 1.0);
  group.expectFinishedConsistently(/*left=*/{victim});
  auto victim_lines = readJsonl(group.jsonl(victim));
  auto other_lines = readJsonl(group.jsonl(0));
  ASSERT_GT(victim_lines.size(), victim_rounds) << "it reports rounds again";
  EXPECT_LT(victim_lines.size(), other_lines.size()) << "it missed the rounds it was out for";
  EXPECT_EQ(victim_lines.back().contributors, 3) << "it contributes again";
}

// The end-of-run fork `loco chaos` found (case 1): a peer SIGTERMed near the end and restarted from
// its checkpoint after the others finished used to be admitted alone by the now empty
// coordinator and to train the last rounds again from its old state (the same outer steps with
// other digests). Now the coordinator remembers how far the run got: the peer is told the run
// completed and exits 0 with nothing trained.
TEST(Resilience, APeerRestartedFromItsCheckpointAfterTheRunFinishedTrainsNothingAlone) {
  TempDir dir;
  CoordinatorProcess coordinator(dir, kInterval, kTimeout);
  TrainingGroup group(dir, 3, coordinator.address(), 60, {"--checkpoint-dir", dir.file("ckpt")});
  const int late = 2;
  ASSERT_TRUE(group.waitRounds(10, milliseconds(60000))) << group.logs();
  group.peer(late).signal(SIGTERM);
  auto rc = group.peer(late).waitExit(milliseconds(20000));
  ASSERT_TRUE(rc.has_value()) << group.logs();
  EXPECT_EQ(*rc, 0);
  const auto before = readJsonl(group.jsonl(late));
  ASSERT_FALSE(before.empty());
  ASSERT_LT(before.back().step, group.finalStep()) << "it left before the end";
  for (int r : {0, 1}) {
    auto done = group.peer(r).waitExit(milliseconds(120000));
    ASSERT_TRUE(done.has_value()) << group.logs();
    EXPECT_EQ(*done, 0) << group.logs();
    EXPECT_EQ(readJsonl(group.jsonl(r)).back().step, group.finalStep());
  }
  // The group is gone; the coordinator is still up, with no member.
  group.restart(late, {"--resume"});
  auto back = group.peer(late).waitExit(milliseconds(30000));
  ASSERT_TRUE(back.has_value()) << "it waits for nothing: the run is over\n" << group.logs();
  EXPECT_EQ(*back, 0) << group.logs();
  const std::string log = readFile(group.log(late));
  EXPECT_NE(log.find("the run completed at progress " + std::to_string(group.finalStep())),
            std::string::npos)
      << log;
  EXPECT_EQ(readJsonl(group.jsonl(late)).size(), before.size()) << "no round trained alone\n"
                                                                << log;
  expectOneHistory(group);
  EXPECT_NE(coordinator.process().log().find("told that the run is over"), std::string::npos)
      << coordinator.process().log();
}

// Case 2: a peer cut off (here: stopped past the heartbeat timeout, evicted) that comes back after
// the others finished is told the same, instead of being admitted alone after the rebuild window.
TEST(Resilience, AnEvictedPeerThatWakesAfterTheRunFinishedTrainsNothingAlone) {
  TempDir dir;
  CoordinatorProcess coordinator(dir, kInterval, kTimeout);
  TrainingGroup group(dir, 3, coordinator.address(), 60);
  const int late = 2;
  ASSERT_TRUE(group.waitRounds(10, milliseconds(60000))) << group.logs();
  group.peer(late).signal(SIGSTOP);
  for (int r : {0, 1}) {
    auto done = group.peer(r).waitExit(milliseconds(120000));
    ASSERT_TRUE(done.has_value()) << group.logs();
    EXPECT_EQ(*done, 0) << group.logs();
  }
  const std::size_t stopped_at = readJsonl(group.jsonl(late)).size();
  ASSERT_LT(stopped_at, group.finalStep()) << "the stop came too late";
  group.peer(late).signal(SIGCONT);
  auto rc = group.peer(late).waitExit(milliseconds(30000));
  ASSERT_TRUE(rc.has_value()) << group.logs();
  EXPECT_EQ(*rc, 0) << group.logs();
  EXPECT_NE(readFile(group.log(late)).find("the run completed"), std::string::npos) << group.logs();
  EXPECT_EQ(readJsonl(group.jsonl(late)).size(), stopped_at) << "no round trained alone";
  expectOneHistory(group);
}

// Every peer stopped and restarted from its checkpoint while the coordinator stays up (it
// remembers how far the run got): the group forms again from what the checkpoints hold and goes
// on where it stopped, with one history from the restart on. The peers stop one by one, so the
// last one may apply a round alone that no checkpoint holds; that round is trained again after the
// restart (the coordinator logs the rollback), which is why only the restarted processes' rounds
// must form one history.
TEST(Resilience, TheWholeGroupRestartedFromItsCheckpointsGoesOnWhereItStopped) {
  TempDir dir;
  CoordinatorProcess coordinator(dir, kInterval, kTimeout);
  TrainingGroup group(dir, 3, coordinator.address(), 50, {"--checkpoint-dir", dir.file("ckpt")});
  ASSERT_TRUE(group.waitRounds(12, milliseconds(60000))) << group.logs();
  for (int r = 0; r < group.size(); ++r) group.peer(r).signal(SIGTERM);
  std::vector<std::size_t> lines_before(group.size());
  for (int r = 0; r < group.size(); ++r) {
    auto rc = group.peer(r).waitExit(milliseconds(20000));
    ASSERT_TRUE(rc.has_value()) << group.logs();
    lines_before[r] = readJsonl(group.jsonl(r)).size();
    ASSERT_LT(readJsonl(group.jsonl(r)).back().step, group.finalStep());
  }
  for (int r = 0; r < group.size(); ++r) group.restart(r, {"--resume"});
  std::map<std::uint64_t, std::set<std::string>> digests;
  for (int r = 0; r < group.size(); ++r) {
    auto rc = group.peer(r).waitExit(milliseconds(120000));
    ASSERT_TRUE(rc.has_value()) << group.logs();
    EXPECT_EQ(*rc, 0) << group.logs();
    const auto lines = readJsonl(group.jsonl(r));
    ASSERT_GT(lines.size(), lines_before[r] + 1)
        << "peer " << r << " trained nothing after --resume";
    const auto& resumed = lines[lines_before[r]];
    EXPECT_EQ(resumed.contributors, 0)
        << "peer " << r << ": the restart's first line is its resume";
    EXPECT_GE(resumed.step, 10u) << "peer " << r << " started over instead of resuming";
    EXPECT_EQ(lines.back().step, group.finalStep()) << "peer " << r;
    std::uint64_t last = resumed.step;
    for (std::size_t i = lines_before[r] + 1; i < lines.size(); ++i) {
      EXPECT_GT(lines[i].step, last) << "peer " << r << ": a round applied twice\n"
                                     << readFile(group.jsonl(r));
      last = lines[i].step;
      digests[lines[i].step].insert(lines[i].digest);
    }
  }
  for (const auto& [step, d] : digests)
    EXPECT_EQ(d.size(), 1u) << "two histories at outer step " << step << "\n" << group.logs();
}

// A checkpoint folder that cannot be written (here a file stands where the folder should be, which
// fails every write without root; `loco chaos`'s disk_full fault puts a full tmpfs there) costs
// durability, not the run: each peer warns once, counts the failures, trains on, and its next
// write after the folder is back succeeds.
TEST(Resilience, CheckpointsThatCannotBeWrittenCostDurabilityNotTheRun) {
  TempDir dir;
  CoordinatorProcess coordinator(dir, kInterval, kTimeout);
  const std::string ckpt = dir.file("ckpt");
  std::ofstream(ckpt) << "a file where the checkpoint folder should be\n";
  TrainingGroup group(dir, 2, coordinator.address(), 50, {"--checkpoint-dir", ckpt});
  ASSERT_TRUE(group.waitRounds(10, milliseconds(60000))) << group.logs();
  EXPECT_TRUE(group.allRunning()) << "a failed checkpoint is not fatal\n" << group.logs();
  std::filesystem::remove(ckpt);
  std::filesystem::create_directories(ckpt);
  group.expectFinishedConsistently();
  auto failures = [](const std::string& line) {
    std::smatch m;
    return std::regex_search(line, m, std::regex(R"re("checkpoint_failures":([0-9]+))re"))
               ? std::stoi(m[1])
               : -1;
  };
  for (int r = 0; r < group.size(); ++r) {
    std::ifstream in(group.jsonl(r));
    std::vector<int> counts;
    for (std::string l; std::getline(in, l);) counts.push_back(failures(l));
    ASSERT_GE(counts.size(), 10u);
    EXPECT_GE(counts[8], 8) << "peer " << r << ": every write failed while the folder was a file";
    EXPECT_EQ(counts.back(), counts[counts.size() - 5])
        << "peer " << r << ": the writes succeed again once the folder is back";
    EXPECT_LT(counts.back(), static_cast<int>(counts.size()));
    EXPECT_TRUE(std::filesystem::exists(ckpt + "/peer-" + std::to_string(r) + ".ckpt"));
    const std::string log = readFile(group.log(r));
    std::size_t warnings = 0;
    for (auto at = log.find("could not write checkpoint"); at != std::string::npos;
         at = log.find("could not write checkpoint", at + 1)) {
      ++warnings;
    }
    EXPECT_EQ(warnings, 1u) << "once per distinct reason\n" << log;
    EXPECT_NE(log.find("--checkpoint-dir"), std::string::npos) << "it says what to do\n" << log;
  }
}

TEST(Resilience, PeersGiveUpAfterTheCoordinatorTimeoutWithAClearMessage) {
  TempDir dir;
  CoordinatorProcess coordinator(dir, kInterval, kTimeout);
  TrainingGroup group(dir, 2, coordinator.address(), 100000, {"--coordinator-timeout", "2000"});
  ASSERT_TRUE(group.waitRounds(3, milliseconds(60000))) << group.logs();
  const auto killed = std::chrono::steady_clock::now();
  coordinator.process().signal(SIGKILL);
  for (int r = 0; r < group.size(); ++r) {
    auto rc = group.peer(r).waitExit(milliseconds(15000));
    ASSERT_TRUE(rc.has_value()) << "peer " << r << " hangs\n" << group.logs();
    EXPECT_EQ(*rc, 1);
  }
  const double s = secondsSince(killed);
  std::printf("--coordinator-timeout 2000: peers exited %.2f s after the kill\n", s);
  EXPECT_GE(s, 1.0) << "they looked for a coordinator first";
  EXPECT_LT(s, 2.0 + 3.0);
  const std::string log = readFile(group.log(0));
  EXPECT_NE(log.find("no coordinator answered"), std::string::npos) << log;
  EXPECT_NE(log.find("--coordinator-timeout"), std::string::npos) << log;
}

}  // namespace
}  // namespace loco::testing
