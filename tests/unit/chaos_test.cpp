// loco chaos's pure half: scenario files (and the line every mistake is reported on), random
// schedules, the invariants and the per-fault assessment.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "cli/chaos/invariants.h"
#include "cli/chaos/report.h"
#include "cli/chaos/scenario.h"
#include "cli/lab/cgroup.h"

namespace loco::chaos {
namespace {

const char* kGood = R"(name = "t"
seed = 3
[swarm]
peers = 4
training = ["--steps", "100"]
[lab]
delay_ms = 5
[[fault]]
kind = "kill"
at = 10
target = "peer-2"
[[fault]]
kind = "stop"
at = 5
target = "coordinator"
duration = 3
[[fault]]
kind = "partition"
at = 20
groups = "1,2,3/4,5"
duration = 4
[[fault]]
kind = "slow_host"
at = 30
host = 5
cpu = 0.33
duration = 10
)";

TEST(ChaosScenario, ParsesAGoodFileAndSortsTheFaults) {
  auto s = parseScenario(kGood, "good.toml");
  ASSERT_TRUE(s.isOk()) << s.status().message();
  EXPECT_EQ(s->name, "t");
  EXPECT_EQ(s->seed, 3u);
  EXPECT_EQ(s->swarm.peers, 4);
  EXPECT_EQ(s->swarm.hostCount(), 5);
  EXPECT_EQ(s->swarm.hostOfPeer(1), 2);
  EXPECT_EQ(s->swarm.hostOfPeer(4), 5);
  EXPECT_EQ(s->lab.delay_ms, 5);
  ASSERT_EQ(s->faults.size(), 4u);
  EXPECT_EQ(s->faults[0].kind, FaultKind::kStop);  // at 5
  EXPECT_EQ(s->faults[0].target, "coordinator");
  EXPECT_EQ(s->faults[0].line, 13);
  EXPECT_EQ(s->faults[1].kind, FaultKind::kKill);
  EXPECT_EQ(s->faults[3].value, 0.33);
  auto flags = s->trainingFlags();
  EXPECT_NE(std::find(flags.begin(), flags.end(), "--seed"), flags.end());
}

// Every mistake is refused with the file and the line it is on.
struct Bad {
  std::string text;
  const char* where;  // "file:line"
  const char* says;
};

TEST(ChaosScenario, BadFilesFailNamingTheLine) {
  const Bad cases[] = {
      {"[[fault]]\nkind = \"explode\"\nat = 1\n", "bad.toml:2:", "unknown fault kind 'explode'"},
      {"[[fault]]\nkind = \"kill\"\nat = -3\ntarget = \"peer-1\"\n",
       "bad.toml:3:", "must not be negative"},
      {"[[fault]]\nkind = \"kill\"\nat = 1\ntarget = \"peer-9\"\n",
       "bad.toml:2:", "peer-9 does not exist"},
      {"[[fault]]\nkind = \"slow_host\"\nat = 1\nhost = 9\ncpu = 0.5\nduration = 3\n",
       "bad.toml:4:", "host 9 does not exist"},
      {"[[fault]]\nkind = \"partition\"\nat = 1\ngroups = \"1,2/7\"\n",
       "bad.toml:4:", "host 7 does not exist"},
      {"[[fault]]\nkind = \"stop\"\nat = 1\ntarget = \"peer-1\"\n",
       "bad.toml:2:", "needs duration"},
      {"[[fault]]\nkind = \"loss\"\nat = 1\nloss = 2\nduration = 1\n",
       "bad.toml:4:", "loss must be between 0 and 1"},
      {"[[fault]]\nkind = \"kill\"\nat = 1\ntarget = \"peer-1\"\ncolour = 3\n",
       "bad.toml:5:", "unknown key 'colour'"},
      {"[[fault]]\nkind = \"loss\"\nat = 1\ncpu = 0.5\nduration = 1\n",
       "bad.toml:4:", "takes no cpu"},
      {"[[fault]]\nkind = \"kill\"\nat = 1\ntarget = \"peer-1\"\nduration = 4\n",
       "bad.toml:2:", "takes no duration"},
      {"[[fault]]\nkind = \"disk_full\"\nat = 1\ntarget = \"coordinator\"\nduration = 4\n",
       "bad.toml:2:", "acts on a peer"},
      {"[swarm]\npeers = 4\ntraining = [\"--peers\", \"3\"]\n",
       "bad.toml:3:", "--peers is set by loco chaos"},
      {"name = \"Bad1\"\n", "bad.toml:1:", "bad lab name"},
      {"seed = 1\n[swarm\n", "bad.toml:2:", "not valid TOML"},
      // Found by loco_scenario_fuzz: toml++ asserted on a NUL inside a table header.
      {std::string("seed = 1\n[[\0\0fault]]\n", 21), "bad.toml:2:", "a NUL byte"},
      // And on a table header that starts with no key (an assumption in a release build).
      {"seed = 1\n[[(ault]]\nkind = \"kill\"\n", "bad.toml:2:", "must start with a key"},
      // And on some non-ASCII characters (an unreachable branch in toml++): files are ASCII.
      {"seed = 1\n[swarm]\nhear\xc3\x81"
       "beat = 3\n",
       "bad.toml:3:", "non-ASCII character"},
      {"[swarm]\npeers = 2\nhosts = 3\nwhatever = 1\n", "bad.toml:4:", "unknown key 'whatever'"},
      {"[[fault]]\nkind = \"heal\"\nat = 1\nafter_round = 3\n", "bad.toml:4:", "not both"},
      {"[[fault]]\nkind = \"heal\"\nafter_round = 0\n", "bad.toml:3:", "at least 1"},
      {"[[fault]]\nkind = \"heal\"\nat = 1\n[[fault]]\nkind = \"heal\"\nafter_round = 3\n",
       "bad.toml:5:", "not a mix"},
      {"[[fault]]\nkind = \"heal\"\n", "bad.toml:2:", "needs at = SECONDS or after_round"},
      {"[[fault]]\nkind = \"failover\"\nat = 1\n", "bad.toml:2:", "needs a standby coordinator"},
      {"[swarm]\nstandby = true\n[[fault]]\nkind = \"failover\"\nat = 1\ntarget = "
       "\"coordinator\"\n",
       "bad.toml:4:", "takes no target"},
      {"[swarm]\nstandby = true\n[[fault]]\nkind = \"failover\"\nat = 1\nduration = 2\n",
       "bad.toml:4:", "takes no duration"},
      {"[swarm]\nstandby = 1\n", "bad.toml:2:", "standby must be true or false"},
  };
  for (const Bad& b : cases) {
    auto s = parseScenario(b.text, "bad.toml");
    ASSERT_FALSE(s.isOk()) << b.text;
    EXPECT_EQ(s.status().code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(s.status().message().rfind(b.where, 0), 0u)
        << "want it to start with " << b.where << ": " << s.status().message();
    EXPECT_NE(s.status().message().find(b.says), std::string::npos) << s.status().message();
  }
}

TEST(ChaosScenario, FaultsAfterANumberOfRounds) {
  auto s = parseScenario(
      "[[fault]]\nkind = \"kill\"\nafter_round = 50\ntarget = \"peer-1\"\n"
      "[[fault]]\nkind = \"heal\"\nafter_round = 20\n",
      "rounds.toml");
  ASSERT_TRUE(s.isOk()) << s.status().message();
  ASSERT_EQ(s->faults.size(), 2u);
  EXPECT_EQ(s->faults[0].after_round, 20u) << "sorted by round";
  EXPECT_EQ(s->faults[1].after_round, 50u);
  auto again = parseScenario(toToml(*s), "again.toml");
  ASSERT_TRUE(again.isOk()) << again.status().message();
  EXPECT_EQ(again->faults[1].after_round, 50u);
}

TEST(ChaosScenario, TheSampleScenariosAreValid) {
  for (const char* name : {"peer-faults", "coordinator-faults", "wan-everything"}) {
    auto s = loadScenario(std::string(LOCO_SOURCE_DIR) + "/tests/chaos/" + name + ".toml");
    ASSERT_TRUE(s.isOk()) << name << ": " << s.status().message();
    EXPECT_FALSE(s->faults.empty()) << name;
  }
  // wan-everything uses every kind.
  auto all = loadScenario(std::string(LOCO_SOURCE_DIR) + "/tests/chaos/wan-everything.toml");
  ASSERT_TRUE(all.isOk());
  for (FaultKind k : allFaultKinds()) {
    bool used = false;
    for (const Fault& f : all->faults) used = used || f.kind == k;
    EXPECT_TRUE(used) << faultKindName(k);
  }
}

TEST(ChaosScenario, RandomScheduleIsSeededValidAndSpaced) {
  Scenario base;
  base.swarm.peers = 5;
  auto kinds = allFaultKinds();
  Scenario a = randomScenario(base, 42, 1800, kinds, true);
  Scenario b = randomScenario(base, 42, 1800, kinds, true);
  Scenario c = randomScenario(base, 43, 1800, kinds, true);
  ASSERT_GE(a.faults.size(), 20u) << "a fault every minute or so over 30 minutes";
  EXPECT_EQ(toToml(a), toToml(b)) << "same seed, same schedule";
  EXPECT_NE(toToml(a), toToml(c));
  // What was drawn reads back as a valid scenario (the runner saves it as scenario.toml).
  auto again = parseScenario(toToml(a), "random.toml");
  ASSERT_TRUE(again.isOk()) << again.status().message() << "\n" << toToml(a);
  EXPECT_EQ(again->faults.size(), a.faults.size());
  std::set<FaultKind> seen;
  for (std::size_t i = 0; i < a.faults.size(); ++i) {
    seen.insert(a.faults[i].kind);
    EXPECT_LT(a.faults[i].at_s, 1800 - 30);
    if (i > 0) {
      // One at a time: the previous fault is over (and 15 s passed) before the next begins.
      EXPECT_GE(a.faults[i].at_s, a.faults[i - 1].at_s + a.faults[i - 1].duration_s + 14.9);
    }
  }
  EXPECT_GE(seen.size(), 8u) << "a 30-minute schedule draws most kinds";
  Scenario peers_only = randomScenario(base, 42, 1800, {FaultKind::kKill}, false);
  for (const Fault& f : peers_only.faults) EXPECT_NE(f.target, "coordinator");
  EXPECT_EQ(seen.count(FaultKind::kFailover), 0u) << "no failover without a standby";
}

TEST(ChaosScenario, FailoversAreDrawnOnlyWithAStandbyAndCoordinatorFaults) {
  Scenario base;
  base.swarm.peers = 5;
  base.swarm.standby = true;
  auto count = [](const Scenario& s) {
    std::size_t n = 0;
    for (const Fault& f : s.faults) n += f.kind == FaultKind::kFailover;
    return n;
  };
  Scenario with = randomScenario(base, 7, 3600, allFaultKinds(), true);
  EXPECT_GE(count(with), 1u) << "an hour draws a failover";
  auto again = parseScenario(toToml(with), "random.toml");
  ASSERT_TRUE(again.isOk()) << again.status().message() << "\n" << toToml(with);
  EXPECT_TRUE(again->swarm.standby);
  EXPECT_EQ(count(*again), count(with));
  EXPECT_EQ(count(randomScenario(base, 7, 3600, allFaultKinds(), false)), 0u)
      << "--coordinator-faults off";
}

RoundLine line(const std::string& peer, std::uint64_t step, std::uint64_t epoch, long pid,
               const std::string& digest, int contributors = 3) {
  RoundLine r;
  r.peer = peer;
  r.step = step;
  r.epoch = epoch;
  r.pid = pid;
  r.digest = digest;
  r.contributors = contributors;
  r.world = 3;
  r.loss = 2.0;
  return r;
}

std::size_t violations(const std::vector<Verdict>& vs, const std::string& name) {
  for (const auto& v : vs) {
    if (v.invariant == name) return v.violations.size();
  }
  return 999;
}

TEST(ChaosInvariants, ParsesTheJoinTrainRecord) {
  auto r = parseRoundLine(
      R"({"rank":1,"peer":"b1720014","step":298,"inner_step":2980,"world":3,"contributors":3,"loss":0.173846,"val_loss":null,"bytes_sent":50996768,"retries":2,"tokens_per_s":9601.8,"digest":"c545a6331357eee8","wall_s":7.769,"epoch":5,"pid":17544,"unix_s":1796063434.269,"finite":true})",
      "peer-2");
  ASSERT_TRUE(r.isOk());
  EXPECT_EQ(r->step, 298u);
  EXPECT_EQ(r->epoch, 5u);
  EXPECT_EQ(r->pid, 17544);
  EXPECT_EQ(r->retries, 2u);
  EXPECT_FALSE(r->val_loss.has_value());
  EXPECT_EQ(r->digest, "c545a6331357eee8");
  EXPECT_TRUE(r->finite);
  EXPECT_FALSE(parseRoundLine("not json", "peer-1").isOk());
  // An old record without "finite": a null loss with contributors is non-finite.
  auto old = parseRoundLine(R"({"step":3,"contributors":2,"loss":null})", "peer-1");
  ASSERT_TRUE(old.isOk());
  EXPECT_FALSE(old->finite);
}

TEST(ChaosInvariants, AHealthyRunHoldsEverything) {
  InvariantChecker c({});
  for (std::uint64_t s = 1; s <= 50; ++s) {
    for (const char* p : {"peer-1", "peer-2", "peer-3"})
      c.onRound(line(p, s, 3, 100, "d" + std::to_string(s)), s * 0.5);
    c.onTick(s * 0.5, true);
  }
  auto v = c.finish(2.0, 2.02, "");
  for (const auto& x : v)
    EXPECT_TRUE(x.held()) << x.invariant << ": " << x.violations.front().detail;
  EXPECT_EQ(violations(v, "digests"), 0u);
}

TEST(ChaosInvariants, DivergentDigestsAreCaught) {
  InvariantChecker c({});
  c.onRound(line("peer-1", 7, 3, 100, "aaaa"), 1);
  c.onRound(line("peer-2", 7, 3, 101, "bbbb"), 1);
  auto v = c.finish(2.0, std::nullopt, "");
  EXPECT_EQ(violations(v, "digests"), 1u);
}

TEST(ChaosInvariants, ARoundAppliedTwiceOrSkippedWithinAnEpochIsCaught) {
  {
    InvariantChecker c({});
    c.onRound(line("peer-1", 5, 3, 100, "a5"), 1);
    c.onRound(line("peer-1", 6, 3, 100, "a6"), 2);
    // A restarted process that reports an old step: progress lost (or a round applied twice).
    c.onRound(line("peer-1", 2, 4, 200, "a2"), 3);
    EXPECT_EQ(violations(c.finish(1, std::nullopt, ""), "steps"), 1u);
  }
  {
    InvariantChecker c({});
    c.onRound(line("peer-1", 5, 3, 100, "a5"), 1);
    c.onRound(line("peer-1", 7, 3, 100, "a7"), 2);  // skipped 6 while a member of epoch 3
    EXPECT_EQ(violations(c.finish(1, std::nullopt, ""), "steps"), 1u);
  }
  {
    InvariantChecker c({});
    c.onRound(line("peer-1", 5, 3, 100, "a5"), 1);
    c.onRound(line("peer-1", 9, 5, 100, "a9"), 2);    // evicted and back: a new epoch, fine
    c.onRound(line("peer-1", 12, 6, 300, "a12"), 3);  // restarted: a new process, fine
    // A joiner's first line applies nothing (no contributors): not a step of its own.
    c.onRound(line("peer-1", 12, 7, 301, "a12", 0), 4);
    EXPECT_EQ(violations(c.finish(1, std::nullopt, ""), "steps"), 0u);
  }
}

TEST(ChaosInvariants, NonFiniteLossesAreCaught) {
  InvariantChecker c({});
  RoundLine r = line("peer-2", 1, 1, 1, "x");
  r.finite = false;
  c.onRound(r, 1);
  EXPECT_EQ(violations(c.finish(1, std::nullopt, ""), "finite"), 1u);
}

TEST(ChaosInvariants, AHangCountsOnlyWhileAMajorityIsHealthy) {
  InvariantLimits l;
  l.heartbeat_timeout_s = 2;
  l.hang_margin_s = 3;
  {
    InvariantChecker c(l);
    for (int s = 1; s <= 10; ++s) c.onRound(line("peer-1", s, 1, 1, std::to_string(s)), s * 0.1);
    // Rounds every 0.1 s; allowance 2 + 0.3 + 3 = 5.3 s. Unhealthy for 20 s: no verdict.
    for (double t = 1; t < 21; t += 0.1) c.onTick(t, false);
    // Healthy again: 5 s is still within the allowance.
    for (double t = 21; t < 26; t += 0.1) c.onTick(t, true);
    EXPECT_EQ(violations(c.finish(1, std::nullopt, ""), "no_hang"), 0u);
  }
  {
    InvariantChecker c(l);
    for (int s = 1; s <= 10; ++s) c.onRound(line("peer-1", s, 1, 1, std::to_string(s)), s * 0.1);
    for (double t = 1; t < 30; t += 0.1) c.onTick(t, true);
    EXPECT_EQ(violations(c.finish(1, std::nullopt, ""), "no_hang"), 1u)
        << "one hang, one violation";
  }
}

// Before three rounds give a median, the first round's time since the start stands for a round:
// a machine that took 90 s to its first round may take 80 s for the second.
TEST(ChaosInvariants, TheFirstRoundsAreJudgedByThePaceOfTheStart) {
  InvariantLimits l;
  l.heartbeat_timeout_s = 2;
  l.hang_margin_s = 30;
  {
    InvariantChecker c(l);
    c.onRound(line("peer-1", 1, 1, 1, "1"), 90);
    for (double t = 90; t < 170; t += 0.5) c.onTick(t, true);
    c.onRound(line("peer-1", 2, 1, 1, "2"), 170);
    EXPECT_EQ(violations(c.finish(1, std::nullopt, ""), "no_hang"), 0u);
  }
  {
    InvariantChecker c(l);
    c.onRound(line("peer-1", 1, 1, 1, "1"), 3);  // a fast start: 2 + 5 + 30 s allowed
    for (double t = 3; t < 45; t += 0.5) c.onTick(t, true);
    EXPECT_EQ(violations(c.finish(1, std::nullopt, ""), "no_hang"), 1u)
        << "a real hang after a fast start is still one";
  }
}

// One process sample, without its descriptors.
static ProcessSample sample(double t, int fds, long rss_kib) {
  return ProcessSample{t, fds, rss_kib, {}};
}

TEST(ChaosInvariants, ResourceGrowthBeyondTheLimitIsCaught) {
  InvariantLimits l;
  l.growth_limit = 0.10;
  InvariantChecker c(l);
  for (int t = 0; t <= 100; ++t) {
    c.onProcessSample("peer-1", 10, sample(t, 40, 100000));                            // flat
    c.onProcessSample("peer-2", 11, sample(t, 40 + t / 2, 100000));                    // fds leak
    c.onProcessSample("peer-3", 12, sample(t, 40, 100000 + 1000L * t));                // RSS leak
    c.onProcessSample("peer-4", 13, sample(t, 40, 100000 + (t % 7 == 0 ? 5000 : 0)));  // noise
  }
  c.onProcessSample("short", 14, sample(0, 10, 1000));
  c.onProcessSample("short", 14, sample(5, 90, 90000));  // too short to judge
  auto v = c.finish(1, std::nullopt, "");
  EXPECT_EQ(violations(v, "resources"), 2u);
  for (const auto& x : v) {
    if (x.invariant != "resources") continue;
    EXPECT_EQ(x.checks, 4u);
    EXPECT_NE(x.violations[0].detail.find("peer-2"), std::string::npos);
    EXPECT_NE(x.violations[1].detail.find("peer-3"), std::string::npos);
  }
}

// A process grows while it warms up (the first 25 s here: +25 %), then stays flat: not a leak.
// The same growth spread over its whole life is one.
TEST(ChaosInvariants, WarmUpGrowthIsNotALeak) {
  InvariantLimits l;
  l.growth_limit = 0.10;
  InvariantChecker c(l);
  for (int t = 0; t <= 120; ++t) {
    c.onProcessSample("warming", 20, sample(t, 40, 200000 + 2000L * std::min(t, 25)));
    c.onProcessSample("leaking", 21, sample(t, 40, 200000 + 500L * t));
  }
  auto v = c.finish(1, std::nullopt, "");
  ASSERT_EQ(violations(v, "resources"), 1u);
  for (const auto& x : v) {
    if (x.invariant != "resources") continue;
    EXPECT_NE(x.violations[0].detail.find("leaking"), std::string::npos);
  }
}

// Extra links while the swarm recovers from a fault (a failover 20 s before the end of a life
// that ends mid-recovery) are not a leak: the late window's floor is the usual count. A
// connection that stays is one once a host holds more than its links can need, and the finding
// names them; a descriptor of another kind that stays is one by growth, and the finding names it.
TEST(ChaosInvariants, RecoveryTransientIsNotALeakButWhatStaysIs) {
  InvariantLimits l;
  l.growth_limit = 0.10;
  l.connections_per_host = 10;
  InvariantChecker c(l);
  std::vector<std::string> base(30, "pipe");
  base.push_back("tcp dialed 10.50.0.1:7411");
  for (int t = 0; t <= 200; ++t) {
    const auto at = static_cast<double>(t);
    const bool recovering = t >= 180;  // killed mid-recovery, at 200 s
    std::vector<std::string> transient = base;
    if (recovering) transient.insert(transient.end(), 12, "tcp accepted from 10.50.0.4");
    c.onProcessSample("transient", 30,
                      ProcessSample{at, static_cast<int>(transient.size()), 100000, transient});
    // One connection per 10 s that is never closed.
    std::vector<std::string> leaking = base;
    leaking.insert(leaking.end(), static_cast<std::size_t>(t / 10), "tcp dialed 10.50.0.3:7411");
    c.onProcessSample("leaking", 31,
                      ProcessSample{at, static_cast<int>(leaking.size()), 100000, leaking});
    // One file per 10 s that is never closed.
    std::vector<std::string> files = base;
    files.insert(files.end(), static_cast<std::size_t>(t / 10), "/tmp/run/peer-1.ckpt.tmp");
    c.onProcessSample("files", 32,
                      ProcessSample{at, static_cast<int>(files.size()), 100000, files});
  }
  auto v = c.finish(1, std::nullopt, "");
  ASSERT_EQ(violations(v, "resources"), 2u);
  for (const auto& x : v) {
    if (x.invariant != "resources") continue;
    EXPECT_EQ(x.checks, 3u);
    // In the order of the processes' names.
    const std::string& f = x.violations[0].detail;
    const std::string& d = x.violations[1].detail;
    EXPECT_NE(d.find("leaking (pid 31) kept more than 10 TCP connections to one host"),
              std::string::npos)
        << d;
    EXPECT_NE(d.find("at least 16 to 10.50.0.3"), std::string::npos) << d;
    EXPECT_NE(d.find("+16 tcp dialed 10.50.0.3:7411"), std::string::npos) << d;
    EXPECT_NE(f.find("files (pid 32) open fds other than connections grew 34 -> 46"),
              std::string::npos)
        << f;
    EXPECT_NE(f.find("+12 /tmp/run/peer-1.ckpt.tmp"), std::string::npos) << f;
  }
}

// What the 1-hour soak of seed 1 showed: a peer admitted while the other members were down had
// no links early in its life (11 fds) and links to all four others late in it (35 fds). A link
// mesh that follows the membership is not a leak, however much it grew.
TEST(ChaosInvariants, ALinkMeshThatGrowsWithTheMembershipIsNotALeak) {
  InvariantLimits l;
  l.connections_per_host = 10;
  InvariantChecker c(l);
  std::vector<std::string> base(10, "pipe");
  base.push_back("tcp dialed 10.213.1.1:34943");  // the coordinator
  for (int t = 0; t <= 900; ++t) {
    std::vector<std::string> now = base;
    // The others come back one by one from 400 s on: 4 dialed and 4 accepted streams each.
    for (int host = 2; host <= 5; ++host) {
      if (t < 400 + 50 * (host - 2)) continue;
      const std::string ip = fmt::format("10.213.1.{}", host);
      now.insert(now.end(), 4, "tcp dialed " + ip + ":4" + std::to_string(host) + "000");
      now.insert(now.end(), 4, "tcp accepted from " + ip);
    }
    c.onProcessSample(
        "peer-2", 2638,
        ProcessSample{static_cast<double>(t), static_cast<int>(now.size()), 100000, now});
  }
  auto v = c.finish(1, std::nullopt, "");
  EXPECT_EQ(violations(v, "resources"), 0u);
}

// A recovery that fills the whole late window is growth as far as anyone can tell: still judged.
TEST(ChaosInvariants, ALifeThatEndsInALongRecoveryIsStillJudged) {
  InvariantChecker c(InvariantLimits{});
  for (int t = 0; t <= 100; ++t) c.onProcessSample("busy", 40, sample(t, t < 75 ? 40 : 60, 1000));
  EXPECT_EQ(violations(c.finish(1, std::nullopt, ""), "resources"), 1u);
}

TEST(ChaosInvariants, FinalValidationLossAgainstTheBaseline) {
  InvariantLimits l;
  l.val_loss_band = 0.05;
  EXPECT_EQ(violations(InvariantChecker(l).finish(2.09, 2.00, ""), "val_loss"), 0u);
  EXPECT_EQ(violations(InvariantChecker(l).finish(2.20, 2.00, ""), "val_loss"), 1u);
  EXPECT_EQ(violations(InvariantChecker(l).finish(std::nullopt, 2.00, ""), "val_loss"), 1u);
  EXPECT_EQ(violations(InvariantChecker(l).finish(2.5, std::nullopt, "none"), "val_loss"), 0u);
}

TEST(ChaosReport, AssessesDetectionRecoveryAndCost) {
  Timeline tl;
  const std::string ids[] = {"a", "b", "c"};
  // Epoch 3 until 10.3 s, then 4 (peer b gone), then 5 (b back) at 12 s.
  for (int i = 0; i <= 150; ++i) {
    StatusSample s;
    s.t = i * 0.1;
    s.reachable = true;
    s.epoch = i < 103 ? 3 : i < 120 ? 4 : 5;
    s.world = s.epoch == 4 ? 2 : 3;
    tl.status.push_back(s);
  }
  // A round every 0.5 s; the one at 10.5 s was retried once and cost 3000 extra bytes; from
  // 10.5 s to 12 s only two contributors.
  double bytes = 0;
  for (int step = 1; step <= 30; ++step) {
    const double t = step * 0.5;
    bytes += step == 21 ? 4000 : 1000;
    for (const char* p : {"peer-1", "peer-3"}) {
      RoundLine r = line(p, static_cast<std::uint64_t>(step), 3, 7, "d");
      r.bytes_sent = bytes;
      r.retries = step == 21 ? 1 : 0;
      r.contributors = (t > 10 && t < 12.1) ? 2 : 3;
      tl.rounds.push_back(TimedRound{t, r});
    }
  }
  FaultRecord rec;
  rec.fault.kind = FaultKind::kKill;
  rec.fault.target = "peer-2";
  rec.injected_t = 10.2;
  rec.ended_t = 10.2;
  FaultOutcome o = assessFault(rec, tl, 3);
  ASSERT_TRUE(o.detected_s.has_value());
  EXPECT_NEAR(*o.detected_s, 0.1, 1e-6);
  ASSERT_TRUE(o.first_round_s.has_value());
  EXPECT_NEAR(*o.first_round_s, 0.3, 1e-6);  // 10.5 s
  ASSERT_TRUE(o.recovered_s.has_value());
  EXPECT_NEAR(*o.recovered_s, 2.3, 1e-6);  // 12.5 s: all three again
  EXPECT_EQ(o.rounds_retried, 1u);
  EXPECT_NEAR(o.bytes_lost, 3000, 1e-6);
  EXPECT_NE(outcomeJson(o).find("\"rounds_retried\":1"), std::string::npos) << outcomeJson(o);
  // A network fault has no detection; a fault never injected has nothing.
  rec.fault.kind = FaultKind::kLoss;
  EXPECT_FALSE(assessFault(rec, tl, 3).detected_s.has_value());
  FaultRecord never;
  EXPECT_FALSE(assessFault(never, tl, 3).first_round_s.has_value());
}

// A failover is seen when the group shows up at the other coordinator, even though some
// coordinator answers all along.
TEST(ChaosReport, AFailoverIsDetectedWhenTheGroupMovesToTheOtherCoordinator) {
  Timeline tl;
  for (int i = 0; i <= 100; ++i) {
    StatusSample s;
    s.t = i * 0.1;
    s.reachable = true;
    s.active = i < 53 ? "coordinator" : "standby";
    s.epoch = i < 53 ? 4 : 9;
    s.world = i < 53 ? 3 : i < 60 ? 0 : 3;
    tl.status.push_back(s);
  }
  for (int step = 1; step <= 20; ++step) {
    for (const char* p : {"peer-1", "peer-2", "peer-3"})
      tl.rounds.push_back(
          TimedRound{step * 0.5, line(p, static_cast<std::uint64_t>(step), 4, 7, "d")});
  }
  FaultRecord rec;
  rec.fault.kind = FaultKind::kFailover;
  rec.fault.target = "coordinator";  // the one in use when it struck
  rec.injected_t = 5.0;
  rec.ended_t = 5.0;
  FaultOutcome o = assessFault(rec, tl, 3);
  ASSERT_TRUE(o.detected_s.has_value());
  EXPECT_NEAR(*o.detected_s, 0.3, 1e-6);
  EXPECT_NE(o.detection.find("moved to the other"), std::string::npos) << o.detection;
  EXPECT_EQ(rec.fault.describe(), "failover: kill -9 coordinator (in use)");
}

TEST(CpuCgroup, FindsTheControllerInEitherVersion) {
  // Hybrid: v2 mounted without cpu, v1 with cpu,cpuacct.
  const std::string hybrid =
      "30 25 0:26 / /sys/fs/cgroup/unified rw,relatime shared:5 - cgroup2 cgroup2 rw\n"
      "31 25 0:27 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:6 - cgroup cgroup "
      "rw,cpu,cpuacct\n"
      "32 25 0:28 / /sys/fs/cgroup/cpuset rw,relatime shared:7 - cgroup cgroup rw,cpuset\n";
  auto h = lab::findCpuCgroup(hybrid, "hugetlb\n");
  ASSERT_TRUE(h.isOk());
  EXPECT_EQ(h->version, 1);
  EXPECT_EQ(h->path, "/sys/fs/cgroup/cpu,cpuacct");
  // Unified with cpu: v2.
  const std::string unified = "30 25 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
  auto u = lab::findCpuCgroup(unified, "cpuset cpu io memory pids\n");
  ASSERT_TRUE(u.isOk());
  EXPECT_EQ(u->version, 2);
  EXPECT_EQ(u->path, "/sys/fs/cgroup");
  // Neither: a sentence saying what is missing.
  auto none = lab::findCpuCgroup(unified, "memory pids\n");
  ASSERT_FALSE(none.isOk());
  EXPECT_NE(none.status().message().find("offers only 'memory pids'"), std::string::npos)
      << none.status().message();
  // Quotas.
  EXPECT_EQ(lab::quotaText(2, 0.33), "33000 100000");
  EXPECT_EQ(lab::quotaText(2, 0), "max 100000");
  EXPECT_EQ(lab::quotaText(1, 2), "200000");
  EXPECT_EQ(lab::quotaText(1, -1), "-1");
  EXPECT_EQ(lab::quotaText(1, 0.001), "1000") << "the kernel's minimum";
}

// Every finding reaches the report and its JSON, not only the first: the first is often the
// least telling one.
TEST(ChaosReport, EveryFindingIsListed) {
  std::vector<Verdict> verdicts{Verdict{"digests", 3, {}, ""}, Verdict{"resources", 30, {}, ""}};
  for (int i = 0; i < 25; ++i) {
    verdicts[1].violations.push_back(
        Violation{"resources", 100.0 + i, fmt::format("peer-{} grew", i)});
  }
  const std::string text = reportText(Scenario{}, {}, verdicts, 600);
  EXPECT_NE(text.find("25 violation(s); first at 100.0 s: peer-0 grew"), std::string::npos);
  EXPECT_NE(text.find("resources findings:"), std::string::npos) << text;
  EXPECT_NE(text.find("119.0 s  peer-19 grew"), std::string::npos) << text;
  EXPECT_EQ(text.find("peer-20 grew"), std::string::npos) << "at most 20 listed";
  EXPECT_NE(text.find("and 5 more"), std::string::npos) << text;
  const auto j = nlohmann::json::parse(verdictJson(verdicts, false));
  const auto& findings = j["invariants"]["resources"]["findings"];
  ASSERT_EQ(findings.size(), 20u);
  EXPECT_EQ(findings[3]["detail"], "peer-3 grew");
  EXPECT_EQ(findings[3]["t"], 103.0);
  EXPECT_FALSE(j["invariants"]["digests"].contains("findings"));
}

}  // namespace
}  // namespace loco::chaos
