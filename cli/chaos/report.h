#pragma once
// What `loco chaos` tells about a run: per fault, when it was injected, when the system noticed
// (the coordinator's epoch moved, or it stopped answering), when the run applied its next round,
// when it had recovered (every peer contributing again), and what it cost (rounds retried, bytes
// sent for attempts that failed); the invariants' verdicts. As text for people, one JSON object
// per fault for machines. Pure: built from the timeline the runner recorded.
//
// Times are seconds on the run's clock (0 = the first round applied); per-fault figures are
// seconds after the injection.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "cli/chaos/invariants.h"
#include "cli/chaos/scenario.h"

namespace loco::chaos {

// One look at the coordinator (loco status).
// With a standby: of the coordinator that holds the group (the one that answers with the most
// members, then the most peers); `active` names it.
struct StatusSample {
  double t = 0;
  bool reachable = false;
  std::string active = "coordinator";  // or "standby"
  std::uint64_t epoch = 0;
  int world = 0;
  int pending = 0;
  std::vector<std::string> members;  // ids of admitted peers
};

struct TimedRound {
  double t = 0;
  RoundLine line;
};

struct Timeline {
  std::vector<StatusSample> status;
  std::vector<TimedRound> rounds;  // in the order they were read
};

// A fault as the runner applied it.
struct FaultRecord {
  Fault fault;
  std::optional<double> injected_t;  // unset: never injected (the run ended first)
  std::optional<double> ended_t;     // when a lasting fault was undone
  std::string target_id;             // the target peer's id ("" for the coordinator/network)
  std::string how;                   // how the target came back, as the runner saw it
};

struct FaultOutcome {
  FaultRecord record;
  std::optional<double> detected_s;     // after injection
  std::optional<double> first_round_s;  // the next round applied after injection
  std::optional<double> recovered_s;    // every peer contributing again, after the fault ended
  std::uint32_t rounds_retried = 0;
  double bytes_lost = 0;  // bytes of failed attempts (estimate: see assessFault)
  std::string detection;  // what counted as detection
};

// Assesses one fault. Detection: the first status sample after the injection whose epoch is
// higher (a peer fault, a partition) or that finds the coordinator unreachable or the group held
// by the other coordinator (a coordinator fault, a failover); network faults without membership
// effect have none. Recovery: the first round after
// the fault ended (and, if detected, after the detection) that all `peers` contributed to. Bytes
// lost: per round in [injection, recovery], the bytes sent beyond the median round of the
// fault-free start, summed.
FaultOutcome assessFault(const FaultRecord& record, const Timeline& timeline, int peers);

std::string outcomeJson(const FaultOutcome& o);
std::string verdictJson(const std::vector<Verdict>& verdicts, bool passed);

// The report people read: the scenario line, a table of faults, a table of verdicts.
std::string reportText(const Scenario& scenario, const std::vector<FaultOutcome>& outcomes,
                       const std::vector<Verdict>& verdicts, double run_s);

}  // namespace loco::chaos
