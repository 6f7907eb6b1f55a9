// NAT in the lab (`--host I:nat=on|symmetric`, cli/lab/nat.h), ctest label `lab`: a NATed host
// reaches the others, its connections arrive from its router's public address, nobody reaches
// it unsolicited, and a symmetric NAT gives every connection a new port where a cone NAT keeps
// the source port. Plain TCP through python3's socket module, so the test depends on nothing of
// loco's transport.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <thread>

#include "tests/support/lab.h"
#include "tests/support/process.h"
#include "tests/support/training_run.h"

namespace loco::testing {
namespace {

// Runs a python3 program inside lab host `ns`.
std::vector<std::string> python(const std::string& ns, const std::string& program) {
  return {"lab", "exec", ns, "--", "/usr/bin/python3", "-c", program};
}

// One accept on `port` within 12 s; prints "ADDR PORT" of the connecting side.
std::vector<std::string> server(const std::string& ns, int port) {
  return python(ns,
                "import socket\n"
                "s=socket.socket()\n"
                "s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
                "s.bind(('0.0.0.0'," +
                    std::to_string(port) +
                    "))\n"
                    "s.listen()\n"
                    "s.settimeout(12)\n"
                    "c,a=s.accept()\n"
                    "print('FROM',a[0],a[1],flush=True)\n");
}

// Connects from source port `sport` (0: any) to host:port, each try within 2 s; exit 0 on
// success. A refusal (the server not listening yet: python starts slowly on a busy machine) is
// retried for up to 6 s; a timeout is not.
std::vector<std::string> client(const std::string& ns, const std::string& host, int port,
                                int sport) {
  return python(ns,
                "import socket, time\n"
                "for i in range(30):\n"
                "  s=socket.socket()\n"
                "  s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
                "  s.bind(('0.0.0.0'," +
                    std::to_string(sport) +
                    "))\n"
                    "  s.settimeout(2)\n"
                    "  try:\n"
                    "    s.connect(('" +
                    host + "'," + std::to_string(port) +
                    "))\n"
                    "    break\n"
                    "  except ConnectionRefusedError:\n"
                    "    s.close()\n"
                    "    time.sleep(0.2)\n"
                    "else:\n"
                    "  raise SystemExit('refused every time')\n");
}

// "ADDR PORT" the server saw, or "" when nothing connected.
std::string acceptedFrom(Process& p) {
  if (!p.waitExit(milliseconds(15000))) return "";
  std::smatch m;
  std::string log = p.log();
  if (std::regex_search(log, m, std::regex(R"(FROM (\S+) (\d+))")))
    return m[1].str() + " " + m[2].str();
  return "";
}

TEST(LabNat, OutgoingWorksIncomingIsDroppedSymmetricChangesPorts) {
  SKIP_WITHOUT_LAB_SUPPORT();
  TempDir dir;
  const std::string name = uniqueLabName("nat");
  LabGuard guard{dir, name};
  CommandResult up = loco(dir, {"lab", "up", name, "--hosts", "3", "--delay-ms", "2", "--host",
                                "2:nat=on", "--host", "3:nat=symmetric"});
  ASSERT_EQ(up.code, 0) << up.out;
  EXPECT_NE(up.out.find("on (inside: 192.168.2.2)"), std::string::npos) << up.out;
  EXPECT_NE(up.out.find("symmetric (inside: 192.168.3.2)"), std::string::npos) << up.out;
  const int subnet = labSubnet(name);
  ASSERT_GT(subnet, 0);
  auto addr = [&](int i) { return "10.213." + std::to_string(subnet) + "." + std::to_string(i); };
  const std::string h1 = name + "1", h2 = name + "2", h3 = name + "3";

  // Outgoing from both NATed hosts works and arrives from the router's public address; the cone
  // NAT keeps the source port, the symmetric one does not.
  for (int host : {2, 3}) {
    const std::string ns = name + std::to_string(host);
    for (int port : {7001, 7002}) {
      Process srv(server(h1, port), dir.file("srv" + std::to_string(host * 10 + port) + ".log"));
      CommandResult c = loco(dir, client(ns, addr(1), port, 40000 + host), milliseconds(10000));
      EXPECT_EQ(c.code, 0) << "host " << host << " cannot connect out\n" << c.out;
      std::string from = acceptedFrom(srv);
      ASSERT_FALSE(from.empty()) << srv.log();
      const std::string from_addr = from.substr(0, from.find(' '));
      const int from_port = std::stoi(from.substr(from.find(' ') + 1));
      EXPECT_EQ(from_addr, addr(host)) << "masqueraded behind the router's public address";
      if (host == 2)
        EXPECT_EQ(from_port, 40002) << "a cone NAT keeps the source port";
      else
        EXPECT_NE(from_port, 40003) << "a symmetric NAT maps to a new random port";
    }
  }

  // Incoming: unsolicited connections to the router's public address (the port is open
  // inside) are dropped, from a plain host and from the other NATed host.
  for (int host : {2, 3}) {
    const std::string ns = name + std::to_string(host);
    Process srv(server(ns, 7003), dir.file("in" + std::to_string(host) + ".log"));
    std::this_thread::sleep_for(milliseconds(1000));  // python starting up
    for (const std::string& from : {h1, host == 2 ? h3 : h2}) {
      CommandResult c = loco(dir, client(from, addr(host), 7003, 0), milliseconds(10000));
      EXPECT_NE(c.code, 0) << from << " reached NATed host " << host << " unsolicited";
      EXPECT_NE(c.out.find("timed out"), std::string::npos)
          << "dropped (a timeout), not refused: " << c.out;
    }
    EXPECT_TRUE(acceptedFrom(srv).empty()) << srv.log();
  }

  // `lab set` cannot change NAT after the fact.
  CommandResult set = loco(dir, {"lab", "set", name, "--host", "2:nat=off"});
  EXPECT_NE(set.code, 0);
  EXPECT_NE(set.out.find("fixed when the lab is built"), std::string::npos) << set.out;

  CommandResult down = loco(dir, {"lab", "down", name});
  ASSERT_EQ(down.code, 0) << down.out;
  EXPECT_FALSE(std::filesystem::exists("/run/netns/" + name + "_r2")) << "router removed";
}

// A DiLoCo run in a 4-host lab, hosts 2 and 3 behind NATs that keep ports and host 4 behind a
// symmetric one: `loco local --lab` needs no flag beyond the lab's. Hosts 2 and 3 join as
// reverse (p2p/connect_strategy.h): links into them are dialed back, the link between them is
// punched through both routers (p2p/traversal.h); host 4 cannot be punched and is relayed (the
// coordinator runs a relay), and it is dialed back through its relay by the NATed hosts. TLS end
// to end on every path. Every peer holds the same state after every round, and the losses equal
// those of the same run without NAT (same seed, same membership).
TEST(LabNat, TrainingWithTwoNatedHostsMatchesTheRunWithout) {
  SKIP_WITHOUT_LAB_SUPPORT();
  TempDir dir;
  auto flags = tiny(writeCorpus(dir));
  for (std::string f : {"--peers", "4", "--steps", "30", "--inner-steps", "10"}) flags.push_back(f);
  // Info level: each link that is not direct says how it came up, and in how long.
  std::replace(flags.begin(), flags.end(), std::string("warn"), std::string("info"));
  std::map<std::string, std::vector<Line>> runs;
  for (const bool nat : {true, false}) {
    const std::string name = uniqueLabName(nat ? "natt" : "plain");
    LabGuard guard{dir, name};
    std::vector<std::string> up{"lab", "up", name, "--hosts", "4", "--delay-ms", "5"};
    if (nat)
      up.insert(up.end(),
                {"--host", "2:nat=on", "--host", "3:nat=on", "--host", "4:nat=symmetric"});
    CommandResult r = loco(dir, up);
    ASSERT_EQ(r.code, 0) << r.out;
    const std::string out = dir.file(nat ? "nat" : "plain");
    std::vector<std::string> args{"local", "--lab", name, "--out", out};
    args.insert(args.end(), flags.begin(), flags.end());
    CommandResult run = loco(dir, args, milliseconds(240000));
    ASSERT_EQ(run.code, 0) << run.out;
    std::map<std::uint64_t, std::set<std::string>> digests;
    for (int p = 1; p <= 4; ++p) {
      for (const Line& l : readJsonl(out + "/peer-" + std::to_string(p) + ".jsonl"))
        digests[l.step].insert(l.digest);
    }
    ASSERT_FALSE(digests.empty());
    for (auto& [step, ds] : digests) EXPECT_EQ(ds.size(), 1u) << "step " << step;
    runs[nat ? "nat" : "plain"] = readJsonl(out + "/run.jsonl");
    if (nat) {
      // Peers 1, 2 and 3 live in hosts 2, 3 and 4 (round-robin after the coordinator in host 1).
      int reverse = 0, relayed = 0, dialed_back = 0, punched = 0, through_relay = 0;
      std::string slowest;
      double slowest_ms = 0;
      for (int p = 1; p <= 4; ++p) {
        const std::string log = readFile(out + "/peer-" + std::to_string(p) + ".log");
        reverse += log.find("reached reverse") != std::string::npos;
        relayed += log.find("reached relayed") != std::string::npos;
        std::smatch m;
        for (auto it = log.cbegin(); std::regex_search(
                 it, log.cend(), m, std::regex(R"(up by (reverse|punched|relayed) in (\d+) ms)"));
             it = m.suffix().first) {
          (m[1] == "reverse" ? dialed_back : m[1] == "punched" ? punched : through_relay)++;
          const double ms = std::stod(m[2]);
          if (ms > slowest_ms) slowest_ms = ms, slowest = m[0];
        }
      }
      EXPECT_EQ(reverse, 2) << run.out;
      EXPECT_EQ(relayed, 1) << "only the symmetric NAT needs the relay";
      EXPECT_GE(dialed_back, 1) << "links into the NATed peers are dialed back";
      EXPECT_GE(punched, 1) << "the link between the two port-keeping NATs is punched";
      EXPECT_GE(through_relay, 1) << "links into the symmetric NAT go through the relay";
      // A link that is dialed back or punched comes up well within a second (25 ms hops).
      EXPECT_LT(slowest_ms, 1000) << slowest;
      std::printf("links dialed back: %d, punched: %d, relayed: %d, slowest: %s\n", dialed_back,
                  punched, through_relay, slowest.c_str());
      // TLS end to end (loco local's default): the relay forwards the sessions unread; a peer
      // under --insecure would have said so at warn level.
      EXPECT_FALSE(readFile(out + "/ca/ca.key").empty());
      for (int p = 1; p <= 4; ++p) {
        const std::string log = readFile(out + "/peer-" + std::to_string(p) + ".log");
        EXPECT_EQ(log.find("plaintext and unauthenticated"), std::string::npos) << log;
      }
      EXPECT_NE(run.out.find("relay for the lab's NATed hosts"), std::string::npos) << run.out;
    }
  }
  // The same rounds with the same losses. `loco local --lab` measures the topology, and the ring
  // order it picks from measured rates (relayed links are slower) decides the fp32 summation
  // order, so bit-identity across the two runs holds only when both keep the same ring; the
  // losses agree closely either way.
  const auto& a = runs["nat"];
  const auto& b = runs["plain"];
  ASSERT_EQ(a.size(), b.size());
  int identical = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].step, b[i].step);
    EXPECT_NEAR(a[i].loss, b[i].loss, 0.01 * std::abs(b[i].loss)) << "step " << a[i].step;
    identical += a[i].digest == b[i].digest;
  }
  std::printf("rounds with bit-identical state in both runs: %d of %zu\n", identical, a.size());
}

// The relay a peer behind a symmetric NAT registered at is killed mid-run (`loco relay` on its
// own, in host 1): the operations using links through it abort on every peer, the peer chooses
// again (the relay is gone, so reverse: the other peers accept connections and have it dial them
// back), registers again, and the run goes on to its last step with one state on every peer.
TEST(LabNat, ARelayKilledMidRunLeavesThePeerDialedBackAndTheRunWhole) {
  SKIP_WITHOUT_LAB_SUPPORT();
  TempDir dir;
  const std::string name = uniqueLabName("nrk");
  LabGuard guard{dir, name};
  CommandResult up = loco(
      dir, {"lab", "up", name, "--hosts", "4", "--delay-ms", "2", "--host", "4:nat=symmetric"});
  ASSERT_EQ(up.code, 0) << up.out;
  const int subnet = labSubnet(name);
  ASSERT_GT(subnet, 0);
  const std::string a1 = "10.213." + std::to_string(subnet) + ".1";
  auto inHost = [&](int host, std::vector<std::string> args) {
    std::vector<std::string> out{"lab", "exec", name + std::to_string(host), "--", locoBinary()};
    out.insert(out.end(), args.begin(), args.end());
    return out;
  };
  auto portIn = [&](const std::string& file) {
    int port = 0;
    eventually(milliseconds(10000), [&] { return bool(std::ifstream(file) >> port); });
    return std::to_string(port);
  };
  Process coordinator(
      inHost(1, {"coordinator", "--listen", a1 + ":0", "--port-file", dir.file("coordinator.port"),
                 "--heartbeat-interval", "200", "--heartbeat-timeout", "3000", "--insecure"}),
      dir.file("coordinator.log"));
  Process relay(inHost(1, {"relay", "--listen", a1 + ":0", "--port-file", dir.file("relay.port")}),
                dir.file("relay.log"));
  const std::string coordinator_at = a1 + ":" + portIn(dir.file("coordinator.port"));
  const std::string relay_at = a1 + ":" + portIn(dir.file("relay.port"));
  auto flags = tiny(writeCorpus(dir));
  std::replace(flags.begin(), flags.end(), std::string("warn"), std::string("info"));
  std::vector<std::unique_ptr<Process>> peers;
  for (int host : {2, 3, 4}) {
    const std::string listen =
        host == 4 ? "192.168.4.2:0"
                  : "10.213." + std::to_string(subnet) + "." + std::to_string(host) + ":0";
    std::vector<std::string> args{"join",
                                  "--coordinator",
                                  coordinator_at,
                                  "--listen",
                                  listen,
                                  "--relay",
                                  relay_at,
                                  "--wait-for",
                                  "3",
                                  "--steps",
                                  "100",
                                  "--inner-steps",
                                  "5",
                                  "--insecure",
                                  "--metrics",
                                  dir.file("peer" + std::to_string(host) + ".jsonl")};
    args.insert(args.end(), flags.begin(), flags.end());
    peers.push_back(std::make_unique<Process>(inHost(host, args),
                                              dir.file("peer" + std::to_string(host) + ".log")));
  }
  // Kill the relay after the group has trained two rounds together.
  std::uint64_t killed_at = 0;
  ASSERT_TRUE(eventually(milliseconds(120000), [&] {
    auto lines = readJsonl(dir.file("peer4.jsonl"));
    if (lines.empty() || lines.back().step < 2) return false;
    killed_at = lines.back().step;
    return true;
  })) << peers[2]->log();
  relay.signal(SIGKILL);
  ASSERT_TRUE(relay.waitExit(milliseconds(5000)).has_value());
  for (auto& p : peers) ASSERT_EQ(p->waitExit(milliseconds(180000)).value_or(-1), 0) << p->log();
  const std::string log4 = peers[2]->log();
  EXPECT_NE(log4.find("reached relayed"), std::string::npos) << log4;
  EXPECT_NE(log4.find("lost the relay"), std::string::npos) << log4;
  EXPECT_NE(log4.find("reached reverse again"), std::string::npos) << log4;
  // One state on every peer in every round, and the NATed peer trains with the others again
  // after the kill, its links now dialed back.
  std::map<std::uint64_t, std::set<std::string>> digests;
  for (int host : {2, 3, 4}) {
    for (const Line& l : readJsonl(dir.file("peer" + std::to_string(host) + ".jsonl")))
      digests[l.step].insert(l.digest);
  }
  for (auto& [step, ds] : digests) EXPECT_EQ(ds.size(), 1u) << "step " << step;
  auto lines4 = readJsonl(dir.file("peer4.jsonl"));
  ASSERT_FALSE(lines4.empty());
  EXPECT_EQ(lines4.back().step, 20u) << "the NATed peer reached the last round";
  bool whole_after = false;
  for (const Line& l : lines4)
    whole_after = whole_after || (l.step > killed_at + 1 && l.world == 3);
  EXPECT_TRUE(whole_after) << "no round after the kill with all three peers";
  int dialed_back = 0;
  for (int host : {2, 3}) {
    const std::string log = readFile(dir.file("peer" + std::to_string(host) + ".log"));
    for (std::size_t at = log.find("up by reverse"); at != std::string::npos;
         at = log.find("up by reverse", at + 1))
      ++dialed_back;
  }
  EXPECT_GE(dialed_back, 1) << "links into the NATed peer dialed back after the relay died";
  std::printf("relay killed after round %llu; links dialed back afterwards: %d\n",
              static_cast<unsigned long long>(killed_at), dialed_back);
}

}  // namespace
}  // namespace loco::testing
