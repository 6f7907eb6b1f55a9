// loco chaos and the slow hosts it uses. ChaosCli runs without root (a bad scenario must fail
// before anything starts); ChaosLab (ctest label `lab`) needs root and skips with the reason
// otherwise: it runs the sample scenarios of tests/chaos/ in real labs.
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>

#include "tests/support/lab.h"
#include "tests/support/process.h"

namespace loco::testing {
namespace {

std::string sample(const std::string& name) {
  return std::string(LOCO_SOURCE_DIR) + "/tests/chaos/" + name;
}

TEST(ChaosCli, BadScenarioFailsBeforeAnythingStartsNamingTheLine) {
  TempDir dir;
  const std::string path = dir.file("bad.toml");
  std::ofstream(path) << "name = \"chbad\"\n[swarm]\npeers = 3\n[[fault]]\nkind = \"meteor\"\n"
                         "at = 5\n";
  CommandResult r = loco(dir, {"chaos", path, "--out", dir.file("out")});
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find(path + ":5: unknown fault kind 'meteor'"), std::string::npos) << r.out;
  EXPECT_FALSE(std::filesystem::exists(dir.file("out"))) << "nothing started";
  EXPECT_FALSE(std::filesystem::exists("/run/loco-lab/chbad"));

  std::ofstream(path) << "[swarm]\npeers = 3\n[[fault]]\nkind = \"kill\"\nat = 1\n"
                         "target = \"peer-4\"\n";
  r = loco(dir, {"chaos", path, "--out", dir.file("out")});
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find(":4: target peer-4 does not exist"), std::string::npos) << r.out;
  // The samples pass the same checks.
  for (const char* s : {"peer-faults.toml", "coordinator-faults.toml", "wan-everything.toml"}) {
    CommandResult ok = loco(dir, {"chaos", "--dry-run", sample(s)});
    EXPECT_EQ(ok.code, 0) << s << "\n" << ok.out;
  }
  // A random schedule draws from the same vocabulary and is valid too.
  CommandResult random =
      loco(dir, {"chaos", "--random", "--seed", "5", "--duration", "20m", "--dry-run"});
  EXPECT_EQ(random.code, 0) << random.out;
  EXPECT_NE(random.out.find("[[fault]]"), std::string::npos) << random.out;
}

// A slow host: every process in it shares a CPU quota (cgroup), so a busy loop gets at most that.
TEST(ChaosLab, SlowHostRunsUnderItsCpuQuota) {
  SKIP_WITHOUT_LAB_SUPPORT();
  TempDir dir;
  const std::string name = uniqueLabName("slow");
  LabGuard guard{dir, name};
  CommandResult up = loco(dir, {"lab", "up", name, "--hosts", "2", "--host", "2:cpu=0.25"});
  if (up.code != 0 && up.out.find("cgroup") != std::string::npos)
    GTEST_SKIP() << "no cgroup cpu controller here: " << up.out;
  ASSERT_EQ(up.code, 0) << up.out;
  EXPECT_NE(up.out.find("0.25"), std::string::npos) << "the status table shows the quota\n"
                                                    << up.out;
  // bash's `time` reports the user CPU seconds and the wall seconds of a 2 s busy loop.
  auto share = [&](int host) {
    CommandResult r =
        loco(dir, {"lab", "exec", name + std::to_string(host), "--", "bash", "-c",
                   "TIMEFORMAT='%U %R'; time timeout 2 bash -c 'while :; do :; done'"});
    std::istringstream in(r.out.substr(r.out.find_last_of('\n', r.out.size() - 2) + 1));
    double user = 0, wall = 1;
    in >> user >> wall;
    return user / wall;
  };
  const double slow = share(2), normal = share(1);
  EXPECT_LE(slow, 0.25 * 1.15) << "host 2 runs under its quota";
  EXPECT_GT(slow, 0.05) << "but it runs";
  EXPECT_GT(normal, slow) << "host 1 has no quota";
  // The lab removes its cgroup with it.
  ASSERT_EQ(loco(dir, {"lab", "down", name}).code, 0);
  EXPECT_FALSE(std::filesystem::exists("/sys/fs/cgroup/cpu/loco/lab-" + name + "-h2"));
  EXPECT_FALSE(std::filesystem::exists("/sys/fs/cgroup/loco/lab-" + name + "-h2"));
}

// loco local --peer I:cpu=C: one peer of the swarm on a slower machine. A round must last many
// CFS periods (100 ms): a round shorter than the quota's slice runs at full speed and hides it.
TEST(ChaosLab, LocalPeerRunsUnderItsCpuQuota) {
  SKIP_WITHOUT_LAB_SUPPORT();
  TempDir dir;
  CommandResult r = loco(dir,
                         {"local",
                          "--out",
                          dir.file("run"),
                          "--peers",
                          "2",
                          "--peer",
                          "2:cpu=0.15",
                          "--steps",
                          "240",
                          "--inner-steps",
                          "40",
                          "--width",
                          "32",
                          "--layers",
                          "1",
                          "--heads",
                          "2",
                          "--context",
                          "32",
                          "--batch",
                          "16",
                          "--warmup",
                          "5"},
                         milliseconds(240000));
  if (r.out.find("cgroup") != std::string::npos && r.code != 0)
    GTEST_SKIP() << "no cgroup cpu controller here: " << r.out;
  ASSERT_EQ(r.code, 0) << r.out;
  // Inner-loop throughput of each peer, median over its rounds.
  auto median_rate = [&](const std::string& peer) {
    std::ifstream in(dir.file("run/" + peer + ".jsonl"));
    std::vector<double> rates;
    std::string line;
    std::smatch m;
    while (std::getline(in, line)) {
      if (std::regex_search(line, m, std::regex(R"re("tokens_per_s":([0-9.]+))re")))
        rates.push_back(std::stod(m[1]));
    }
    std::sort(rates.begin(), rates.end());
    return rates.empty() ? 0.0 : rates[rates.size() / 2];
  };
  const double fast = median_rate("peer-1"), slow = median_rate("peer-2");
  EXPECT_GT(slow, 0);
  EXPECT_LT(slow, 0.6 * fast) << "peer-2 (0.15 cores) " << slow << " tok/s, peer-1 " << fast;
}

struct FaultLine {
  std::string fault, target;
  bool injected = false;
  double detected = -1, recovered = -1;
};

std::vector<FaultLine> faults(const std::string& path, bool* passed) {
  std::vector<FaultLine> out;
  std::ifstream in(path);
  std::string line;
  std::smatch m;
  while (std::getline(in, line)) {
    if (line.find("\"chaos\":\"verdict\"") != std::string::npos) {
      *passed = line.find("\"passed\":true") != std::string::npos;
      continue;
    }
    FaultLine f;
    if (std::regex_search(line, m, std::regex(R"re("fault":"([a-z_]+)")re"))) f.fault = m[1];
    if (std::regex_search(line, m, std::regex(R"re("target":"([a-z0-9-]+)")re"))) f.target = m[1];
    f.injected = line.find("\"injected\":true") != std::string::npos;
    if (std::regex_search(line, m, std::regex(R"re("detected_s":([0-9.]+))re")))
      f.detected = std::stod(m[1]);
    if (std::regex_search(line, m, std::regex(R"re("recovered_s":([0-9.]+))re")))
      f.recovered = std::stod(m[1]);
    out.push_back(f);
  }
  return out;
}

// The CI chaos run, peer side: kill -9, SIGSTOP past the heartbeat timeout (evicted, then back),
// a partition of one peer's host; a fault-free baseline of the same seed first. Every invariant
// holds; the kill is seen within a second; every fault is recovered from.
TEST(ChaosLab, PeerFaultsKeepEveryInvariant) {
  SKIP_WITHOUT_LAB_SUPPORT();
  TempDir dir;
  LabGuard guard{dir, "cipeer"};
  CommandResult r = loco(dir, {"chaos", sample("peer-faults.toml"), "--out", dir.file("out")},
                         milliseconds(420000));
  EXPECT_EQ(r.code, 0) << r.out;
  bool passed = false;
  auto fs = faults(dir.file("out/faults.jsonl"), &passed);
  EXPECT_TRUE(passed) << r.out;
  ASSERT_EQ(fs.size(), 3u) << r.out;
  for (const auto& f : fs) {
    EXPECT_TRUE(f.injected) << f.fault;
    EXPECT_GE(f.recovered, 0) << f.fault << " recovered\n" << r.out;
  }
  EXPECT_EQ(fs[0].fault, "kill");
  EXPECT_GE(fs[0].detected, 0);
  EXPECT_LE(fs[0].detected, 1.0) << "a new epoch within 1 s of kill -9";
  EXPECT_NE(r.out.find("val_loss   held"), std::string::npos) << "compared with the baseline\n"
                                                              << r.out;
  EXPECT_TRUE(std::filesystem::exists(dir.file("out/timeline.svg")));
  EXPECT_FALSE(std::filesystem::exists("/run/loco-lab/cipeer")) << "the lab is removed";
}

// The CI chaos run, coordinator side: kill -9 and SIGTERM of the coordinator (loco local starts
// it again on the same address) and a peer evicted and back. It needs peers that outlive their
// coordinator (reconnect, re-register, rebuild; `loco join --coordinator-timeout`): without
// them every peer exits with its coordinator and the run starts over.
TEST(ChaosLab, CoordinatorRestartKeepsEveryInvariant) {
  SKIP_WITHOUT_LAB_SUPPORT();
  TempDir dir;
  CommandResult help = loco(dir, {"join", "--help"});
  if (help.out.find("coordinator-timeout") == std::string::npos)
    GTEST_SKIP() << "peers do not outlive their coordinator yet (no `loco join "
                    "--coordinator-timeout`); this scenario needs that";
  LabGuard guard{dir, "cicoord"};
  CommandResult r =
      loco(dir, {"chaos", sample("coordinator-faults.toml"), "--out", dir.file("out")},
           milliseconds(300000));
  EXPECT_EQ(r.code, 0) << r.out;
  bool passed = false;
  auto fs = faults(dir.file("out/faults.jsonl"), &passed);
  EXPECT_TRUE(passed) << r.out;
  for (const auto& f : fs) EXPECT_GE(f.recovered, 0) << f.fault << " recovered\n" << r.out;
}

}  // namespace
}  // namespace loco::testing
