// `loco doctor`: will `loco join` work from this machine? Checks the coordinator, whether other
// peers can reach this machine's link listener (the coordinator dials back), the path MTU, the
// clock, the checkpoint disk, the BLAS and thread settings and the cgroup limits. Every problem
// comes with the exact fix; the exit status is 0 when joining should work, 1 when it will not.
// It takes `loco join`'s flags and join string, so the same command line can be checked before it
// is run; with TLS it also checks the join string, the token and this machine's certificate
// (cli/ops/doctor_tls.h).
#include <fmt/format.h>
#include <sched.h>
#include <sys/stat.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>

#include "cli/commands.h"
#include "cli/ops/doctor_checks.h"
#include "cli/ops/doctor_tls.h"
#include "cli/tls_setup.h"
#include "cli/training_flags.h"
#include "crypto/ca.h"
#include "crypto/identity.h"
#include "crypto/token.h"
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
      {"identity", "(join's) its certificate, in IDENTITY.tls, is checked", ""},
      {"streams", "(join's; ignored)", "4"},
      {"connect-timeout", "(join's; ignored)", "10000"},
      {"coordinator-timeout", "(join's; ignored)", "600000"},
      {"http", "(join's; ignored)", ""},
      {"join-token", "the join token (as loco join; prefer LOCO_JOIN_TOKEN or --token-file)", ""},
      {"token-file", "file holding the join token (mode 0600)", ""}};
  for (auto& spec : trainingPeerFlagSpecs()) specs.push_back(std::move(spec));
  for (auto& spec : securityFlagSpecs(/*with_ca=*/false)) specs.push_back(std::move(spec));
  Flags flags("doctor", "check whether this machine can join a run, and say how to fix it",
              std::move(specs));
  if (int rc = parseAndSetUp(flags, args, "doctor"); rc >= 0) return rc;
  auto timeout = flags.getInt("timeout", 100, 600000);
  if (!timeout) return reportFailure(timeout.status());
  auto listen = p2p::parseHostPort(flags.get("listen"), /*allow_port_zero=*/true);
  if (!listen) return reportFailure(listen.status().withContext("--listen"));
  auto config = trainingConfigFromFlags(flags);
  if (!config) return reportFailure(config.status());

  // Like `loco join`: a join string (loco://..., positional or --coordinator) pins the run CA.
  std::string coordinator_text = flags.get("coordinator");
  if (coordinator_text.empty() && flags.positional().size() == 1)
    coordinator_text = flags.positional()[0];
  std::vector<ops::Check> checks;
  ops::TlsDoctorInputs tin;
  tin.now_unix = static_cast<std::int64_t>(std::time(nullptr));
  tin.tls_dir = flags.get("tls-dir");
  if (tin.tls_dir.empty() && !flags.get("identity").empty())
    tin.tls_dir = flags.get("identity") + ".tls";
  if (!flags.get("identity").empty()) {
    const std::string text = readTextFile(flags.get("identity"));
    if (auto at = text.find("id "); at != std::string::npos)
      tin.identity_id = text.substr(at + 3, 32);
  }
  const bool tls_wanted = !flags.getBool("insecure");
  std::string pinned;  // the probe without a certificate of our own
  if (crypto::looksLikeJoinString(coordinator_text)) {
    if (!tls_wanted) {
      return reportFailure(Status(StatusCode::kInvalidArgument,
                                  "a join string is for TLS runs; --insecure contradicts it"));
    }
    tin.join_text = coordinator_text;
    auto j = crypto::parseJoinString(coordinator_text);
    if (j) {
      tin.join = *j;
      coordinator_text = p2p::HostPort{j->host, j->port}.toString();
    } else {
      tin.join_error = j.status().message();
      coordinator_text.clear();
    }
  }
  if (tls_wanted && (tin.join || !tin.tls_dir.empty())) {
    struct stat st {};
    tin.tls_dir_exists = !tin.tls_dir.empty() && ::stat(tin.tls_dir.c_str(), &st) == 0;
    if (tin.tls_dir_exists) {
      tin.cert_pem = readTextFile(tin.tls_dir + "/cert.pem");
      tin.ca_pem = readTextFile(tin.tls_dir + "/ca.pem");
      if (auto key = crypto::readPrivateFile(tin.tls_dir + "/key.pem"); !key)
        tin.key_error = key.status().message();
    }
    if (flags.isSet("join-token") && !flags.get("join-token").empty()) {
      tin.token_source = "LOCO_JOIN_TOKEN (or --join-token)";
    } else if (flags.isSet("token-file") && !flags.get("token-file").empty()) {
      tin.token_source = "--token-file " + flags.get("token-file");
    } else {
      tin.token_source = "the join string";
    }
    auto token = joinToken(flags, tin.join.value_or(crypto::JoinString{}));
    if (token) {
      tin.token = *token;
    } else {
      tin.token_error = token.status().message();
    }
  }
  bool certificate_usable = false;
  if (!tin.join_text.empty() || (tls_wanted && !tin.tls_dir.empty())) {
    checks = ops::tlsChecks(tin, &certificate_usable);
  }
  // The probe's own TLS: this machine's certificate when it has a usable one, else (a join
  // string, nothing enrolled yet) the pin alone; --insecure or --tls-dir as loco join.
  if (tin.join && certificate_usable) {
    if (Status st = useTlsDir(tin.tls_dir); !st.isOk()) return reportFailure(st);
  } else if (tin.join) {
    pinned = tin.join->ca_fingerprint;
  } else if (Status st = setUpSecurity(flags, crypto::ephemeralIdentity().id,
                                       /*warn_insecure=*/false);
             !st.isOk() && !coordinator_text.empty()) {
    return reportFailure(st);
  }

  std::string title = "loco doctor: this machine";
  if (!coordinator_text.empty()) {
    auto coordinators = p2p::parseHostPortList(coordinator_text);
    if (!coordinators) return reportFailure(coordinators.status().withContext("--coordinator"));
    const p2p::HostPort& coordinator = coordinators->front();
    title =
        fmt::format("loco doctor: can this machine join the run at {}?", coordinator.toString());
    auto probe = p2p::probeCoordinator(coordinator, *listen, flags.get("advertise"),
                                       Deadline::after(Millis(*timeout)), pinned);
    auto net =
        ops::networkChecks(probe, coordinator, flags.isSet("listen") ? flags.get("listen") : "");
    checks.insert(checks.begin(), net.begin(), net.end());
  } else if (tin.join_text.empty()) {
    checks.push_back({"coordinator", ops::CheckLevel::kInfo,
                      "not checked: pass the join string (or --coordinator HOST:PORT) to check "
                      "the network too",
                      ""});
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
