#pragma once
// The chaos runner: builds a lab for the scenario, runs a fault-free baseline when asked, then
// runs the swarm (`loco local --lab`, which restarts what dies) while it applies the scenario's
// faults, watches the peers' metrics JSONL, the coordinator's status and every process's /proc,
// checks the invariants (invariants.h) and writes the report (report.h): OUT/report.txt,
// OUT/faults.jsonl, OUT/timeline.svg, OUT/scenario.toml (what ran), OUT/run/ (the swarm's logs)
// and OUT/baseline/.
//
// Needs root (the lab). Blocks until the run is over; SIGINT/SIGTERM end it early, undo the
// faults and remove the lab. Process control stays in this file; everything judged is pure.

#include <string>

#include "cli/chaos/scenario.h"

namespace loco::chaos {

struct RunOptions {
  Scenario scenario;
  std::string out_dir = "loco-chaos";
  std::string exe;  // the loco binary
  std::string log_level = "info";
  bool keep_lab = false;  // leave the lab up afterwards (to look around)
  // Plaintext swarm. Otherwise TLS: this process makes the run's CA in OUT/run/ca (loco local
  // uses it) and gives itself a certificate for its status polls.
  bool insecure = false;
  // --random: size the run to last about this long (a short calibration run measures the
  // swarm's speed first); 0: take the scenario's --steps as they are.
  double duration_s = 0;
};

// 0: every invariant held; 1: an invariant broke or the run could not be made.
int runChaos(RunOptions options);

}  // namespace loco::chaos
