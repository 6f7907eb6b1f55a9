// Unit tests for peer identities (crypto/identity.h). Every test works in its own fresh temporary
// directory, removed afterwards.

#include "crypto/identity.h"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

namespace loco::crypto {
namespace {

namespace fs = std::filesystem;

bool isLowerHex(const std::string& s) {
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

std::string readFile(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

void writeFile(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::trunc);
  f << text;
}

class IdentityTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::temp_directory_path() / "loco-identity-test-XXXXXX").string();
    std::vector<char> buf(tmpl.begin(), tmpl.end());
    buf.push_back('\0');
    ASSERT_NE(::mkdtemp(buf.data()), nullptr) << "mkdtemp failed";
    dir_ = buf.data();
  }
  void TearDown() override {
    std::error_code ec;
    if (!dir_.empty()) fs::remove_all(dir_, ec);
  }
  std::string path(const std::string& name) const { return (fs::path(dir_) / name).string(); }

  std::string dir_;
};

TEST_F(IdentityTest, CreatesAPrivateFileHoldingA32HexId) {
  const std::string p = path("identity");
  auto r = loadOrCreateIdentity(p);
  ASSERT_TRUE(r.isOk()) << r.status().toString();
  EXPECT_EQ(r->id.size(), 32u);
  EXPECT_TRUE(isLowerHex(r->id)) << r->id;
  EXPECT_TRUE(isValidPeerId(r->id));

  struct stat st {};
  ASSERT_EQ(::stat(p.c_str(), &st), 0);
  EXPECT_TRUE(S_ISREG(st.st_mode));
  EXPECT_EQ(st.st_mode & 0777, 0600u) << std::oct << (st.st_mode & 0777);
  EXPECT_NE(readFile(p).find(r->id), std::string::npos) << readFile(p);
}

TEST_F(IdentityTest, SecondLoadReturnsTheSameId) {
  const std::string p = path("identity");
  auto first = loadOrCreateIdentity(p);
  ASSERT_TRUE(first.isOk()) << first.status().toString();
  const std::string content = readFile(p);
  auto second = loadOrCreateIdentity(p);
  ASSERT_TRUE(second.isOk()) << second.status().toString();
  EXPECT_EQ(second->id, first->id);
  EXPECT_EQ(readFile(p), content);  // loading does not rewrite the file
}

TEST_F(IdentityTest, DifferentFilesGetDifferentIds) {
  auto a = loadOrCreateIdentity(path("a"));
  auto b = loadOrCreateIdentity(path("b"));
  ASSERT_TRUE(a.isOk());
  ASSERT_TRUE(b.isOk());
  EXPECT_NE(a->id, b->id);
}

TEST_F(IdentityTest, CreationLeavesNoTemporaryFilesBehind) {
  ASSERT_TRUE(loadOrCreateIdentity(path("identity")).isOk());
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir_)) names.push_back(e.path().filename().string());
  EXPECT_EQ(names, std::vector<std::string>{"identity"});
}

TEST_F(IdentityTest, GarbageFileIsInvalidArgumentNamingThePath) {
  const std::string p = path("not-an-identity");
  writeFile(p, "this is not\nan identity file\n");
  ::chmod(p.c_str(), 0600);
  auto r = loadOrCreateIdentity(p);
  ASSERT_FALSE(r.isOk());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find(p), std::string::npos) << r.status().message();
  // The user's file is left alone.
  EXPECT_EQ(readFile(p), "this is not\nan identity file\n");
}

TEST_F(IdentityTest, EmptyFileIsInvalidArgument) {
  const std::string p = path("empty");
  writeFile(p, "");
  ::chmod(p.c_str(), 0600);
  auto r = loadOrCreateIdentity(p);
  ASSERT_FALSE(r.isOk());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find(p), std::string::npos) << r.status().message();
}

TEST_F(IdentityTest, FileWithValidHeaderButBadIdIsInvalidArgument) {
  // Take the header line from a real identity file so the test does not hard-code the format.
  const std::string good = path("good");
  auto created = loadOrCreateIdentity(good);
  ASSERT_TRUE(created.isOk());
  std::string text = readFile(good);
  std::string header = text.substr(0, text.find('\n'));

  for (const std::string& bad_id : {std::string("xyz"), std::string(32, 'G'), std::string(31, 'a'),
                                    std::string(33, 'a'), std::string(32, 'A')}) {
    const std::string p = path("bad");
    writeFile(p, header + "\nid " + bad_id + "\n");
    ::chmod(p.c_str(), 0600);
    auto r = loadOrCreateIdentity(p);
    ASSERT_FALSE(r.isOk()) << bad_id;
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << bad_id;
    EXPECT_NE(r.status().message().find(p), std::string::npos) << r.status().message();
  }
  const std::string p = path("noid");
  writeFile(p, header + "\n");
  ::chmod(p.c_str(), 0600);
  EXPECT_EQ(loadOrCreateIdentity(p).status().code(), StatusCode::kInvalidArgument);
}

TEST_F(IdentityTest, UncreatablePathIsIoErrorNamingThePath) {
  const std::string p = path("no/such/dir/identity");
  auto r = loadOrCreateIdentity(p);
  ASSERT_FALSE(r.isOk());
  EXPECT_EQ(r.status().code(), StatusCode::kIoError);
  EXPECT_NE(r.status().message().find(p), std::string::npos) << r.status().message();
}

// identity.h: "All functions are ... thread-safe" and "Two processes creating the same file at
// once end up with one id". Several threads racing to create one file must all succeed and agree.

TEST_F(IdentityTest, ConcurrentCreationOfOneFileYieldsOneId) {
  for (int round = 0; round < 20; ++round) {
    const std::string p = path("race" + std::to_string(round));
    constexpr int kThreads = 8;
    std::vector<std::string> ids(kThreads);
    std::vector<std::string> errors(kThreads);
    std::atomic<int> ready{0};
    std::vector<std::thread> threads;
    for (int i = 0; i < kThreads; ++i) {
      threads.emplace_back([&, i] {
        ready.fetch_add(1);
        while (ready.load() < kThreads) {
        }
        auto r = loadOrCreateIdentity(p);
        if (r.isOk()) {
          ids[i] = r->id;
        } else {
          errors[i] = r.status().toString();
        }
      });
    }
    for (auto& t : threads) t.join();
    for (int i = 0; i < kThreads; ++i)
      EXPECT_EQ(errors[i], "") << "round " << round << " thread " << i;
    std::set<std::string> distinct(ids.begin(), ids.end());
    EXPECT_EQ(distinct.size(), 1u) << "round " << round;
    if (HasFailure()) break;
  }
}

// A peer killed between creating its temporary file and linking it into place leaves
// "<path>.tmp.<pid>" behind. In a container the restarted peer usually gets the same pid, so the
// leftover must not make identity creation fail forever ("kIoError if it cannot be ... created":
// it can be).

TEST_F(IdentityTest, LeftoverTemporaryFileFromACrashedRunWithTheSamePidDoesNotBlockCreation) {
  const std::string p = path("identity");
  writeFile(p + ".tmp." + std::to_string(::getpid()), "half-written");
  auto r = loadOrCreateIdentity(p);
  ASSERT_TRUE(r.isOk()) << r.status().toString();
  EXPECT_TRUE(isValidPeerId(r->id));
  auto again = loadOrCreateIdentity(p);
  ASSERT_TRUE(again.isOk()) << again.status().toString();
  EXPECT_EQ(again->id, r->id);
}

TEST(Identity, RandomHexHasTwoLowercaseHexDigitsPerByte) {
  for (std::size_t n : {0u, 1u, 7u, 16u, 64u}) {
    std::string h = randomHex(n);
    EXPECT_EQ(h.size(), 2 * n);
    EXPECT_TRUE(isLowerHex(h)) << h;
  }
}

TEST(Identity, RandomHexDoesNotRepeat) {
  std::set<std::string> seen;
  for (int i = 0; i < 1000; ++i) seen.insert(randomHex(16));
  EXPECT_EQ(seen.size(), 1000u);
  // Over many draws every hex digit shows up.
  std::set<char> digits;
  for (char c : randomHex(4096)) digits.insert(c);
  EXPECT_EQ(digits.size(), 16u);
}

TEST(Identity, EphemeralIdentityIsAValidPeerId) {
  PeerIdentity a = ephemeralIdentity();
  PeerIdentity b = ephemeralIdentity();
  EXPECT_TRUE(isValidPeerId(a.id)) << a.id;
  EXPECT_TRUE(isValidPeerId(b.id)) << b.id;
  EXPECT_NE(a.id, b.id);
}

TEST(Identity, IsValidPeerIdAcceptsOnly32LowercaseHexDigits) {
  EXPECT_TRUE(isValidPeerId("0123456789abcdef0123456789abcdef"));
  EXPECT_TRUE(isValidPeerId(std::string(32, '0')));
  EXPECT_TRUE(isValidPeerId(std::string(32, 'f')));
  EXPECT_FALSE(isValidPeerId(""));
  EXPECT_FALSE(isValidPeerId(std::string(31, 'a')));
  EXPECT_FALSE(isValidPeerId(std::string(33, 'a')));
  EXPECT_FALSE(isValidPeerId(std::string(64, 'a')));
  EXPECT_FALSE(isValidPeerId("0123456789ABCDEF0123456789abcdef"));  // uppercase
  EXPECT_FALSE(isValidPeerId("0123456789abcdeg0123456789abcdef"));  // 'g'
  EXPECT_FALSE(isValidPeerId("0123456789abcdef0123456789abcde "));  // space
  std::string with_nul = "0123456789abcdef0123456789abcdef";
  with_nul[5] = '\0';
  EXPECT_FALSE(isValidPeerId(with_nul));
}

}  // namespace
}  // namespace loco::crypto
