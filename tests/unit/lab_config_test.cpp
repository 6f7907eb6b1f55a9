// Unit tests for the pure configuration of `loco lab` (cli/lab/config.h): lab names, option and
// spec parsing, effective per-host and per-pair parameters, partitions, the state-file format
// and the names and addresses derived from a host index. No namespaces, no root.

#include "cli/lab/config.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <set>
#include <string>
#include <vector>

namespace loco::lab {
namespace {

// A lab as `lab up wan --hosts N` leaves it, before any other option.
LabConfig makeLab(int hosts = 4, int subnet = 7) {
  LabConfig cfg;
  cfg.name = "wan";
  cfg.subnet = subnet;
  LabOptions o;
  o.hosts = hosts;
  Status st = applyOptions(cfg, o);
  EXPECT_TRUE(st.isOk()) << st.toString();
  return cfg;
}

LabOptions hostSpec(const std::string& spec) {
  LabOptions o;
  o.host_specs.push_back(spec);
  return o;
}

LabOptions linkSpec(const std::string& spec) {
  LabOptions o;
  o.link_specs.push_back(spec);
  return o;
}

bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

// applyOptions must fail with kInvalidArgument, name `needle` in the message, and leave the
// config exactly as it was.
void expectRejected(LabConfig& cfg, const LabOptions& o, const std::string& needle) {
  const std::string before = cfg.serialize();
  Status st = applyOptions(cfg, o);
  EXPECT_FALSE(st.isOk()) << "accepted; wanted an error naming '" << needle << "'";
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument) << st.toString();
  EXPECT_TRUE(contains(st.message(), needle))
      << "message '" << st.message() << "' does not name '" << needle << "'";
  EXPECT_EQ(cfg.serialize(), before) << "a failed applyOptions changed the config";
}

// ---- validateLabName ---------------------------------------------------------------------

TEST(LabName, AcceptsShortDashedAndTwelveCharacterNames) {
  for (const std::string name : {"t", "wan-a", "abcdefghijkl", "a1b2c3-x", "x-y"}) {
    SCOPED_TRACE(name);
    Status st = validateLabName(name);
    EXPECT_TRUE(st.isOk()) << st.toString();
  }
}

TEST(LabName, RejectsEmptyName) {
  Status st = validateLabName("");
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(contains(st.message(), "''")) << st.message();
}

TEST(LabName, RejectsNamesThatAreInvalidAndNamesThemInTheMessage) {
  for (const std::string name : {"abcdefghijklm",  // 13 characters
                                 "Wan", "wAn",     // uppercase
                                 "1wan", "-wan",   // must start with a lowercase letter
                                 "wan1", "t9",     // must not end in a digit
                                 "wan_a", "wan.a", "wan a", "wan/a", "wän"}) {
    SCOPED_TRACE(name);
    Status st = validateLabName(name);
    EXPECT_FALSE(st.isOk());
    EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
    EXPECT_TRUE(contains(st.message(), "'" + name + "'")) << st.message();
  }
}

TEST(LabName, TrailingDigitRuleKeepsNamespaceNamesDistinct) {
  // "t1" + host 1 and "t" + host 11 would both be "t11"; the rule forbids "t1".
  EXPECT_FALSE(validateLabName("t1").isOk());
  EXPECT_TRUE(validateLabName("t").isOk());
  LabConfig cfg = makeLab(12);
  cfg.name = "t";
  EXPECT_EQ(cfg.nsName(11), "t11");
  EXPECT_EQ(cfg.nsName(1), "t1");
}

// ---- applyOptions: defaults and effective parameters ---------------------------------------

TEST(LabConfig, FreshLabHasNoShapingAnywhere) {
  LabConfig cfg = makeLab(3);
  EXPECT_EQ(cfg.hosts, 3);
  for (int i = 1; i <= 3; ++i) {
    EXPECT_EQ(cfg.host(i).up_mbit, 0);
    EXPECT_EQ(cfg.host(i).down_mbit, 0);
    for (int j = 1; j <= 3; ++j) {
      if (i == j) continue;
      PairParams p = cfg.pair(i, j);
      EXPECT_EQ(p.delay_ms, 0);
      EXPECT_EQ(p.jitter_ms, 0);
      EXPECT_EQ(p.loss, 0);
      EXPECT_EQ(p.rate_mbit, 0);
    }
    EXPECT_EQ(cfg.groupOf(i), -1);
  }
  EXPECT_EQ(cfg.tcp_rmem_max, 0);
  EXPECT_TRUE(cfg.partition.empty());
}

TEST(LabConfig, GlobalDelayJitterLossApplyToEveryPair) {
  LabConfig cfg = makeLab(3);
  LabOptions o;
  o.delay_ms = 25;
  o.jitter_ms = 3;
  o.loss = 0.01;
  ASSERT_TRUE(applyOptions(cfg, o).isOk());
  for (auto [a, b] : std::vector<std::pair<int, int>>{{1, 2}, {2, 1}, {1, 3}, {3, 2}}) {
    PairParams p = cfg.pair(a, b);
    EXPECT_EQ(p.delay_ms, 25);
    EXPECT_EQ(p.jitter_ms, 3);
    EXPECT_DOUBLE_EQ(p.loss, 0.01);
    EXPECT_EQ(p.rate_mbit, 0) << "the global rate is an access-link rate, not a pair cap";
  }
}

TEST(LabConfig, GlobalRateSetsBothDirectionsOfEveryHost) {
  LabConfig cfg = makeLab(4);
  LabOptions o;
  o.rate_mbit = 100;
  ASSERT_TRUE(applyOptions(cfg, o).isOk());
  for (int i = 1; i <= 4; ++i) {
    EXPECT_EQ(cfg.host(i).up_mbit, 100) << "host " << i;
    EXPECT_EQ(cfg.host(i).down_mbit, 100) << "host " << i;
  }
}

TEST(LabConfig, TcpRmemMaxIsStored) {
  LabConfig cfg = makeLab(2);
  LabOptions o;
  o.tcp_rmem_max = 4 << 20;
  ASSERT_TRUE(applyOptions(cfg, o).isOk());
  EXPECT_EQ(cfg.tcp_rmem_max, 4 << 20);
}

TEST(LabConfig, TcpRmemMaxBoundsAreInclusive) {
  LabConfig cfg = makeLab(2);
  LabOptions o;
  o.tcp_rmem_max = 4096;
  ASSERT_TRUE(applyOptions(cfg, o).isOk());
  EXPECT_EQ(cfg.tcp_rmem_max, 4096);
  o.tcp_rmem_max = std::int64_t{1} << 30;
  ASSERT_TRUE(applyOptions(cfg, o).isOk());
  EXPECT_EQ(cfg.tcp_rmem_max, std::int64_t{1} << 30);
}

// ---- applyOptions: --host ----------------------------------------------------------------

TEST(LabConfig, HostRateOverrideSetsBothDirectionsOfThatHostOnly) {
  LabConfig cfg = makeLab(3);
  LabOptions o = hostSpec("2:rate-mbit=50");
  o.rate_mbit = 100;
  ASSERT_TRUE(applyOptions(cfg, o).isOk());
  EXPECT_EQ(cfg.host(2).up_mbit, 50);
  EXPECT_EQ(cfg.host(2).down_mbit, 50);
  EXPECT_EQ(cfg.host(1).up_mbit, 100);
  EXPECT_EQ(cfg.host(3).down_mbit, 100);
}

TEST(LabConfig, HostUpOverrideLeavesDownAtTheDefault) {
  LabConfig cfg = makeLab(3);
  LabOptions o = hostSpec("1:up-mbit=10");
  o.rate_mbit = 100;
  ASSERT_TRUE(applyOptions(cfg, o).isOk());
  EXPECT_EQ(cfg.host(1).up_mbit, 10);
  EXPECT_EQ(cfg.host(1).down_mbit, 100);
}

TEST(LabConfig, HostDownOverrideLeavesUpAtTheDefault) {
  LabConfig cfg = makeLab(3);
  LabOptions o = hostSpec("3:down-mbit=20");
  o.rate_mbit = 100;
  ASSERT_TRUE(applyOptions(cfg, o).isOk());
  EXPECT_EQ(cfg.host(3).up_mbit, 100);
  EXPECT_EQ(cfg.host(3).down_mbit, 20);
}

TEST(LabConfig, HostSpecTakesSeveralCommaSeparatedKeys) {
  LabConfig cfg = makeLab(3);
  ASSERT_TRUE(applyOptions(cfg, hostSpec("2:up-mbit=10,down-mbit=40")).isOk());
  EXPECT_EQ(cfg.host(2).up_mbit, 10);
  EXPECT_EQ(cfg.host(2).down_mbit, 40);
}

TEST(LabConfig, HostOverrideStaysWhenTheGlobalRateChangesLater) {
  LabConfig cfg = makeLab(3);
  ASSERT_TRUE(applyOptions(cfg, hostSpec("1:up-mbit=10")).isOk());
  LabOptions later;
  later.rate_mbit = 200;
  ASSERT_TRUE(applyOptions(cfg, later).isOk());
  EXPECT_EQ(cfg.host(1).up_mbit, 10);
  EXPECT_EQ(cfg.host(1).down_mbit, 200);
  EXPECT_EQ(cfg.host(2).up_mbit, 200);
}

TEST(LabConfig, LaterHostSpecMergesIntoTheExistingOverride) {
  LabConfig cfg = makeLab(3);
  ASSERT_TRUE(applyOptions(cfg, hostSpec("2:up-mbit=10")).isOk());
  ASSERT_TRUE(applyOptions(cfg, hostSpec("2:down-mbit=30")).isOk());
  EXPECT_EQ(cfg.host(2).up_mbit, 10) << "a later --host must not forget the earlier key";
  EXPECT_EQ(cfg.host(2).down_mbit, 30);
}

// ---- applyOptions: --link ----------------------------------------------------------------

TEST(LabConfig, PairOverrideAppliesToBothDirections) {
  LabConfig cfg = makeLab(4);
  ASSERT_TRUE(
      applyOptions(cfg, linkSpec("1-3:delay-ms=80,jitter-ms=5,loss=0.02,rate-mbit=30")).isOk());
  for (auto [a, b] : std::vector<std::pair<int, int>>{{1, 3}, {3, 1}}) {
    PairParams p = cfg.pair(a, b);
    EXPECT_EQ(p.delay_ms, 80);
    EXPECT_EQ(p.jitter_ms, 5);
    EXPECT_DOUBLE_EQ(p.loss, 0.02);
    EXPECT_EQ(p.rate_mbit, 30);
  }
}

TEST(LabConfig, PairOverrideWrittenHighLowIsTheSamePair) {
  LabConfig cfg = makeLab(4);
  ASSERT_TRUE(applyOptions(cfg, linkSpec("4-2:delay-ms=40")).isOk());
  EXPECT_EQ(cfg.pair(2, 4).delay_ms, 40);
  EXPECT_EQ(cfg.pair(4, 2).delay_ms, 40);
  EXPECT_EQ(cfg.pair_overrides.size(), 1u);
  EXPECT_EQ(cfg.pair_overrides.count({2, 4}), 1u);
}

TEST(LabConfig, PartialPairOverrideFallsBackToDefaultsForUnsetFields) {
  LabConfig cfg = makeLab(3);
  LabOptions o = linkSpec("1-2:loss=0.1");
  o.delay_ms = 25;
  o.jitter_ms = 2;
  ASSERT_TRUE(applyOptions(cfg, o).isOk());
  PairParams p = cfg.pair(2, 1);
  EXPECT_DOUBLE_EQ(p.loss, 0.1);
  EXPECT_EQ(p.delay_ms, 25);
  EXPECT_EQ(p.jitter_ms, 2);
  EXPECT_EQ(p.rate_mbit, 0);
}

TEST(LabConfig, PairOverrideDoesNotTouchOtherPairs) {
  LabConfig cfg = makeLab(3);
  LabOptions o = linkSpec("1-2:delay-ms=100,rate-mbit=5");
  o.delay_ms = 10;
  ASSERT_TRUE(applyOptions(cfg, o).isOk());
  EXPECT_EQ(cfg.pair(1, 3).delay_ms, 10);
  EXPECT_EQ(cfg.pair(3, 2).delay_ms, 10);
  EXPECT_EQ(cfg.pair(2, 3).rate_mbit, 0);
}

TEST(LabConfig, PairOverrideFollowsLaterGlobalChangesForUnsetFields) {
  LabConfig cfg = makeLab(3);
  ASSERT_TRUE(applyOptions(cfg, linkSpec("1-2:loss=0.1")).isOk());
  LabOptions later;
  later.delay_ms = 60;
  ASSERT_TRUE(applyOptions(cfg, later).isOk());
  EXPECT_EQ(cfg.pair(1, 2).delay_ms, 60);
  EXPECT_DOUBLE_EQ(cfg.pair(1, 2).loss, 0.1);
}

TEST(LabConfig, LaterLinkSpecMergesIntoTheExistingOverride) {
  LabConfig cfg = makeLab(3);
  ASSERT_TRUE(applyOptions(cfg, linkSpec("1-2:delay-ms=50")).isOk());
  // `lab set wan --link 2-1:loss=0.05` adds loss and keeps the delay.
  ASSERT_TRUE(applyOptions(cfg, linkSpec("2-1:loss=0.05")).isOk());
  PairParams p = cfg.pair(1, 2);
  EXPECT_EQ(p.delay_ms, 50);
  EXPECT_DOUBLE_EQ(p.loss, 0.05);
  // ... and a value given again replaces the old one.
  ASSERT_TRUE(applyOptions(cfg, linkSpec("1-2:delay-ms=70")).isOk());
  EXPECT_EQ(cfg.pair(2, 1).delay_ms, 70);
  EXPECT_DOUBLE_EQ(cfg.pair(2, 1).loss, 0.05);
}

TEST(LabConfig, LinkValueBoundsAreInclusive) {
  LabConfig cfg = makeLab(3);
  ASSERT_TRUE(
      applyOptions(cfg, linkSpec("1-2:delay-ms=10000,jitter-ms=0,loss=1,rate-mbit=100000")).isOk());
  PairParams p = cfg.pair(1, 2);
  EXPECT_EQ(p.delay_ms, 10000);
  EXPECT_EQ(p.loss, 1);
  EXPECT_EQ(p.rate_mbit, 100000);
}

TEST(LabConfig, SeveralHostAndLinkSpecsInOneCallAllApply) {
  LabConfig cfg = makeLab(4);
  LabOptions o;
  o.host_specs = {"1:up-mbit=10", "4:down-mbit=20"};
  o.link_specs = {"1-2:delay-ms=5", "3-4:loss=0.5"};
  ASSERT_TRUE(applyOptions(cfg, o).isOk());
  EXPECT_EQ(cfg.host(1).up_mbit, 10);
  EXPECT_EQ(cfg.host(4).down_mbit, 20);
  EXPECT_EQ(cfg.pair(2, 1).delay_ms, 5);
  EXPECT_DOUBLE_EQ(cfg.pair(4, 3).loss, 0.5);
}

// ---- applyOptions: errors leave the config unchanged ----------------------------------------

// A config with something in every field, so "unchanged" is a strong statement.
LabConfig busyLab() {
  LabConfig cfg = makeLab(4);
  LabOptions o;
  o.delay_ms = 20;
  o.jitter_ms = 2;
  o.loss = 0.001;
  o.rate_mbit = 100;
  o.tcp_rmem_max = 1 << 20;
  o.host_specs = {"2:up-mbit=10"};
  o.link_specs = {"1-3:delay-ms=90"};
  Status st = applyOptions(cfg, o);
  EXPECT_TRUE(st.isOk()) << st.toString();
  return cfg;
}

TEST(LabOptions, HostCountOutsideTwoToSixtyFourIsRejected) {
  for (int n : {-1, 0, 1, 65, 1000}) {
    SCOPED_TRACE(n);
    LabConfig cfg = busyLab();
    LabOptions o;
    o.hosts = n;
    expectRejected(cfg, o, std::to_string(n));
  }
  LabConfig cfg;
  cfg.name = "wan";
  LabOptions o;
  o.hosts = 2;
  EXPECT_TRUE(applyOptions(cfg, o).isOk());
  o.hosts = kMaxHosts;
  EXPECT_TRUE(applyOptions(cfg, o).isOk());
}

TEST(LabOptions, TcpRmemMaxOutOfRangeIsRejected) {
  for (std::int64_t v :
       {std::int64_t{0}, std::int64_t{-1}, std::int64_t{4095}, (std::int64_t{1} << 30) + 1}) {
    SCOPED_TRACE(v);
    LabConfig cfg = busyLab();
    LabOptions o;
    o.tcp_rmem_max = v;
    expectRejected(cfg, o, std::to_string(v));
  }
}

TEST(LabOptions, HostSpecNamingAMissingHostIsRejected) {
  for (const std::string spec :
       {"0:rate-mbit=5", "5:rate-mbit=5", "-1:rate-mbit=5", "x:rate-mbit=5", ":rate-mbit=5"}) {
    SCOPED_TRACE(spec);
    LabConfig cfg = busyLab();
    expectRejected(cfg, hostSpec(spec), spec);
  }
}

TEST(LabOptions, MalformedHostSpecIsRejectedNamingIt) {
  for (const std::string spec : {"2",                 // no ':'
                                 "2:",                // empty body
                                 "2:rate-mbit",       // no '='
                                 "2:=5",              // no key
                                 "2:rate-mbit=",      // no value
                                 "2:speed=5",         // unknown key
                                 "2:rate-mbit=fast",  // not a number
                                 "2:rate-mbit=-1",    // negative
                                 "2:up-mbit=100001",  // above 100000 Mbit/s
                                 "2:rate-mbit=5,",    // trailing empty item
                                 "2:up-mbit=5,,down-mbit=5",
                                 "2:rate-mbit=5x",  // trailing garbage
                                 "2:rate-mbit=nan", "2:rate-mbit=inf", "2:a=b=c"}) {
    SCOPED_TRACE(spec);
    LabConfig cfg = busyLab();
    expectRejected(cfg, hostSpec(spec), spec);
  }
}

TEST(LabOptions, LinkSpecNamingAMissingHostIsRejected) {
  for (const std::string spec : {"0-1:loss=0.1", "1-5:loss=0.1", "5-1:loss=0.1", "x-2:loss=0.1",
                                 "1-:loss=0.1", "-2:loss=0.1"}) {
    SCOPED_TRACE(spec);
    LabConfig cfg = busyLab();
    expectRejected(cfg, linkSpec(spec), spec);
  }
}

TEST(LabOptions, SelfLinkIsRejected) {
  LabConfig cfg = busyLab();
  expectRejected(cfg, linkSpec("2-2:delay-ms=5"), "2-2:delay-ms=5");
}

TEST(LabOptions, MalformedLinkSpecIsRejectedNamingIt) {
  for (const std::string spec :
       {"1-2",            // no ':'
        "12:delay-ms=5",  // no '-' between the hosts
        "1,2:delay-ms=5",
        "1-2:",               // empty body
        "1-2:delay-ms",       // no '='
        "1-2:delay=5",        // unknown key
        "1-2:up-mbit=5",      // a host key on a link
        "1-2:delay-ms=slow",  // not a number
        "1-2:delay-ms=-5",    // negative
        "1-2:jitter-ms=-0.5",
        "1-2:delay-ms=10001",  // above 10 s
        "1-2:loss=1.5",        // loss > 1
        "1-2:loss=-0.1",
        "1-2:rate-mbit=100001",  // above 100000 Mbit/s
        "1-2:rate-mbit=1e6", "1-2:delay-ms=5,", "1-2:loss=a=b=c", "1-2:a=b=c"}) {
    SCOPED_TRACE(spec);
    LabConfig cfg = busyLab();
    expectRejected(cfg, linkSpec(spec), spec);
  }
}

TEST(LabOptions, ErrorMessageNamesTheBadValue) {
  LabConfig cfg = busyLab();
  Status st = applyOptions(cfg, linkSpec("1-2:loss=1.5"));
  EXPECT_TRUE(contains(st.message(), "1.5")) << st.message();
  st = applyOptions(cfg, hostSpec("1:up-mbit=lots"));
  EXPECT_TRUE(contains(st.message(), "lots")) << st.message();
  st = applyOptions(cfg, linkSpec("1-2:colour=red"));
  EXPECT_TRUE(contains(st.message(), "colour")) << st.message();
  st = applyOptions(cfg, hostSpec("9:rate-mbit=1"));
  EXPECT_TRUE(contains(st.message(), "9")) << st.message();
}

TEST(LabOptions, OneBadSpecAmongGoodOnesChangesNothing) {
  LabConfig cfg = busyLab();
  LabOptions o;
  o.delay_ms = 500;
  o.rate_mbit = 1;
  o.tcp_rmem_max = 8192;
  o.host_specs = {"1:up-mbit=1", "3:down-mbit=2"};
  o.link_specs = {"1-2:loss=0.5", "2-4:delay-ms=1", "3-4:loss=7"};  // the last one is bad
  expectRejected(cfg, o, "3-4:loss=7");
  // The good parts were not half-applied.
  EXPECT_EQ(cfg.delay_ms, 20);
  EXPECT_EQ(cfg.host(1).up_mbit, 100);
  EXPECT_EQ(cfg.pair(1, 2).loss, 0.001);
  EXPECT_EQ(cfg.tcp_rmem_max, 1 << 20);
}

TEST(LabOptions, BadKeyAfterAGoodKeyInOneSpecChangesNothing) {
  LabConfig cfg = busyLab();
  expectRejected(cfg, linkSpec("1-2:delay-ms=5,bogus=1"), "bogus");
  EXPECT_EQ(cfg.pair_overrides.count({1, 2}), 0u) << "no empty override entry may be left behind";
  expectRejected(cfg, hostSpec("3:up-mbit=5,bogus=1"), "bogus");
  EXPECT_EQ(cfg.host_overrides.count(3), 0u);
}

TEST(LabOptions, ShrinkingHostsBelowAHostOverrideIsRejected) {
  LabConfig cfg = makeLab(4);
  ASSERT_TRUE(applyOptions(cfg, hostSpec("4:up-mbit=10")).isOk());
  LabOptions o;
  o.hosts = 3;
  expectRejected(cfg, o, "4");
}

TEST(LabOptions, ShrinkingHostsBelowALinkOverrideIsRejected) {
  // The same rule as for --host overrides: otherwise serialize() writes "hosts 2" and
  // "link 3-4:..." into one state file, which parseConfig then refuses to read back.
  LabConfig cfg = makeLab(4);
  ASSERT_TRUE(applyOptions(cfg, linkSpec("3-4:delay-ms=10")).isOk());
  LabOptions o;
  o.hosts = 2;
  expectRejected(cfg, o, "4");
  EXPECT_EQ(cfg.hosts, 4);
  // Whatever applyOptions leaves must be a state file parseConfig reads back.
  auto back = parseConfig(cfg.serialize());
  EXPECT_TRUE(back.isOk()) << back.status().toString() << "\n" << cfg.serialize();
}

TEST(LabOptions, HostSpecsAreCheckedAgainstTheNewHostCount) {
  LabConfig cfg;
  cfg.name = "wan";
  cfg.subnet = 3;
  LabOptions o;
  o.hosts = 6;
  o.host_specs = {"6:rate-mbit=5"};
  o.link_specs = {"5-6:loss=0.1"};
  Status st = applyOptions(cfg, o);
  ASSERT_TRUE(st.isOk()) << st.toString();
  EXPECT_EQ(cfg.host(6).up_mbit, 5);
  EXPECT_DOUBLE_EQ(cfg.pair(6, 5).loss, 0.1);
}

// ---- parsePartition ---------------------------------------------------------------------

TEST(LabPartition, ParsesTwoGroups) {
  auto r = parsePartition("1,2/3,4", 4);
  ASSERT_TRUE(r.isOk()) << r.status().toString();
  EXPECT_EQ(*r, (std::vector<std::vector<int>>{{1, 2}, {3, 4}}));
}

TEST(LabPartition, ParsesThreeGroupsAndSingletons) {
  auto r = parsePartition("1/2/3,4", 4);
  ASSERT_TRUE(r.isOk()) << r.status().toString();
  EXPECT_EQ(*r, (std::vector<std::vector<int>>{{1}, {2}, {3, 4}}));
}

TEST(LabPartition, HostsInDifferentGroupsArePartitionedAndSameGroupIsNot) {
  LabConfig cfg = makeLab(4);
  auto r = parsePartition("1,2/3,4", 4);
  ASSERT_TRUE(r.isOk());
  cfg.partition = *r;
  EXPECT_EQ(cfg.groupOf(1), 0);
  EXPECT_EQ(cfg.groupOf(4), 1);
  EXPECT_FALSE(cfg.partitioned(1, 2));
  EXPECT_FALSE(cfg.partitioned(4, 3));
  EXPECT_TRUE(cfg.partitioned(1, 3));
  EXPECT_TRUE(cfg.partitioned(4, 2));
}

TEST(LabPartition, UnlistedHostIsInNoGroupAndReachesEveryone) {
  LabConfig cfg = makeLab(5);
  auto r = parsePartition("1,2/3", 5);
  ASSERT_TRUE(r.isOk()) << r.status().toString();
  cfg.partition = *r;
  for (int unlisted : {4, 5}) {
    EXPECT_EQ(cfg.groupOf(unlisted), -1);
    for (int other = 1; other <= 5; ++other) {
      EXPECT_FALSE(cfg.partitioned(unlisted, other)) << unlisted << " vs " << other;
      EXPECT_FALSE(cfg.partitioned(other, unlisted)) << other << " vs " << unlisted;
    }
  }
  EXPECT_TRUE(cfg.partitioned(2, 3));
}

TEST(LabPartition, HealedLabHasNoPartitions) {
  LabConfig cfg = makeLab(3);
  EXPECT_FALSE(cfg.partitioned(1, 2));
  EXPECT_EQ(cfg.groupOf(3), -1);
}

TEST(LabPartition, RejectsASingleGroup) {
  for (const std::string text : {"1,2,3", "1", ""}) {
    SCOPED_TRACE(text);
    auto r = parsePartition(text, 4);
    ASSERT_FALSE(r.isOk());
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
    EXPECT_TRUE(contains(r.status().message(), "'" + text + "'")) << r.status().message();
  }
}

TEST(LabPartition, RejectsAnEmptyGroup) {
  for (const std::string text : {"1,2/", "/1,2", "1//2", "1,2//3,4"}) {
    SCOPED_TRACE(text);
    auto r = parsePartition(text, 4);
    ASSERT_FALSE(r.isOk());
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
    EXPECT_TRUE(contains(r.status().message(), text)) << r.status().message();
  }
}

TEST(LabPartition, RejectsAHostInTwoGroupsOrTwiceInOne) {
  for (const std::string text : {"1,2/2,3", "1,1/2", "1/2/1"}) {
    SCOPED_TRACE(text);
    auto r = parsePartition(text, 4);
    ASSERT_FALSE(r.isOk());
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
    EXPECT_TRUE(contains(r.status().message(), text)) << r.status().message();
  }
}

TEST(LabPartition, RejectsUnknownOrMalformedHosts) {
  for (const std::string text : {"1,2/5", "0/1", "1,2/x", "1,,2/3", "1,2/3,", "-1/2"}) {
    SCOPED_TRACE(text);
    auto r = parsePartition(text, 4);
    ASSERT_FALSE(r.isOk());
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
    EXPECT_TRUE(contains(r.status().message(), text)) << r.status().message();
  }
}

// ---- serialize / parseConfig --------------------------------------------------------------

TEST(LabStateFile, SerializeUsesTheFlagsOwnSyntax) {
  LabConfig cfg = makeLab(3, 12);
  LabOptions o;
  o.delay_ms = 25;
  o.link_specs = {"1-2:loss=0.01"};
  o.host_specs = {"3:down-mbit=50"};
  ASSERT_TRUE(applyOptions(cfg, o).isOk());
  std::string s = cfg.serialize();
  EXPECT_TRUE(contains(s, "name wan\n")) << s;
  EXPECT_TRUE(contains(s, "hosts 3\n")) << s;
  EXPECT_TRUE(contains(s, "subnet 12\n")) << s;
  EXPECT_TRUE(contains(s, "delay-ms 25\n")) << s;
  EXPECT_TRUE(contains(s, "link 1-2:loss=0.01\n")) << s;
  EXPECT_TRUE(contains(s, "host 3:down-mbit=50\n")) << s;
}

TEST(LabStateFile, MinimalConfigRoundTrips) {
  LabConfig cfg = makeLab(2, 1);
  auto back = parseConfig(cfg.serialize());
  ASSERT_TRUE(back.isOk()) << back.status().toString();
  EXPECT_EQ(back->serialize(), cfg.serialize());
  EXPECT_EQ(back->name, "wan");
  EXPECT_EQ(back->hosts, 2);
  EXPECT_EQ(back->subnet, 1);
}

TEST(LabStateFile, FullConfigRoundTripsToAnIdenticalString) {
  LabConfig cfg = makeLab(6, 254);
  cfg.name = "wan-a";
  LabOptions o;
  o.delay_ms = 12.5;
  o.jitter_ms = 1.25;
  o.loss = 0.0001;
  o.rate_mbit = 250;
  o.tcp_rmem_max = 6291456;
  o.host_specs = {"1:rate-mbit=10", "3:up-mbit=5", "6:down-mbit=7.5"};
  o.link_specs = {"1-2:delay-ms=80,jitter-ms=4,loss=0.02,rate-mbit=30", "5-3:loss=1",
                  "4-6:rate-mbit=0.5"};
  ASSERT_TRUE(applyOptions(cfg, o).isOk());
  auto groups = parsePartition("1,2/3,5/6", 6);
  ASSERT_TRUE(groups.isOk());
  cfg.partition = *groups;

  const std::string text = cfg.serialize();
  auto back = parseConfig(text);
  ASSERT_TRUE(back.isOk()) << back.status().toString() << "\n" << text;
  EXPECT_EQ(back->serialize(), text);

  // And the effective parameters survive, not just the text.
  EXPECT_EQ(back->name, "wan-a");
  EXPECT_EQ(back->subnet, 254);
  EXPECT_EQ(back->tcp_rmem_max, 6291456);
  EXPECT_EQ(back->partition, cfg.partition);
  for (int i = 1; i <= 6; ++i) {
    EXPECT_EQ(back->host(i).up_mbit, cfg.host(i).up_mbit) << i;
    EXPECT_EQ(back->host(i).down_mbit, cfg.host(i).down_mbit) << i;
    for (int j = 1; j <= 6; ++j) {
      if (i == j) continue;
      PairParams a = cfg.pair(i, j), b = back->pair(i, j);
      EXPECT_DOUBLE_EQ(a.delay_ms, b.delay_ms) << i << "-" << j;
      EXPECT_DOUBLE_EQ(a.jitter_ms, b.jitter_ms) << i << "-" << j;
      EXPECT_DOUBLE_EQ(a.loss, b.loss) << i << "-" << j;
      EXPECT_DOUBLE_EQ(a.rate_mbit, b.rate_mbit) << i << "-" << j;
      EXPECT_EQ(cfg.partitioned(i, j), back->partitioned(i, j));
    }
  }
}

TEST(LabStateFile, ParseConfigRejectsUnknownKeys) {
  LabConfig cfg = makeLab(2);
  auto r = parseConfig(cfg.serialize() + "colour blue\n");
  ASSERT_FALSE(r.isOk());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(contains(r.status().message(), "colour")) << r.status().message();
}

TEST(LabStateFile, ParseConfigRejectsAMissingOrBadName) {
  auto r = parseConfig("hosts 2\nsubnet 5\n");
  ASSERT_FALSE(r.isOk());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  r = parseConfig("name Wan\nhosts 2\nsubnet 5\n");
  ASSERT_FALSE(r.isOk());
  EXPECT_TRUE(contains(r.status().message(), "Wan")) << r.status().message();
}

TEST(LabStateFile, ParseConfigRejectsMissingHostsOrSubnet) {
  EXPECT_FALSE(parseConfig("name wan\nsubnet 5\n").isOk());
  EXPECT_FALSE(parseConfig("name wan\nhosts 3\n").isOk());
  EXPECT_TRUE(parseConfig("name wan\nhosts 3\nsubnet 5\n").isOk());
}

TEST(LabStateFile, ParseConfigRejectsBadNumbers) {
  const std::string head = "name wan\nhosts 3\nsubnet 5\n";
  for (const std::string& text : {std::string("name wan\nhosts three\nsubnet 5\n"),  //
                                  std::string("name wan\nhosts 1\nsubnet 5\n"),      //
                                  std::string("name wan\nhosts 65\nsubnet 5\n"),     //
                                  std::string("name wan\nhosts 3\nsubnet 0\n"),      //
                                  std::string("name wan\nhosts 3\nsubnet 255\n"),    //
                                  head + "delay-ms ten\n",                           //
                                  head + "delay-ms -1\n",                            //
                                  head + "jitter-ms 10001\n",                        //
                                  head + "loss 1.01\n",                              //
                                  head + "rate-mbit 100001\n",                       //
                                  head + "tcp-rmem-max 100\n",                       //
                                  head + "tcp-rmem-max big\n",                       //
                                  head + "link 1-2:loss=2\n",                        //
                                  head + "link 1-4:loss=0.1\n",                      //
                                  head + "host 1:up-mbit=x\n",                       //
                                  head + "partition 1,2/4\n",                        //
                                  head + "partition 1,2\n"}) {
    SCOPED_TRACE(text);
    auto r = parseConfig(text);
    EXPECT_FALSE(r.isOk());
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << r.status().toString();
  }
}

TEST(LabStateFile, ParseConfigRejectsFractionalHostCountOrSubnet) {
  // serialize() writes integers; a state file with "hosts 2.5" is corrupt, not a lab of 2 hosts.
  for (const std::string text :
       {"name wan\nhosts 2.5\nsubnet 5\n", "name wan\nhosts 3\nsubnet 5.7\n"}) {
    SCOPED_TRACE(text);
    auto r = parseConfig(text);
    EXPECT_FALSE(r.isOk()) << "accepted, hosts=" << (r.isOk() ? r->hosts : 0)
                           << " subnet=" << (r.isOk() ? r->subnet : 0);
  }
}

// ---- names and addresses ------------------------------------------------------------------

TEST(LabConfig, NamespaceNameIsLabNameThenIndex) {
  LabConfig cfg = makeLab(12);
  EXPECT_EQ(cfg.nsName(1), "wan1");
  EXPECT_EQ(cfg.nsName(12), "wan12");
}

TEST(LabConfig, AddressIsInTheLabsSubnet) {
  LabConfig cfg = makeLab(64, 42);
  EXPECT_EQ(cfg.address(1), "10.213.42.1");
  EXPECT_EQ(cfg.address(64), "10.213.42.64");
}

TEST(LabConfig, VethNamesFitTheLinuxInterfaceNameLimitAndAreDistinct) {
  // IFNAMSIZ is 16 including the NUL: at most 15 characters.
  LabConfig cfg = makeLab(kMaxHosts, 254);
  std::set<std::string> seen;
  for (int i = 1; i <= kMaxHosts; ++i) {
    std::string v = cfg.vethName(i);
    EXPECT_LE(v.size(), 15u) << v;
    EXPECT_FALSE(v.empty());
    EXPECT_TRUE(seen.insert(v).second) << "duplicate " << v;
  }
  // Two labs on different subnets do not share interface names.
  LabConfig other = makeLab(kMaxHosts, 25);
  for (int i = 1; i <= kMaxHosts; ++i) {
    EXPECT_EQ(seen.count(other.vethName(i)), 0u) << other.vethName(i);
  }
  // Subnet 25 host 4 must not collide with subnet 2 host 54 and so on.
  std::set<std::string> across;
  for (int s : {1, 2, 12, 25, 125, 254}) {
    LabConfig c = makeLab(kMaxHosts, s);
    for (int i = 1; i <= kMaxHosts; ++i)
      EXPECT_TRUE(across.insert(c.vethName(i)).second) << c.vethName(i);
  }
}

TEST(LabConfig, MacAddressesAreDistinctAndLocallyAdministeredUnicast) {
  LabConfig cfg = makeLab(kMaxHosts, 254);
  std::set<std::string> seen;
  for (int i = 1; i <= kMaxHosts; ++i) {
    std::string m = cfg.mac(i);
    ASSERT_EQ(m.size(), 17u) << m;
    for (int k = 2; k < 17; k += 3) EXPECT_EQ(m[k], ':') << m;
    unsigned first = std::stoul(m.substr(0, 2), nullptr, 16);
    EXPECT_EQ(first, 0x02u) << m;
    EXPECT_TRUE(first & 0x02) << "not locally administered: " << m;
    EXPECT_FALSE(first & 0x01) << "multicast: " << m;
    EXPECT_TRUE(seen.insert(m).second) << "duplicate " << m;
  }
  // Another lab's hosts get other addresses.
  LabConfig other = makeLab(kMaxHosts, 253);
  for (int i = 1; i <= kMaxHosts; ++i) EXPECT_EQ(seen.count(other.mac(i)), 0u) << other.mac(i);
  // Stable: the hub computes the same address independently.
  EXPECT_EQ(cfg.mac(5), makeLab(kMaxHosts, 254).mac(5));
}

// ---- toJson -------------------------------------------------------------------------------

TEST(LabConfig, JsonListsNameHostsAndLinks) {
  LabConfig cfg = makeLab(3, 9);
  LabOptions o;
  o.link_specs = {"1-2:delay-ms=80"};
  ASSERT_TRUE(applyOptions(cfg, o).isOk());
  auto groups = parsePartition("1/2,3", 3);
  ASSERT_TRUE(groups.isOk());
  cfg.partition = *groups;
  std::string j = cfg.toJson();
  EXPECT_EQ(j.front(), '{') << j;
  EXPECT_EQ(j.back(), '}') << j;
  EXPECT_TRUE(contains(j, "\"name\":\"wan\"")) << j;
  EXPECT_TRUE(contains(j, "\"hosts\":[")) << j;
  for (int i = 1; i <= 3; ++i) {
    EXPECT_TRUE(contains(j, "\"name\":\"wan" + std::to_string(i) + "\"")) << j;
    EXPECT_TRUE(contains(j, "\"addr\":\"10.213.9." + std::to_string(i) + "\"")) << j;
  }
  EXPECT_TRUE(contains(j, "\"links\":{")) << j;
  EXPECT_TRUE(contains(j, "\"1-2\":{\"delay_ms\":80")) << j;
  EXPECT_TRUE(contains(j, "\"1-3\":")) << j;
  EXPECT_TRUE(contains(j, "\"2-3\":")) << j;
  EXPECT_FALSE(contains(j, "\"2-1\"")) << "each pair is listed once: " << j;
  EXPECT_TRUE(contains(j, "\"partitioned\":true")) << j;
}

}  // namespace
}  // namespace loco::lab

// ---- NAT (cli/lab/nat.h) --------------------------------------------------------------------

namespace loco::lab {
namespace {

TEST(LabConfig, NatModesParseSerializeAndRoundTrip) {
  LabConfig cfg = makeLab(4, 9);
  EXPECT_EQ(cfg.hostNat(2), NatMode::kNone);
  LabOptions o;
  o.host_specs = {"2:nat=on", "3:nat=symmetric,rate-mbit=10", "4:nat=cone"};
  ASSERT_TRUE(applyOptions(cfg, o).isOk());
  EXPECT_EQ(cfg.hostNat(1), NatMode::kNone);
  EXPECT_EQ(cfg.hostNat(2), NatMode::kCone);
  EXPECT_EQ(cfg.hostNat(3), NatMode::kSymmetric);
  EXPECT_EQ(cfg.hostNat(4), NatMode::kCone);
  EXPECT_EQ(cfg.host(3).up_mbit, 10);
  auto back = parseConfig(cfg.serialize());
  ASSERT_TRUE(back.isOk()) << back.status().toString() << "\n" << cfg.serialize();
  for (int i = 1; i <= 4; ++i) EXPECT_EQ(back->hostNat(i), cfg.hostNat(i)) << i;
  EXPECT_NE(cfg.toJson().find("\"nat\":\"symmetric\""), std::string::npos) << cfg.toJson();
  ASSERT_TRUE(applyOptions(cfg, hostSpec("2:nat=off")).isOk());
  EXPECT_EQ(cfg.hostNat(2), NatMode::kNone);
}

TEST(LabConfig, BadNatModeIsRefusedWithTheValue) {
  LabConfig cfg = makeLab();
  Status st = applyOptions(cfg, hostSpec("2:nat=full-cone"));
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("full-cone"), std::string::npos) << st.message();
  EXPECT_EQ(cfg.hostNat(2), NatMode::kNone) << "unchanged on error";
}

}  // namespace
}  // namespace loco::lab
