// `loco bench allreduce --baseline gloo`: the Gloo baseline computes the right result on every
// peer, names the algorithm it timed, and with --baseline-algo auto reports the fastest of the
// algorithms it timed. Skips (with a sentence) when loco was built without libgloo-dev.
#include <gtest/gtest.h>

#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "tests/support/process.h"

namespace loco::testing {
namespace {

using nlohmann::json;

// The bench's JSON lines, by "impl".
std::map<std::string, json> benchLines(const std::string& log) {
  std::map<std::string, json> out;
  std::istringstream in(log);
  for (std::string line; std::getline(in, line);) {
    if (line.empty() || line[0] != '{') continue;
    json j = json::parse(line, nullptr, false);
    if (!j.is_discarded() && j.value("bench", "") == "allreduce") out[j.value("impl", "")] = j;
  }
  return out;
}

// Runs the bench with --baseline gloo and `extra` flags; returns its lines, or skips.
std::map<std::string, json> runBench(const TempDir& dir, std::vector<std::string> extra) {
  std::vector<std::string> args = {"bench", "allreduce", "--peers", "3",          "--kib",
                                   "256",   "--iters",   "3",       "--baseline", "gloo"};
  args.insert(args.end(), extra.begin(), extra.end());
  Process bench(args, dir.file("bench.log"));
  const auto rc = bench.waitExit(milliseconds(100000));
  if (bench.log().find("built without Gloo") != std::string::npos) return {};
  EXPECT_EQ(rc, 0) << bench.log();
  return benchLines(bench.log());
}

// Three peers: Gloo's classic AllreduceRing, the old baseline, left the peers with bitwise
// different results from N = 3 on; gloo::allreduce's ring must not.
TEST(GlooBaseline, RingAveragesCorrectlyAndIdenticallyOnEveryPeer) {
  TempDir dir;
  auto lines = runBench(dir, {"--baseline-algo", "ring"});
  if (lines.empty()) GTEST_SKIP() << "loco was built without Gloo (libgloo-dev)";
  ASSERT_TRUE(lines.count("gloo") && lines.count("loco")) << "missing a line";
  const json& g = lines["gloo"];
  EXPECT_EQ(g["algo"], "ring");
  EXPECT_EQ(g["baseline_algo"], "ring");
  EXPECT_FALSE(g.contains("candidates_p50_ms")) << "one algorithm, no candidates";
  EXPECT_TRUE(g["bitwise_equal"].get<bool>());
  // A sum reported as an average, or a peer's input missing, is off by O(1), not 1e-7.
  const double err = g["rel_rms_err"].get<double>();
  EXPECT_GE(err, 0.0);
  EXPECT_LT(err, 1e-6);
  EXPECT_GT(g["p50_ms"].get<double>(), 0.0);
  EXPECT_TRUE(lines["loco"].contains("speedup_vs_gloo"));
}

TEST(GlooBaseline, AutoTimesEveryAlgorithmAndReportsTheFastest) {
  TempDir dir;
  auto lines = runBench(dir, {"--baseline-algo", "auto"});
  if (lines.empty()) GTEST_SKIP() << "loco was built without Gloo (libgloo-dev)";
  ASSERT_TRUE(lines.count("gloo")) << "missing Gloo's line";
  const json& g = lines["gloo"];
  EXPECT_EQ(g["baseline_algo"], "auto");
  ASSERT_TRUE(g.contains("candidates_p50_ms"));
  const json& c = g["candidates_p50_ms"];
  for (const char* name : {"ring", "bcube", "halving-doubling", "ring-chunked"}) {
    ASSERT_TRUE(c.contains(name)) << name << " was not timed: " << g.dump();
    EXPECT_GT(c[name].get<double>(), 0.0) << name;
  }
  const std::string algo = g["algo"];
  ASSERT_TRUE(c.contains(algo)) << "the reported algorithm is not a candidate: " << algo;
  for (const auto& [name, p50] : c.items())
    EXPECT_LE(c[algo].get<double>(), p50.get<double>()) << algo << " is slower than " << name;
  // The line's p50 is the chosen algorithm's (the parent's median of the slowest peer per call,
  // the workers' agreed median: the same numbers, rounded differently).
  EXPECT_NEAR(g["p50_ms"].get<double>(), c[algo].get<double>(), 0.002);
  EXPECT_TRUE(g["bitwise_equal"].get<bool>());
  EXPECT_LT(g["rel_rms_err"].get<double>(), 1e-6);
}

TEST(GlooBaseline, UnknownAlgorithmIsAUsageError) {
  TempDir dir;
  Process bench({"bench", "allreduce", "--peers", "2", "--kib", "4", "--baseline", "gloo",
                 "--baseline-algo", "tree"},
                dir.file("bench.log"));
  EXPECT_EQ(bench.waitExit(milliseconds(20000)), 2) << bench.log();
  EXPECT_NE(bench.log().find("--baseline-algo takes"), std::string::npos) << bench.log();
}

}  // namespace
}  // namespace loco::testing
