// Data assignment and adaptive batches with real `loco join` processes: default peers draw their
// own samples; two peers with the same explicit --rank are warned; the norm test grows the batch
// identically on every peer.
#include <gtest/gtest.h>

#include <csignal>

#include <fstream>
#include <functional>
#include <map>
#include <regex>
#include <set>
#include <string>
#include <vector>

#include "tests/support/process.h"
#include "tests/support/training_run.h"

namespace loco::testing {
namespace {

struct Round {
  std::uint64_t step = 0;
  double local_loss = -1;
  int rank = -1;
  std::int64_t batch = -1;
  std::int64_t share = -1;
  std::int64_t instances = -1;
  std::string digest;
};

std::vector<Round> readRounds(const std::string& path) {
  std::vector<Round> out;
  std::ifstream in(path);
  std::string l;
  std::smatch m;
  while (std::getline(in, l)) {
    Round r;
    if (!std::regex_search(l, m, std::regex(R"re("step":([0-9]+))re"))) continue;
    r.step = std::stoull(m[1]);
    if (std::regex_search(l, m, std::regex(R"re("local_loss":([-0-9.e]+))re")))
      r.local_loss = std::stod(m[1]);
    if (std::regex_search(l, m, std::regex(R"re("rank":([0-9]+))re"))) r.rank = std::stoi(m[1]);
    if (std::regex_search(l, m, std::regex(R"re("batch":([0-9]+))re"))) r.batch = std::stoll(m[1]);
    if (std::regex_search(l, m, std::regex(R"re("share":([0-9]+))re"))) r.share = std::stoll(m[1]);
    if (std::regex_search(l, m, std::regex(R"re("instances":([0-9]+))re")))
      r.instances = std::stoll(m[1]);
    if (std::regex_search(l, m, std::regex(R"re("digest":"([0-9a-f]+)")re"))) r.digest = m[1];
    out.push_back(r);
  }
  return out;
}

// `n` peers of one group; `per_peer(i)` adds each one's own flags.
std::vector<std::unique_ptr<Process>> startPeers(
    const TempDir& dir, const CoordinatorProcess& coordinator, int n,
    const std::vector<std::string>& common,
    const std::function<std::vector<std::string>(int)>& per_peer) {
  std::vector<std::unique_ptr<Process>> peers;
  const std::string corpus = writeCorpus(dir);
  for (int i = 0; i < n; ++i) {
    std::vector<std::string> args{"join",
                                  "--coordinator",
                                  coordinator.address(),
                                  "--listen",
                                  "127.0.0.1:0",
                                  "--wait-for",
                                  std::to_string(n),
                                  "--measure-topology",
                                  "off",
                                  "--metrics",
                                  dir.file("peer" + std::to_string(i) + ".jsonl")};
    for (const auto& f : tiny(corpus)) args.push_back(f);
    for (const auto& f : common) args.push_back(f);
    for (const auto& f : per_peer(i)) args.push_back(f);
    peers.push_back(std::make_unique<Process>(args, dir.file("peer" + std::to_string(i) + ".log")));
  }
  return peers;
}

// The defect this guards against: two volunteers joining with default flags trained on identical
// batches (same rank 0, same seed) and reported the same losses to six digits.
TEST(DataAssignment, DefaultPeersDrawTheirOwnSamples) {
  TempDir dir;
  CoordinatorProcess coordinator(dir, 200, 3000);
  auto peers = startPeers(dir, coordinator, 2, {"--steps", "20", "--inner-steps", "10"},
                          [](int) { return std::vector<std::string>{}; });
  for (auto& p : peers)
    ASSERT_EQ(p->waitExit(std::chrono::milliseconds(120000)).value_or(-1), 0) << p->log();
  auto a = readRounds(dir.file("peer0.jsonl"));
  auto b = readRounds(dir.file("peer1.jsonl"));
  ASSERT_GE(a.size(), 2u);
  ASSERT_EQ(a.size(), b.size());
  bool compared = false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].digest, b[i].digest) << "one group, one state";
    if (a[i].local_loss < 0 || b[i].local_loss < 0) continue;
    EXPECT_NE(a[i].local_loss, b[i].local_loss) << "round " << a[i].step << ": same batches";
    compared = true;
  }
  EXPECT_TRUE(compared) << "no round with both peers' own losses";
  EXPECT_EQ((std::set<int>{a.back().rank, b.back().rank}), (std::set<int>{0, 1}))
      << "positions among the members";
  for (auto& p : peers) EXPECT_EQ(p->log().find("also runs with --rank"), std::string::npos);
}

TEST(DataAssignment, TwoPeersWithTheSameExplicitRankAreWarned) {
  TempDir dir;
  CoordinatorProcess coordinator(dir, 200, 3000);
  auto peers = startPeers(dir, coordinator, 2, {"--steps", "20", "--inner-steps", "10"}, [](int) {
    return std::vector<std::string>{"--rank", "0"};
  });
  for (auto& p : peers)
    ASSERT_EQ(p->waitExit(std::chrono::milliseconds(120000)).value_or(-1), 0) << p->log();
  for (auto& p : peers) {
    EXPECT_NE(p->log().find("another live peer also runs with --rank 0"), std::string::npos)
        << p->log();
  }
  auto a = readRounds(dir.file("peer0.jsonl"));
  auto b = readRounds(dir.file("peer1.jsonl"));
  ASSERT_FALSE(a.empty());
  ASSERT_EQ(a.size(), b.size());
  EXPECT_EQ(a.back().local_loss, b.back().local_loss) << "the override really draws alike";
}

// The norm test on real processes: the batch grows, every member holds the same batch after every
// round (it is shared state: the digests cover it), a peer killed mid-run does not split the
// group's batch, and a peer that joins later receives the current batch. The joiner comes at
// inner step 100 of 240: once the batch has grown the rounds are short, and it needs rounds left
// to be admitted to even on a loaded machine.
TEST(AdaptiveBatch, NormTestGrowsTheBatchAlikeThroughAKillAndAJoin) {
  TempDir dir;
  const std::string corpus = writeCorpus(dir);
  std::vector<std::string> args{
      "local",     "--out",       dir.file("run"), "--peers",     "4",
      "--steps",   "240",         "--inner-steps", "10",          "--batch-test",
      "norm",      "--batch-eta", "0.5",           "--max-batch", "32",
      "--kill-at", "50",          "--join-at",     "100"};
  for (const auto& f : tiny(corpus)) args.push_back(f);
  Process local(args, dir.file("local.log"));
  ASSERT_EQ(local.waitExit(std::chrono::milliseconds(240000)).value_or(-1), 0) << local.log();
  std::map<std::uint64_t, std::set<std::int64_t>> batches;
  std::map<std::uint64_t, std::set<std::string>> digests;
  std::int64_t last = -1;
  for (int i = 1; i <= 5; ++i) {
    auto rounds = readRounds(dir.file("run/peer-" + std::to_string(i) + ".jsonl"));
    if (i == 5) {
      ASSERT_FALSE(rounds.empty()) << "the joiner never finished a round";
    }
    for (const Round& r : rounds) {
      batches[r.step].insert(r.batch);
      digests[r.step].insert(r.digest);
      if (i == 1) last = r.batch;
    }
    if (i == 5) {
      EXPECT_GT(rounds.front().batch, 4) << "the joiner starts from the group's grown batch";
    }
  }
  for (const auto& [step, set] : batches) EXPECT_EQ(set.size(), 1u) << "step " << step;
  for (const auto& [step, set] : digests) EXPECT_EQ(set.size(), 1u) << "step " << step;
  EXPECT_GT(last, 4) << "the norm test never grew the batch";
  EXPECT_LE(last, 32) << "capped by --max-batch";
}

// Multi-instance training with real processes (issue 14): 4 peers train 4 instances each,
// merged every 10 rounds (4 -> 2 -> 1) under the norm test, while one peer is killed with SIGKILL
// in round 2 and another joins in round 4 (admitted while several instances are active). The
// instances are shared state: every peer, the joiner included, reports the same instance count
// and the same shared-state digest after every round, and the count follows the merge schedule.
TEST(MultiInstance, InstancesMergeAlikeOnEveryPeerThroughAKillAndAJoin) {
  TempDir dir;
  const std::string corpus = writeCorpus(dir);
  std::vector<std::string> args{"local",
                                "--out",
                                dir.file("run"),
                                "--peers",
                                "4",
                                "--steps",
                                "300",
                                "--inner-steps",
                                "10",
                                "--instances",
                                "4",
                                "--merge-every",
                                "10",
                                "--batch-test",
                                "norm",
                                "--batch-eta",
                                "0.5",
                                "--max-batch",
                                "32",
                                "--kill-at",
                                "20",
                                "--join-at",
                                "40",
                                "--log-level",
                                "info"};
  for (const auto& f : tiny(corpus)) args.push_back(f);
  args.pop_back();  // tiny()'s --log-level warn: the merges are logged at info
  args.pop_back();
  Process local(args, dir.file("local.log"));
  ASSERT_EQ(local.waitExit(std::chrono::milliseconds(240000)).value_or(-1), 0) << local.log();
  std::map<std::uint64_t, std::set<std::int64_t>> instances;
  std::map<std::uint64_t, std::set<std::string>> digests;
  for (int i = 1; i <= 5; ++i) {
    auto rounds = readRounds(dir.file("run/peer-" + std::to_string(i) + ".jsonl"));
    if (i == 5) {
      ASSERT_FALSE(rounds.empty()) << "the joiner never finished a round";
      EXPECT_GT(rounds.front().instances, 1) << "the joiner arrived after the last merge";
    }
    for (const Round& r : rounds) {
      instances[r.step].insert(r.instances);
      digests[r.step].insert(r.digest);
    }
  }
  ASSERT_EQ(instances.rbegin()->first, 30u) << "the run did not reach its last round";
  for (const auto& [step, set] : digests) EXPECT_EQ(set.size(), 1u) << "step " << step;
  for (const auto& [step, set] : instances) {
    ASSERT_EQ(set.size(), 1u) << "step " << step;
    const std::int64_t want = step < 10 ? 4 : step < 20 ? 2 : 1;
    EXPECT_EQ(*set.begin(), want) << "step " << step;
  }
  const std::string peer_log = readFile(dir.file("run/peer-1.log"));
  EXPECT_NE(peer_log.find("merged 4 instances into 2"), std::string::npos) << peer_log;
  EXPECT_NE(peer_log.find("merged 2 instances into 1"), std::string::npos) << peer_log;
}

// The batch is shared state that outlives processes (issue 14): with the norm test growing the
// batch, (1) a peer killed with SIGKILL mid-run and restarted from its checkpoint comes back with
// the group's current batch, and (2) the whole group stopped and restarted from its checkpoints
// goes on with the batch it had reached, not --batch: each peer's first line after the restart
// (its resume, no contributions) holds the batch and the shared-state digest the group had at
// that outer step before the stop. Digests agree at every step throughout.
TEST(AdaptiveBatch, PeersRestartedFromCheckpointsComeBackWithTheGroupsBatch) {
  TempDir dir;
  CoordinatorProcess coordinator(dir, 200, 3000);
  const std::string corpus = writeCorpus(dir);
  constexpr int kPeers = 4;
  std::vector<std::vector<std::string>> argv;
  std::vector<std::unique_ptr<Process>> peers;
  auto jsonl = [&](int i) { return dir.file("peer" + std::to_string(i) + ".jsonl"); };
  auto logOf = [&](int i) { return dir.file("peer" + std::to_string(i) + ".log"); };
  for (int i = 0; i < kPeers; ++i) {
    std::vector<std::string> args{"join",
                                  "--coordinator",
                                  coordinator.address(),
                                  "--listen",
                                  "127.0.0.1:0",
                                  "--wait-for",
                                  std::to_string(kPeers),
                                  "--measure-topology",
                                  "off",
                                  "--metrics",
                                  jsonl(i),
                                  "--rank",
                                  std::to_string(i),
                                  "--checkpoint-dir",
                                  dir.file("ckpt"),
                                  "--steps",
                                  "300",
                                  "--inner-steps",
                                  "5",
                                  "--eval-every",
                                  "1000000",
                                  "--batch-test",
                                  "norm",
                                  "--batch-eta",
                                  "0.5",
                                  "--max-batch",
                                  "32"};
    for (const auto& f : tiny(corpus)) args.push_back(f);
    argv.push_back(args);
    peers.push_back(std::make_unique<Process>(args, logOf(i)));
  }
  auto logs = [&] {
    std::string out;
    for (int i = 0; i < kPeers; ++i)
      out += "--- peer " + std::to_string(i) + "\n" + readFile(logOf(i));
    return out;
  };
  auto restart = [&](int i) {
    auto args = argv[i];
    args.push_back("--resume");
    peers[i] = std::make_unique<Process>(args, logOf(i));
  };
  // (1) Once the batch has grown, kill -9 the last peer and start it again from its checkpoint.
  ASSERT_TRUE(eventually(std::chrono::milliseconds(120000),
                         [&] {
                           auto r = readRounds(jsonl(kPeers - 1));
                           return !r.empty() && r.back().batch > 4;
                         }))
      << "the norm test never grew the batch\n"
      << logs();
  peers[kPeers - 1]->signal(SIGKILL);
  ASSERT_TRUE(peers[kPeers - 1]->waitExit(std::chrono::milliseconds(20000)).has_value());
  const std::size_t killed_lines = readRounds(jsonl(kPeers - 1)).size();
  restart(kPeers - 1);
  ASSERT_TRUE(eventually(std::chrono::milliseconds(60000), [&] {
    return readRounds(jsonl(kPeers - 1)).size() > killed_lines + 1;
  })) << logs();
  // (2) Stop the whole group and start it again from its checkpoints.
  for (auto& p : peers) p->signal(SIGTERM);
  std::vector<std::vector<Round>> before(kPeers);
  for (int i = 0; i < kPeers; ++i) {
    ASSERT_TRUE(peers[i]->waitExit(std::chrono::milliseconds(30000)).has_value()) << logs();
    before[i] = readRounds(jsonl(i));
    ASSERT_FALSE(before[i].empty());
    ASSERT_LT(before[i].back().step, 60u) << "the stop came after the end of the run";
  }
  for (int i = 0; i < kPeers; ++i) restart(i);
  for (auto& p : peers)
    ASSERT_EQ(p->waitExit(std::chrono::milliseconds(180000)).value_or(-1), 0) << logs();

  std::map<std::uint64_t, std::set<std::int64_t>> batches;
  std::map<std::uint64_t, std::set<std::string>> digests;
  for (int i = 0; i < kPeers; ++i) {
    for (const Round& r : readRounds(jsonl(i))) {
      batches[r.step].insert(r.batch);
      digests[r.step].insert(r.digest);
    }
  }
  for (const auto& [step, set] : batches) EXPECT_EQ(set.size(), 1u) << "batch at step " << step;
  for (const auto& [step, set] : digests) EXPECT_EQ(set.size(), 1u) << "digest at step " << step;
  // (1): the killed peer's first round after its restart holds the group's grown batch.
  const auto killed = readRounds(jsonl(kPeers - 1));
  ASSERT_GT(killed.size(), killed_lines);
  EXPECT_GT(killed[killed_lines].batch, 4) << "restarted peer back at --batch";
  // (2): every peer's resume line holds what the group held at that step before the stop.
  for (int i = 0; i < kPeers; ++i) {
    const auto all = readRounds(jsonl(i));
    ASSERT_GT(all.size(), before[i].size()) << "peer " << i << " trained nothing after --resume";
    const Round& resumed = all[before[i].size()];
    bool compared = false;
    for (int j = 0; j < kPeers; ++j) {
      for (const Round& r : before[j]) {
        if (r.step != resumed.step) continue;
        EXPECT_EQ(resumed.batch, r.batch) << "peer " << i << " resumed at step " << r.step;
        EXPECT_EQ(resumed.digest, r.digest) << "peer " << i << " resumed at step " << r.step;
        compared = true;
      }
    }
    EXPECT_TRUE(compared) << "peer " << i << ": no line before the stop at step " << resumed.step;
    EXPECT_GT(resumed.batch, 4) << "peer " << i << " resumed at --batch";
  }
}

// Switch mode on real processes: each peer measures its own b_max before it joins and computes
// the tiny model's --batch 4 as ⌈4/b_max⌉ micro-batches (accumulate mode); the group's state
// stays one.
TEST(AdaptiveBatch, SwitchModeAccumulatesAboveEachPeersMeasuredBMax) {
  TempDir dir;
  CoordinatorProcess coordinator(dir, 200, 3000);
  auto peers = startPeers(dir, coordinator, 2,
                          {"--steps", "10", "--inner-steps", "5", "--switch-mode", "accumulate"},
                          [](int) { return std::vector<std::string>{}; });
  for (auto& p : peers)
    ASSERT_EQ(p->waitExit(std::chrono::milliseconds(120000)).value_or(-1), 0) << p->log();
  std::vector<std::string> digests[2];
  for (int i = 0; i < 2; ++i) {
    std::ifstream in(dir.file("peer" + std::to_string(i) + ".jsonl"));
    int lines = 0;
    for (std::string l; std::getline(in, l);) {
      auto j = parseJsonObject(l);
      ASSERT_TRUE(j.has_value()) << l;
      const auto b_max = (*j)["b_max"].get<std::int64_t>();
      ASSERT_GE(b_max, 1) << "peer " << i << " measured nothing: " << l;
      ASSERT_LE(b_max, 4) << "calibration goes no further than the largest batch";
      EXPECT_EQ((*j)["micro_batches"].get<std::int64_t>(), (4 + b_max - 1) / b_max) << l;
      digests[i].push_back((*j)["digest"].get<std::string>());
      ++lines;
    }
    EXPECT_GE(lines, 2) << "peer " << i;
  }
  EXPECT_EQ(digests[0], digests[1]);
}

// Three peers under --allocation speed, with `flags` added, run to the end. Checks what holds for
// every such run: one shared state and one batch on every member after every round, and shares
// that split the group's windows per step (3 x the batch, rounding aside). Returns peer 0's rounds
// (empty after a failure).
std::vector<Round> runSpeedSplit(const std::vector<std::string>& flags) {
  TempDir dir;
  CoordinatorProcess coordinator(dir, 200, 3000);
  std::vector<std::string> common{"--inner-steps", "10", "--allocation", "speed"};
  common.insert(common.end(), flags.begin(), flags.end());
  auto peers =
      startPeers(dir, coordinator, 3, common, [](int) { return std::vector<std::string>{}; });
  for (auto& p : peers) {
    if (p->waitExit(std::chrono::milliseconds(120000)).value_or(-1) != 0) {
      ADD_FAILURE() << p->log();
      return {};
    }
  }
  std::vector<std::vector<Round>> rounds;
  for (int i = 0; i < 3; ++i)
    rounds.push_back(readRounds(dir.file("peer" + std::to_string(i) + ".jsonl")));
  for (std::size_t k = 0; k < rounds[0].size(); ++k) {
    std::int64_t sum = 0;
    for (int i = 0; i < 3; ++i) {
      if (rounds[i].size() != rounds[0].size()) {
        ADD_FAILURE() << "peer " << i << " reported " << rounds[i].size() << " rounds, peer 0 "
                      << rounds[0].size();
        return {};
      }
      EXPECT_EQ(rounds[i][k].digest, rounds[0][k].digest);
      EXPECT_EQ(rounds[i][k].batch, rounds[0][k].batch);
      EXPECT_GE(rounds[i][k].share, 1);
      sum += rounds[i][k].share;
    }
    const auto batch = static_cast<double>(rounds[0][k].batch);
    EXPECT_NEAR(static_cast<double>(sum), 3 * batch, 2 + 0.1 * batch)
        << "round " << rounds[0][k].step;
  }
  return rounds[0];
}

// Speed-aware allocation: the peers' shares split the group's windows per step (rounding aside),
// and the weighted average keeps one state on every member.
TEST(AdaptiveBatch, SpeedAllocationSplitsTheGroupsWindows) {
  const std::vector<Round> rounds = runSpeedSplit({"--steps", "40"});
  ASSERT_GE(rounds.size(), 3u);
  EXPECT_EQ(rounds.back().batch, 4) << "no batch test: the batch stays";
}

// The norm test under the speed split: the peers' gradients come from batches of different sizes
// (their shares), so the test weights each by its windows (batch_test.h). Every peer reaches the
// same batch, the shares cover the group's windows, and the batch grows.
TEST(AdaptiveBatch, NormTestGrowsTheBatchAlikeUnderTheSpeedSplit) {
  const std::vector<Round> rounds = runSpeedSplit(
      {"--steps", "80", "--batch-test", "norm", "--batch-eta", "0.5", "--max-batch", "32"});
  ASSERT_GE(rounds.size(), 8u);
  EXPECT_GT(rounds.back().batch, 4) << "the norm test never grew the batch";
  EXPECT_LE(rounds.back().batch, 32) << "capped by --max-batch";
}

TEST(AdaptiveBatch, NonsensicalSettingsNameTheFlag) {
  TempDir dir;
  const std::string corpus = writeCorpus(dir);
  struct Case {
    std::vector<std::string> args;
    std::string says;
  };
  std::vector<Case> cases{
      {{"--batch-test", "norm", "--batch-eta", "0"}, "--batch-eta"},
      {{"--batch-test", "norm", "--batch-eta", "-1"}, "--batch-eta"},
      {{"--batch-test", "norm", "--max-batch", "2"}, "--max-batch"},
      {{"--batch-test", "variance"}, "--batch-test"},
      {{"--batch-eta", "0.5"}, "--batch-eta"},
      {{"--batch-test", "norm", "--batch-theta", "0.5"}, "--batch-theta"},
      {{"--max-batch", "64"}, "--max-batch"},
      {{"--max-micro-batch", "-1"}, "--max-micro-batch"},
      {{"--allocation", "fast"}, "--allocation"},
      {{"--memory-budget-mib", "0"}, "--memory-budget-mib"},
      {{"--memory-budget-mib", "-64"}, "--memory-budget-mib"},
      {{"--memory-budget-mib", "512", "--switch-mode", "none"}, "--memory-budget-mib"},
      {{"--switch-mode", "threshold", "--max-micro-batch", "8"}, "--max-micro-batch"},
      {{"--switch-mode", "sometimes"}, "--switch-mode"},
      {{"--lr-schedule", "steps"}, "--lr-schedule"},
      {{"--batch-test", "norm", "--lr-schedule", "epochs"}, "--lr-schedule"},
      {{"--instances", "0"}, "--instances"},
      {{"--instances", "9"}, "--instances"},
      {{"--merge-every", "3"}, "--merge-every"},
      {{"--instances", "2", "--merge-every", "0"}, "--merge-every"},
      {{"--instances", "2", "--merge-policy", "random"}, "--merge-policy"},
      {{"--instances", "2", "--method", "noloco"}, "--instances"},
      {{"--instances", "2", "--allocation", "speed"}, "--instances"},
  };
  int n = 0;
  for (const Case& c : cases) {
    std::vector<std::string> args{"local", "--out", dir.file("bad")};
    for (const auto& f : tiny(corpus)) args.push_back(f);
    for (const auto& f : c.args) args.push_back(f);
    Process p(args, dir.file("bad" + std::to_string(n++) + ".log"));
    EXPECT_NE(p.waitExit(std::chrono::milliseconds(60000)).value_or(0), 0) << p.log();
    EXPECT_NE(p.log().find(c.says), std::string::npos) << c.says << "\n" << p.log();
    EXPECT_EQ(p.log().find("coordinator listening"), std::string::npos) << p.log();
  }
}

}  // namespace
}  // namespace loco::testing
