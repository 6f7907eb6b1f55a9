// Shared state in a lab (ctest label `lab`): 4 up-to-date peers with 100 Mbit/s access links and a
// joiner with 1000 Mbit/s download 256 MiB. All sources at once must beat a single source by 3x
// (the joiner's link is 2.5x the sum of theirs). Needs root; skips with a reason otherwise.
#include <gtest/gtest.h>
#include <unistd.h>

#include <regex>

#include "tests/support/lab.h"
#include "tests/support/process.h"

namespace loco::testing {
namespace {

double field(const std::string& line, const std::string& name) {
  std::smatch m;
  if (!std::regex_search(line, m, std::regex("\"" + name + "\":([0-9.]+)"))) return -1;
  return std::stod(m[1]);
}

TEST(SharedStateLab, JoinFromFourSlowSourcesIsAtLeastThreeTimesFasterThanFromOne) {
  if (std::string why = labUnsupported(); !why.empty()) GTEST_SKIP() << why;
  TempDir dir;
  const std::string name = uniqueLabName("sj");
  LabGuard guard{dir, name};
  CommandResult up = loco(
      dir, {"lab", "up", name, "--hosts", "5", "--rate-mbit", "100", "--host", "5:rate-mbit=1000"});
  ASSERT_EQ(up.code, 0) << up.out;
  CommandResult bench = loco(dir, {"bench", "join", "--peers", "5", "--mib", "256", "--lab", name},
                             milliseconds(200000));
  ASSERT_EQ(bench.code, 0) << bench.out;
  std::string single, all;
  const std::regex line_re(R"(\{"bench":"join".*\})");
  for (std::sregex_iterator it(bench.out.begin(), bench.out.end(), line_re), end; it != end; ++it) {
    const std::string line = it->str();
    if (line.find("\"sources\":1,") != std::string::npos) single = line;
    if (line.find("\"sources\":4,") != std::string::npos) all = line;
  }
  ASSERT_FALSE(single.empty()) << bench.out;
  ASSERT_FALSE(all.empty()) << bench.out;
  EXPECT_NE(single.find("\"hash_equal\":true"), std::string::npos) << single;
  EXPECT_NE(all.find("\"hash_equal\":true"), std::string::npos) << all;
  const double t1 = field(single, "seconds"), t4 = field(all, "seconds");
  ASSERT_GT(t1, 0);
  ASSERT_GT(t4, 0);
  EXPECT_GE(t1 / t4, 3.0) << single << "\n" << all;
  std::printf("%s\n%s\nall sources %.2fx faster than one\n", single.c_str(), all.c_str(), t1 / t4);
}

}  // namespace
}  // namespace loco::testing
