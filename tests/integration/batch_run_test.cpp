// Data assignment and adaptive batches with real `loco join` processes: default peers draw their
// own samples; two peers with the same explicit --rank are warned; the norm test grows the batch
// identically on every peer.
#include <gtest/gtest.h>

#include <fstream>
#include <functional>
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

}  // namespace
}  // namespace loco::testing
