// Unit tests for the run CA and join tokens (crypto/ca.h, crypto/token.h). Each test works in its
// own temporary directory, removed afterwards.

#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <ctime>
#include <filesystem>
#include <fstream>
#include <vector>

#include "crypto/ca.h"
#include "crypto/identity.h"
#include "crypto/token.h"

namespace loco::crypto {
namespace {

namespace fs = std::filesystem;
using std::chrono::hours;

class CaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::temp_directory_path() / "loco-ca-test-XXXXXX").string();
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string ca_dir() const { return dir_ + "/ca"; }
  std::string dir_;
};

std::int64_t now() {
  return static_cast<std::int64_t>(std::time(nullptr));
}

TEST_F(CaTest, InitWritesAPrivateKeyAndRefusesASecondInit) {
  auto ca = RunCa::init(ca_dir(), hours(24));
  ASSERT_TRUE(ca.isOk()) << ca.status().message();
  struct stat st {};
  ASSERT_EQ(::stat((ca_dir() + "/ca.key").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_EQ(ca->fingerprint().size(), 64u);
  auto again = RunCa::init(ca_dir(), hours(24));
  EXPECT_EQ(again.status().code(), StatusCode::kAlreadyExists);
  // The same CA loads back with the same fingerprint.
  auto loaded = RunCa::load(ca_dir());
  ASSERT_TRUE(loaded.isOk());
  EXPECT_EQ(loaded->fingerprint(), ca->fingerprint());
}

TEST_F(CaTest, LoadRefusesAKeyOthersMayRead) {
  ASSERT_TRUE(RunCa::init(ca_dir(), hours(24)).isOk());
  ::chmod((ca_dir() + "/ca.key").c_str(), 0644);
  auto loaded = RunCa::load(ca_dir());
  EXPECT_EQ(loaded.status().code(), StatusCode::kFailedPrecondition);
}

TEST_F(CaTest, IssuedCertificateBindsTheIdAndVerifiesOnlyAgainstItsCa) {
  auto ca = RunCa::init(ca_dir(), hours(24));
  ASSERT_TRUE(ca.isOk());
  auto other = RunCa::init(dir_ + "/other", hours(24));
  ASSERT_TRUE(other.isOk());
  const std::string id = ephemeralIdentity().id;
  auto key = generateKeyPem();
  ASSERT_TRUE(key.isOk());
  auto pub = publicKeyPem(*key);
  ASSERT_TRUE(pub.isOk());
  auto cert = ca->issue(id, *pub, hours(2));
  ASSERT_TRUE(cert.isOk()) << cert.status().message();
  auto info = inspectCertificate(*cert);
  ASSERT_TRUE(info.isOk());
  EXPECT_EQ(info->id, id);
  EXPECT_NEAR(static_cast<double>(info->not_after - now()), 7200.0, 60.0);

  auto verified = verifyCertificate(*cert, ca->certPem(), now());
  ASSERT_TRUE(verified.isOk()) << verified.status().message();
  EXPECT_EQ(*verified, id);
  EXPECT_EQ(verifyCertificate(*cert, other->certPem(), now()).status().code(),
            StatusCode::kUnauthenticated);
  // Expired three hours from now.
  EXPECT_EQ(verifyCertificate(*cert, ca->certPem(), now() + 3 * 3600).status().code(),
            StatusCode::kUnauthenticated);
  // The key it certifies, and not another (a renewal that crashed between its two writes).
  EXPECT_TRUE(keyMatchesCertificate(*key, *cert));
  auto new_key = generateKeyPem();
  ASSERT_TRUE(new_key.isOk());
  EXPECT_FALSE(keyMatchesCertificate(*new_key, *cert));
  EXPECT_FALSE(keyMatchesCertificate("not a key", *cert));
}

TEST_F(CaTest, IssueRefusesBadIdsAndKeys) {
  auto ca = RunCa::init(ca_dir(), hours(24));
  ASSERT_TRUE(ca.isOk());
  auto pub = publicKeyPem(*generateKeyPem());
  EXPECT_FALSE(ca->issue("not-a-peer-id", *pub, hours(1)).isOk());
  EXPECT_FALSE(ca->issue(ephemeralIdentity().id, "garbage", hours(1)).isOk());
  EXPECT_TRUE(ca->issue(kCoordinatorId, *pub, hours(1)).isOk());
}

TEST_F(CaTest, TokensAreStoredHashedAndRedeemedWithinTheirLimits) {
  ASSERT_TRUE(RunCa::init(ca_dir(), hours(24)).isOk());
  TokenStore store(ca_dir());
  auto token = store.create(now(), 3600, 2);
  ASSERT_TRUE(token.isOk()) << token.status().message();
  EXPECT_TRUE(isWellFormedToken(*token));
  std::ifstream f(ca_dir() + "/tokens");
  std::string text((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  EXPECT_EQ(text.find(token->substr(3)), std::string::npos) << "the token is stored in clear";
  EXPECT_NE(text.find(tokenHash(*token)), std::string::npos);
  struct stat st {};
  ASSERT_EQ(::stat((ca_dir() + "/tokens").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);

  EXPECT_TRUE(store.redeem(*token, now()).isOk());
  EXPECT_TRUE(store.redeem(*token, now()).isOk());
  Status third = store.redeem(*token, now());
  EXPECT_EQ(third.code(), StatusCode::kUnauthenticated);
  EXPECT_NE(third.message().find("used up"), std::string::npos) << third.message();
  EXPECT_EQ(third.message().find(*token), std::string::npos) << "the token is echoed";
}

TEST_F(CaTest, RevokingATokenOrAPeerIdRevokesThePeersEnrolledWithIt) {
  ASSERT_TRUE(RunCa::init(ca_dir(), hours(24)).isOk());
  TokenStore store(ca_dir());
  auto shared = store.create(now(), 0, 0);
  auto own = store.create(now(), 0, 1);
  ASSERT_TRUE(shared.isOk() && own.isOk());
  const std::string a(32, 'a'), b(32, 'b'), c(32, 'c');
  ASSERT_TRUE(store.redeem(*shared, now(), a).isOk());
  ASSERT_TRUE(store.redeem(*shared, now(), b).isOk());
  ASSERT_TRUE(store.redeem(*own, now(), c).isOk());
  auto none = store.revokedPeers();
  ASSERT_TRUE(none.isOk());
  EXPECT_TRUE(none->empty());
  // By the id of one peer: its token goes, and with it every peer that enrolled with it.
  ASSERT_TRUE(store.revoke(b).isOk());
  auto revoked = store.revokedPeers();
  ASSERT_TRUE(revoked.isOk());
  EXPECT_EQ(*revoked, (std::vector<std::string>{a, b}));
  EXPECT_EQ(store.redeem(*shared, now(), std::string(32, 'd')).code(),
            StatusCode::kUnauthenticated);
  EXPECT_EQ(store.revoke(std::string(32, 'e')).code(), StatusCode::kNotFound);
  ASSERT_TRUE(store.revoke(*own).isOk());
  revoked = store.revokedPeers();
  ASSERT_TRUE(revoked.isOk());
  EXPECT_EQ(revoked->size(), 3u);
}

TEST_F(CaTest, ATokenFileWithoutPeerListsStillLoads) {
  ASSERT_TRUE(RunCa::init(ca_dir(), hours(24)).isOk());
  // The first format: six fields a line.
  ASSERT_TRUE(writePrivateFile(ca_dir() + "/tokens",
                               "loco-tokens v1\n" + std::string(64, 'f') + " 1 0 0 2 1\n")
                  .isOk());
  TokenStore store(ca_dir());
  auto listed = store.list();
  ASSERT_TRUE(listed.isOk()) << listed.status().message();
  ASSERT_EQ(listed->size(), 1u);
  EXPECT_TRUE((*listed)[0].revoked);
  EXPECT_TRUE((*listed)[0].peers.empty());
  ASSERT_TRUE(writePrivateFile(ca_dir() + "/tokens",
                               "loco-tokens v1\n" + std::string(64, 'f') + " 1 0 0 2 1 nothex\n")
                  .isOk());
  EXPECT_EQ(store.list().status().code(), StatusCode::kInvalidArgument);
}

TEST_F(CaTest, ExpiredRevokedUnknownAndMalformedTokensAreRefused) {
  ASSERT_TRUE(RunCa::init(ca_dir(), hours(24)).isOk());
  TokenStore store(ca_dir());
  auto expiring = store.create(now(), 60, 0);
  ASSERT_TRUE(expiring.isOk());
  Status expired = store.redeem(*expiring, now() + 61);
  EXPECT_NE(expired.message().find("expired"), std::string::npos) << expired.message();
  EXPECT_TRUE(store.redeem(*expiring, now()).isOk());

  auto revoked = store.create(now(), 0, 0);
  ASSERT_TRUE(revoked.isOk());
  ASSERT_TRUE(store.revoke(tokenHash(*revoked).substr(0, 12)).isOk());
  Status r = store.redeem(*revoked, now());
  EXPECT_NE(r.message().find("revoked"), std::string::npos) << r.message();

  auto other = store.create(now(), 0, 0);
  ASSERT_TRUE(store.revoke(*other).isOk());  // by the token itself
  EXPECT_EQ(store.redeem(*other, now()).code(), StatusCode::kUnauthenticated);

  EXPECT_EQ(store.redeem("lt_" + std::string(32, 'a'), now()).code(), StatusCode::kUnauthenticated);
  EXPECT_EQ(store.redeem("not a token", now()).code(), StatusCode::kUnauthenticated);
  EXPECT_EQ(store.revoke("abc").code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(store.revoke("ffffffffffff").code(), StatusCode::kNotFound);
  auto listed = store.list();
  ASSERT_TRUE(listed.isOk());
  EXPECT_EQ(listed->size(), 3u);
}

TEST(JoinStringTest, RoundTripsAndRejectsMalformedStrings) {
  const std::string fp(64, 'a');
  const std::string token = "lt_" + std::string(32, '0');
  JoinString j{"coord.example.org", 7000, fp, token};
  const std::string s = formatJoinString(j);
  EXPECT_EQ(s, "loco://coord.example.org:7000#sha256=" + fp + "?token=" + token);
  auto back = parseJoinString(s);
  ASSERT_TRUE(back.isOk()) << back.status().message();
  EXPECT_EQ(back->host, j.host);
  EXPECT_EQ(back->port, 7000);
  EXPECT_EQ(back->ca_fingerprint, fp);
  EXPECT_EQ(back->token, token);

  auto v6 = parseJoinString("loco://[::1]:7000#sha256=" + fp);
  ASSERT_TRUE(v6.isOk()) << v6.status().message();
  EXPECT_EQ(v6->host, "::1");
  EXPECT_TRUE(v6->token.empty());
  EXPECT_EQ(formatJoinString(*v6), "loco://[::1]:7000#sha256=" + fp);

  for (const std::string& bad : std::vector<std::string>{
           "http://h:1#sha256=" + fp, std::string("loco://h:1"), "loco://h#sha256=" + fp,
           "loco://h:0#sha256=" + fp, "loco://h:70000#sha256=" + fp, "loco://h:1#sha256=abc",
           "loco://h:1#md5=" + fp, "loco://h:1#sha256=" + fp + "?tok=" + token,
           "loco://h:1#sha256=" + fp + "?token=secret", "loco://::1:7000#sha256=" + fp,
           "loco://h:1x#sha256=" + fp, "loco://" + std::string(":1#sha256=") + fp,
           "loco://h:1#sha256=" + std::string(64, 'G')}) {
    auto parsed = parseJoinString(bad);
    EXPECT_EQ(parsed.status().code(), StatusCode::kInvalidArgument) << bad;
    EXPECT_EQ(parsed.status().message().find("secret"), std::string::npos);
  }
}

}  // namespace
}  // namespace loco::crypto
