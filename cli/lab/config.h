#pragma once
// The configuration of a WAN lab (`loco lab`): hosts, default link parameters, per-host access
// rates, per-pair overrides, partitions. Pure: parsing, validation, effective parameters and the
// state-file format live here so they can be unit-tested without root.
//
// The state file uses the flags' own syntax, one per line ("delay-ms 25", "link 1-2:loss=0.01"),
// so `lab up`, `lab set` and the hub read one format.

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "p2p/base/json.h"
#include "p2p/base/status.h"

namespace loco::lab {

inline constexpr int kMaxHosts = 64;
inline constexpr double kMaxCpuCores = 1024;

// One direction of one pair of hosts, as the hub applies it.
struct PairParams {
  double delay_ms = 0;
  double jitter_ms = 0;
  double loss = 0;       // probability in [0, 1]
  double rate_mbit = 0;  // cap for traffic between just these two hosts; 0: none
};

// A host's access link; 0: unlimited.
struct HostRates {
  double up_mbit = 0;
  double down_mbit = 0;
};

struct PairOverride {
  std::optional<double> delay_ms, jitter_ms, loss, rate_mbit;
};
// A host behind its own NAT router (cli/lab/nat.h): kCone keeps a connection's source port where
// it can (endpoint-independent mapping, like most home routers); kSymmetric maps every outgoing
// connection to a new random port. Either drops unsolicited incoming connections.
enum class NatMode { kNone, kCone, kSymmetric };

struct HostOverride {
  std::optional<double> up_mbit, down_mbit;
  std::optional<NatMode> nat;  // fixed when the lab is built (`lab up` only)
  std::optional<double> cpu;   // CPU cores' worth for the host's processes (cgroup.h); 0: no limit
};

struct LabConfig {
  std::string name;
  int hosts = 0;
  int subnet = 0;  // the lab owns 10.213.<subnet>.0/24
  double delay_ms = 0, jitter_ms = 0, loss = 0, rate_mbit = 0;
  std::map<int, HostOverride> host_overrides;                  // by host index (1-based)
  std::map<std::pair<int, int>, PairOverride> pair_overrides;  // key (low, high)
  std::vector<std::vector<int>> partition;                     // empty: healed
  std::int64_t tcp_rmem_max = 0;                               // 0: kernel default

  HostRates host(int i) const;
  // The CPU quota of host i in cores (cli/lab/cgroup.h); 0: no limit.
  double hostCpu(int i) const;
  NatMode hostNat(int i) const;
  // The cgroup that holds host i's processes when it has a CPU quota.
  std::string cgroupName(int i) const { return "lab-" + name + "-h" + std::to_string(i); }
  PairParams pair(int from, int to) const;
  // -1 if the host is in no partition group (it still reaches everyone).
  int groupOf(int i) const;
  bool partitioned(int a, int b) const;

  std::string nsName(int i) const { return name + std::to_string(i); }
  std::string address(int i) const;   // "10.213.<subnet>.<i>"
  std::string vethName(int i) const;  // outside end, in the root namespace
  std::string mac(int i) const;       // fixed, so the hub knows every host's address

  std::string serialize() const;
  Json json() const;           // what `loco lab status --json` prints
  std::string toJson() const;  // json() on one line
};

// Lab names become namespace names NAME1..NAMEN: a lowercase letter, then letters, digits or
// '-', at most 12 characters, not ending in a digit (so "t1"+"1" and "t"+"11" cannot collide).
Status validateLabName(const std::string& name);

// The options `lab up` and `lab set` share. Unset optionals leave the config as it is.
struct LabOptions {
  std::optional<int> hosts;
  std::optional<double> delay_ms, jitter_ms, loss, rate_mbit;
  std::vector<std::string> host_specs;  // "I:rate-mbit=R" | "I:up-mbit=U" | "I:down-mbit=W" |
                                        // "I:cpu=C" | "I:nat=on|symmetric|off"
                                        // (comma-separated)
  std::vector<std::string> link_specs;  // "I-J:delay-ms=D,jitter-ms=J,loss=P,rate-mbit=R"
  std::optional<std::int64_t> tcp_rmem_max;
};

// Applies options to `cfg` after validating all of them: on error `cfg` is unchanged and the
// message names the bad value.
Status applyOptions(LabConfig& cfg, const LabOptions& options);

// "1,2/3,4" -> {{1,2},{3,4}}; every index must exist and appear once.
Result<std::vector<std::vector<int>>> parsePartition(const std::string& text, int hosts);

Result<LabConfig> parseConfig(const std::string& text);

// "on", "symmetric" or "off", as `--host I:nat=` spells it.
const char* natName(NatMode mode);

// Parses a number flag value with bounds; the message names the flag.
Result<double> parseNumber(const std::string& flag, const std::string& text, double min,
                           double max);

}  // namespace loco::lab
