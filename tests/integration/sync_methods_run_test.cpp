// Eager/naive overlap, Streaming DiLoCo and NoLoCo with real processes (`loco local`, which
// starts a coordinator and `loco join` peers): each runs, lowers the loss, keeps its guarantees
// (digests where the method keeps them equal, bit-identical reruns) and survives a peer killed
// -9 mid-run and a joiner.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <regex>

#include "tests/support/process.h"
#include "tests/support/training_run.h"

namespace loco::testing {
namespace {

int runLocal(const TempDir& dir, const std::string& out, std::vector<std::string> extra,
             std::string* log = nullptr) {
  std::vector<std::string> args{"local", "--out", out};
  args.insert(args.end(), extra.begin(), extra.end());
  static int n = 0;
  Process p(args, dir.file("sync" + std::to_string(n++) + ".log"));
  auto rc = p.waitExit(std::chrono::milliseconds(240000));
  if (log) *log = p.log();
  return rc.value_or(-1);
}

std::vector<std::string> with(std::vector<std::string> base, std::vector<std::string> more) {
  base.insert(base.end(), more.begin(), more.end());
  return base;
}

// The largest value of a numeric field over a peer's JSON lines (-1 when absent).
double maxField(const std::string& path, const std::string& field) {
  std::ifstream in(path);
  std::string l;
  std::smatch m;
  double best = -1;
  const std::regex re("\"" + field + "\":([-0-9.e]+)");
  while (std::getline(in, l)) {
    if (std::regex_search(l, m, re)) best = std::max(best, std::stod(m[1]));
  }
  return best;
}

// `flags` with `name`'s value replaced (or appended).
std::vector<std::string> set(std::vector<std::string> flags, const std::string& name,
                             const std::string& value) {
  for (std::size_t i = 0; i + 1 < flags.size(); ++i) {
    if (flags[i] == name) {
      flags[i + 1] = value;
      return flags;
    }
  }
  flags.push_back(name);
  flags.push_back(value);
  return flags;
}

constexpr const char* kAgree = "equal on every reporting peer after every round";

TEST(SyncMethods, EagerOverlapKeepsDigestsAndBeatsNaive) {
  TempDir dir;
  const auto base = with(tiny(writeCorpus(dir)), {"--peers", "3", "--steps", "120", "--inner-steps",
                                                  "10", "--method", "diloco"});
  std::string log;
  ASSERT_EQ(runLocal(dir, dir.file("eager"), with(base, {"--overlap", "eager"}), &log), 0) << log;
  EXPECT_NE(log.find(kAgree), std::string::npos) << log;
  auto eager = readJsonl(dir.file("eager/run.jsonl"));
  ASSERT_EQ(eager.size(), 13u) << log;
  EXPECT_LT(eager.back().val, eager.front().val - 0.5) << log;
  // The new timing fields: some compute, a utilization in (0, 1].
  const double u = maxField(dir.file("eager/peer-1.jsonl"), "utilization");
  EXPECT_GT(u, 0.0);
  EXPECT_LE(u, 1.0);
  // Eager's default outer learning rate is 0.5 (blocking DiLoCo's 0.7 overshoots with the
  // stand-in Δ): the same run with --outer-lr 0.5 given is the same run, bit for bit.
  ASSERT_EQ(runLocal(dir, dir.file("eager05"),
                     with(base, {"--overlap", "eager", "--outer-lr", "0.5"}), &log),
            0)
      << log;
  auto eager05 = readJsonl(dir.file("eager05/run.jsonl"));
  ASSERT_EQ(eager05.size(), eager.size());
  for (std::size_t i = 0; i < eager.size(); ++i) EXPECT_EQ(eager05[i].val, eager[i].val) << i;
  ASSERT_EQ(runLocal(dir, dir.file("naive"), with(base, {"--overlap", "naive"}), &log), 0) << log;
  EXPECT_NE(log.find(kAgree), std::string::npos) << log;
  auto naive = readJsonl(dir.file("naive/run.jsonl"));
  ASSERT_EQ(naive.size(), 13u) << log;
  EXPECT_LT(eager.back().val, naive.back().val) << "applying the average a round late hurts";
}

TEST(SyncMethods, StreamingHalvesThePeakAndRerunsBitIdentically) {
  TempDir dir;
  const auto base =
      with(set(tiny(writeCorpus(dir)), "--layers", "4"),
           {"--peers", "2", "--steps", "60", "--inner-steps", "10", "--wire", "int4"});
  const auto streaming = with(base, {"--method", "streaming", "--fragments", "2", "--overlap-steps",
                                     "2", "--merge-alpha", "0.5"});
  std::string log;
  ASSERT_EQ(runLocal(dir, dir.file("a"), streaming, &log), 0) << log;
  EXPECT_NE(log.find(kAgree), std::string::npos) << log;
  ASSERT_EQ(runLocal(dir, dir.file("b"), streaming, &log), 0) << log;
  auto a = readJsonl(dir.file("a/run.jsonl")), b = readJsonl(dir.file("b/run.jsonl"));
  ASSERT_EQ(a.size(), 13u) << "the initial evaluation and 12 fragment syncs (every 5 steps)";
  ASSERT_EQ(a.size(), b.size());
  for (std::size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].loss, b[i].loss) << "step " << a[i].step;
    EXPECT_EQ(a[i].val, b[i].val) << "step " << a[i].step;
    EXPECT_EQ(a[i].digest, b[i].digest) << "step " << a[i].step;
  }
  EXPECT_LT(a.back().val, a.front().val - 0.5);
  ASSERT_EQ(runLocal(dir, dir.file("d"), with(base, {"--method", "diloco"}), &log), 0) << log;
  const double peak_s = maxField(dir.file("a/peer-1.jsonl"), "peak_round_bytes");
  const double peak_d = maxField(dir.file("d/peer-1.jsonl"), "peak_round_bytes");
  ASSERT_GT(peak_d, 0);
  // With 4 blocks, fragment 0 carries the embeddings too: a bit over half of DiLoCo's Δ.
  EXPECT_LT(peak_s, 0.75 * peak_d) << peak_s << " vs " << peak_d;
  // Blocking DiLoCo begins each of its 6 rounds with a sync point; streaming, with nobody
  // waiting to join, only its first round and every 8th of its 12.
  const double syncs_s = maxField(dir.file("a/peer-1.jsonl"), "sync_points");
  const double syncs_d = maxField(dir.file("d/peer-1.jsonl"), "sync_points");
  EXPECT_GE(syncs_d, 6) << log;
  EXPECT_GE(syncs_s, 1);
  EXPECT_LE(syncs_s, 3) << "streaming should skip the sync points nothing calls for";
}

// No method flag: --method auto runs Streaming DiLoCo (2 fragments, int4 Δ, as many overlapped
// steps as fit below H/P, at most 5) where the model and flags allow it, blocking DiLoCo
// otherwise, and says which at start. The pick is bit-for-bit the explicit configuration.
TEST(SyncMethods, AutoPicksStreamingWhereItAppliesAndSaysWhy) {
  TempDir dir;
  const auto base = with(set(tiny(writeCorpus(dir)), "--layers", "2"),
                         {"--peers", "2", "--steps", "40", "--inner-steps", "10"});
  std::string log;
  ASSERT_EQ(runLocal(dir, dir.file("auto"), base, &log), 0) << log;
  EXPECT_NE(log.find("training with streaming (--method auto: 2 fragments, 4 overlapped steps, "
                     "int4 Δ)"),
            std::string::npos)
      << log;
  EXPECT_NE(log.find(kAgree), std::string::npos) << log;
  ASSERT_EQ(runLocal(dir, dir.file("explicit"),
                     with(base, {"--method", "streaming", "--fragments", "2", "--overlap-steps",
                                 "4", "--wire", "int4"}),
                     &log),
            0)
      << log;
  auto a = readJsonl(dir.file("auto/run.jsonl")), b = readJsonl(dir.file("explicit/run.jsonl"));
  ASSERT_EQ(a.size(), 9u) << "the initial evaluation and 8 fragment syncs (every 5 steps)";
  ASSERT_EQ(a.size(), b.size());
  for (std::size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].loss, b[i].loss) << "step " << a[i].step;
    EXPECT_EQ(a[i].digest, b[i].digest) << "step " << a[i].step;
  }
  // One block cannot be split into 2 fragments; an odd H cannot either; --overlap is DiLoCo's.
  struct Fallback {
    std::vector<std::string> flags;
    std::string says;
    std::size_t lines;  // the initial evaluation and one per whole round
  };
  for (const Fallback& f : std::vector<Fallback>{
           {set(base, "--layers", "1"),
            "the model has 1 block(s) (--layers), fewer than 2 fragments", 5},
           {set(base, "--inner-steps", "5"), "--inner-steps 5 is not a multiple of 2 fragments", 9},
           {with(base, {"--overlap", "eager"}), "--overlap is a mode of blocking DiLoCo", 5}}) {
    ASSERT_EQ(runLocal(dir, dir.file("fallback"), f.flags, &log), 0) << log;
    EXPECT_NE(log.find("training with diloco (--method auto, not streaming: " + f.says + ")"),
              std::string::npos)
        << log;
    EXPECT_EQ(readJsonl(dir.file("fallback/run.jsonl")).size(), f.lines) << log;
  }
}

TEST(SyncMethods, NolocoOddWorldGossipsDeterministically) {
  TempDir dir;
  const auto flags = with(tiny(writeCorpus(dir)), {"--peers", "3", "--steps", "60", "--inner-steps",
                                                   "10", "--method", "noloco"});
  std::string log;
  ASSERT_EQ(runLocal(dir, dir.file("a"), flags, &log), 0) << log;
  // The same membership: the pairing is a function of the round and the member ids.
  std::filesystem::create_directories(dir.file("b"));
  for (int p = 1; p <= 3; ++p) {
    const std::string id = "/peer-" + std::to_string(p) + ".id";
    std::filesystem::copy_file(dir.file("a") + id, dir.file("b") + id);
  }
  ASSERT_EQ(runLocal(dir, dir.file("b"), flags, &log), 0) << log;
  for (int p = 1; p <= 3; ++p) {
    // Each replica's own losses (NoLoCo's replicas differ from each other by design).
    const std::string f = "/peer-" + std::to_string(p) + ".jsonl";
    auto a = readJsonl(dir.file("a") + f), b = readJsonl(dir.file("b") + f);
    ASSERT_EQ(a.size(), b.size());
    ASSERT_GE(a.size(), 6u) << log;
    for (std::size_t i = 0; i < a.size(); ++i) {
      EXPECT_EQ(a[i].loss, b[i].loss) << "peer " << p << " step " << a[i].step;
      EXPECT_EQ(a[i].val, b[i].val) << "peer " << p << " step " << a[i].step;
    }
  }
  EXPECT_LT(readJsonl(dir.file("a/run.jsonl")).back().val, 3.0) << log;
  // Every peer counts its whole group (odd world: one group of three, here all three).
  for (int p = 1; p <= 3; ++p) {
    auto lines = readJsonl(dir.file("a/peer-" + std::to_string(p) + ".jsonl"));
    ASSERT_FALSE(lines.empty());
    EXPECT_EQ(lines.back().contributors, 3) << "peer " << p;
  }
}

// A peer killed -9 mid-run and one joining later, for each method: the survivors go on, the
// joiner receives the state (NoLoCo: its group's φ) and the run ends at the last step.
void killAndJoin(const std::vector<std::string>& method, std::uint64_t last_round,
                 bool digests_equal) {
  TempDir dir;
  auto flags = with(set(tiny(writeCorpus(dir)), "--layers", "2"),
                    {"--peers", "3", "--steps", "3000", "--kill-at", "600", "--join-at", "1200",
                     "--eval-every", "50"});
  flags = with(flags, method);
  std::string log;
  ASSERT_EQ(runLocal(dir, dir.file("run"), flags, &log), 0) << log;
  EXPECT_NE(log.find("chaos: kill -9 peer-3"), std::string::npos) << log;
  EXPECT_NE(log.find("chaos: peer-4 joins"), std::string::npos) << log;
  if (digests_equal) {
    EXPECT_NE(log.find(kAgree), std::string::npos) << log;
  }
  auto joiner = readJsonl(dir.file("run/peer-4.jsonl"));
  ASSERT_FALSE(joiner.empty()) << "the joiner reports rounds\n" << log;
  EXPECT_EQ(joiner.back().step, last_round) << log;
  EXPECT_TRUE(std::isfinite(joiner.back().loss) && joiner.back().loss < 3.0)
      << "the joiner trains from the group's model, not from scratch: " << joiner.back().loss;
  auto lines = readJsonl(dir.file("run/run.jsonl"));
  ASSERT_FALSE(lines.empty());
  EXPECT_EQ(lines.back().step, last_round);
  EXPECT_EQ(lines.back().world, 3) << "two survivors and the joiner";
}

TEST(SyncMethods, EagerSurvivesAKillAndAJoin) {
  killAndJoin({"--inner-steps", "10", "--overlap", "eager"}, 300, true);
}

TEST(SyncMethods, StreamingSurvivesAKillAndAJoin) {
  killAndJoin({"--inner-steps", "20", "--method", "streaming"}, 300, true);
}

// NoLoCo's replicas differ by design, but its shared state is the progress alone, which every
// peer advances alike: those digests agree too.
TEST(SyncMethods, NolocoSurvivesAKillAndAJoin) {
  killAndJoin({"--inner-steps", "10", "--method", "noloco"}, 300, true);
}

}  // namespace
}  // namespace loco::testing
