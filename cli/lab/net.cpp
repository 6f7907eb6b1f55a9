#include "cli/lab/net.h"

#include "cli/commands.h"
#include "cli/lab/cgroup.h"
#include "cli/lab/nat.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>

extern char** environ;

namespace loco::lab {
namespace {

std::string readAll(int fd) {
  std::string out;
  char buf[4096];
  ssize_t n;
  while ((n = ::read(fd, buf, sizeof(buf))) > 0) out.append(buf, static_cast<std::size_t>(n));
  return out;
}

// Runs argv; returns exit code, and stdout/stderr in `out`.
int spawnAndWait(const std::vector<std::string>& argv, const std::string& input, std::string& out) {
  int in_pipe[2], out_pipe[2];
  if (::pipe2(in_pipe, O_CLOEXEC) != 0 || ::pipe2(out_pipe, O_CLOEXEC) != 0) return -1;
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, in_pipe[0], 0);
  posix_spawn_file_actions_adddup2(&fa, out_pipe[1], 1);
  posix_spawn_file_actions_adddup2(&fa, out_pipe[1], 2);
  std::vector<char*> args;
  std::vector<std::string> copy = argv;
  for (auto& a : copy) args.push_back(a.data());
  args.push_back(nullptr);
  pid_t pid = -1;
  int rc = posix_spawnp(&pid, args[0], &fa, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  ::close(in_pipe[0]);
  ::close(out_pipe[1]);
  if (rc != 0) {
    ::close(in_pipe[1]);
    ::close(out_pipe[0]);
    out = std::strerror(rc);
    return -1;
  }
  if (!input.empty()) (void)!::write(in_pipe[1], input.data(), input.size());
  ::close(in_pipe[1]);
  out = readAll(out_pipe[0]);
  ::close(out_pipe[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

std::string joined(const std::vector<std::string>& argv) {
  std::string s;
  for (auto& a : argv) s += (s.empty() ? "" : " ") + a;
  return s;
}

}  // namespace

std::string stateRoot() {
  if (const char* env = std::getenv("LOCO_LAB_STATE_DIR")) return env;
  return "/run/loco-lab";
}
std::string stateDir(const std::string& name) {
  return stateRoot() + "/" + name;
}
std::string configPath(const std::string& name) {
  return stateDir(name) + "/config";
}
std::string supervisorPidPath(const std::string& name) {
  return stateDir(name) + "/supervisor.pid";
}
std::string hubReadyPath(const std::string& name) {
  return stateDir(name) + "/hub.ready";
}
std::string logPath(const std::string& name) {
  return stateDir(name) + "/lab.log";
}

Status runCommand(const std::vector<std::string>& argv, const std::string& input) {
  std::string out;
  int rc = spawnAndWait(argv, input, out);
  if (rc == 0) return Status();
  while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
  return Status(StatusCode::kInternal, fmt::format("`{}` failed ({}): {}", joined(argv), rc, out));
}

Status checkLabSupport() {
  if (::geteuid() != 0) {
    return Status(StatusCode::kUnavailable,
                  "loco lab needs root: it creates network namespaces, veth pairs and raw sockets "
                  "(run it as root)");
  }
  std::string out;
  if (spawnAndWait({"ip", "netns", "list"}, "", out) != 0) {
    return Status(
        StatusCode::kUnavailable,
        "loco lab needs iproute2's `ip netns` with network namespace support in the kernel: " +
            out);
  }
  // Creating one is the only real test (containers may forbid it).
  std::string probe = fmt::format("locoprobe{}", ::getpid());
  if (spawnAndWait({"ip", "netns", "add", probe}, "", out) != 0) {
    while (!out.empty() && out.back() == '\n') out.pop_back();
    return Status(StatusCode::kUnavailable,
                  "loco lab cannot create network namespaces here: " + out);
  }
  spawnAndWait({"ip", "netns", "del", probe}, "", out);
  return Status();
}

Result<LabConfig> loadLab(const std::string& name) {
  LOCO_RETURN_IF_ERROR(validateLabName(name));
  if (!std::filesystem::exists(configPath(name))) {
    return Status(
        StatusCode::kNotFound,
        fmt::format("no lab named '{}' (loco lab up {} --hosts N creates one)", name, name));
  }
  return parseConfig(cli::readTextFile(configPath(name)));
}

Status enterHost(const LabConfig& cfg, int host) {
  const std::string path = "/run/netns/" + cfg.nsName(host);
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return Status(StatusCode::kNotFound,
                  fmt::format("cannot open {}: {}", path, std::strerror(errno)));
  int rc = ::setns(fd, CLONE_NEWNET);
  int err = errno;
  ::close(fd);
  if (rc != 0) {
    return Status(StatusCode::kUnavailable, fmt::format("cannot enter lab host {}: {}",
                                                        cfg.nsName(host), std::strerror(err)));
  }
  return Status();
}

std::vector<std::string> inHost(const LabConfig& cfg, int host) {
  return {"ip", "netns", "exec", cfg.nsName(host)};
}

std::vector<std::string> labNamespaces(const std::string& name) {
  std::string out;
  spawnAndWait({"ip", "netns", "list"}, "", out);
  std::vector<std::string> found;
  std::istringstream in(out);
  std::string line;
  // NAME<i> are the hosts, NAME_r<i> the NAT routers (cli/lab/nat.h).
  const std::regex mine("^" + name + "(_r)?[0-9]+$");
  while (std::getline(in, line)) {
    std::string ns = line.substr(0, line.find(' '));
    if (std::regex_match(ns, mine)) found.push_back(ns);
  }
  return found;
}

Result<int> pickSubnet() {
  std::set<int> used;
  std::error_code ec;
  for (auto it = std::filesystem::directory_iterator(stateRoot(), ec);
       !ec && it != std::filesystem::directory_iterator(); it.increment(ec)) {
    if (auto cfg = parseConfig(cli::readTextFile((it->path() / "config").string())))
      used.insert(cfg->subnet);
  }
  for (int s = 1; s <= 254; ++s) {
    // Skip subnets whose veth names are taken by something else on this machine.
    if (!used.count(s) && !std::filesystem::exists(fmt::format("/sys/class/net/lb{}h1", s)))
      return s;
  }
  return Status(StatusCode::kResourceExhausted,
                "all 254 lab subnets (10.213.1-254.0/24) are in use");
}

Status buildNetwork(const LabConfig& cfg, const std::function<bool()>& interrupted) {
  auto fail = [&](Status st) {
    teardown(cfg.name);
    return st;
  };
  for (int i = 1; i <= cfg.hosts; ++i) {
    if (interrupted())
      return fail(Status(StatusCode::kAborted,
                         "interrupted while building the lab; removed what was built"));
    if (cfg.hostNat(i) != NatMode::kNone) {
      Status st = buildNatHost(cfg, i);
      if (!st.isOk())
        return fail(st.withContext(fmt::format("building NATed host {} of lab {}", i, cfg.name)));
      continue;
    }
    const std::string ns = cfg.nsName(i);
    const std::string outside = cfg.vethName(i);
    Status st = runCommand({"ip", "netns", "add", ns});
    if (st.isOk())
      st = runCommand(
          {"ip", "link", "add", outside, "type", "veth", "peer", "name", "eth0", "netns", ns});
    if (st.isOk())
      st = runCommand(
          {"sysctl", "-q", "-w", fmt::format("net.ipv6.conf.{}.disable_ipv6=1", outside)});
    if (st.isOk()) st = runCommand({"ip", "link", "set", outside, "up"});
    if (st.isOk()) {
      // Inside the host: address, fixed MAC, static neighbours (no ARP across the emulated WAN).
      std::string batch = fmt::format(
          "link set lo up\nlink set eth0 address {}\naddr add {}/24 dev eth0\nlink set eth0 up\n",
          cfg.mac(i), cfg.address(i));
      for (int j = 1; j <= cfg.hosts; ++j) {
        if (j != i)
          batch += fmt::format("neigh replace {} lladdr {} dev eth0 nud permanent\n",
                               cfg.address(j), cfg.mac(j));
      }
      st = runCommand({"ip", "-n", ns, "-batch", "-"}, batch);
    }
    if (st.isOk()) {
      st = runCommand({"ip", "netns", "exec", ns, "sysctl", "-q", "-w",
                       "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"});
    }
    if (!st.isOk())
      return fail(st.withContext(fmt::format("building host {} of lab {}", i, cfg.name)));
  }
  Status st = applySysctls(cfg);
  if (!st.isOk()) return fail(st);
  return Status();
}

Status applySysctls(const LabConfig& cfg) {
  for (int i = 1; i <= cfg.hosts; ++i) {
    // Kernel defaults (tcp_rmem max 6 MiB, tcp_wmem max 4 MiB) unless --tcp-rmem-max lowers them.
    std::int64_t rmax = cfg.tcp_rmem_max > 0 ? cfg.tcp_rmem_max : 6291456;
    std::int64_t wmax = cfg.tcp_rmem_max > 0 ? cfg.tcp_rmem_max : 4194304;
    LOCO_RETURN_IF_ERROR(runCommand(
        {"ip", "netns", "exec", cfg.nsName(i), "sysctl", "-q", "-w",
         fmt::format("net.ipv4.tcp_rmem=4096 {} {}", std::min<std::int64_t>(131072, rmax), rmax),
         fmt::format("net.ipv4.tcp_wmem=4096 {} {}", std::min<std::int64_t>(16384, wmax), wmax)}));
  }
  return Status();
}

void teardown(const std::string& name) {
  std::string out;
  for (const std::string& ns : labNamespaces(name)) {
    // Processes started with `lab exec` die with their host.
    spawnAndWait({"ip", "netns", "pids", ns}, "", out);
    std::istringstream pids(out);
    long pid;
    while (pids >> pid) {
      if (pid > 1) ::kill(static_cast<pid_t>(pid), SIGKILL);
    }
    spawnAndWait({"ip", "netns", "del", ns}, "", out);  // also removes both ends of its veth
  }
  // Outside ends whose namespace was never created or already gone, and slow hosts' cgroups.
  if (auto cfg = parseConfig(cli::readTextFile(configPath(name)))) {
    for (int i = 1; i <= cfg->hosts; ++i) {
      if (cgroupExists(cfg->cgroupName(i))) removeCgroup(cfg->cgroupName(i));
      if (std::filesystem::exists("/sys/class/net/" + cfg->vethName(i))) {
        spawnAndWait({"ip", "link", "del", cfg->vethName(i)}, "", out);
      }
    }
  }
  std::error_code ec;
  std::filesystem::remove_all(stateDir(name), ec);
}

}  // namespace loco::lab
