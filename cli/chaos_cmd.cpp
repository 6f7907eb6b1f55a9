// `loco chaos SCENARIO.toml` / `loco chaos --random --seed S --duration 30m`: a training swarm in
// a lab under a schedule of faults, with invariants checked every round and a report
// (cli/chaos/). A bad scenario fails here, before anything starts, naming its line.
#include <fmt/format.h>

#include <algorithm>
#include <cstdio>
#include <limits>
#include <sstream>

#include "cli/chaos/runner.h"
#include "cli/chaos/scenario.h"
#include "cli/commands.h"
#include "cli/lab/config.h"

namespace loco::cli {
namespace {

// "90", "90s", "30m", "1h", "1h30m" -> seconds.
Result<double> parseDuration(const std::string& text) {
  double total = 0, cur = 0;
  bool digits = false, any = false;
  for (char c : text) {
    if (c >= '0' && c <= '9') {
      cur = cur * 10 + (c - '0');
      digits = true;
      continue;
    }
    const double unit = c == 's' ? 1 : c == 'm' ? 60 : c == 'h' ? 3600 : 0;
    if (unit == 0 || !digits) {
      return Status(StatusCode::kInvalidArgument,
                    fmt::format("--duration '{}': want seconds or 30s, 30m, 1h, 1h30m", text));
    }
    total += cur * unit;
    cur = 0;
    digits = false;
    any = true;
  }
  if (digits) total += cur, any = true;
  if (!any || total < 60)
    return Status(StatusCode::kInvalidArgument,
                  fmt::format("--duration '{}': want at least 60 s", text));
  return total;
}

}  // namespace

int runChaos(const Args& args) {
  Flags flags(
      "chaos", "run a training swarm in a lab under a schedule of faults and check its invariants",
      {{"out", "directory for the report, the timeline and every log", "loco-chaos"},
       {"random", "draw the faults at random (seeded) instead of reading them from the file", "",
        true},
       {"seed", "--random: the seed of the schedule (and of the training)", "1"},
       {"duration", "--random: how long the run lasts: 90s, 30m, 1h (sizes --steps)", "30m"},
       {"kinds", "--random: fault kinds to draw from, comma-separated (default: all)", ""},
       {"coordinator-faults", "--random: on: kill/stop/term may hit the coordinator too", "on"},
       {"peers", "--random without a file: peers in the swarm", "4"},
       {"baseline", "override the scenario's baseline: run, none, or a validation loss", ""},
       {"dry-run", "check the scenario and print the schedule; start nothing", "", true},
       {"keep-lab", "leave the lab up after the run", "", true},
       {"insecure",
        "plaintext swarm (loco local --insecure); without it the swarm runs TLS with a throwaway "
        "CA in OUT/run/ca",
        "", true}});
  if (int rc = parseAndSetUp(flags, args, "chaos"); rc >= 0) return rc;
  const bool random = flags.getBool("random");
  if (flags.positional().size() > 1 || (!random && flags.positional().empty())) {
    return reportFailure(Status(StatusCode::kInvalidArgument,
                                "usage: loco chaos SCENARIO.toml [--out DIR] | loco chaos "
                                "--random --seed S --duration 30m [SCENARIO.toml]"));
  }
  // Everything about the scenario is checked before anything starts.
  chaos::Scenario scenario;
  if (!flags.positional().empty()) {
    auto loaded = chaos::loadScenario(flags.positional()[0]);
    if (!loaded) return reportFailure(loaded.status());
    scenario = std::move(loaded.value());
  } else {
    auto peers = flags.getInt("peers", 1, 32);
    if (!peers) return reportFailure(peers.status());
    scenario.swarm.peers = static_cast<int>(*peers);
  }
  double duration_s = 0;
  if (random) {
    auto seed = flags.getInt("seed", 0, std::numeric_limits<std::int64_t>::max());
    if (!seed) return reportFailure(seed.status());
    auto duration = parseDuration(flags.get("duration"));
    if (!duration) return reportFailure(duration.status());
    duration_s = *duration;
    std::vector<chaos::FaultKind> kinds = chaos::allFaultKinds();
    if (flags.isSet("kinds")) {
      kinds.clear();
      std::istringstream in(flags.get("kinds"));
      std::string name;
      while (std::getline(in, name, ',')) {
        auto k = chaos::parseFaultKind(name);
        if (!k)
          return reportFailure(Status(StatusCode::kInvalidArgument,
                                      fmt::format("--kinds: unknown fault kind '{}'", name)));
        kinds.push_back(*k);
      }
    }
    auto coord = flags.getOnOff("coordinator-faults");
    if (!coord) return reportFailure(coord.status());
    // Failovers need a standby coordinator: a random run that may draw them has one.
    if (*coord && std::find(kinds.begin(), kinds.end(), chaos::FaultKind::kFailover) != kinds.end())
      scenario.swarm.standby = true;
    scenario = chaos::randomScenario(scenario, static_cast<std::uint64_t>(*seed), duration_s, kinds,
                                     *coord);
    if (scenario.name == "chaos") scenario.name = "chaosr";
    // Long runs take longer than their schedule: faults slow them.
    scenario.swarm.timeout_s = std::max(scenario.swarm.timeout_s, 3 * duration_s);
  }
  if (flags.isSet("baseline")) {
    const std::string b = flags.get("baseline");
    if (b != "run" && b != "none") {
      auto v = lab::parseNumber("--baseline", b, 0, 1e6);
      if (!v) return reportFailure(v.status());
    }
    scenario.checks.baseline = b;
  }
  if (flags.getBool("dry-run")) {
    std::fputs(chaos::toToml(scenario).c_str(), stdout);
    std::printf("# %zu faults; the scenario is valid\n", scenario.faults.size());
    return 0;
  }
  chaos::RunOptions o;
  o.scenario = std::move(scenario);
  o.out_dir = flags.get("out");
  o.exe = selfExecutable();
  o.log_level = flags.get("log-level");
  o.keep_lab = flags.getBool("keep-lab");
  o.insecure = flags.getBool("insecure");
  o.duration_s = duration_s;
  return chaos::runChaos(std::move(o));
}

}  // namespace loco::cli
