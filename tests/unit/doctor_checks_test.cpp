// `loco doctor`'s local checks on fake cgroup trees and synthetic probe outcomes
// (cli/ops/doctor_checks.h).
#include "cli/ops/doctor_checks.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>

namespace loco::ops {
namespace {

namespace fs = std::filesystem;

struct FakeRoot {
  fs::path root = fs::temp_directory_path() / ("loco-cgroup-test-" + std::to_string(::getpid()));
  FakeRoot() { fs::remove_all(root); }
  ~FakeRoot() { fs::remove_all(root); }
  void write(const std::string& rel, const std::string& text) {
    fs::create_directories((root / rel).parent_path());
    std::ofstream(root / rel) << text;
  }
};

TEST(DoctorChecks, CgroupV2TakesTheTightestLimitOnThePath) {
  FakeRoot f;
  f.write("cgroup.controllers", "cpu memory");
  f.write("user.slice/cpu.max", "max 100000\n");
  f.write("user.slice/memory.max", "1073741824\n");
  f.write("user.slice/run/cpu.max", "150000 100000\n");
  f.write("user.slice/run/memory.max", "max\n");
  auto l = readCgroupLimits(f.root.string(), "0::/user.slice/run\n");
  EXPECT_EQ(l.version, 2);
  ASSERT_TRUE(l.cpus.has_value());
  EXPECT_DOUBLE_EQ(*l.cpus, 1.5);
  ASSERT_TRUE(l.memory_bytes.has_value());
  EXPECT_EQ(*l.memory_bytes, 1073741824u);  // from the parent
}

TEST(DoctorChecks, CgroupV1InAContainerReadsTheMountRoot) {
  FakeRoot f;
  // The path names the host's hierarchy; the container sees its own cgroup at the root.
  f.write("cpu/cpu.cfs_quota_us", "50000\n");
  f.write("cpu/cpu.cfs_period_us", "100000\n");
  f.write("memory/memory.limit_in_bytes", "9223372036854771712\n");  // v1's "unlimited"
  auto l = readCgroupLimits(f.root.string(),
                            "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n1:name=systemd:/\n");
  EXPECT_EQ(l.version, 1);
  ASSERT_TRUE(l.cpus.has_value());
  EXPECT_DOUBLE_EQ(*l.cpus, 0.5);
  EXPECT_FALSE(l.memory_bytes.has_value());
}

TEST(DoctorChecks, MemoryBelowNeedFailsAndQuotaBelowThreadsWarns) {
  CgroupLimits l{2, 0.5, 64ull << 20};
  auto checks = checkCgroup(l, 2, estimateMemory(437760));
  ASSERT_EQ(checks.size(), 2u);
  EXPECT_EQ(checks[0].level, CheckLevel::kWarn);
  EXPECT_NE(checks[0].fix.find("--threads 1"), std::string::npos) << checks[0].fix;
  EXPECT_EQ(checks[1].level, CheckLevel::kFail);
  EXPECT_NE(checks[1].fix.find("docker run --memory"), std::string::npos) << checks[1].fix;
  EXPECT_TRUE(anyFailed(checks));
}

TEST(DoctorChecks, BlasFlavours) {
  EXPECT_EQ(
      checkBlas("/usr/lib/x86_64-linux-gnu/openblas-openmp/libblas.so.3", 1, "", "", 2)[0].level,
      CheckLevel::kOk);
  auto pthread = checkBlas("/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3", 1, "", "", 2);
  EXPECT_EQ(pthread[0].level, CheckLevel::kWarn);
  auto reference = checkBlas("/usr/lib/x86_64-linux-gnu/blas/libblas.so.3.11.0", 1, "", "", 2);
  EXPECT_EQ(reference[0].level, CheckLevel::kWarn);
  EXPECT_EQ(reference[0].fix, "apt-get install libopenblas0-openmp");
  EXPECT_EQ(checkBlas("", 1, "", "", 2)[0].level, CheckLevel::kFail);
  auto threads = checkBlas("/x/openblas-openmp/libblas.so.3", 8, "8", "", 2);
  EXPECT_EQ(threads[1].level, CheckLevel::kWarn);
  EXPECT_EQ(threads[1].fix, "--threads 2");
}

TEST(DoctorChecks, DialBackOutcomesBecomeFixes) {
  p2p::DoctorProbe p;
  p.listening = true;
  p.listen_port = 7100;
  p.advertised = "203.0.113.5:7100";
  p.result.seen_from = "203.0.113.5:40000";
  p.result.code = StatusCode::kTimeout;
  p.result.detail = "timed out";
  p.interface = "eth0";
  p.interface_mtu = 1500;
  p.path_mtu = 1400;
  p.clock_offset_s = 42;
  auto checks = networkChecks(p, p2p::HostPort{"198.51.100.1", 7000}, "");
  ASSERT_EQ(checks.size(), 4u);
  EXPECT_EQ(checks[1].level, CheckLevel::kFail);
  EXPECT_NE(checks[1].message.find("a firewall drops them"), std::string::npos);
  EXPECT_NE(checks[1].fix.find("nft add rule inet filter input tcp dport 7100 accept"),
            std::string::npos);
  EXPECT_EQ(checks[2].level, CheckLevel::kWarn);
  EXPECT_EQ(checks[2].fix, "ip link set dev eth0 mtu 1400");
  EXPECT_EQ(checks[3].level, CheckLevel::kWarn);
  EXPECT_NE(checks[3].message.find("42.0 s behind"), std::string::npos) << checks[3].message;
  EXPECT_NE(checks[3].fix.find("timedatectl set-ntp true"), std::string::npos);
}

// Unreachable behind a NAT: whether it keeps ports decides between "joins anyway" and "needs a
// relay for peers behind NATs".
TEST(DoctorChecks, AnUnreachableMachineLearnsWhetherItsNatCanBePunched) {
  for (const bool keeps : {true, false}) {
    p2p::DoctorProbe p;
    p.listening = true;
    p.listen_port = 7100;
    p.local_port = 41000;
    p.advertised = "192.168.1.20:7100";
    p.result.seen_from = keeps ? "203.0.113.5:41000" : "203.0.113.5:52311";
    p.result.code = StatusCode::kTimeout;
    p.result.detail = "timed out";
    auto checks = networkChecks(p, p2p::HostPort{"198.51.100.1", 7000}, "");
    auto nat =
        std::find_if(checks.begin(), checks.end(), [](const Check& c) { return c.name == "nat"; });
    ASSERT_NE(nat, checks.end());
    EXPECT_EQ(nat->level, keeps ? CheckLevel::kOk : CheckLevel::kWarn) << nat->message;
    EXPECT_NE(nat->message.find(keeps ? "keeps ports" : "changes ports"), std::string::npos);
    if (!keeps) {
      EXPECT_NE(nat->fix.find("--relay"), std::string::npos);
    }
  }
}

}  // namespace
}  // namespace loco::ops
