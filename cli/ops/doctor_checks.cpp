#include "cli/ops/doctor_checks.h"

#include <fmt/format.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace loco::ops {
namespace {

namespace fs = std::filesystem;

std::string mib(std::uint64_t bytes) {
  return bytes >= (10ull << 30) ? fmt::format("{:.1f} GiB", bytes / double(1ull << 30))
                                : fmt::format("{:.0f} MiB", bytes / double(1ull << 20));
}

std::string readAll(const std::string& path) {
  std::ifstream f(path);
  std::stringstream s;
  s << f.rdbuf();
  return s.str();
}

}  // namespace

std::string_view checkLevelName(CheckLevel l) {
  switch (l) {
    case CheckLevel::kOk:
      return "ok";
    case CheckLevel::kInfo:
      return "info";
    case CheckLevel::kWarn:
      return "warn";
    case CheckLevel::kFail:
      return "FAIL";
  }
  return "?";
}

// ---- network
// -------------------------------------------------------------------------------------

std::vector<Check> networkChecks(const Result<p2p::DoctorProbe>& probe,
                                 const p2p::HostPort& coordinator, const std::string& listen_flag) {
  std::vector<Check> out;
  const std::string where = coordinator.toString();
  if (!probe) {
    const Status& st = probe.status();
    Check c{"coordinator", CheckLevel::kFail, "", ""};
    switch (st.code()) {
      case StatusCode::kUnavailable:
        c.message = fmt::format("nothing accepts connections at {} ({})", where, st.message());
        c.fix = fmt::format(
            "start it there (`loco coordinator --listen 0.0.0.0:{}`), or pass the address it "
            "listens on: --coordinator HOST:PORT",
            coordinator.port);
        break;
      case StatusCode::kTimeout:
        c.message = fmt::format(
            "{} does not answer: the packets are dropped on the way (a firewall) or the host is "
            "down ({})",
            where, st.message());
        c.fix = fmt::format(
            "on the coordinator's machine, let TCP port {} in: `nft add rule inet filter input "
            "tcp dport {} accept` (or `ufw allow {}/tcp`); check the host is up",
            coordinator.port, coordinator.port, coordinator.port);
        break;
      case StatusCode::kInvalidArgument:
        c.message = st.message();
        c.fix = "--coordinator HOST:PORT with a name this machine resolves (or an IP address)";
        break;
      case StatusCode::kUnauthenticated: {
        // TLS: the pin, a plaintext coordinator, or our certificate refused (tls_stream.cpp).
        c.message = st.message();
        const std::string& m = st.message();
        if (m.find("pinned CA") != std::string::npos) {
          c.fix = fmt::format(
              "do not join: {} is not the coordinator the join string names (another run, an old "
              "string, or a man in the middle). Ask the organiser for the run's current join "
              "string (`loco token create --ca RUN_CA --coordinator {}`)",
              where, where);
        } else if (m.find("plaintext") != std::string::npos ||
                   m.find("--insecure") != std::string::npos) {
          c.fix =
              "every side must agree: the coordinator and this machine both TLS (a join string or "
              "--tls-dir), or both --insecure (only on a network you trust)";
        } else {
          c.fix =
              "join again with a join string from the organiser (`loco join 'loco://...'`): it "
              "enrolls this machine with the run's CA";
        }
        break;
      }
      default:
        c.message =
            fmt::format("{} answers, but not as a loco coordinator: {}", where, st.message());
        c.fix = "point --coordinator at the run's `loco coordinator`, of the same loco version";
    }
    out.push_back(std::move(c));
    return out;
  }
  const p2p::DoctorProbe& p = *probe;
  out.push_back({"coordinator", CheckLevel::kOk,
                 fmt::format("{} answers (connect {:.1f} ms, round trip {:.1f} ms); it sees this "
                             "machine as {}",
                             where, p.connect_s * 1e3, p.rtt_s * 1e3, p.result.seen_from),
                 ""});

  // Reachability of the link listener from outside.
  const std::string port = std::to_string(p.listen_port);
  Check reach{"listen port", CheckLevel::kOk, "", ""};
  const auto& r = p.result;
  if (r.code == StatusCode::kOk) {
    if (p.probe_received) {
      reach.message =
          fmt::format("the coordinator connected to {}, the address peers are told", p.advertised);
    } else if (!p.listening) {
      reach.level = CheckLevel::kWarn;
      reach.message = fmt::format(
          "port {} is taken here ({}): the coordinator connected to {}, but whether that is this "
          "peer's listener could not be checked",
          p.listen_port, p.listen_error, p.advertised);
      reach.fix = "stop what holds the port (a running `loco join`?) and run `loco doctor` again";
    } else {
      reach.level = CheckLevel::kFail;
      reach.message = fmt::format(
          "the coordinator connected to {}, but the connection reached another machine or "
          "process, not this one",
          p.advertised);
      reach.fix = fmt::format(
          "--advertise THIS_MACHINE:{} with the address other peers reach this machine at (a NAT "
          "must forward TCP port {} here)",
          port, port);
    }
  } else if (r.code == StatusCode::kInvalidArgument) {
    reach.level = CheckLevel::kFail;
    reach.message = fmt::format("{} (peers would be told {})", r.detail, p.advertised);
    auto seen = p2p::parseHostPort(r.seen_from);
    reach.fix = fmt::format(
        "--advertise {}:{} (the address the coordinator sees), and make sure "
        "TCP port {} there reaches this machine",
        seen ? seen->host : r.seen_from, port, port);
  } else {
    reach.level = CheckLevel::kFail;
    const bool refused = r.code == StatusCode::kUnavailable;
    auto adv = p2p::parseHostPort(p.advertised);
    const std::string adv_port = adv ? std::to_string(adv->port) : port;
    reach.message = fmt::format("other peers cannot connect to {}: {} ({})", p.advertised,
                                refused ? "connection refused, nothing accepts there from outside"
                                        : "connections time out, a firewall drops them",
                                r.detail);
    if (adv_port != port) {
      reach.fix = fmt::format(
          "peers are told port {} but loco listens on port {}: forward TCP port {} to port {} "
          "on this machine (a NAT port forward), or --advertise {}:{}",
          adv_port, port, adv_port, port, adv ? adv->host : "HOST", port);
    } else if (refused) {
      reach.fix = fmt::format(
          "behind a NAT, forward TCP port {} to this machine and --advertise PUBLIC_IP:{}; "
          "otherwise --listen 0.0.0.0:{} so the listener is on the interface peers reach{}, or "
          "let the port in: `nft add rule inet filter input tcp dport {} accept`",
          port, port, port,
          listen_flag.empty() ? "" : fmt::format(" (now --listen {})", listen_flag), port);
    } else {
      reach.fix = fmt::format(
          "let TCP port {} in on this machine: `nft add rule inet filter input tcp dport "
          "{} accept` (or `ufw allow {}/tcp`); with --listen HOST:0 pick a fixed port "
          "first",
          port, port, port);
    }
  }
  out.push_back(std::move(reach));

  // Unreachable: can loco route around it? A NAT that kept the port of our connection to the
  // coordinator can be punched through (p2p/traversal.h); one that changed it cannot.
  auto seen = p2p::parseHostPort(r.seen_from);
  if (r.code != StatusCode::kOk && p.local_port != 0 && seen) {
    Check nat{"nat", CheckLevel::kOk, "", ""};
    if (seen->port == p.local_port) {
      nat.message = fmt::format(
          "the NAT keeps ports (our port {} arrives as {}): `loco join` takes part anyway, "
          "dialed back by peers that accept connections and punched through by peers behind "
          "NATs like this one",
          p.local_port, r.seen_from);
    } else {
      nat.level = CheckLevel::kWarn;
      nat.message = fmt::format(
          "the NAT changes ports (our port {} arrives as {}): hole punching cannot work; peers "
          "that accept connections still dial this machine back, peers behind NATs reach it "
          "only through a relay",
          p.local_port, r.seen_from);
      nat.fix = "loco join --relay HOST:PORT (a `loco relay`, or a coordinator run with --relay)";
    }
    out.push_back(std::move(nat));
  }

  // Path MTU: the kernel's path MTU for the connection (lowered by ICMP "fragmentation needed"
  // from a router with a smaller MTU) against the interface's. TCP copes when that ICMP gets
  // through; when a tunnel drops it, large transfers stall while small messages pass, which no
  // passive check can see.
  Check mtu{"path MTU", CheckLevel::kOk, "", ""};
  if (p.interface_mtu <= 0 || p.path_mtu <= 0) {
    mtu.level = CheckLevel::kInfo;
    mtu.message = "could not read the interface or path MTU";
  } else if (p.path_mtu < p.interface_mtu) {
    mtu.level = CheckLevel::kWarn;
    mtu.message = fmt::format(
        "the path to the coordinator carries {} bytes per packet, less than {}'s MTU of {}: a "
        "tunnel or VPN on the way. If transfers to some peers stall while small messages pass, "
        "packets of {} bytes are being dropped",
        p.path_mtu, p.interface, p.interface_mtu, p.interface_mtu);
    mtu.fix = fmt::format("ip link set dev {} mtu {}", p.interface, p.path_mtu);
  } else {
    mtu.message = fmt::format("{} bytes on {} and on the path to the coordinator", p.interface_mtu,
                              p.interface);
  }
  out.push_back(std::move(mtu));

  // Clock skew, within half the round trip.
  Check clock{"clock", CheckLevel::kOk, "", ""};
  const double skew = p.clock_offset_s;
  const std::string side = skew > 0 ? "behind" : "ahead of";
  clock.message =
      fmt::format("{:.3f} s {} the coordinator's (± {:.3f} s)", std::abs(skew), side, p.rtt_s / 2);
  if (std::abs(skew) > 1.0 + p.rtt_s / 2) {
    clock.level = std::abs(skew) > 300 ? CheckLevel::kFail : CheckLevel::kWarn;
    clock.message = fmt::format(
        "this clock is {:.1f} s {} the coordinator's: logs and events do not line up{}",
        std::abs(skew), side,
        clock.level == CheckLevel::kFail ? ", and certificates will fail to verify" : "");
    clock.fix = "synchronise it: `timedatectl set-ntp true` (or `chronyc makestep`)";
  }
  out.push_back(std::move(clock));
  return out;
}

// ---- local
// ---------------------------------------------------------------------------------------

std::uint64_t estimateMemory(std::uint64_t params) {
  return (128ull << 20) + 48ull * params;
}

std::uint64_t estimateCheckpoint(std::uint64_t params) {
  return 5ull * 4 * params + (64ull << 10);
}

Check checkDisk(const std::string& dir, std::uint64_t checkpoint_bytes) {
  Check c{"disk", CheckLevel::kOk, "", ""};
  if (dir.empty()) {
    c.level = CheckLevel::kInfo;
    c.message = "checkpoints are off (no --checkpoint-dir)";
    return c;
  }
  // The directory is created at the first checkpoint: judge the closest one that exists.
  fs::path at = fs::absolute(dir);
  std::error_code ec;
  while (!fs::exists(at, ec) && at.has_parent_path() && at != at.parent_path())
    at = at.parent_path();
  struct statvfs sv {};
  if (::statvfs(at.c_str(), &sv) != 0) {
    c.level = CheckLevel::kFail;
    c.message =
        fmt::format("cannot read the file system of {}: {}", at.string(), std::strerror(errno));
    c.fix = "--checkpoint-dir DIR on a mounted, readable file system";
    return c;
  }
  const std::uint64_t free_bytes = static_cast<std::uint64_t>(sv.f_bavail) * sv.f_frsize;
  const std::uint64_t need = 2 * checkpoint_bytes;  // the old one stays until the new is renamed
  if (::access(at.c_str(), W_OK) != 0) {
    c.level = CheckLevel::kFail;
    c.message = fmt::format("{} is not writable by this user (uid {})", at.string(), ::getuid());
    c.fix = fmt::format("chown {} {} (or --checkpoint-dir a directory you own)", ::getuid(),
                        at.string());
    return c;
  }
  if (free_bytes < need) {
    c.level = CheckLevel::kFail;
    c.message = fmt::format(
        "{} free in {}, but replacing a checkpoint needs {} (two of {}): checkpoints will fail",
        mib(free_bytes), at.string(), mib(need), mib(checkpoint_bytes));
    c.fix = fmt::format("free at least {} there, or --checkpoint-dir on a larger disk",
                        mib(need - free_bytes));
  } else if (free_bytes < 10 * need) {
    c.level = CheckLevel::kWarn;
    c.message = fmt::format("{} free in {}: room for a checkpoint ({}), but little else",
                            mib(free_bytes), at.string(), mib(checkpoint_bytes));
    c.fix = "free some space, or --checkpoint-dir on a larger disk";
  } else {
    c.message = fmt::format("{} free in {} (a checkpoint takes {})", mib(free_bytes), at.string(),
                            mib(checkpoint_bytes));
  }
  return c;
}

std::string findBlas() {
  for (const char* p : {"/usr/lib/x86_64-linux-gnu/libblas.so.3",
                        "/usr/lib/aarch64-linux-gnu/libblas.so.3", "/usr/lib/libblas.so.3"}) {
    std::error_code ec;
    auto real = fs::canonical(p, ec);
    if (!ec) return real.string();
  }
  return "";
}

std::vector<Check> checkBlas(const std::string& blas_path, int threads, const std::string& omp_env,
                             const std::string& openblas_env, double cpus) {
  std::vector<Check> out;
  Check b{"BLAS", CheckLevel::kOk, "", ""};
  const auto has = [&](const char* s) { return blas_path.find(s) != std::string::npos; };
  if (blas_path.empty()) {
    b.level = CheckLevel::kFail;
    b.message = "no libblas.so.3: LibTorch (loco-train) cannot load";
    b.fix = "apt-get install libopenblas0-openmp";
  } else if (has("openblas-openmp")) {
    b.message = fmt::format("OpenBLAS, OpenMP flavour ({})", blas_path);
  } else if (has("openblas")) {
    b.level = CheckLevel::kWarn;
    b.message = fmt::format(
        "OpenBLAS but not its OpenMP flavour ({}): its own threads compete with LibTorch's",
        blas_path);
    b.fix = "apt-get install libopenblas0-openmp (update-alternatives picks it)";
  } else {
    b.level = CheckLevel::kWarn;
    b.message = fmt::format("{} is not OpenBLAS: the reference BLAS makes training 12-16x slower",
                            blas_path);
    b.fix = "apt-get install libopenblas0-openmp";
  }
  out.push_back(std::move(b));

  Check t{"threads", CheckLevel::kOk, "", ""};
  t.message = fmt::format("--threads {}, OMP_NUM_THREADS {}, OPENBLAS_NUM_THREADS {}, {} CPUs",
                          threads, omp_env.empty() ? "unset" : omp_env,
                          openblas_env.empty() ? "unset" : openblas_env,
                          std::isfinite(cpus) ? fmt::format("{:.2g}", cpus) : "?");
  if (std::isfinite(cpus) && threads > std::max(1.0, std::ceil(cpus))) {
    t.level = CheckLevel::kWarn;
    t.message += ": more compute threads than CPUs, they will wait on each other";
    t.fix = fmt::format("--threads {}", static_cast<int>(std::max(1.0, std::floor(cpus))));
  }
  out.push_back(std::move(t));
  return out;
}

CgroupLimits readCgroupLimits(const std::string& sys_root, const std::string& self_cgroup) {
  CgroupLimits out;
  auto tighter = [](auto& slot, auto v) {
    if (!slot || v < *slot) slot = v;
  };
  // Every directory from the process's own cgroup up to the hierarchy's root: a limit anywhere
  // on the way applies. In a container the path names the host's hierarchy while the container
  // sees its own cgroup at the root, so missing directories are skipped.
  auto walk = [](const std::string& mount, const std::string& path, const auto& visit) {
    fs::path p = fs::path(mount) / fs::path(path).relative_path();
    for (;;) {
      std::error_code ec;
      if (fs::is_directory(p, ec)) visit(p.string());
      if (p.string().size() <= mount.size() || !p.has_parent_path()) break;
      p = p.parent_path();
    }
  };
  std::istringstream lines(self_cgroup);
  std::string line;
  std::string v2_path, cpu_path, mem_path;
  bool v2 = false, has_cpu = false, has_mem = false;
  while (std::getline(lines, line)) {
    auto a = line.find(':'), b = line.find(':', a + 1);
    if (a == std::string::npos || b == std::string::npos) continue;
    const std::string controllers = line.substr(a + 1, b - a - 1), path = line.substr(b + 1);
    if (line.compare(0, a, "0") == 0 && controllers.empty()) {
      v2 = true;
      v2_path = path;
    }
    std::istringstream cs(controllers);
    for (std::string c; std::getline(cs, c, ',');) {
      if (c == "cpu") has_cpu = true, cpu_path = path;
      if (c == "memory") has_mem = true, mem_path = path;
    }
  }
  if (has_cpu || has_mem) {
    out.version = 1;
    if (has_cpu) {
      walk(sys_root + "/cpu", cpu_path, [&](const std::string& dir) {
        std::istringstream q(readAll(dir + "/cpu.cfs_quota_us")),
            per(readAll(dir + "/cpu.cfs_period_us"));
        long long quota = -1, period = 0;
        if (q >> quota && per >> period && quota > 0 && period > 0)
          tighter(out.cpus, static_cast<double>(quota) / static_cast<double>(period));
      });
    }
    if (has_mem) {
      walk(sys_root + "/memory", mem_path, [&](const std::string& dir) {
        std::istringstream m(readAll(dir + "/memory.limit_in_bytes"));
        unsigned long long limit = 0;
        // v1 reports "no limit" as a huge page-rounded number.
        if (m >> limit && limit > 0 && limit < (1ull << 60))
          tighter(out.memory_bytes, static_cast<std::uint64_t>(limit));
      });
    }
  } else if (v2) {
    out.version = 2;
    walk(sys_root, v2_path, [&](const std::string& dir) {
      std::istringstream c(readAll(dir + "/cpu.max"));
      std::string quota;
      long long period = 0;
      if (c >> quota >> period && quota != "max" && period > 0)
        tighter(out.cpus, std::stod(quota) / static_cast<double>(period));
      std::istringstream m(readAll(dir + "/memory.max"));
      std::string mem;
      if (m >> mem && mem != "max") tighter(out.memory_bytes, std::stoull(mem));
    });
  }
  return out;
}

std::vector<Check> checkCgroup(const CgroupLimits& limits, int threads, std::uint64_t memory_need) {
  std::vector<Check> out;
  Check cpu{"CPU quota", CheckLevel::kOk, "", ""};
  if (!limits.cpus) {
    cpu.message = limits.version ? fmt::format("no CPU quota (cgroup v{})", limits.version)
                                 : "no cgroup found: no CPU quota";
  } else {
    cpu.message = fmt::format("cgroup v{} quota: {:.2f} CPUs", limits.version, *limits.cpus);
    if (*limits.cpus < threads) {
      cpu.level = CheckLevel::kWarn;
      cpu.message +=
          fmt::format(" for --threads {}: the peer is throttled and slows its group", threads);
      cpu.fix = fmt::format(
          "--threads {} (or raise the quota: `docker run --cpus {}`, or the cgroup's cpu.max)",
          static_cast<int>(std::max(1.0, std::floor(*limits.cpus))), threads);
    }
  }
  out.push_back(std::move(cpu));
  Check mem{"memory limit", CheckLevel::kOk, "", ""};
  if (!limits.memory_bytes) {
    mem.message = fmt::format("no memory limit (a peer needs about {})", mib(memory_need));
  } else if (*limits.memory_bytes < memory_need) {
    mem.level = CheckLevel::kFail;
    mem.message = fmt::format(
        "cgroup memory limit {} is below the {} a peer of this model needs: the kernel will kill "
        "it",
        mib(*limits.memory_bytes), mib(memory_need));
    mem.fix = fmt::format("raise the limit to at least {} (`docker run --memory {}m`)",
                          mib(2 * memory_need), 2 * memory_need >> 20);
  } else {
    mem.message = fmt::format("cgroup memory limit {} (a peer needs about {})",
                              mib(*limits.memory_bytes), mib(memory_need));
    if (*limits.memory_bytes < 2 * memory_need) {
      mem.level = CheckLevel::kWarn;
      mem.fix = fmt::format("leave headroom: at least {}", mib(2 * memory_need));
    }
  }
  out.push_back(std::move(mem));
  return out;
}

// ---- output
// --------------------------------------------------------------------------------------

bool anyFailed(const std::vector<Check>& checks) {
  return std::any_of(checks.begin(), checks.end(),
                     [](const Check& c) { return c.level == CheckLevel::kFail; });
}

std::string renderChecks(const std::vector<Check>& checks, const std::string& title) {
  std::string out = title + "\n";
  std::size_t fails = 0, warns = 0;
  for (const auto& c : checks) {
    out += fmt::format("  {:<5} {:<13} {}\n", checkLevelName(c.level), c.name, c.message);
    if (!c.fix.empty()) out += fmt::format("  {:<5} {:<13} fix: {}\n", "", "", c.fix);
    fails += c.level == CheckLevel::kFail;
    warns += c.level == CheckLevel::kWarn;
  }
  if (fails > 0) {
    out += fmt::format("verdict: joining will not work: {} problem{} (FAIL above, with the fix)\n",
                       fails, fails == 1 ? "" : "s");
  } else {
    out += fmt::format("verdict: joining should work{}\n",
                       warns ? fmt::format(" ({} warning{})", warns, warns == 1 ? "" : "s") : "");
  }
  return out;
}

std::string checksJson(const std::vector<Check>& checks) {
  nlohmann::json list = nlohmann::json::array();
  for (const auto& c : checks) {
    list.push_back({{"check", c.name},
                    {"level", checkLevelName(c.level)},
                    {"message", c.message},
                    {"fix", c.fix}});
  }
  return nlohmann::json{{"checks", list}, {"join_will_work", !anyFailed(checks)}}.dump();
}

}  // namespace loco::ops
