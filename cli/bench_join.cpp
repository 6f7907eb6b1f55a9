// `loco bench join`: N−1 up-to-date peers hold M MiB of shared state; one more peer joins with
// nothing and syncs receive-only. Runs twice: with a single forced source, then with all
// sources, and prints one JSON line for each:
//   {"bench":"join","sources":S,"mib":M,"seconds":…,"gbit_s":…,"hash_equal":true|false,…}
// seconds is the joiner's whole sync call; gbit_s = M MiB·8 / seconds. With --lab NAME the
// coordinator and source i run in host i, the joiner in host N (so the lab needs N hosts).
// --kill-source-ms T kills source 1 (kill -9) T ms into the joiner's sync of the all-sources run.
#include <fmt/format.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "cli/commands.h"
#include "cli/lab/net.h"
#include "collectives/communicator.h"
#include "crypto/identity.h"
#include "p2p/base/json.h"
#include "p2p/base/seeded_fill.h"

namespace loco::cli {
namespace {

using collectives::DType;
using collectives::SharedState;
using collectives::SyncOptions;
using collectives::SyncStrategy;

// Polls sync points until the group has `n` members (peers across an emulated WAN take a few
// round trips to register, so by time, not by count).
Status waitForWorld(collectives::Communicator& c, std::size_t n, Millis timeout) {
  for (Deadline until = Deadline::after(timeout); c.world() < n && !until.expired();) {
    (void)c.syncPoint(Deadline::after(Millis(10000)));
    if (c.world() < n) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  if (c.world() < n)
    return Status(StatusCode::kTimeout, fmt::format("only {} of {} peers joined", c.world(), n));
  return Status();
}

int runJoinWorker(const Flags& flags, std::size_t bytes, std::uint32_t streams,
                  std::uint32_t chunk_bytes) {
  auto coordinator = p2p::parseHostPort(flags.get("coordinator"));
  auto listen = p2p::parseHostPort(flags.get("listen"), true);
  auto sources = flags.getInt("sources", 1, 64);
  auto total = flags.getInt("peers", 2, 65);
  auto max_sources = flags.getInt("max-sources", 0, 64);
  auto seed = flags.getInt("seed", 0, std::int64_t{1} << 62);
  if (!coordinator || !listen || !sources || !total || !max_sources || !seed) {
    return reportFailure(Status(StatusCode::kInvalidArgument, "bench join worker: bad arguments"));
  }
  const bool joiner = flags.get("role") == "joiner";
  SyncOptions sync_opts;
  sync_opts.max_sources = static_cast<std::size_t>(*max_sources);
  sync_opts.max_serve_mbit = std::strtod(flags.get("serve-mbit").c_str(), nullptr);

  collectives::CommunicatorOptions o;
  o.coordinator = *coordinator;
  o.peer_id = crypto::randomHex(16);
  o.listen = *listen;
  o.streams = streams;
  auto comm = collectives::Communicator::create(o, Deadline::after(Millis(30000)));
  if (!comm) return reportFailure(comm.status());
  auto& c = **comm;
  if (Status st = c.waitForMembership(Deadline::after(Millis(60000))); !st.isOk())
    return reportFailure(st);

  std::vector<float> params(bytes / sizeof(float), 0.0f);
  std::int64_t step = 0;
  if (!joiner) {
    fillSeeded(params, static_cast<std::uint64_t>(*seed));
    step = 1000;
  }
  SharedState state(chunk_bytes);
  if (Status st = state.add("params", DType::kF32, params.data(), params.size()); !st.isOk())
    return reportFailure(st);
  if (Status st = state.add("step", DType::kI64, &step, 1); !st.isOk()) return reportFailure(st);

  if (!joiner) {
    // Up to date first: the sources sync among themselves (revision 0 -> 1).
    if (Status st = waitForWorld(c, static_cast<std::size_t>(*sources), Millis(120000)); !st.isOk())
      return reportFailure(st);
    auto first = c.syncSharedState(state, {}, Deadline::after(Millis(120000)));
    if (!first) return reportFailure(first.status());
    if (Status st = writeFileAtomic(flags.get("ready"), fmt::format("{:016x}\n", state.digest()));
        !st.isOk()) {
      return reportFailure(st);
    }
    if (Status st = waitForWorld(c, static_cast<std::size_t>(*total), Millis(300000)); !st.isOk())
      return reportFailure(st);
  } else {
    sync_opts.strategy = SyncStrategy::kReceiveOnly;
    if (Status st = writeFileAtomic(flags.get("ready"), "syncing\n"); !st.isOk())
      return reportFailure(st);
  }
  auto r = c.syncSharedState(state, sync_opts, Deadline::after(Millis(600000)));
  if (!r) return reportFailure(r.status());
  Status st =
      writeFileAtomic(flags.get("out"),
                      fmt::format("{:016x} {:.6f} {:.6f} {} {} {} {} {}\n", state.digest(),
                                  r->seconds, r->transfer_seconds, r->bytes_received, r->bytes_sent,
                                  r->sources_used, r->chunks_rejected, r->sources_dropped));
  if (!st.isOk()) return reportFailure(st);
  (void)c.leave(Deadline::after(Millis(2000)));
  return 0;
}

struct JoinResult {
  double seconds = 0, transfer_seconds = 0;
  std::uint64_t bytes_received = 0;
  std::size_t sources_used = 0, sources_dropped = 0, chunks_rejected = 0;
  bool hash_equal = false;
};

// One run: a coordinator, N−1 sources, then the joiner (on loopback or in the lab's hosts).
Result<JoinResult> runJoinOnce(const Flags& flags, const std::optional<lab::LabConfig>& cfg, int N,
                               int max_sources, int kill_ms) {
  auto hostArgv = [&](int host) {
    return cfg ? lab::inHost(*cfg, host) : std::vector<std::string>{};
  };
  auto address = [&](int host) { return cfg ? cfg->address(host) : std::string("127.0.0.1"); };
  char dir_template[] = "/tmp/loco-join-XXXXXX";
  if (::mkdtemp(dir_template) == nullptr) return Status(StatusCode::kIoError, "mkdtemp failed");
  const std::string dir = dir_template;
  const std::string exe = selfExecutable();
  std::vector<pid_t> pids;
  auto cleanup = [&] {
    for (pid_t p : pids) {
      if (p > 0) ::kill(p, SIGKILL);
    }
    for (pid_t p : pids) {
      if (p > 0) ::waitpid(p, nullptr, 0);
    }
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  };
  auto argvFor = [&](int host, std::vector<std::string> args) {
    auto argv = hostArgv(host);
    argv.push_back(exe);
    argv.insert(argv.end(), args.begin(), args.end());
    return argv;
  };
  // Plaintext: this bench measures the state transfer, its workers run without TLS material.
  pids.push_back(
      spawnProcess(argvFor(1, {"coordinator", "--listen", address(1) + ":0", "--port-file",
                               dir + "/port", "--log-level", "warn", "--insecure"}),
                   dir + "/coordinator.log"));
  int port = 0;
  for (int i = 0; i < 500 && port == 0; ++i) {
    std::ifstream(dir + "/port") >> port;
    if (port == 0) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  if (port == 0) {
    cleanup();
    return Status(StatusCode::kTimeout, "the coordinator did not start");
  }
  auto worker = [&](int index, int host, const std::string& role, int max_src) {
    return argvFor(host, {"bench",
                          "join",
                          "--worker",
                          "--role",
                          role,
                          "--coordinator",
                          fmt::format("{}:{}", address(1), port),
                          "--listen",
                          address(host) + ":0",
                          "--peers",
                          std::to_string(N),
                          "--sources",
                          std::to_string(N - 1),
                          "--mib",
                          flags.get("mib"),
                          "--streams",
                          flags.get("streams"),
                          "--chunk-kib",
                          flags.get("chunk-kib"),
                          "--max-sources",
                          std::to_string(max_src),
                          "--serve-mbit",
                          flags.get("serve-mbit"),
                          "--ready",
                          fmt::format("{}/ready-{}", dir, index),
                          "--out",
                          fmt::format("{}/result-{}", dir, index),
                          "--log-level",
                          "warn"});
  };
  const int joiner = N - 1;  // index of the joiner's files; sources are 0..N-2
  std::vector<pid_t> workers(static_cast<std::size_t>(N), -1);
  for (int i = 0; i < N - 1; ++i) {
    workers[i] = spawnProcess(worker(i, cfg ? i + 1 : 0, "source", 0),
                              fmt::format("{}/worker-{}.log", dir, i));
    pids.push_back(workers[i]);
  }
  auto failed = [&](int i) {
    int status = 0;
    return ::waitpid(workers[i], &status, WNOHANG) == workers[i];
  };
  // The joiner comes once the sources are up to date.
  std::string failure;
  const auto setup_deadline = Clock::now() + std::chrono::minutes(5);
  for (int i = 0; i < N - 1 && failure.empty(); ++i) {
    while (readTextFile(fmt::format("{}/ready-{}", dir, i)).empty()) {
      if (failed(i) || Clock::now() > setup_deadline) {
        failure = fmt::format("source {} did not get ready: {}", i,
                              readTextFile(fmt::format("{}/worker-{}.log", dir, i)));
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }
  if (!failure.empty()) {
    cleanup();
    return Status(StatusCode::kInternal, failure);
  }
  workers[joiner] = spawnProcess(worker(joiner, cfg ? N : 0, "joiner", max_sources),
                                 fmt::format("{}/worker-{}.log", dir, joiner));
  pids.push_back(workers[joiner]);
  int killed = -1;
  if (kill_ms > 0) {
    while (readTextFile(fmt::format("{}/ready-{}", dir, joiner)).empty() &&
           Clock::now() < setup_deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(kill_ms));
    killed = 0;
    ::kill(workers[0], SIGKILL);
  }
  const auto deadline = Clock::now() + std::chrono::minutes(10);
  std::vector<int> order = {joiner};
  for (int i = 0; i < N - 1; ++i) order.push_back(i);
  for (int i : order) {
    int status = 0;
    pid_t got = 0;
    while ((got = ::waitpid(workers[i], &status, WNOHANG)) == 0 && Clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    if (got == 0) {
      failure = "workers did not finish within 10 minutes";
      break;
    }
    std::replace(pids.begin(), pids.end(), workers[i], pid_t{-1});
    if (i == killed) continue;
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      failure = fmt::format("{} {} failed: {}", i == joiner ? "joiner" : "source", i,
                            readTextFile(fmt::format("{}/worker-{}.log", dir, i)));
      break;
    }
  }
  if (!failure.empty()) {
    cleanup();
    return Status(StatusCode::kInternal, failure);
  }
  JoinResult out;
  std::string joiner_digest;
  {
    std::istringstream in(readTextFile(fmt::format("{}/result-{}", dir, joiner)));
    std::uint64_t sent = 0;
    in >> joiner_digest >> out.seconds >> out.transfer_seconds >> out.bytes_received >> sent >>
        out.sources_used >> out.chunks_rejected >> out.sources_dropped;
  }
  out.hash_equal = !joiner_digest.empty();
  for (int i = 0; i < N - 1; ++i) {
    if (i == killed) continue;
    std::string digest;
    std::istringstream(readTextFile(fmt::format("{}/result-{}", dir, i))) >> digest;
    out.hash_equal = out.hash_equal && digest == joiner_digest;
  }
  cleanup();
  return out;
}

}  // namespace

int runBenchJoin(const Args& args) {
  Flags flags(
      "bench join",
      "N-1 up-to-date peers hold M MiB of shared state; one peer joins and downloads it",
      {{"peers", "peers in all, the joiner included", "5"},
       {"mib", "MiB of shared state", "256"},
       {"streams", "TCP streams per link", "4"},
       {"chunk-kib", "KiB per hashed chunk", "1024"},
       {"lab", "run in this lab: source i in host i (coordinator in host 1), the joiner in host N",
        ""},
       {"kill-source-ms", "kill -9 one source this many ms into the all-sources download (0: none)",
        "0"},
       {"serve-mbit", "cap each source's serving rate (0: none)", "0"},
       {"worker", "internal: one peer of a run", "", true},
       {"role", "internal: source or joiner", "source"},
       {"sources", "internal", "1"},
       {"max-sources", "internal", "0"},
       {"seed", "internal: content seed of the sources", "42"},
       {"coordinator", "internal", ""},
       {"listen", "internal", ""},
       {"ready", "internal", ""},
       {"out", "internal", ""}});
  if (int rc = parseAndSetUp(flags, args, "bench"); rc >= 0) return rc;
  auto peers = flags.getInt("peers", 2, 65);
  auto mib = flags.getInt("mib", 1, 65536);
  auto streams = flags.getInt("streams", 1, 64);
  auto chunk_kib = flags.getInt("chunk-kib", 1, 65536);
  auto kill_ms = flags.getInt("kill-source-ms", 0, 3600000);
  if (!peers) return reportFailure(peers.status());
  if (!mib) return reportFailure(mib.status());
  if (!streams) return reportFailure(streams.status());
  if (!chunk_kib) return reportFailure(chunk_kib.status());
  if (!kill_ms) return reportFailure(kill_ms.status());
  const std::size_t bytes = static_cast<std::size_t>(*mib) << 20;
  if (flags.getBool("worker")) {
    return runJoinWorker(flags, bytes, static_cast<std::uint32_t>(*streams),
                         static_cast<std::uint32_t>(*chunk_kib) << 10);
  }
  const int N = static_cast<int>(*peers);
  if (*kill_ms > 0 && N < 3) {
    return reportFailure(Status(StatusCode::kInvalidArgument,
                                "--kill-source-ms needs --peers 3 or more (two sources)"));
  }
  std::optional<lab::LabConfig> cfg;
  if (flags.isSet("lab")) {
    auto c = lab::loadLab(flags.get("lab"));
    if (!c) return reportFailure(c.status());
    cfg = std::move(c.value());
    if (cfg->hosts < N) {
      return reportFailure(
          Status(StatusCode::kInvalidArgument,
                 fmt::format("lab '{}' has {} hosts; --peers {} needs {} (one per peer)", cfg->name,
                             cfg->hosts, N, N)));
    }
  }
  for (int sources : {1, N - 1}) {
    const int kill = sources == N - 1 ? static_cast<int>(*kill_ms) : 0;
    auto run = runJoinOnce(flags, cfg, N, sources == 1 ? 1 : 0, kill);
    if (!run) return reportFailure(run.status());
    const double gbit = static_cast<double>(bytes) * 8 / run->seconds / 1e9;
    Json line = {{"bench", "join"},
                 {"sources", sources},
                 {"mib", *mib},
                 {"seconds", jsonFixed(run->seconds, 3)},
                 {"gbit_s", jsonFixed(gbit, 3)},
                 {"hash_equal", run->hash_equal},
                 {"transfer_seconds", jsonFixed(run->transfer_seconds, 3)},
                 {"bytes_received", run->bytes_received},
                 {"sources_used", run->sources_used},
                 {"sources_dropped", run->sources_dropped},
                 {"chunks_rejected", run->chunks_rejected}};
    if (kill > 0) {
      line["killed_sources"] = 1;
      line["kill_after_ms"] = kill;
    }
    if (cfg) line["lab"] = cfg->name;
    std::printf("%s\n", jsonDump(line).c_str());
    std::fflush(stdout);
  }
  return 0;
}

}  // namespace loco::cli
