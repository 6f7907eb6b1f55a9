#pragma once
// A chaos scenario (`loco chaos`): the swarm (peers, hosts, training flags), the lab's network,
// the checks, and a schedule of faults. Read from a TOML file (toml++), or drawn at random from
// the same vocabulary. Pure: no process is started here, so every mistake in a file is found
// before anything runs, with the line that holds it.
//
// Placement: the coordinator lives on lab host 1 and peer-i on host (i mod hosts) + 1; with the
// default hosts = peers + 1 the coordinator is alone on host 1 and peer-i is on host i + 1.
//
// A fault happens `at` seconds after the swarm's first reported round ("training start"), so a
// slow start moves the whole schedule rather than squeezing it; or `after_round = N`, once the
// swarm has applied N rounds, which keeps a schedule inside the run on a machine of any speed.
// One scenario uses one of the two.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "p2p/base/status.h"

namespace loco::chaos {

enum class FaultKind {
  kKill,                   // kill -9 of a peer or the coordinator; `loco local` restarts it
  kTerm,                   // SIGTERM of a peer or the coordinator; restarted likewise
  kStop,                   // SIGSTOP for `duration`, then SIGCONT
  kPartition,              // hosts split into `groups` (healed after `duration`, if given)
  kHeal,                   // ends a partition
  kLoss,                   // packet loss on every pair (or `link`) for `duration`
  kDelay,                  // one-way delay and jitter on every pair (or `link`) for `duration`
  kRate,                   // access-link rate of every host (or `host`) for `duration`
  kSlowHost,               // `host`'s processes get `cpu` cores' worth for `duration`
  kStallJoiner,            // kill -9 a peer; once its restart is admitted, SIGSTOP it mid-download
  kDiskFull,               // a tiny tmpfs over the peer's checkpoint folder for `duration`
  kRestartFromCheckpoint,  // kill -9; the restart resumes from the peer's checkpoint
  kFailover,  // kill -9 of the coordinator that holds the group ([swarm] standby): the peers move
              // to the other one; `loco local` restarts the dead one, empty, on its address
};

std::string faultKindName(FaultKind k);  // the TOML spelling: "kill", "slow_host", ...
std::optional<FaultKind> parseFaultKind(const std::string& name);
// Every kind, in the order above.
std::vector<FaultKind> allFaultKinds();

struct Fault {
  FaultKind kind = FaultKind::kKill;
  double at_s = 0;
  std::uint64_t after_round = 0;  // > 0: due once the swarm applied this many rounds (not at_s)
  double duration_s = 0;          // 0: instantaneous (or, for a partition, until a `heal`)
  // "peer-3" or "coordinator" (process faults). With a standby, "coordinator" means the one that
  // holds the group when the fault strikes; the runner writes which ("coordinator" or
  // "standby") into its record.
  std::string target;
  int host = 0;          // slow_host, rate (0: every host)
  std::string link;      // "I-J" for loss/delay (empty: every pair)
  std::string groups;    // partition: "1,2/3,4" (lab host indices)
  double value = 0;      // loss probability, rate Mbit/s, cpu cores, delay ms
  double jitter_ms = 0;  // delay
  double size_kib = 16;  // disk_full: the tmpfs size
  int line = 0;          // where the fault is in the scenario file (0: drawn at random)

  // A one-line description: "kill -9 peer-2", "partition 1,2,3/4,5 for 10 s", ...
  std::string describe() const;
  bool processFault() const;  // acts on a process (target), not on the network
};

struct SwarmSpec {
  int peers = 4;
  int hosts = 0;  // 0: peers + 1
  int heartbeat_interval_ms = 250;
  int heartbeat_timeout_ms = 2000;
  int restart_backoff_ms = 500;
  std::vector<std::string> training;  // flags for `loco local`, e.g. {"--steps", "3000"}
  bool checkpoints = false;           // --checkpoint-dir under the run's folder
  bool standby = false;     // a standby coordinator beside the first (`loco local --standby on`)
  double timeout_s = 1800;  // a run that takes longer is stopped and fails

  int hostCount() const { return hosts > 0 ? hosts : peers + 1; }
  int hostOfPeer(int i) const { return i % hostCount() + 1; }  // peer-i (1-based)
};

struct LabSpec {
  double delay_ms = 0, jitter_ms = 0, loss = 0, rate_mbit = 0;
};

struct CheckSpec {
  std::string baseline = "run";  // "run" (a fault-free run first), "none", or a number
  double val_loss_band = 0.05;   // |val - baseline| / baseline at the end
  double hang_margin_s = 10;     // allowed beyond heartbeat timeout + round time
  double growth_limit = 0.10;    // fds and RSS: end of life vs early life
};

struct Scenario {
  std::string path;  // "" when drawn at random
  std::string name = "chaos";
  std::uint64_t seed = 1;
  SwarmSpec swarm;
  LabSpec lab;
  CheckSpec checks;
  std::vector<Fault> faults;  // sorted by at_s (or after_round)

  // The training flags `loco local` gets, with the seed.
  std::vector<std::string> trainingFlags() const;
  bool needsCheckpoints() const;
};

// Parses and validates a scenario. Errors are kInvalidArgument "PATH:LINE: what is wrong" (an
// unknown key or fault kind, a host or peer that does not exist, a negative time, a missing
// duration, ...).
Result<Scenario> parseScenario(const std::string& text, const std::string& path);
Result<Scenario> loadScenario(const std::string& path);

// Draws a schedule of faults over `duration_s` from every kind in `kinds` (seeded, repeatable):
// one fault at a time, each followed by time to recover. `base` gives the swarm, lab and checks.
// Coordinator faults are drawn only when `coordinator_faults` is set; failovers only when the
// swarm has a standby as well.
Scenario randomScenario(const Scenario& base, std::uint64_t seed, double duration_s,
                        const std::vector<FaultKind>& kinds, bool coordinator_faults);

// The scenario as TOML (what `--random` ran, so it can be run again as a file).
std::string toToml(const Scenario& s);

}  // namespace loco::chaos
