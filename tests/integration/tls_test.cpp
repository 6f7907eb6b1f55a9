// TLS with real processes (ARCHITECTURE.md §10): a run CA, join tokens and join strings, and the
// attacks that must fail. Each test starts its own coordinator on 127.0.0.1 and kills every
// process it started (tests/support/process.h). Registered without LOCO_INSECURE.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <thread>

#include "p2p/frame.h"
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

// GET `path` from 127.0.0.1:`port` (the coordinator's --http); "" when it does not answer.
std::string httpGet(int port, const std::string& path) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<std::uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  timeval tv{5, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  std::string out;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0) {
    const std::string req = "GET " + path + " HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
    if (::send(fd, req.data(), req.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(req.size())) {
      char buf[4096];
      for (ssize_t n; (n = ::recv(fd, buf, sizeof(buf), 0)) > 0;) out.append(buf, n);
    }
  }
  ::close(fd);
  return out;
}

// The value of one Prometheus series line (`loco_tls_refused_total{reason="certificate"}`), 0 if
// absent.
double metric(const std::string& text, const std::string& series) {
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(series + " ", 0) == 0) return std::stod(line.substr(series.size() + 1));
  }
  return 0;
}

std::size_t occurrences(const std::string& text, const std::string& what) {
  std::size_t n = 0;
  for (auto at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

// `openssl s_client` against the coordinator as an attacker would run it: TLS 1.3, the client
// certificate given (or none), `stdin_file` sent once the handshake is done, bounded by 15 s.
CommandResult sClient(const TempDir& dir, int port, const std::string& cert, const std::string& key,
                      const std::string& stdin_file) {
  std::string cmd = "timeout 15 openssl s_client -connect 127.0.0.1:" + std::to_string(port) +
                    " -tls1_3 -quiet -ign_eof";
  if (!cert.empty()) cmd += " -cert " + cert + " -key " + key;
  cmd += " < " + stdin_file + " 2>&1";
  static int n = 0;
  Process p("/bin/sh", {"-c", cmd}, dir.file("s_client" + std::to_string(n++) + ".log"));
  auto rc = p.waitExit(milliseconds(20000));
  return {rc.value_or(-1), p.log()};
}

// Issue 15's attacks at the coordinator's door, each with a real client (openssl s_client):
// no certificate, a certificate from another CA, an expired certificate of this run. Each is
// refused, counted in a labelled metric (tls.refused{reason}) and logged once with the reason,
// and a member that was there before stays a member through all of it.
TEST(Tls, NoCertificateOtherCaAndExpiredCertificatesAreRefusedCountedAndLoggedOnce) {
  TempDir dir;
  SecureRun run(dir, {"--cert-lifetime", "10s", "--http", "127.0.0.1:0", "--http-port-file",
                      dir.file("http.port")});
  int http = 0;
  ASSERT_TRUE(eventually(milliseconds(10000), [&] {
    http = std::atoi(readFile(dir.file("http.port")).c_str());
    return http > 0;
  }));
  // A certificate of this run that expires: a peer enrolls (10 s certificates) and dies before
  // renewing; its material stays on disk.
  {
    Process victim(idleJoin(run.joinString(), {"--identity", dir.file("old.id")}),
                   dir.file("peer-old.log"));
    ASSERT_TRUE(eventually(milliseconds(15000), [&] { return isMember(victim.log()); }))
        << victim.log();
  }
  const auto victim_gone = std::chrono::steady_clock::now();
  Process member(idleJoin(run.joinString(), {"--identity", dir.file("a.id")}),
                 dir.file("peer-a.log"));
  ASSERT_TRUE(eventually(milliseconds(15000), [&] { return isMember(member.log()); }))
      << member.log();
  // Another CA: a self-signed certificate, as anyone can make.
  ASSERT_EQ(loco(dir, {"ca", "init", "--dir", dir.file("other")}).code, 0);
  Process mk("/bin/sh",
             {"-c",
              "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
              "-keyout " +
                  dir.file("other.key") + " -out " + dir.file("other.pem") +
                  " -subj /CN=intruder -days 1"},
             dir.file("openssl-req.log"));
  ASSERT_EQ(mk.waitExit(milliseconds(20000)).value_or(-1), 0) << mk.log();
  // What a client sends once connected: a status request, which needs a certificate.
  p2p::FrameHeader h;
  h.type = p2p::MsgType::kStatusRequest;
  const auto frame = p2p::encodeFrame(h, {});
  {
    std::ofstream f(dir.file("status-request.bin"), std::ios::binary);
    f.write(reinterpret_cast<const char*>(frame.data()), static_cast<long>(frame.size()));
  }
  std::ofstream(dir.file("empty.bin")).flush();
  // The old peer's certificate has expired (it was issued before its process was killed).
  std::this_thread::sleep_until(victim_gone + milliseconds(10500));

  auto no_cert = sClient(dir, run.port, "", "", dir.file("status-request.bin"));
  EXPECT_NE(no_cert.out.find("without a client certificate"), std::string::npos) << no_cert.out;
  auto other_ca =
      sClient(dir, run.port, dir.file("other.pem"), dir.file("other.key"), dir.file("empty.bin"));
  auto expired = sClient(dir, run.port, dir.file("old.id.tls/cert.pem"),
                         dir.file("old.id.tls/key.pem"), dir.file("empty.bin"));
  std::string metrics;
  ASSERT_TRUE(eventually(milliseconds(10000),
                         [&] {
                           metrics = httpGet(http, "/metrics");
                           return metric(metrics,
                                         R"(loco_tls_refused_total{reason="certificate"})") >= 2;
                         }))
      << metrics << run.coordinator->log();
  EXPECT_EQ(metric(metrics, R"(loco_tls_refused_total{reason="no_client_certificate"})"), 1)
      << metrics;
  EXPECT_EQ(metric(metrics, R"(loco_tls_refused_total{reason="certificate"})"), 2) << metrics;
  const std::string log = run.coordinator->log();
  EXPECT_EQ(occurrences(log, "without a client certificate"), 1u) << log;
  EXPECT_EQ(occurrences(log, "certificate is refused (self-signed certificate)"), 1u) << log;
  EXPECT_EQ(occurrences(log, "certificate is refused (certificate has expired)"), 1u) << log;
  EXPECT_TRUE(member.running()) << member.log();
  EXPECT_EQ(member.log().find("lost the coordinator"), std::string::npos) << member.log();
}

// A flood of TLS handshakes that never finish (a ClientHello's first bytes, then silence): each
// is closed by the handshake timeout, the number held at once is bounded, and a peer that
// enrolls during the flood gets in.
TEST(Tls, AFloodOfUnfinishedHandshakesIsBoundedAndOthersAreServed) {
  TempDir dir;
  SecureRun run(dir, {"--handshake-timeout", "2000"});
  std::vector<int> flood;
  for (int i = 0; i < 300; ++i) {
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<std::uint16_t>(run.port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
    // A TLS record header announcing a 512-byte ClientHello, and 4 of its bytes.
    const unsigned char partial[] = {0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc};
    ::send(fd, partial, sizeof(partial), MSG_NOSIGNAL);
    flood.push_back(fd);
  }
  const auto t0 = std::chrono::steady_clock::now();
  Process peer(idleJoin(run.joinString(), {"--identity", dir.file("a.id")}), dir.file("peer.log"));
  EXPECT_TRUE(eventually(milliseconds(15000), [&] { return isMember(peer.log()); }))
      << peer.log() << run.coordinator->log();
  EXPECT_LT(openFdCount(run.coordinator->pid()), 400) << "unfinished handshakes are bounded";
  // Every flood connection is closed by the coordinator (EOF or reset), within the handshake
  // timeout plus scheduling slack.
  std::size_t closed = 0;
  for (int fd : flood) {
    timeval tv{8, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    char b;
    const ssize_t n = ::recv(fd, &b, 1, 0);
    closed += n == 0 || (n < 0 && errno == ECONNRESET);
    ::close(fd);
  }
  EXPECT_EQ(closed, flood.size());
  EXPECT_LT(secondsSince(t0), 12.0);
  EXPECT_TRUE(peer.running()) << peer.log();
  EXPECT_TRUE(run.coordinator->running());
}

// Issue 15 item 4: a process with a valid certificate of the run (peer c's) opens a link stream
// to member a claiming to be member b. a refuses it (the certificate is c's, the LinkHello says
// b), counts and logs it once, and a and b train on undisturbed.
TEST(Tls, ALinkStreamClaimingAnotherMembersIdIsRefused) {
  TempDir dir;
  SecureRun run(dir);
  const std::string corpus = writeCorpus(dir);
  std::vector<std::unique_ptr<Process>> peers;
  for (int r = 0; r < 2; ++r)
    peers.push_back(trainingJoin(dir, run.joinString({"--uses", "1"}), r, 2, corpus));
  auto rounds = [&](int r) { return readJsonl(dir.file("peer" + std::to_string(r) + ".jsonl")); };
  ASSERT_TRUE(eventually(milliseconds(90000),
                         [&] { return rounds(0).size() >= 2 && rounds(1).size() >= 2; }))
      << peers[0]->log() << peers[1]->log();
  {
    Process c(idleJoin(run.joinString(), {"--identity", dir.file("c.id")}), dir.file("peer-c.log"));
    ASSERT_TRUE(eventually(milliseconds(15000), [&] { return isMember(c.log()); })) << c.log();
  }
  const std::string a = peerIdIn(dir.file("peer0.id")), b = peerIdIn(dir.file("peer1.id")),
                    c = peerIdIn(dir.file("c.id"));
  auto status =
      loco(dir, {"status", "--coordinator", run.address(), "--ca", dir.file("ca"), "--json"});
  ASSERT_EQ(status.code, 0) << status.out;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(
      status.out, m, std::regex("\"id\":\"" + a + "\",\"addr\":\"127\\.0\\.0\\.1:([0-9]+)\"")))
      << status.out;
  const int a_port = std::stoi(m[1].str());

  p2p::LinkHelloMsg hello;
  hello.link_id = "spoofed-link";
  hello.from_peer = b;
  hello.stream_index = 0;
  hello.stream_count = 1;
  hello.chunk_bytes = 1u << 20;  // the default, so that only the id is wrong
  const auto payload = p2p::encodeLinkHello(hello);
  p2p::FrameHeader h;
  h.type = p2p::MsgType::kLinkHello;
  h.length = static_cast<std::uint32_t>(payload.size());
  const auto frame = p2p::encodeFrame(h, payload);
  {
    std::ofstream f(dir.file("link-hello.bin"), std::ios::binary);
    f.write(reinterpret_cast<const char*>(frame.data()), static_cast<long>(frame.size()));
  }
  const std::size_t before = rounds(0).size();
  auto spoof = sClient(dir, a_port, dir.file("c.id.tls/cert.pem"), dir.file("c.id.tls/key.pem"),
                       dir.file("link-hello.bin"));
  EXPECT_NE(spoof.code, -1) << "the stream was closed, not left open: " << spoof.out;
  const std::string claim =
      "the certificate is for " + c.substr(0, 8) + " but LinkHello claims " + b.substr(0, 8);
  ASSERT_TRUE(eventually(milliseconds(5000), [&] {
    return peers[0]->log().find(claim) != std::string::npos;
  })) << peers[0]->log();
  EXPECT_EQ(occurrences(peers[0]->log(), claim), 1u) << peers[0]->log();
  // a and b go on in the same epoch, both contributing.
  ASSERT_TRUE(eventually(milliseconds(30000), [&] { return rounds(0).size() >= before + 2; }))
      << peers[0]->log();
  const auto lines = rounds(0);
  EXPECT_EQ(lines.back().contributors, 2);
  EXPECT_EQ(lines.back().epoch, lines[before - 1].epoch);
}

// The folders `loco join` makes for a fresh identity's key and certificate (no --identity).
std::set<std::string> throwawayTlsDirs() {
  std::set<std::string> out;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator("/tmp", ec)) {
    const std::string name = e.path().filename().string();
    if (name.rfind("loco-join-", 0) == 0) out.insert(e.path().string());
  }
  return out;
}

// Issue 15 item 6: a peer joining with a join string and no --identity enrolls a fresh key in a
// folder of its own, and that private key goes when the peer goes: after a refused join, after
// an idle peer's SIGTERM, and after a training peer's (loco-train, which took the process over).
TEST(Tls, AFreshIdentitysKeyIsRemovedWhenThePeerEnds) {
  TempDir dir;
  SecureRun run(dir);
  const std::set<std::string> before = throwawayTlsDirs();
  auto leftBehind = [&] {
    std::vector<std::string> out;
    for (const auto& d : throwawayTlsDirs()) {
      if (!before.count(d)) out.push_back(d);
    }
    return out;
  };
  const std::string revoked = run.joinString();
  ASSERT_EQ(loco(dir, {"token", "revoke", "--ca", dir.file("ca"),
                       revoked.substr(revoked.find("token=") + 6)})
                .code,
            0);
  EXPECT_NE(loco(dir, idleJoin(revoked)).code, 0);
  EXPECT_TRUE(leftBehind().empty()) << "a refused join left " << leftBehind().front();

  const std::string corpus = writeCorpus(dir);
  std::vector<std::string> training{"join",        run.joinString(), "--listen",
                                    "127.0.0.1:0", "--wait-for",     "2"};
  for (const auto& f : tiny(corpus)) training.push_back(f);
  for (const auto& args : {idleJoin(run.joinString()), training}) {
    Process peer(args, dir.file("peer.log"));
    // Enrolled: the folder holds the certificate.
    ASSERT_TRUE(eventually(milliseconds(20000), [&] {
      auto dirs = leftBehind();
      return dirs.size() == 1 && std::filesystem::exists(dirs[0] + "/cert.pem");
    })) << peer.log();
    peer.signal(SIGTERM);
    ASSERT_TRUE(peer.waitExit(milliseconds(15000)).has_value()) << peer.log();
    EXPECT_TRUE(leftBehind().empty()) << args[1] << " left " << leftBehind().front() << "\n"
                                      << peer.log();
  }
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
