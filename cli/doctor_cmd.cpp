// `loco doctor`: will `loco join` work from this machine? Checks the coordinator, whether other
// peers can reach this machine's link listener (the coordinator dials back), the path MTU, the
// clock, the checkpoint disk, the BLAS and thread settings and the cgroup limits. Every problem
// comes with the exact fix; the exit status is 0 when joining should work, 1 when it will not.
// It takes `loco join`'s flags, so the same command line can be checked before it is run.
#include <fmt/format.h>
#include <sched.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "cli/commands.h"
#include "cli/ops/doctor_checks.h"
#include "cli/tls_setup.h"
#include "cli/training_flags.h"
#include "crypto/identity.h"
#include "p2p/doctor_probe.h"
#include "training/model_config.h"

namespace loco::cli {

int runDoctor(const Args& args) {
  std::vector<FlagSpec> specs{
      {"coordinator",
       "HOST:PORT of the run's coordinator (the first of a list); without it only "
       "this machine is checked",
       ""},
      {"listen", "HOST:PORT `loco join` would listen on for peers (port 0: any)", "0.0.0.0:0"},
      {"advertise", "HOST:PORT `loco join` would advertise (default: derived as join does)", ""},
      {"timeout", "ms for the whole conversation with the coordinator", "10000"},
      {"json", "print one JSON object instead of the report", "", true},
      // Accepted so that `loco doctor` takes a `loco join` command line as it is:
      {"idle", "(join's; ignored)", "", true},
      {"identity", "(join's; ignored)", ""},
      {"streams", "(join's; ignored)", "4"},
      {"connect-timeout", "(join's; ignored)", "10000"},
      {"coordinator-timeout", "(join's; ignored)", "600000"},
      {"http", "(join's; ignored)", ""}};
  for (auto& spec : trainingPeerFlagSpecs()) specs.push_back(std::move(spec));
  for (auto& spec : securityFlagSpecs(/*with_ca=*/false)) specs.push_back(std::move(spec));
  Flags flags("doctor", "check whether this machine can join a run, and say how to fix it",
              std::move(specs));
  if (int rc = parseAndSetUp(flags, args, "doctor"); rc >= 0) return rc;
  if (Status st = setUpSecurity(flags, crypto::ephemeralIdentity().id, /*warn_insecure=*/false);
      !st.isOk()) {
    return reportFailure(st);
  }
  auto timeout = flags.getInt("timeout", 100, 600000);
  if (!timeout) return reportFailure(timeout.status());
  auto listen = p2p::parseHostPort(flags.get("listen"), /*allow_port_zero=*/true);
  if (!listen) return reportFailure(listen.status().withContext("--listen"));
  auto config = trainingConfigFromFlags(flags);
  if (!config) return reportFailure(config.status());

  std::vector<ops::Check> checks;
  std::string title = "loco doctor: this machine";
  if (flags.isSet("coordinator")) {
    auto coordinators = p2p::parseHostPortList(flags.get("coordinator"));
    if (!coordinators) return reportFailure(coordinators.status().withContext("--coordinator"));
    const p2p::HostPort& coordinator = coordinators->front();
    title =
        fmt::format("loco doctor: can this machine join the run at {}?", coordinator.toString());
    auto probe = p2p::probeCoordinator(coordinator, *listen, flags.get("advertise"),
                                       Deadline::after(Millis(*timeout)));
    auto net =
        ops::networkChecks(probe, coordinator, flags.isSet("listen") ? flags.get("listen") : "");
    checks.insert(checks.end(), net.begin(), net.end());
  } else {
    checks.push_back({"coordinator", ops::CheckLevel::kInfo,
                      "not checked: pass --coordinator HOST:PORT to check the network too", ""});
  }

  const std::uint64_t params = training::paramCount(config->train.model);
  checks.push_back(ops::checkDisk(config->checkpoint_dir, ops::estimateCheckpoint(params)));
  const auto limits = ops::readCgroupLimits("/sys/fs/cgroup", readTextFile("/proc/self/cgroup"));
  cpu_set_t set;
  double cpus = NAN;
  if (::sched_getaffinity(0, sizeof(set), &set) == 0) cpus = CPU_COUNT(&set);
  if (limits.cpus) cpus = std::isnan(cpus) ? *limits.cpus : std::min(cpus, *limits.cpus);
  const char* omp = std::getenv("OMP_NUM_THREADS");
  const char* openblas = std::getenv("OPENBLAS_NUM_THREADS");
  for (auto& c : ops::checkBlas(ops::findBlas(), config->train.threads, omp ? omp : "",
                                openblas ? openblas : "", cpus))
    checks.push_back(std::move(c));
  for (auto& c : ops::checkCgroup(limits, config->train.threads, ops::estimateMemory(params)))
    checks.push_back(std::move(c));

  const std::string text =
      flags.getBool("json") ? ops::checksJson(checks) + "\n" : ops::renderChecks(checks, title);
  std::fputs(text.c_str(), stdout);
  return ops::anyFailed(checks) ? 1 : 0;
}

}  // namespace loco::cli
