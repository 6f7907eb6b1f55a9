// `loco doctor`'s TLS checks (cli/ops/doctor_tls.h) on certificates made here: each problem a
// volunteer meets (a wrong or cut join string, a missing or cut token, a token file others may
// read, a certificate from another run, a clock behind, an expired certificate) gives FAIL with
// its fix, and a good setup passes.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <string>

#include "cli/ops/doctor_tls.h"
#include "crypto/ca.h"
#include "crypto/identity.h"

namespace loco::ops {
namespace {

using std::chrono::hours;

class DoctorTls : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/loco-doctor-tls-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    auto ca = crypto::RunCa::init(dir_ + "/ca", hours(24));
    ASSERT_TRUE(ca.isOk()) << ca.status().message();
    ca_.emplace(std::move(*ca));
    auto other = crypto::RunCa::init(dir_ + "/other", hours(24));
    ASSERT_TRUE(other.isOk());
    other_.emplace(std::move(*other));
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  // A join string's inputs for this run, with a good token, and a certificate for `id` from
  // `ca` valid for `lifetime`.
  TlsDoctorInputs inputs(const crypto::RunCa& ca, std::chrono::seconds lifetime) {
    TlsDoctorInputs in;
    in.join = crypto::JoinString{"coord.example.org", 7000, ca_->fingerprint(), token_};
    in.join_text = crypto::formatJoinString(*in.join);
    in.token = token_;
    in.token_source = "the join string";
    in.tls_dir = dir_ + "/me.id.tls";
    in.tls_dir_exists = true;
    auto key = crypto::generateKeyPem();
    auto pub = crypto::publicKeyPem(*key);
    auto cert = ca.issue(id_, *pub, lifetime);
    EXPECT_TRUE(cert.isOk());
    in.cert_pem = *cert;
    in.ca_pem = ca.certPem();
    in.identity_id = id_;
    in.now_unix = static_cast<std::int64_t>(std::time(nullptr));
    return in;
  }
  static const Check& find(const std::vector<Check>& checks, const std::string& name) {
    for (const auto& c : checks)
      if (c.name == name) return c;
    static Check none{"missing", CheckLevel::kFail, "no such check", ""};
    return none;
  }

  std::string dir_;
  std::optional<crypto::RunCa> ca_, other_;
  const std::string id_ = std::string(32, 'a');
  const std::string token_ = "lt_" + std::string(32, '7');
};

TEST_F(DoctorTls, AGoodCertificateNeedsNoTokenAndPasses) {
  bool usable = false;
  auto checks = tlsChecks(inputs(*ca_, hours(24)), &usable);
  EXPECT_TRUE(usable);
  EXPECT_FALSE(anyFailed(checks)) << renderChecks(checks, "t");
  EXPECT_NE(find(checks, "certificate").message.find("renews it"), std::string::npos);
  EXPECT_NE(find(checks, "join token").message.find("not needed"), std::string::npos);
}

TEST_F(DoctorTls, AFirstJoinNeedsAWellFormedToken) {
  auto in = inputs(*ca_, hours(24));
  in.tls_dir_exists = false;
  in.cert_pem.clear();
  EXPECT_FALSE(anyFailed(tlsChecks(in)));
  in.token = "lt_7777";  // cut off when copied
  auto cut = tlsChecks(in);
  EXPECT_EQ(find(cut, "join token").level, CheckLevel::kFail);
  EXPECT_NE(find(cut, "join token").message.find("cut off"), std::string::npos);
  EXPECT_NE(find(cut, "join token").fix.find("loco token create"), std::string::npos);
  in.token.clear();
  EXPECT_NE(find(tlsChecks(in), "join token").fix.find("LOCO_JOIN_TOKEN"), std::string::npos);
  in.token_source = "--token-file /home/v/token";
  in.token_error = "/home/v/token may be read by others";
  EXPECT_EQ(find(tlsChecks(in), "join token").fix, "chmod 600 /home/v/token");
}

TEST_F(DoctorTls, ABrokenJoinStringSaysHowToCopyIt) {
  TlsDoctorInputs in;
  in.join_text = "loco://coord:7000#sha256=abc";
  in.join_error = "malformed join string (the fingerprint is not 64 lowercase hex digits)";
  auto checks = tlsChecks(in);
  EXPECT_EQ(find(checks, "join string").level, CheckLevel::kFail);
  EXPECT_NE(find(checks, "join string").fix.find("single quotes"), std::string::npos);
  EXPECT_EQ(find(checks, "join token").name, "missing") << "its token is part of the string";
}

TEST_F(DoctorTls, ACertificateFromAnotherRunIsRefusedWithTheFix) {
  auto checks = tlsChecks(inputs(*other_, hours(24)));
  const Check& c = find(checks, "certificate");
  EXPECT_EQ(c.level, CheckLevel::kFail);
  EXPECT_NE(c.message.find("another run's CA"), std::string::npos) << c.message;
  EXPECT_NE(c.fix.find("--identity"), std::string::npos) << c.fix;
}

TEST_F(DoctorTls, AClockBehindTheCertificateIsNamed) {
  auto in = inputs(*ca_, hours(24));
  in.now_unix -= 3600;  // this machine's clock an hour behind the coordinator's
  const Check& c = find(tlsChecks(in), "certificate");
  EXPECT_EQ(c.level, CheckLevel::kFail);
  EXPECT_NE(c.message.find("clock is behind"), std::string::npos) << c.message;
  EXPECT_NE(c.fix.find("timedatectl set-ntp true"), std::string::npos) << c.fix;
}

TEST_F(DoctorTls, AnExpiredCertificateFailsOnlyWithoutATokenToEnrollAgain) {
  auto in = inputs(*ca_, hours(1));
  in.now_unix += 2 * 3600;
  bool usable = true;
  auto with_token = tlsChecks(in, &usable);
  EXPECT_FALSE(usable);
  EXPECT_EQ(find(with_token, "certificate").level, CheckLevel::kWarn);
  EXPECT_FALSE(anyFailed(with_token)) << renderChecks(with_token, "t");
  in.token.clear();
  auto without = tlsChecks(in);
  EXPECT_EQ(find(without, "certificate").level, CheckLevel::kFail);
  EXPECT_NE(find(without, "certificate").fix.find("loco token create"), std::string::npos);
}

}  // namespace
}  // namespace loco::ops
