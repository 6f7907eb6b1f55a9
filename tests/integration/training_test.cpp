// Training over the runtime with real processes: `loco local` and `loco join` train a tiny GPT on
// a generated corpus. The binary links LibTorch; this test binary does not (it only starts it).
#include <gtest/gtest.h>

#include <algorithm>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <regex>
#include <set>
#include <thread>

#include "tests/support/process.h"
#include "tests/support/training_run.h"

namespace loco::testing {
namespace {

bool eventuallyTrue(std::chrono::milliseconds limit, const std::function<bool()>& cond) {
  for (auto until = std::chrono::steady_clock::now() + limit;
       std::chrono::steady_clock::now() < until;) {
    if (cond()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return cond();
}

int runLocal(const TempDir& dir, const std::string& out, std::vector<std::string> extra,
             std::string* log = nullptr) {
  std::vector<std::string> args{"local", "--out", out};
  args.insert(args.end(), extra.begin(), extra.end());
  static int n = 0;
  Process p(args, dir.file("local" + std::to_string(n++) + ".log"));
  auto rc = p.waitExit(std::chrono::milliseconds(180000));
  if (log) *log = p.log();
  return rc.value_or(-1);
}

TEST(Training, LocalRunLowersTheLossAndEveryPeerHoldsTheSameState) {
  TempDir dir;
  auto flags = tiny(writeCorpus(dir));
  for (std::string f : {"--peers", "3", "--steps", "60", "--inner-steps", "10"}) flags.push_back(f);
  std::string log;
  ASSERT_EQ(runLocal(dir, dir.file("run"), flags, &log), 0) << log;
  auto lines = readJsonl(dir.file("run/run.jsonl"));
  ASSERT_EQ(lines.size(), 7u) << "the initial evaluation and 6 rounds\n" << log;
  EXPECT_LT(lines.back().val, lines.front().val - 0.5) << log;
  EXPECT_NE(log.find("equal on every reporting peer after every round"), std::string::npos) << log;
  EXPECT_TRUE(std::ifstream(dir.file("run/loss_vs_steps.svg")).good());
  EXPECT_TRUE(std::ifstream(dir.file("run/loss_vs_bytes.svg")).good());
  // Every peer's digest after every round.
  std::map<std::uint64_t, std::set<std::string>> digests;
  for (int p = 1; p <= 3; ++p) {
    for (const Line& l : readJsonl(dir.file("run/peer-" + std::to_string(p) + ".jsonl")))
      digests[l.step].insert(l.digest);
  }
  for (auto& [step, ds] : digests) EXPECT_EQ(ds.size(), 1u) << "step " << step;
}

TEST(Training, SameSeedAndMembershipGiveBitIdenticalLosses) {
  TempDir dir;
  auto flags = tiny(writeCorpus(dir));
  for (std::string f : {"--peers", "2", "--steps", "30", "--inner-steps", "10", "--method",
                        "diloco", "--wire", "int8"}) {
    flags.push_back(f);
  }
  ASSERT_EQ(runLocal(dir, dir.file("a"), flags), 0);
  ASSERT_EQ(runLocal(dir, dir.file("b"), flags), 0);
  auto a = readJsonl(dir.file("a/run.jsonl")), b = readJsonl(dir.file("b/run.jsonl"));
  ASSERT_EQ(a.size(), b.size());
  for (std::size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].loss, b[i].loss) << "step " << a[i].step;
    EXPECT_EQ(a[i].val, b[i].val) << "step " << a[i].step;
    EXPECT_EQ(a[i].digest, b[i].digest) << "step " << a[i].step;
  }
}

TEST(Training, DdpRunsAndAgreesEveryStep) {
  TempDir dir;
  auto flags = tiny(writeCorpus(dir));
  for (std::string f : {"--peers", "2", "--steps", "30", "--method", "ddp", "--eval-every", "10"})
    flags.push_back(f);
  std::string log;
  ASSERT_EQ(runLocal(dir, dir.file("run"), flags, &log), 0) << log;
  auto lines = readJsonl(dir.file("run/run.jsonl"));
  ASSERT_EQ(lines.size(), 31u) << log;
  EXPECT_NE(log.find("equal on every reporting peer after every round"), std::string::npos) << log;
}

// A peer killed mid-run and a new one joining later: the run finishes, the joiner receives the
// state and contributes from its next round, and the digests agree after every round.
TEST(Training, PeerKilledAndPeerJoinedMidRun) {
  TempDir dir;
  auto flags = tiny(writeCorpus(dir));
  // Long enough (about 10 s) that the kill and the join land mid-run with a model this small.
  for (std::string f : {"--peers", "3", "--steps", "3000", "--inner-steps", "10", "--kill-at",
                        "600", "--join-at", "1200", "--eval-every", "50"}) {
    flags.push_back(f);
  }
  std::string log;
  ASSERT_EQ(runLocal(dir, dir.file("run"), flags, &log), 0) << log;
  EXPECT_NE(log.find("chaos: kill -9 peer-3"), std::string::npos) << log;
  EXPECT_NE(log.find("chaos: peer-4 joins"), std::string::npos) << log;
  EXPECT_NE(log.find("equal on every reporting peer after every round"), std::string::npos) << log;
  auto joiner = readJsonl(dir.file("run/peer-4.jsonl"));
  ASSERT_FALSE(joiner.empty()) << "the joiner reports rounds\n" << log;
  EXPECT_EQ(joiner.back().step, 300u) << log;
  auto lines = readJsonl(dir.file("run/run.jsonl"));
  ASSERT_FALSE(lines.empty());
  EXPECT_EQ(lines.back().step, 300u);
  EXPECT_EQ(lines.back().world, 3) << "two survivors and the joiner";
  EXPECT_EQ(readJsonl(dir.file("run/peer-1.jsonl")).back().contributors, 3)
      << "the joiner contributes";
}

// `loco local` arguments for the supervision tests: 3 peers, 300 short rounds (long enough to
// hit mid-run), a quick restart.
std::vector<std::string> supervisedRun(const TempDir& dir) {
  std::vector<std::string> args{"local", "--out", dir.file("run")};
  for (const auto& f : tiny(writeCorpus(dir))) args.push_back(f);
  for (std::string f : {"--peers", "3", "--steps", "3000", "--inner-steps", "10", "--eval-every",
                        "50", "--restart-backoff-ms", "500"}) {
    args.push_back(f);
  }
  return args;
}

// `loco local` supervises like an operator: a peer killed -9 mid-run is restarted with its
// identity, rejoins, downloads the state and contributes again; the others never stop; the run
// reaches its last step and exits 0.
TEST(Training, LocalRestartsAPeerKilledMidRunAndFinishes) {
  TempDir dir;
  Process local(supervisedRun(dir), dir.file("local.log"));
  const std::string victim_jsonl = dir.file("run/peer-2.jsonl");
  ASSERT_TRUE(eventuallyTrue(std::chrono::milliseconds(60000), [&] {
    return readJsonl(victim_jsonl).size() >= 20;
  })) << local.log();
  // The victim's pid, as the supervisor publishes it.
  std::smatch m;
  const std::string procs = readFile(dir.file("run/processes.json"));
  ASSERT_TRUE(std::regex_search(procs, m, std::regex(R"re("peer-2":\{"pid":([0-9]+))re"))) << procs;
  const pid_t victim = static_cast<pid_t>(std::stol(m[1]));
  const std::uint64_t killed_at = readJsonl(victim_jsonl).back().step;
  ASSERT_EQ(::kill(victim, SIGKILL), 0);
  auto rc = local.waitExit(std::chrono::milliseconds(180000));
  const std::string log = local.log();
  ASSERT_EQ(rc.value_or(-1), 0) << log;
  EXPECT_NE(log.find("peer-2 killed by signal 9"), std::string::npos) << log;
  EXPECT_NE(log.find("peer-2 restarted (restart 1)"), std::string::npos) << log;
  EXPECT_NE(log.find("the run reached its last step (3000 inner steps)"), std::string::npos) << log;
  EXPECT_NE(log.find("equal on every reporting peer after every round"), std::string::npos) << log;
  EXPECT_EQ(log.find("did not stop within"), std::string::npos) << log;
  // The restarted peer's second life: later rounds, all three peers contributing again.
  auto lines = readJsonl(victim_jsonl);
  ASSERT_FALSE(lines.empty());
  EXPECT_EQ(lines.back().step, 300u) << log;
  EXPECT_GT(lines.back().step, killed_at);
  EXPECT_EQ(lines.back().contributors, 3) << "the restarted peer contributes again";
  EXPECT_EQ(readJsonl(dir.file("run/peer-1.jsonl")).back().step, 300u);
  const std::string peer2 = readFile(victim_jsonl);
  EXPECT_EQ(
      peer2.find("\"pid\":" + std::to_string(victim) + ",", peer2.rfind('\n', peer2.size() - 2)),
      std::string::npos)
      << "the last line comes from a new process";
}

// The coordinator killed -9 mid-run: `loco local` starts it again on the same address, the peers
// (which outlive it) register again, and the run finishes with one state everywhere.
TEST(Training, LocalRestartsItsCoordinatorAndTheRunGoesOn) {
  TempDir dir;
  Process local(supervisedRun(dir), dir.file("local.log"));
  ASSERT_TRUE(eventuallyTrue(std::chrono::milliseconds(60000), [&] {
    return readJsonl(dir.file("run/peer-1.jsonl")).size() >= 20;
  })) << local.log();
  std::smatch m;
  const std::string procs = readFile(dir.file("run/processes.json"));
  ASSERT_TRUE(std::regex_search(
      procs, m, std::regex(R"re("coordinator":\{"pid":([0-9]+)[^}]*"port":([0-9]+))re")))
      << procs;
  const pid_t coordinator = static_cast<pid_t>(std::stol(m[1]));
  const std::string port = m[2];
  const std::uint64_t before = readJsonl(dir.file("run/peer-1.jsonl")).back().step;
  ASSERT_EQ(::kill(coordinator, SIGKILL), 0);
  auto rc = local.waitExit(std::chrono::milliseconds(180000));
  const std::string log = local.log();
  ASSERT_EQ(rc.value_or(-1), 0) << log;
  EXPECT_NE(log.find("coordinator killed by signal 9; restarting it on 127.0.0.1:" + port),
            std::string::npos)
      << log;
  EXPECT_NE(log.find("the run reached its last step (3000 inner steps)"), std::string::npos) << log;
  EXPECT_NE(log.find("equal on every reporting peer after every round"), std::string::npos) << log;
  // Every peer trained on through it: one process each, steps going on from where they were.
  for (int p = 1; p <= 3; ++p) {
    auto lines = readJsonl(dir.file("run/peer-" + std::to_string(p) + ".jsonl"));
    ASSERT_FALSE(lines.empty());
    EXPECT_EQ(lines.back().step, 300u) << "peer-" << p << "\n" << log;
    for (std::size_t i = 1; i < lines.size(); ++i)
      ASSERT_GT(lines[i].step, lines[i - 1].step) << "peer-" << p << ": no round applied twice";
  }
  EXPECT_GT(before, 0u);
  EXPECT_NE(log.find("peer-1       exited cleanly (status 0)\n"), std::string::npos)
      << "the peers were not restarted: they outlived the coordinator\n"
      << log;
}

// Ctrl+C: the peers get their grace period to leave (they are not killed at once).
TEST(Training, InterruptedLocalRunLetsPeersLeaveGracefully) {
  TempDir dir;
  auto flags = tiny(writeCorpus(dir));
  for (std::string f : {"--peers", "2", "--steps", "3000", "--inner-steps", "10"})
    flags.push_back(f);
  std::vector<std::string> args{"local", "--out", dir.file("run")};
  args.insert(args.end(), flags.begin(), flags.end());
  Process local(args, dir.file("local.log"));
  ASSERT_TRUE(eventuallyTrue(std::chrono::milliseconds(60000), [&] {
    return readJsonl(dir.file("run/peer-1.jsonl")).size() >= 3;
  })) << local.log();
  local.signal(SIGINT);
  auto rc = local.waitExit(std::chrono::milliseconds(30000));
  const std::string log = local.log();
  EXPECT_EQ(rc.value_or(-1), 130) << log;
  EXPECT_EQ(log.find("did not stop within"), std::string::npos) << log;
  EXPECT_NE(log.find("peer-1       exited cleanly (status 0)"), std::string::npos) << log;
  EXPECT_NE(log.find("peer-2       exited cleanly (status 0)"), std::string::npos) << log;
}

// A NaN in one peer's Δ: that peer's contribution is dropped with a logged reason, the others'
// round goes on, and nobody's state turns NaN.
TEST(Training, NonFiniteContributionIsDroppedNotSpread) {
  TempDir dir;
  const std::string corpus = writeCorpus(dir);
  CoordinatorProcess coordinator(dir, 200, 3000);
  std::vector<std::unique_ptr<Process>> peers;
  for (int r = 0; r < 3; ++r) {
    std::vector<std::string> args{"join",
                                  "--coordinator",
                                  coordinator.address(),
                                  "--listen",
                                  "127.0.0.1:0",
                                  "--rank",
                                  std::to_string(r),
                                  "--wait-for",
                                  "3",
                                  "--steps",
                                  "40",
                                  "--inner-steps",
                                  "10",
                                  "--measure-topology",
                                  "off",
                                  "--metrics",
                                  dir.file("peer" + std::to_string(r) + ".jsonl")};
    if (r == 1) {
      args.push_back("--inject-nan-at-round");
      args.push_back("1");
    }
    for (const auto& f : tiny(corpus)) args.push_back(f);
    peers.push_back(std::make_unique<Process>(args, dir.file("peer" + std::to_string(r) + ".log")));
  }
  for (auto& p : peers)
    ASSERT_EQ(p->waitExit(std::chrono::milliseconds(120000)).value_or(-1), 0) << p->log();
  EXPECT_NE(peers[1]->log().find("dropping its contribution"), std::string::npos)
      << peers[1]->log();
  auto lines = readJsonl(dir.file("peer0.jsonl"));
  bool saw_dropped = false;
  for (const Line& l : lines) {
    if (l.step == 2) {
      EXPECT_EQ(l.contributors, 2) << "the poisoned peer is not counted";
      saw_dropped = true;
    }
    EXPECT_TRUE(l.loss >= 0 || l.step == 0) << "step " << l.step;
  }
  EXPECT_TRUE(saw_dropped);
  for (int r = 1; r < 3; ++r) {
    auto other = readJsonl(dir.file("peer" + std::to_string(r) + ".jsonl"));
    ASSERT_EQ(other.size(), lines.size());
    EXPECT_EQ(other.back().digest, lines.back().digest);
  }
}

TEST(Training, BadInputFailsBeforeAnyPeerStarts) {
  TempDir dir;
  const std::string corpus = writeCorpus(dir);
  struct Case {
    std::vector<std::string> args;
    std::string says;
  };
  std::vector<Case> cases{
      {{"--data", dir.file("missing")}, "missing"},
      {{"--data", dir.path() + "/empty-dir"}, "empty-dir"},
      {{"--data", corpus, "--width", "30", "--heads", "4"}, "width"},
      {{"--data", corpus, "--method", "ddp", "--inner-steps", "10"}, "--inner-steps"},
      {{"--data", corpus, "--inner-steps", "700"}, "--inner-steps"},
      {{"--data", corpus, "--wire", "int3"}, "int3"},
      {{"--data", corpus, "--method", "diloco", "--quant-block", "1024"}, "--quant-block"},
      {{"--data", corpus, "--method", "fast"}, "unknown method 'fast' (use auto,"},
      // --method auto runs blocking DiLoCo for a 1-block model, so streaming's flags are wrong.
      {{"--data", corpus, "--layers", "1", "--fragments", "2"},
       "--fragments is for --method streaming; --method auto runs diloco here: the model has 1 "
       "block(s)"},
      {{"--data", corpus, "--wire", "int8", "--quant-block", "0"}, "--quant-block"},
      {{"--data", corpus, "--kill-at", "100", "--join-at", "50"}, "--join-at"},
      {{"--data", corpus, "--standby", "yes"}, "--standby (or LOCO_STANDBY) takes on or off"},
      {{"--data", corpus, "--measure-topology", "1"}, "--measure-topology"},
  };
  std::filesystem::create_directories(dir.path() + "/empty-dir");
  for (const Case& c : cases) {
    std::string log;
    int rc = runLocal(dir, dir.file("bad"), c.args, &log);
    EXPECT_NE(rc, 0) << log;
    EXPECT_NE(log.find(c.says), std::string::npos) << "the error should name " << c.says << "\n"
                                                   << log;
    EXPECT_EQ(log.find("coordinator listening"), std::string::npos) << "nothing may start\n" << log;
  }
}

// Checkpoints: a run stopped (Ctrl+C) after some rounds and resumed from its checkpoints goes on
// with exactly the losses of the uninterrupted run.
void resumedRunContinuesWithTheLossesOfAnUninterruptedOne(
    const std::vector<std::string>& method_flags, std::size_t outer_steps) {
  TempDir dir;
  auto flags = tiny(writeCorpus(dir));
  // Slow enough (about 6 s) to be stopped in the middle.
  for (std::string f :
       {"--peers", "2", "--steps", "2000", "--inner-steps", "100", "--eval-every", "1"}) {
    flags.push_back(f);
  }
  for (std::size_t i = 0; i + 1 < method_flags.size(); i += 2) {  // replace or append
    auto it = std::find(flags.begin(), flags.end(), method_flags[i]);
    if (it != flags.end()) {
      *std::next(it) = method_flags[i + 1];
    } else {
      flags.push_back(method_flags[i]);
      flags.push_back(method_flags[i + 1]);
    }
  }
  auto with = [&](std::vector<std::string> extra) {
    auto all = flags;
    all.insert(all.end(), extra.begin(), extra.end());
    return all;
  };
  ASSERT_EQ(runLocal(dir, dir.file("whole"), flags), 0);
  const auto whole = readJsonl(dir.file("whole/run.jsonl"));
  ASSERT_EQ(whole.size(), outer_steps + 1);

  {  // Stop it once a few rounds are through.
    std::vector<std::string> args{"local", "--out", dir.file("first")};
    for (const auto& f : with({"--checkpoint-dir", dir.file("ckpt")})) args.push_back(f);
    Process p(args, dir.file("first.log"));
    ASSERT_TRUE(eventuallyTrue(std::chrono::milliseconds(60000), [&] {
      return readJsonl(dir.file("first/peer-1.jsonl")).size() >= 5;
    })) << p.log();
    p.signal(SIGINT);
    ASSERT_TRUE(p.waitExit(std::chrono::milliseconds(30000)).has_value()) << p.log();
  }
  const auto first = readJsonl(dir.file("first/peer-1.jsonl"));
  ASSERT_GE(first.size(), 5u);
  ASSERT_LT(first.back().step, outer_steps) << "stopped before the end";
  std::string log;
  ASSERT_EQ(runLocal(dir, dir.file("second"),
                     with({"--checkpoint-dir", dir.file("ckpt"), "--resume"}), &log),
            0)
      << log;
  const auto second = readJsonl(dir.file("second/run.jsonl"));
  ASSERT_FALSE(second.empty()) << log;
  std::size_t compared = 0;
  for (const Line& l : second) {
    if (l.loss < 0) continue;  // the resumed run's first line: nothing trained yet
    ASSERT_LT(l.step, whole.size());
    EXPECT_EQ(l.loss, whole[l.step].loss) << "step " << l.step;
    EXPECT_EQ(l.val, whole[l.step].val) << "step " << l.step;
    ++compared;
  }
  EXPECT_EQ(second.back().step, outer_steps);
  EXPECT_GE(compared, 1u);
}

TEST(Training, ResumedRunContinuesWithTheLossesOfAnUninterruptedOne) {
  resumedRunContinuesWithTheLossesOfAnUninterruptedOne({}, 20);  // 1 block: blocking DiLoCo
}

// What the default (--method auto) runs on a model of 2 blocks, Streaming DiLoCo: a checkpoint,
// written after a fragment sync, holds the τ steps trained past it, and a group resumed at that
// outer step keeps its merged fragments.
TEST(Training, ResumedStreamingRunContinuesWithTheLossesOfAnUninterruptedOne) {
  resumedRunContinuesWithTheLossesOfAnUninterruptedOne(
      {"--layers", "2", "--method", "streaming", "--wire", "int4"}, 40);
}

}  // namespace
}  // namespace loco::testing
