// `loco bench allreduce`: N peer processes (and a coordinator) all-reduce M MiB, on loopback or
// in a lab's hosts. Each worker times its operations and hashes its result; the parent prints
// one JSON line per configuration:
//   {"bench":"allreduce","impl":"loco","peers":N,"mib":M,"wire":"…","streams":K,"p50_ms":…,
//    "algbw_gbs":…,"busbw_gbs":…,"rel_rms_err":…,"bitwise_equal":true|false,"peak_rss_mib":…}
// busbw = bytes·2(N−1)/N / time; rel_rms_err is rank 0's result against an fp64 reference;
// peak_rss_mib is the highest peak RSS (VmHWM) of any worker, taken right after its operations;
// cpu_ms_per_peer is each worker's CPU time (every thread) per timed operation, averaged.
// --baseline gloo first prints Gloo's line ("impl":"gloo", plus "algo", "baseline_algo" and, for
// auto, "candidates_p50_ms"); loco's line then carries "speedup_vs_gloo" (Gloo's p50 / loco's).
// Gloo's time is the call alone (sum); loco's includes the averaging it does inside the
// operation.
#include <fcntl.h>
#include <fmt/format.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <set>
#include <sstream>
#include <thread>

#include "cli/bench_gloo.h"
#include "cli/commands.h"
#include "cli/lab/nat.h"
#include "cli/lab/net.h"
#include "cli/tls_setup.h"
#include "collectives/communicator.h"
#include "crypto/ca.h"
#include "crypto/identity.h"
#include "p2p/base/json.h"
#include "p2p/status_client.h"
#include "p2p/tls_stream.h"

namespace loco::cli {

namespace {

using collectives::Wire;

// Rank r's input: a deterministic stream, so it can be regenerated instead of kept (a kept copy
// would add a whole buffer to every worker's memory) and streamed for the reference.
struct GaussianStream {
  explicit GaussianStream(int rank) : rng(1000 + static_cast<std::uint64_t>(rank)) {}
  float next() { return dist(rng); }
  std::mt19937_64 rng;
  std::normal_distribution<float> dist{0.0f, 1.0f};
};

void fillGaussian(std::vector<float>& v, int rank) {
  GaussianStream g(rank);
  for (float& x : v) x = g.next();
}

// Inputs up to this size are generated once and copied before each operation (runWorker).
constexpr std::size_t kKeptInputBytes = 16u << 20;

std::vector<float> gaussianInput(std::size_t n, int rank) {
  std::vector<float> v(n);
  fillGaussian(v, rank);
  return v;
}

// Peak resident set of this process so far (VmHWM), in MiB; -1 if /proc is unavailable.
double peakRssMib() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("VmHWM:", 0) == 0)
      return static_cast<double>(std::strtol(line.c_str() + 6, nullptr, 10)) / 1024.0;
  }
  return -1;
}

std::uint64_t fnv1a(const void* data, std::size_t bytes) {
  const auto* p = static_cast<const std::uint8_t*>(data);
  std::uint64_t h = 1469598103934665603ull;
  for (std::size_t i = 0; i < bytes; ++i) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

// rank 0 compares its result with an fp64 reference; every rank hashes its result. `extra`, when
// not empty, is a third line (the Gloo baseline's algorithm and candidates). The reference
// is built a block at a time from every rank's regenerated input stream: a whole fp64 copy would
// cost twice the buffer, more than the all-reduce itself.
Status writeResult(const Flags& flags, int rank, int peers, const std::vector<float>& buf,
                   double peak_rss_mib, const std::vector<double>& times_ms,
                   const std::string& extra = "") {
  const std::size_t n = buf.size();
  double rel = -1;
  if (rank == 0) {
    std::vector<GaussianStream> inputs;
    for (int r = 0; r < peers; ++r) inputs.emplace_back(r);
    constexpr std::size_t kBlock = 1 << 16;
    std::vector<double> ref(kBlock);
    double err = 0, norm = 0;
    for (std::size_t b = 0; b < n; b += kBlock) {
      const std::size_t len = std::min(kBlock, n - b);
      std::fill(ref.begin(), ref.end(), 0.0);
      for (auto& in : inputs) {
        for (std::size_t i = 0; i < len; ++i) ref[i] += in.next();
      }
      for (std::size_t i = 0; i < len; ++i) {
        const double want = ref[i] / peers;
        err += (buf[b + i] - want) * (buf[b + i] - want);
        norm += want * want;
      }
    }
    rel = std::sqrt(err / norm);
  }
  std::string times;
  for (double t : times_ms) times += fmt::format("{}{:.4f}", times.empty() ? "" : " ", t);
  return writeFileAtomic(flags.get("out"),
                         fmt::format("{:016x} {:.6e} {:.1f}\n{}\n{}{}", fnv1a(buf.data(), n * 4),
                                     rel, peak_rss_mib, times, extra, extra.empty() ? "" : "\n"));
}

int runGlooWorker(const Flags& flags, std::size_t bytes, int peers, int iters) {
#ifdef LOCO_HAVE_GLOO
  const int rank = std::atoi(flags.get("rank").c_str());
  auto listen = p2p::parseHostPort(flags.get("listen"), true);
  if (!listen) return reportFailure(listen.status());
  const std::vector<float> input = gaussianInput(bytes / sizeof(float), rank);
  std::vector<float> buf(input.size());
  auto run = glooAllReduce(rank, peers, listen->host, flags.get("store"),
                           flags.get("baseline-algo"), input, buf, iters);
  if (!run) return reportFailure(run.status());
  // Third line: "<algo> [<candidate> <p50 ms>]..."
  std::string extra = run->algo;
  for (const auto& [name, p50] : run->candidates_p50_ms)
    extra += fmt::format(" {} {:.4f}", name, p50);
  if (Status st =
          writeFileAtomic(flags.get("out") + ".cpu", fmt::format("{:.3f} 0\n", run->cpu_ms));
      !st.isOk())
    return reportFailure(st);
  if (Status st = writeResult(flags, rank, peers, buf, peakRssMib(), run->times_ms, extra);
      !st.isOk())
    return reportFailure(st);
  return 0;
#else
  (void)flags, (void)bytes, (void)peers, (void)iters;
  return reportFailure(Status(StatusCode::kUnavailable,
                              "this loco was built without Gloo (apt-get install libgloo-dev)"));
#endif
}

// --topology-update: the ring starts in rank order (each worker registers after the previous
// one), one all-reduce runs on it, the bandwidth probes finish, and the next sync point applies
// the coordinator's better ring. Writes "<initial ms> <ring before> <ring after>" (ids joined
// by ',') to `out`.topology.
Status runTopologyPhase(const Flags& flags, collectives::Communicator& c, std::vector<float>& buf,
                        Wire wire) {
  auto joined = [](const std::vector<std::string>& ids) {
    std::string s;
    for (const auto& id : ids) s += (s.empty() ? "" : ",") + id;
    return s;
  };
  const std::string before = joined(c.ring());
  if (auto st = c.syncPoint(Deadline::after(Millis(60000))); !st) return st.status();
  auto t0 = Clock::now();
  auto op = c.allReduce(buf.data(), buf.size(), collectives::DType::kF32,
                        collectives::ReduceOp::kAvg, wire);
  if (!op) return op.status();
  LOCO_RETURN_IF_ERROR((*op)->wait(Deadline::after(Millis(600000))));
  const double initial_ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
  LOCO_RETURN_IF_ERROR(c.waitForProbes(Deadline::after(Millis(120000))));
  if (auto st = c.syncPoint(Deadline::after(Millis(60000))); !st) return st.status();
  return writeFileAtomic(
      flags.get("out") + ".topology",
      fmt::format("{:.4f} {} {} {}\n", initial_ms, before, joined(c.ring()), c.peerId()));
}

int runWorker(const Flags& flags, std::size_t bytes, Wire wire, int peers, int iters, int streams) {
  auto coordinator = p2p::parseHostPort(flags.get("coordinator"));
  auto listen = p2p::parseHostPort(flags.get("listen"), true);
  if (!coordinator || !listen)
    return reportFailure(Status(StatusCode::kInvalidArgument, "worker: bad addresses"));
  const int rank = std::atoi(flags.get("rank").c_str());
  const bool topology = flags.getBool("topology-update");
  collectives::CommunicatorOptions o;
  o.coordinator = *coordinator;
  o.peer_id = crypto::randomHex(16);
  // Before anything connects (the rank-order wait below asks the coordinator too). --tls on:
  // the orchestrator issued a certificate for this worker's id (runOnce).
  if (!flags.get("tls-dir").empty()) {
    if (Status st = useTlsDir(flags.get("tls-dir")); !st.isOk()) return reportFailure(st);
    o.peer_id = flags.get("peer-id");
  } else {
    p2p::tls::useInsecure();
  }
  if (topology) {
    // Register in rank order, so the initial ring is 0-1-2-…
    for (Deadline until = Deadline::after(Millis(60000));;) {
      auto v = p2p::fetchStatus(*coordinator, Deadline::after(Millis(5000)));
      if (v && v->peers.size() == static_cast<std::size_t>(rank)) break;
      if (until.expired())
        return reportFailure(Status(StatusCode::kTimeout, "the previous workers did not register"));
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
  o.listen = *listen;
  o.relay = flags.get("relay");
  o.streams = static_cast<std::uint32_t>(streams);
  auto algorithm = collectives::parseAllReduceAlgorithm(flags.get("algorithm"));
  if (!algorithm) return reportFailure(algorithm.status());
  collectives::AllReduceOptions options;
  options.algorithm = *algorithm;
  auto compress = collectives::parseCompress(flags.get("compress"));
  if (!compress) return reportFailure(compress.status());
  options.compress = *compress;
  auto block =
      flags.getInt("quant-block", 1, static_cast<std::int64_t>(collectives::kMaxQuantBlock));
  if (!block) return reportFailure(block.status());
  options.quant_block = static_cast<std::size_t>(*block);
  auto comm = collectives::Communicator::create(o, Deadline::after(Millis(30000)));
  if (!comm) return reportFailure(comm.status());
  auto& c = **comm;
  if (Status st = c.waitForMembership(Deadline::after(Millis(30000))); !st.isOk())
    return reportFailure(st);
  // Sync points admit the others; a peer alone syncs instantly, so wait by time, not by count
  // (peers across an emulated WAN take a few round trips to register).
  for (Deadline until = Deadline::after(Millis(60000));
       c.world() < static_cast<std::size_t>(peers) && !until.expired();) {
    (void)c.syncPoint(Deadline::after(Millis(10000)));
    if (c.world() < static_cast<std::size_t>(peers))
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  if (c.world() != static_cast<std::size_t>(peers)) {
    return reportFailure(
        Status(StatusCode::kTimeout, fmt::format("only {} of {} peers joined", c.world(), peers)));
  }
  const std::size_t n = bytes / sizeof(float);
  std::vector<float> buf(n);
  std::vector<double> times_ms;
  if (topology) {
    fillGaussian(buf, rank);
    if (Status st = runTopologyPhase(flags, c, buf, wire); !st.isOk()) return reportFailure(st);
  }
  // Small inputs are kept and copied back: regenerating costs ~6 ms of CPU per MiB right before
  // the barrier, and a process that just burnt that gets the CPU back later after the barrier
  // releases it (the peers started up to 6 ms apart at 1 MiB on 2 shared cores). Large ones are
  // regenerated: a kept copy would add a whole buffer to the peak RSS that the bench reports.
  const std::vector<float> kept =
      bytes <= kKeptInputBytes ? gaussianInput(n, rank) : std::vector<float>();
  double cpu_ms = 0;       // this process's CPU time (every thread) in the timed operations
  std::uint64_t sent = 0;  // bytes this peer sent in the timed operations
  for (int it = -1; it < iters; ++it) {  // iteration -1 warms up (links, allocations)
    if (kept.empty()) {
      fillGaussian(buf, rank);
    } else {
      std::copy(kept.begin(), kept.end(), buf.begin());
    }
    if (auto st = c.syncPoint(Deadline::after(Millis(60000))); !st)
      return reportFailure(st.status());  // start together
    const double cpu0 = processCpuMs();
    const std::uint64_t sent0 = c.bytesSent();
    auto t0 = Clock::now();
    auto op = c.allReduce(buf.data(), n, collectives::DType::kF32, collectives::ReduceOp::kAvg,
                          wire, options);
    if (!op) return reportFailure(op.status());
    if (Status st = (*op)->wait(Deadline::after(Millis(600000))); !st.isOk())
      return reportFailure(st);
    if (it >= 0) {
      times_ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
      cpu_ms += processCpuMs() - cpu0;
      sent += c.bytesSent() - sent0;
    }
    // Nobody regenerates its next input while another peer's operation still runs: on a shared
    // machine that CPU (about 25 ns a value, 6 ms per MiB) came out of the slower peers' time
    // (loopback, N = 4, 1 MiB, 2 cores: ~15 ms per operation, 80 % of the bench's CPU in the
    // generator).
    if (auto st = c.syncPoint(Deadline::after(Millis(60000))); !st)
      return reportFailure(st.status());
  }
  if (Status st = writeFileAtomic(
          flags.get("out") + ".cpu",
          fmt::format("{:.3f} {}\n", cpu_ms / iters, sent / static_cast<std::uint64_t>(iters)));
      !st.isOk())
    return reportFailure(st);
  if (Status st = writeResult(flags, rank, peers, buf, peakRssMib(), times_ms); !st.isOk())
    return reportFailure(st);
  (void)c.syncPoint(Deadline::after(Millis(60000)));  // nobody leaves while others still run
  (void)c.leave(Deadline::after(Millis(2000)));
  return 0;
}

struct RunSummary {
  double p50_ms = 0;
  double rel = -1;
  bool bitwise_equal = false;
  // --topology-update: the first all-reduce (initial ring) and the rings before and after, as
  // lab hosts (or ranks on loopback) joined by '-'.
  double initial_ms = 0;
  std::string ring_before, ring_after;
  double peak_rss_mib = 0;  // the highest of any worker
  double cpu_ms = 0;        // CPU time per operation per peer, averaged over the peers
  double sent_mib = 0;      // MiB sent per operation per peer, averaged over the peers (loco)
  // Gloo only: the algorithm timed and, for --baseline-algo auto, every candidate's p50.
  std::string gloo_algo;
  std::vector<std::pair<std::string, double>> candidates_p50_ms;
};

// One configuration: a coordinator (loco only) and N worker processes, on loopback or in the
// lab's hosts (round-robin, coordinator and Gloo's rendezvous in host 1's view of /tmp).
Result<RunSummary> runOnce(const Flags& flags, const std::optional<lab::LabConfig>& cfg, int N,
                           bool gloo, bool tls, int streams, int iters, const std::string& size_key,
                           const std::string& size_value) {
  auto hostArgv = [&](int host) {
    return cfg ? lab::inHost(*cfg, host) : std::vector<std::string>{};
  };
  auto address = [&](int host) { return cfg ? cfg->address(host) : std::string("127.0.0.1"); };
  // Behind a lab NAT (`--host I:nat=...`) a worker binds the host's private address; the
  // coordinator then runs a relay for peers its dial-back cannot reach (as `loco local --lab`).
  bool nat = false;
  for (int h = 1; cfg && h <= cfg->hosts; ++h) nat = nat || cfg->hostNat(h) != lab::NatMode::kNone;
  auto bindAddress = [&](int host) { return cfg ? lab::insideAddress(*cfg, host) : address(host); };
  char dir_template[] = "/tmp/loco-allreduce-XXXXXX";
  if (::mkdtemp(dir_template) == nullptr) return Status(StatusCode::kIoError, "mkdtemp failed");
  const std::string dir = dir_template;
  const std::string exe = selfExecutable();
  std::vector<pid_t> pids;
  auto cleanup = [&] {
    for (pid_t p : pids) ::kill(p, SIGKILL);
    for (pid_t p : pids) ::waitpid(p, nullptr, 0);
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  };
  int port = 0, relay_port = 0;
  // --tls decides for every child (--ca/--tls-dir or --insecure on its command line); an
  // inherited LOCO_INSECURE would contradict --tls on.
  ::unsetenv("LOCO_INSECURE");
  std::optional<crypto::RunCa> ca;
  if (!gloo) {
    auto coord_argv = hostArgv(1);
    for (std::string a : {exe, std::string("coordinator"), std::string("--listen"),
                          address(1) + ":0", std::string("--port-file"), dir + "/port",
                          std::string("--log-level"), std::string("warn")}) {
      coord_argv.push_back(a);
    }
    if (nat) {
      coord_argv.insert(coord_argv.end(),
                        {"--relay", address(1) + ":0", "--relay-port-file", dir + "/relay.port"});
    }
    if (tls) {
      auto made = crypto::RunCa::init(dir + "/ca", std::chrono::hours(24));
      if (!made) {
        cleanup();
        return made.status();
      }
      ca = std::move(*made);
      coord_argv.insert(coord_argv.end(), {"--ca", dir + "/ca"});
    } else {
      coord_argv.push_back("--insecure");
    }
    pids.push_back(spawnProcess(coord_argv, dir + "/coordinator.log"));
    for (int i = 0; i < 500 && port == 0; ++i) {
      std::ifstream(dir + "/port") >> port;
      if (port == 0) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    if (port == 0) {
      cleanup();
      return Status(StatusCode::kTimeout, "the coordinator did not start");
    }
    // Written before the coordinator's own port file.
    if (nat) std::ifstream(dir + "/relay.port") >> relay_port;
  } else {
    std::filesystem::create_directories(dir + "/store");
  }
  const std::size_t first_worker = pids.size();
  for (int r = 0; r < N; ++r) {
    const int host = cfg ? r % cfg->hosts + 1 : 0;
    auto argv = hostArgv(host);
    for (std::string a : {exe,
                          std::string("bench"),
                          std::string("allreduce"),
                          std::string("--worker"),
                          std::string("--impl"),
                          std::string(gloo ? "gloo" : "loco"),
                          std::string("--store"),
                          dir + "/store",
                          std::string("--coordinator"),
                          fmt::format("{}:{}", address(1), port),
                          std::string("--listen"),
                          bindAddress(host) + ":0",
                          std::string("--rank"),
                          std::to_string(r),
                          std::string("--peers"),
                          std::to_string(N),
                          std::string("--wire"),
                          flags.get("wire"),
                          std::string("--streams"),
                          std::to_string(streams),
                          std::string("--algorithm"),
                          flags.get("algorithm"),
                          std::string("--compress"),
                          flags.get("compress"),
                          std::string("--quant-block"),
                          flags.get("quant-block"),
                          std::string("--iters"),
                          std::to_string(iters),
                          std::string("--out"),
                          fmt::format("{}/worker-{}.result", dir, r),
                          std::string("--log-level"),
                          std::string("warn"),
                          "--" + size_key,
                          size_value}) {
      argv.push_back(a);
    }
    if (flags.getBool("topology-update")) argv.push_back("--topology-update");
    if (relay_port > 0)
      argv.insert(argv.end(), {"--relay", fmt::format("{}:{}", address(1), relay_port)});
    if (ca) {
      const std::string id = crypto::ephemeralIdentity().id;
      const std::string tls_dir = fmt::format("{}/tls-{}", dir, r);
      if (Status st = issueInto(*ca, id, tls_dir, std::chrono::hours(24)); !st.isOk()) {
        cleanup();
        return st;
      }
      argv.insert(argv.end(), {"--tls-dir", tls_dir, "--peer-id", id});
    }
    if (gloo) {
      argv.push_back("--baseline-algo");
      argv.push_back(flags.get("baseline-algo"));
    }
    pids.push_back(spawnProcess(argv, fmt::format("{}/worker-{}.log", dir, r)));
  }
  std::string failure;
  const auto deadline = Clock::now() + std::chrono::minutes(10);
  for (std::size_t i = first_worker; i < pids.size() && failure.empty(); ++i) {
    int status = 0;
    while (::waitpid(pids[i], &status, WNOHANG) == 0) {
      if (Clock::now() > deadline) {
        failure = "workers did not finish within 10 minutes";
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    if (!failure.empty()) break;
    pids[i] = -1;
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      failure = fmt::format("{} worker {} failed: {}", gloo ? "gloo" : "loco", i - first_worker,
                            readTextFile(fmt::format("{}/worker-{}.log", dir, i - first_worker)));
    }
  }
  pids.erase(std::remove(pids.begin(), pids.end(), -1), pids.end());
  if (!failure.empty()) {
    cleanup();
    return Status(StatusCode::kInternal, failure);
  }
  std::vector<double> worst(static_cast<std::size_t>(iters), 0.0);
  std::set<std::string> hashes;
  RunSummary out;
  for (int r = 0; r < N; ++r) {
    std::istringstream in(readTextFile(fmt::format("{}/worker-{}.result", dir, r)));
    std::string hash;
    double err = 0, rss = 0;
    in >> hash >> err >> rss;
    double cpu = 0, sent = 0;
    if (std::ifstream(fmt::format("{}/worker-{}.result.cpu", dir, r)) >> cpu >> sent) {
      out.cpu_ms += cpu / N;
      out.sent_mib += sent / (1 << 20) / N;
    }
    hashes.insert(hash);
    if (r == 0) out.rel = err;
    out.peak_rss_mib = std::max(out.peak_rss_mib, rss);
    for (double& w : worst) {
      double t = 0;
      in >> t;
      w = std::max(w, t);  // an operation takes as long as its slowest peer
    }
    if (gloo && r == 0) {
      in >> out.gloo_algo;
      std::string name;
      double p50 = 0;
      while (in >> name >> p50) out.candidates_p50_ms.emplace_back(name, p50);
    }
  }
  if (!gloo && flags.getBool("topology-update")) {
    std::map<std::string, int> place;  // peer id -> host (lab) or rank
    std::vector<std::string> rings;
    for (int r = 0; r < N; ++r) {
      std::istringstream in(readTextFile(fmt::format("{}/worker-{}.result.topology", dir, r)));
      double initial = 0;
      std::string before, after, id;
      in >> initial >> before >> after >> id;
      out.initial_ms = std::max(out.initial_ms, initial);
      place[id] = cfg ? r % cfg->hosts + 1 : r;
      if (r == 0) rings = {before, after};
    }
    auto named = [&](const std::string& ring) {
      std::string s, id;
      std::istringstream ids(ring);
      while (std::getline(ids, id, ','))
        s += (s.empty() ? "" : "-") + (place.count(id) ? std::to_string(place[id]) : "?");
      return s;
    };
    out.ring_before = named(rings.at(0));
    out.ring_after = named(rings.at(1));
  }
  cleanup();
  std::sort(worst.begin(), worst.end());
  out.p50_ms = worst[worst.size() / 2];
  out.bitwise_equal = hashes.size() == 1;
  return out;
}

}  // namespace

int runBenchAllReduce(const Args& args) {
  Flags flags(
      "bench allreduce", "N peer processes all-reduce M MiB; prints one JSON line",
      {{"peers", "number of peers", "4"},
       {"mib", "MiB per all-reduce (fp32)", "64"},
       {"kib", "KiB per all-reduce instead of --mib (latency runs)", ""},
       {"wire", "raw, fp16, bf16, int8 or int4", "raw"},
       {"streams", "TCP streams per peer link", "4"},
       {"algorithm", "auto, ring, direct or scatter-gather (auto: by size)", "auto"},
       {"iters", "timed operations (the median is reported)", "5"},
       {"quant-block", "int8/int4: values per 2-byte scale (training sends Δ in blocks of 1024)",
        "16"},
       {"compress",
        "the ring's zstd stage for non-raw wires: off, zstd, or auto (on wide-area links, round "
        "trip >= 2 ms, measured below 1 Gbit/s)",
        "off"},
       {"lab", "run the peers in this lab's hosts (coordinator in host 1)", ""},
       {"baseline",
        "gloo: also run Gloo's all-reduce (gloo::allreduce, as torch.distributed calls it) on the "
        "same inputs and hosts",
        ""},
       {"baseline-algo",
        "Gloo's algorithm: ring or bcube (gloo::allreduce), halving-doubling or ring-chunked "
        "(Gloo's classic classes), or auto (time all of them, report the fastest)",
        "ring"},
       {"topology-update",
        "start from ring order 1-2-…-N, time one all-reduce, let the coordinator reorder the ring "
        "by measured bandwidth, then time --iters more",
        "", true},
       {"tls",
        "on: TLS 1.3 with mutual authentication on every connection (a throwaway run CA); off: "
        "plaintext",
        "on"},
       {"tls-dir", "internal: a worker's TLS material", ""},
       {"peer-id", "internal: the id a worker's certificate carries", ""},
       {"worker", "internal: one peer of a run", "", true},
       {"impl", "internal: loco or gloo", "loco"},
       {"store", "internal: Gloo's rendezvous directory", ""},
       {"coordinator", "internal", ""},
       {"listen", "internal", ""},
       {"relay", "internal: the lab coordinator's relay, for workers behind a NAT", ""},
       {"rank", "internal", ""},
       {"out", "internal", ""}});
  if (int rc = parseAndSetUp(flags, args, "bench"); rc >= 0) return rc;
  auto peers = flags.getInt("peers", 1, 64);
  auto iters = flags.getInt("iters", 1, 100000);
  auto streams = flags.getInt("streams", 1, 64);
  auto wire = collectives::parseWire(flags.get("wire"));
  if (!peers) return reportFailure(peers.status());
  if (!iters) return reportFailure(iters.status());
  if (!streams) return reportFailure(streams.status());
  if (!wire) return reportFailure(wire.status());
  if (auto a = collectives::parseAllReduceAlgorithm(flags.get("algorithm")); !a)
    return reportFailure(a.status());
  if (auto c = collectives::parseCompress(flags.get("compress")); !c)
    return reportFailure(c.status());
  std::size_t bytes;
  if (flags.isSet("kib")) {
    auto kib = flags.getInt("kib", 1, 1 << 24);
    if (!kib) return reportFailure(kib.status());
    bytes = static_cast<std::size_t>(*kib) << 10;
  } else {
    auto mib = flags.getInt("mib", 1, 16384);
    if (!mib) return reportFailure(mib.status());
    bytes = static_cast<std::size_t>(*mib) << 20;
  }
  auto tls_flag = flags.getOnOff("tls");
  if (!tls_flag) return reportFailure(tls_flag.status());
  const bool tls = *tls_flag;
  if (flags.getBool("worker")) {
    if (flags.get("impl") == "gloo")
      return runGlooWorker(flags, bytes, static_cast<int>(*peers), static_cast<int>(*iters));
    return runWorker(flags, bytes, *wire, static_cast<int>(*peers), static_cast<int>(*iters),
                     static_cast<int>(*streams));
  }

  std::optional<lab::LabConfig> cfg;
  if (flags.isSet("lab")) {
    auto c = lab::loadLab(flags.get("lab"));
    if (!c) return reportFailure(c.status());
    cfg = std::move(c.value());
  }
  const std::string baseline = flags.get("baseline");
  if (!baseline.empty() && baseline != "gloo") {
    return reportFailure(Status(StatusCode::kInvalidArgument, "--baseline takes only gloo"));
  }
  const std::string baseline_algo = flags.get("baseline-algo");
  if (baseline_algo != "auto" && std::find(kGlooAlgorithms.begin(), kGlooAlgorithms.end(),
                                           baseline_algo) == kGlooAlgorithms.end()) {
    return reportFailure(
        Status(StatusCode::kInvalidArgument,
               "--baseline-algo takes ring, bcube, halving-doubling, ring-chunked or auto"));
  }
  const int N = static_cast<int>(*peers);
  const std::string size_key = flags.isSet("kib") ? "kib" : "mib";
  const std::string size_value = flags.isSet("kib") ? flags.get("kib") : flags.get("mib");
  std::optional<double> gloo_p50;
  for (bool gloo : {true, false}) {
    if (gloo && baseline != "gloo") continue;
    auto run = runOnce(flags, cfg, N, gloo, tls, static_cast<int>(*streams),
                       static_cast<int>(*iters), size_key, size_value);
    if (!run) return reportFailure(run.status());
    const double algbw = static_cast<double>(bytes) / (run->p50_ms / 1000) / 1e9;
    const double busbw = algbw * 2.0 * (N - 1) / N;
    Json line = {{"bench", "allreduce"},
                 {"impl", gloo ? "gloo" : "loco"},
                 {"peers", N},
                 {size_key, bytes >> (size_key == "kib" ? 10 : 20)},
                 {"wire", gloo ? "raw" : flags.get("wire")},
                 {"streams", gloo ? 1 : *streams},
                 {"p50_ms", jsonFixed(run->p50_ms, 3)},
                 {"algbw_gbs", jsonFixed(algbw, 3)},
                 {"busbw_gbs", jsonFixed(busbw, 3)},
                 {"rel_rms_err", jsonSignificant(run->rel, 4)},
                 {"bitwise_equal", run->bitwise_equal},
                 {"peak_rss_mib", jsonFixed(run->peak_rss_mib, 0)}};
    if (cfg) line["lab"] = cfg->name;
    if (gloo) {
      gloo_p50 = run->p50_ms;
      line["algo"] = run->gloo_algo;
      line["baseline_algo"] = baseline_algo;
      if (!run->candidates_p50_ms.empty()) {
        Json c = Json::object();
        for (const auto& [name, p50] : run->candidates_p50_ms) c[name] = jsonFixed(p50, 3);
        line["candidates_p50_ms"] = std::move(c);
      }
    } else {
      line["algorithm"] = flags.get("algorithm");
      line["compress"] = flags.get("compress");
      line["sent_mib_per_peer"] = jsonFixed(run->sent_mib, 3);
      line["tls"] = tls;
    }
    line["cpu_ms_per_peer"] = jsonFixed(run->cpu_ms, 1);
    if (!gloo && !run->ring_before.empty()) {
      line["ring_before"] = run->ring_before;
      line["initial_ms"] = jsonFixed(run->initial_ms, 3);
      line["ring_after"] = run->ring_after;
      line["speedup_vs_initial"] = jsonFixed(run->initial_ms / run->p50_ms, 3);
    }
    if (!gloo && gloo_p50) line["speedup_vs_gloo"] = jsonFixed(*gloo_p50 / run->p50_ms, 3);
    std::printf("%s\n", jsonDump(line).c_str());
    std::fflush(stdout);
  }
  return 0;
}

}  // namespace loco::cli
