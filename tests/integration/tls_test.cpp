// TLS with real processes (ARCHITECTURE.md §10): a run CA, join tokens and join strings, and the
// attacks that must fail. Each test starts its own coordinator on 127.0.0.1 and kills every
// process it started (tests/support/process.h). Registered without LOCO_INSECURE.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <regex>
#include <string>
#include <thread>

#include "tests/support/lab.h"
#include "tests/support/process.h"
#include "tests/support/training_run.h"

namespace loco::testing {
namespace {

// A TLS coordinator with a fresh CA in dir/ca.
struct SecureRun {
  explicit SecureRun(const TempDir& d, std::vector<std::string> extra = {}) : dir(d) {
    EXPECT_EQ(loco(dir, {"ca", "init", "--dir", dir.file("ca")}).code, 0);
    std::vector<std::string> args{"coordinator",
                                  "--ca",
                                  dir.file("ca"),
                                  "--listen",
                                  "127.0.0.1:0",
                                  "--port-file",
                                  dir.file("coord.port"),
                                  "--heartbeat-interval",
                                  "200",
                                  "--heartbeat-timeout",
                                  "2000"};
    args.insert(args.end(), extra.begin(), extra.end());
    coordinator = std::make_unique<Process>(args, dir.file("coordinator.log"));
    EXPECT_TRUE(eventually(milliseconds(10000), [&] {
      port = std::atoi(readFile(dir.file("coord.port")).c_str());
      return port > 0;
    })) << coordinator->log();
  }
  std::string address() const { return "127.0.0.1:" + std::to_string(port); }
  // A join string from `loco token create` (the last line of its output).
  std::string joinString(std::vector<std::string> extra = {}) const {
    std::vector<std::string> args{"token",        "create",        "--ca",
                                  dir.file("ca"), "--coordinator", address()};
    args.insert(args.end(), extra.begin(), extra.end());
    auto r = loco(dir, args);
    EXPECT_EQ(r.code, 0) << r.out;
    std::smatch m;
    static const std::regex re(R"((loco://\S+))");
    EXPECT_TRUE(std::regex_search(r.out, m, re)) << r.out;
    return m.size() > 1 ? m[1].str() : "";
  }
  const TempDir& dir;
  std::unique_ptr<Process> coordinator;
  int port = 0;
};

// An idle peer logs each view; once it is a member, a view counts it and has nobody pending.
bool isMember(const std::string& log) {
  static const std::regex member(R"(membership epoch=\d+ world=[1-9]\d* pending=0)");
  return std::regex_search(log, member);
}

std::vector<std::string> idleJoin(const std::string& target, std::vector<std::string> extra = {}) {
  std::vector<std::string> args{"join",
                                "--idle",
                                target,
                                "--listen",
                                "127.0.0.1:0",
                                "--connect-timeout",
                                "5000",
                                "--coordinator-timeout",
                                "0"};
  args.insert(args.end(), extra.begin(), extra.end());
  return args;
}

// A training peer that enrolls with its own one-use join string; long enough to outlast the
// test (its process is killed at the end).
std::unique_ptr<Process> trainingJoin(const TempDir& dir, const std::string& join, int rank,
                                      int peers, const std::string& corpus,
                                      const std::string& log_level = "warn") {
  const std::string r = std::to_string(rank);
  std::vector<std::string> args{"join",
                                join,
                                "--listen",
                                "127.0.0.1:0",
                                "--identity",
                                dir.file("peer" + r + ".id"),
                                "--rank",
                                r,
                                "--wait-for",
                                std::to_string(peers),
                                "--metrics",
                                dir.file("peer" + r + ".jsonl"),
                                "--measure-topology",
                                "off",
                                "--inner-steps",
                                "5",
                                "--steps",
                                "1000000",
                                "--eval-every",
                                "1000000"};
  for (const auto& f : tiny(corpus)) args.push_back(f);
  args.back() = log_level;  // tiny() ends with --log-level warn
  return std::make_unique<Process>(args, dir.file("peer" + r + ".log"));
}

std::string peerIdIn(const std::string& identity_file) {
  const std::string text = readFile(identity_file);
  const auto at = text.find("id ");
  return at == std::string::npos ? "" : text.substr(at + 3, 32);
}

// Issue 15 item 4: revoking a member's token (here by its peer id) evicts it from the running
// group, whose next epoch closes every link to it; it is refused when it tries to come back,
// and the others train on without it.
TEST(Tls, ARevokedMemberIsEvictedAndRefusedAndTheOthersTrainOn) {
  TempDir dir;
  SecureRun run(dir);
  const std::string corpus = writeCorpus(dir);
  std::vector<std::unique_ptr<Process>> peers;
  for (int r = 0; r < 3; ++r)
    peers.push_back(trainingJoin(dir, run.joinString({"--uses", "1"}), r, 3, corpus));
  auto rounds = [&](int r) { return readJsonl(dir.file("peer" + std::to_string(r) + ".jsonl")); };
  ASSERT_TRUE(eventually(
      milliseconds(90000),
      [&] { return rounds(0).size() >= 3 && rounds(1).size() >= 3 && rounds(2).size() >= 3; }))
      << peers[0]->log() << peers[2]->log();
  const std::string victim = peerIdIn(dir.file("peer2.id"));
  ASSERT_EQ(victim.size(), 32u);
  auto list = loco(dir, {"token", "list", "--ca", dir.file("ca")});
  EXPECT_NE(list.out.find(victim), std::string::npos) << "the token records who enrolled";
  ASSERT_EQ(loco(dir, {"token", "revoke", "--ca", dir.file("ca"), victim}).code, 0);
  // Out within a few seconds (the coordinator reads the token file every second); it gives up
  // since its Hello is refused from then on.
  auto rc = peers[2]->waitExit(milliseconds(15000));
  ASSERT_TRUE(rc.has_value()) << peers[2]->log();
  EXPECT_NE(*rc, 0);
  EXPECT_NE(peers[2]->log().find("revoked"), std::string::npos) << peers[2]->log();
  EXPECT_NE(run.coordinator->log().find("revoked"), std::string::npos);
  // The others go on as a group of two: rounds after the revocation count two contributors.
  const std::size_t before = rounds(0).size();
  ASSERT_TRUE(eventually(milliseconds(30000), [&] { return rounds(0).size() >= before + 3; }))
      << peers[0]->log();
  EXPECT_EQ(rounds(0).back().contributors, 2);
  EXPECT_EQ(rounds(1).back().contributors, 2);
  // Its certificate is still within its lifetime, yet it cannot come back.
  auto again =
      loco(dir, {"join", "--idle", "--coordinator", run.address(), "--tls-dir",
                 dir.file("peer2.id.tls"), "--identity", dir.file("peer2.id"), "--listen",
                 "127.0.0.1:0", "--connect-timeout", "5000", "--coordinator-timeout", "0"});
  EXPECT_NE(again.code, 0);
  EXPECT_NE(again.out.find("revoked"), std::string::npos) << again.out;
}

// Issue 15 item 2: certificates of 12 s are renewed at two thirds of their lifetime, over and
// over, while two peers train: the group never changes epoch (no link dropped, nobody evicted),
// and after the first certificate expired a new connection with the renewed one works.
TEST(Tls, CertificatesAreRenewedBeforeExpiryWithoutDroppingLinks) {
  TempDir dir;
  SecureRun run(dir, {"--cert-lifetime", "12s"});
  const std::string corpus = writeCorpus(dir);
  std::vector<std::unique_ptr<Process>> peers;
  for (int r = 0; r < 2; ++r) {
    // At info level, where renewals are logged.
    peers.push_back(trainingJoin(dir, run.joinString({"--uses", "1"}), r, 2, corpus, "info"));
  }
  auto rounds = [&](int r) { return readJsonl(dir.file("peer" + std::to_string(r) + ".jsonl")); };
  ASSERT_TRUE(eventually(milliseconds(60000), [&] { return rounds(0).size() >= 2; }))
      << peers[0]->log();
  const auto first_cert = readFile(dir.file("peer0.id.tls/cert.pem"));
  // Past the first certificate's expiry (12 s after enrollment), renewed twice by then.
  std::this_thread::sleep_for(milliseconds(17000));
  for (int r = 0; r < 2; ++r) {
    ASSERT_TRUE(peers[r]->running()) << peers[r]->log();
    const std::string log = peers[r]->log();
    std::size_t renewals = 0;
    for (auto at = log.find("renewed our certificate"); at != std::string::npos;
         at = log.find("renewed our certificate", at + 1))
      ++renewals;
    EXPECT_GE(renewals, 2u) << log;
    EXPECT_EQ(log.find("renewing our certificate failed"), std::string::npos) << log;
  }
  EXPECT_NE(readFile(dir.file("peer0.id.tls/cert.pem")), first_cert);
  const auto lines = rounds(0);
  ASSERT_GE(lines.size(), 4u);
  for (const Line& l : lines) {
    if (l.step == 0) continue;  // the state before the first round
    EXPECT_EQ(l.epoch, lines[1].epoch) << "step " << l.step;
    EXPECT_EQ(l.contributors, 2) << "step " << l.step;
  }
  // A new connection with what the peer holds now: the renewed certificate.
  auto status =
      loco(dir, {"status", "--coordinator", run.address(), "--tls-dir", dir.file("peer0.id.tls")});
  EXPECT_EQ(status.code, 0) << status.out;
}

// `loco doctor` with a volunteer's join string, before it has enrolled: the coordinator is
// checked against the pin, its dial-back reaches this machine (TLS, which it cannot finish
// without a certificate), the token is not spent; a wrong pin fails with what to do.
TEST(Tls, DoctorChecksAJoinStringWithoutSpendingTheToken) {
  TempDir dir;
  SecureRun run(dir);
  const std::string join = run.joinString({"--uses", "1"});
  auto ok = loco(dir, {"doctor", join, "--listen", "127.0.0.1:0"});
  EXPECT_EQ(ok.code, 0) << ok.out;
  EXPECT_NE(ok.out.find("the coordinator connected to"), std::string::npos) << ok.out;
  EXPECT_NE(ok.out.find("doctor does not spend a use"), std::string::npos) << ok.out;
  auto list = loco(dir, {"token", "list", "--ca", dir.file("ca")});
  EXPECT_NE(list.out.find("uses=0/1"), std::string::npos) << list.out;

  std::string wrong = join;
  const auto at = wrong.find("sha256=") + 7;
  wrong[at] = wrong[at] == '0' ? '1' : '0';
  auto refused = loco(dir, {"doctor", wrong, "--listen", "127.0.0.1:0"});
  EXPECT_EQ(refused.code, 1) << refused.out;
  EXPECT_NE(refused.out.find("does not chain to the pinned CA"), std::string::npos) << refused.out;
  EXPECT_NE(refused.out.find("fix: do not join"), std::string::npos) << refused.out;

  // Enrolled: the certificate is checked, and the probe runs with it.
  Process peer(idleJoin(join, {"--identity", dir.file("v.id")}), dir.file("peer.log"));
  ASSERT_TRUE(eventually(milliseconds(15000), [&] { return isMember(peer.log()); })) << peer.log();
  const std::string pinned_only = join.substr(0, join.find('?'));
  auto enrolled =
      loco(dir, {"doctor", pinned_only, "--identity", dir.file("v.id"), "--listen", "127.0.0.1:0"});
  EXPECT_EQ(enrolled.code, 0) << enrolled.out;
  EXPECT_NE(enrolled.out.find("valid until"), std::string::npos) << enrolled.out;
}

TEST(Tls, JoinStringEnrollsOnceAndUsedUpExpiredRevokedTokensAreRefused) {
  TempDir dir;
  SecureRun run(dir);
  const std::string join = run.joinString({"--uses", "1"});
  Process peer(idleJoin(join, {"--identity", dir.file("a.id")}), dir.file("peer-a.log"));
  ASSERT_TRUE(eventually(milliseconds(15000), [&] { return isMember(peer.log()); })) << peer.log();

  auto again = loco(dir, idleJoin(join));
  EXPECT_NE(again.code, 0);
  EXPECT_NE(again.out.find("used up"), std::string::npos) << again.out;

  const std::string expiring = run.joinString({"--expires", "1s"});
  std::this_thread::sleep_for(std::chrono::milliseconds(2100));
  auto expired = loco(dir, idleJoin(expiring));
  EXPECT_NE(expired.code, 0);
  EXPECT_NE(expired.out.find("expired"), std::string::npos) << expired.out;

  const std::string revoked = run.joinString();
  const std::string token = revoked.substr(revoked.find("token=") + 6);
  ASSERT_EQ(loco(dir, {"token", "revoke", "--ca", dir.file("ca"), token}).code, 0);
  auto r = loco(dir, idleJoin(revoked));
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("revoked"), std::string::npos) << r.out;
  // The token never shows in the coordinator's log.
  EXPECT_EQ(run.coordinator->log().find(token), std::string::npos);
  // The enrolled peer stayed a member through all of it.
  EXPECT_TRUE(peer.running()) << peer.log();
}

TEST(Tls, AnUnpinnedCoordinatorIsRefusedBeforeTheTokenIsSent) {
  TempDir dir;
  SecureRun run(dir);
  const std::string join = run.joinString({"--uses", "1"});
  ASSERT_EQ(loco(dir, {"ca", "init", "--dir", dir.file("other")}).code, 0);
  auto other =
      loco(dir, {"token", "create", "--ca", dir.file("other"), "--coordinator", run.address()});
  std::smatch m;
  ASSERT_TRUE(std::regex_search(other.out, m, std::regex(R"(sha256=([0-9a-f]{64}))")));
  // The real token, pinned to another CA: as if a man in the middle answered.
  std::string pinned_elsewhere = join;
  pinned_elsewhere.replace(pinned_elsewhere.find("sha256=") + 7, 64, m[1].str());
  auto refused = loco(dir, idleJoin(pinned_elsewhere));
  EXPECT_NE(refused.code, 0);
  EXPECT_NE(refused.out.find("does not chain to the pinned CA"), std::string::npos) << refused.out;
  // Nothing was sent: the one-use token is still unused and works.
  auto list = loco(dir, {"token", "list", "--ca", dir.file("ca")});
  EXPECT_NE(list.out.find("uses=0/1"), std::string::npos) << list.out;
  Process peer(idleJoin(join), dir.file("peer.log"));
  EXPECT_TRUE(eventually(milliseconds(15000), [&] { return isMember(peer.log()); })) << peer.log();
}

TEST(Tls, AStolenCertificateCannotRegisterUnderAnotherId) {
  TempDir dir;
  SecureRun run(dir);
  {
    Process peer(idleJoin(run.joinString(), {"--identity", dir.file("a.id")}),
                 dir.file("peer-a.log"));
    ASSERT_TRUE(eventually(milliseconds(15000), [&] { return isMember(peer.log()); }))
        << peer.log();
  }
  // a.id.tls holds peer a's key and certificate; another identity presents them.
  auto stolen = loco(dir, {"join", "--idle", "--coordinator", run.address(), "--tls-dir",
                           dir.file("a.id.tls"), "--identity", dir.file("b.id"), "--listen",
                           "127.0.0.1:0", "--connect-timeout", "5000"});
  EXPECT_NE(stolen.code, 0);
  EXPECT_NE(stolen.out.find("the certificate is for"), std::string::npos) << stolen.out;
}

TEST(Tls, PlaintextAndTlsDoNotMixAndSayWhy) {
  TempDir dir;
  SecureRun run(dir);
  auto plain = loco(dir, idleJoin(run.address(), {"--insecure"}));
  EXPECT_NE(plain.code, 0);
  EXPECT_NE(plain.out.find("requires TLS"), std::string::npos) << plain.out;
  auto no_material = loco(dir, idleJoin(run.address()));
  EXPECT_EQ(no_material.code, 2);
  EXPECT_NE(no_material.out.find("--insecure"), std::string::npos) << no_material.out;

  // The reverse: a TLS peer against a plaintext coordinator.
  {
    Process peer(idleJoin(run.joinString(), {"--identity", dir.file("a.id")}),
                 dir.file("peer-a.log"));
    ASSERT_TRUE(eventually(milliseconds(15000), [&] { return isMember(peer.log()); }))
        << peer.log();
  }
  Process plain_coord({"coordinator", "--insecure", "--listen", "127.0.0.1:0", "--port-file",
                       dir.file("plain.port")},
                      dir.file("plain.log"));
  int port = 0;
  ASSERT_TRUE(eventually(milliseconds(10000), [&] {
    port = std::atoi(readFile(dir.file("plain.port")).c_str());
    return port > 0;
  }));
  auto tls_peer = loco(dir, {"join", "--idle", "--coordinator", "127.0.0.1:" + std::to_string(port),
                             "--tls-dir", dir.file("a.id.tls"), "--identity", dir.file("a.id"),
                             "--listen", "127.0.0.1:0", "--connect-timeout", "3000"});
  EXPECT_NE(tls_peer.code, 0);
  EXPECT_NE(tls_peer.out.find("TLS handshake"), std::string::npos) << tls_peer.out;
  EXPECT_TRUE(eventually(milliseconds(5000), [&] {
    return plain_coord.log().find("a TLS client reached this plaintext") != std::string::npos;
  })) << plain_coord.log();
}

TEST(Tls, LocalTrainsOverTlsByDefault) {
  TempDir dir;
  auto flags = tiny(writeCorpus(dir));
  std::vector<std::string> args{"local", "--out", dir.file("run")};
  args.insert(args.end(), flags.begin(), flags.end());
  for (std::string f : {"--peers", "2", "--steps", "20", "--inner-steps", "10"}) args.push_back(f);
  Process p(args, dir.file("local.log"));
  auto rc = p.waitExit(milliseconds(240000));
  ASSERT_EQ(rc.value_or(-1), 0) << p.log();
  // The children ran with TLS material; --insecure would have logged its warning (at warn, the
  // level tiny() sets).
  EXPECT_FALSE(readFile(dir.file("run/ca/ca.key")).empty());
  EXPECT_FALSE(readFile(dir.file("run/tls/peer-1/cert.pem")).empty());
  for (std::string name : {"coordinator", "peer-1", "peer-2"}) {
    const std::string log = readFile(dir.file("run/" + name + ".log"));
    EXPECT_EQ(log.find("plaintext and unauthenticated"), std::string::npos) << name << log;
  }
  EXPECT_EQ(readJsonl(dir.file("run/run.jsonl")).size(), 3u) << p.log();
}

}  // namespace
}  // namespace loco::testing
