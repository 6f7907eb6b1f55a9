// `loco doctor` against real coordinators on 127.0.0.1: each failure names the problem and the
// exact fix, and the exit status says whether joining would work.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "tests/support/lab.h"
#include "tests/support/process.h"

namespace loco::testing {
namespace {

// A port nothing listens on: bound once by the kernel's choice, then closed.
std::uint16_t closedPort() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(a);
  (void)::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a));
  (void)::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(fd);
  return ntohs(a.sin_port);
}

bool has(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

TEST(Doctor, HealthyMachineAndReachableListener) {
  TempDir dir;
  CoordinatorProcess coord(dir, 500, 3000);
  auto r = loco(dir, {"doctor", "--coordinator", coord.address(), "--listen", "127.0.0.1:0",
                      "--checkpoint-dir", dir.file("ckpt")});
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(has(r.out, "ok    coordinator   " + coord.address() + " answers")) << r.out;
  EXPECT_TRUE(has(r.out, "ok    listen port   the coordinator connected to 127.0.0.1:")) << r.out;
  EXPECT_TRUE(has(r.out, "ok    disk")) << r.out;
  EXPECT_TRUE(has(r.out, "verdict: joining should work")) << r.out;
}

TEST(Doctor, UnreachableCoordinatorFailsWithTheFix) {
  TempDir dir;
  const std::string port = std::to_string(closedPort());
  auto r = loco(dir, {"doctor", "--coordinator", "127.0.0.1:" + port});
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_TRUE(has(r.out, "FAIL  coordinator   nothing accepts connections at 127.0.0.1:" + port))
      << r.out;
  EXPECT_TRUE(has(r.out, "fix: start it there (`loco coordinator --listen 0.0.0.0:" + port))
      << r.out;
  EXPECT_TRUE(has(r.out, "verdict: joining will not work: 1 problem")) << r.out;
}

TEST(Doctor, ClosedAdvertisedPortFailsWithTheFix) {
  TempDir dir;
  CoordinatorProcess coord(dir, 500, 3000);
  // Peers would be told a port where nothing listens (a NAT without the port forward).
  const std::string closed = std::to_string(closedPort());
  auto r = loco(dir, {"doctor", "--coordinator", coord.address(), "--listen", "127.0.0.1:0",
                      "--advertise", "127.0.0.1:" + closed, "--json"});
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_TRUE(has(r.out, R"("check":"listen port")")) << r.out;
  EXPECT_TRUE(
      has(r.out, "other peers cannot connect to 127.0.0.1:" + closed + ": connection refused"))
      << r.out;
  EXPECT_TRUE(has(r.out, "peers are told port " + closed + " but loco listens on port")) << r.out;
  EXPECT_TRUE(has(r.out, R"("join_will_work":false)")) << r.out;
}

TEST(Doctor, AdvertisingAnotherAddressFailsWithTheSeenOne) {
  TempDir dir;
  CoordinatorProcess coord(dir, 500, 3000);
  auto r = loco(dir, {"doctor", "--coordinator", coord.address(), "--listen", "127.0.0.1:0",
                      "--advertise", "192.0.2.7:7100"});
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_TRUE(has(r.out,
                  "FAIL  listen port   the coordinator dials back only the address it "
                  "sees this machine at (127.0.0.1), not 192.0.2.7"))
      << r.out;
  EXPECT_TRUE(has(r.out, "fix: --advertise 127.0.0.1:")) << r.out;
}

TEST(Doctor, FullCheckpointDiskFailsWithTheFix) {
  if (::geteuid() != 0) GTEST_SKIP() << "mounting a small tmpfs needs root";
  TempDir dir;
  const std::string mnt = dir.file("small");
  std::filesystem::create_directories(mnt);
  if (::mount("tmpfs", mnt.c_str(), "tmpfs", 0, "size=1m") != 0)
    GTEST_SKIP() << "cannot mount a tmpfs here: " << std::strerror(errno);
  struct Unmount {
    std::string path;
    ~Unmount() { ::umount2(path.c_str(), MNT_DETACH); }
  } unmount{mnt};
  {
    std::ofstream fill(mnt + "/fill", std::ios::binary);
    std::string block(64 << 10, 'x');
    for (int i = 0; i < 32 && fill; ++i) fill.write(block.data(), block.size());  // until full
  }
  auto r = loco(dir, {"doctor", "--checkpoint-dir", mnt + "/ckpt"});
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_TRUE(has(r.out, "FAIL  disk") && has(r.out, "free in " + mnt) &&
              has(r.out, "checkpoints will fail"))
      << r.out;
  EXPECT_TRUE(has(r.out, "fix: free at least") && has(r.out, "--checkpoint-dir on a larger disk"))
      << r.out;
}

}  // namespace
}  // namespace loco::testing
