// `loco lab`: a WAN on one machine. Hosts are network namespaces joined by a userspace L2 hub
// (cli/lab/hub.h) that adds delay, jitter, loss, rate limits and partitions.
//
// Processes: `lab up` builds the namespaces, then starts a detached supervisor (libuv) that runs
// the hub and removes the whole lab when the hub dies or when `lab down` asks it to.
#include <fcntl.h>
#include <fmt/format.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <sstream>
#include <thread>

#include "cli/commands.h"
#include "cli/lab/cgroup.h"
#include "cli/lab/config.h"
#include "cli/lab/hub.h"
#include "cli/lab/nat.h"
#include "cli/lab/net.h"
#include "p2p/base/log.h"

namespace loco::cli {
namespace {

using lab::LabConfig;

std::atomic<bool> g_interrupted{false};
void onInterrupt(int) {
  g_interrupted = true;
}

bool alive(pid_t pid) {
  return pid > 0 && ::kill(pid, 0) == 0;
}

pid_t readPid(const std::string& path) {
  pid_t pid = 0;
  std::ifstream(path) >> pid;
  return pid;
}

// The hub writes "<pid> <reloads>" to its ready file at start and after every reload.
std::pair<pid_t, long> hubState(const std::string& name) {
  pid_t pid = 0;
  long reloads = -1;
  std::ifstream(lab::hubReadyPath(name)) >> pid >> reloads;
  return {pid, reloads};
}

Status saveLab(const LabConfig& cfg) {
  return writeFileAtomic(lab::configPath(cfg.name), cfg.serialize());
}

// Tells the hub to re-read the config and waits until it has.
Status reloadHub(const std::string& name) {
  auto [pid, reloads] = hubState(name);
  if (!alive(pid))
    return Status(StatusCode::kUnavailable,
                  fmt::format("the hub of lab '{}' is not running", name));
  ::kill(pid, SIGHUP);
  for (int i = 0; i < 200; ++i) {
    if (hubState(name).second > reloads) return Status();
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return Status(
      StatusCode::kTimeout,
      fmt::format("the hub of lab '{}' did not confirm the new settings within 2 s; see {}", name,
                  lab::logPath(name)));
}

// Flags shared by `up` and `set`.
std::vector<FlagSpec> linkFlags() {
  return {
      {"delay-ms", "one-way delay between every pair of hosts, ms", ""},
      {"jitter-ms", "uniform jitter added to the delay, +- ms (no reordering)", ""},
      {"loss", "loss probability per packet and direction, 0 to 1", ""},
      {"rate-mbit", "every host's access link capacity, each direction, Mbit/s (0: unlimited)", ""},
      {"host",
       "I:rate-mbit=R | I:up-mbit=U | I:down-mbit=W (one host's access link) | I:cpu=C (a slow "
       "host: C cores' worth of CPU through a cgroup quota, 0 = no limit) | I:nat=on|symmetric "
       "(lab up only: host I behind its own NAT router; unsolicited incoming connections are "
       "dropped)",
       "", false, true},
      {"link", "I-J:delay-ms=D,jitter-ms=J,loss=P,rate-mbit=R (one pair of hosts)", "", false,
       true},
      {"tcp-rmem-max", "largest TCP receive/send buffer inside the hosts, bytes", ""}};
}

// A slow host needs a cgroup cpu controller; say so before anything is built or changed.
Status checkCpuQuotas(const LabConfig& cfg) {
  for (int i = 1; i <= cfg.hosts; ++i) {
    if (cfg.hostCpu(i) <= 0) continue;
    auto root = lab::detectCpuCgroup();
    if (!root)
      return Status(root.status().code(), fmt::format("--host {}:cpu needs a cgroup CPU quota: {}",
                                                      i, root.status().message()));
    return Status();
  }
  return Status();
}

Result<lab::LabOptions> linkOptions(const Flags& flags) {
  lab::LabOptions o;
  // Only "is it a number" here: lab::applyOptions owns the ranges.
  auto number = [&](const char* name, std::optional<double>& out) -> Status {
    if (!flags.isSet(name)) return Status();
    auto v =
        lab::parseNumber(std::string("--") + name, flags.get(name),
                         std::numeric_limits<double>::lowest(), std::numeric_limits<double>::max());
    if (!v) return v.status();
    out = *v;
    return Status();
  };
  LOCO_RETURN_IF_ERROR(number("delay-ms", o.delay_ms));
  LOCO_RETURN_IF_ERROR(number("jitter-ms", o.jitter_ms));
  LOCO_RETURN_IF_ERROR(number("loss", o.loss));
  LOCO_RETURN_IF_ERROR(number("rate-mbit", o.rate_mbit));
  std::optional<double> rmem;
  LOCO_RETURN_IF_ERROR(number("tcp-rmem-max", rmem));
  // Out-of-range values become -1, which applyOptions rejects with the range.
  if (rmem) o.tcp_rmem_max = (*rmem >= 0 && *rmem <= 1e15) ? static_cast<std::int64_t>(*rmem) : -1;
  o.host_specs = flags.getAll("host");
  o.link_specs = flags.getAll("link");
  return o;
}

std::string statusTable(const LabConfig& cfg) {
  auto [hub_pid, reloads] = hubState(cfg.name);
  std::string out = fmt::format(
      "lab {}   {} hosts   subnet 10.213.{}.0/24   hub {}\n", cfg.name, cfg.hosts, cfg.subnet,
      alive(hub_pid) ? fmt::format("running (pid {})", hub_pid) : "NOT RUNNING");
  out += fmt::format("{:<8} {:<15} {:>10} {:>10} {:>6}  {}\n", "HOST", "ADDRESS", "UP MBIT",
                     "DOWN MBIT", "CPU", "NAT");
  auto rate = [](double r) { return r > 0 ? fmt::format("{:g}", r) : std::string("-"); };
  for (int i = 1; i <= cfg.hosts; ++i) {
    auto r = cfg.host(i);
    const lab::NatMode nat = cfg.hostNat(i);
    out += fmt::format(
        "{:<8} {:<15} {:>10} {:>10} {:>6}  {}\n", cfg.nsName(i), cfg.address(i), rate(r.up_mbit),
        rate(r.down_mbit), rate(cfg.hostCpu(i)),
        nat == lab::NatMode::kNone
            ? std::string("-")
            : fmt::format("{} (inside: {})", lab::natName(nat), lab::privateAddress(i)));
  }
  out += fmt::format("{:<8} {:>9} {:>10} {:>8} {:>10}  {}\n", "PAIR", "DELAY MS", "JITTER MS",
                     "LOSS", "CAP MBIT", "");
  for (int a = 1; a <= cfg.hosts; ++a) {
    for (int b = a + 1; b <= cfg.hosts; ++b) {
      auto p = cfg.pair(a, b);
      out += fmt::format("{:<8} {:>9g} {:>10g} {:>8g} {:>10}  {}\n", fmt::format("{}-{}", a, b),
                         p.delay_ms, p.jitter_ms, p.loss, rate(p.rate_mbit),
                         cfg.partitioned(a, b) ? "PARTITIONED" : "");
    }
  }
  if (cfg.tcp_rmem_max > 0)
    out += fmt::format("tcp buffers capped at {} bytes inside the hosts\n", cfg.tcp_rmem_max);
  return out;
}

// ---- up ---------------------------------------------------------------------------------------

int labUp(const Args& args) {
  auto specs = linkFlags();
  specs.insert(specs.begin(), {"hosts", "number of hosts (network namespaces NAME1..NAMEN)", ""});
  Flags flags("lab up", "create a lab: hosts NAME1..NAMEN joined by an emulated WAN", specs);
  if (int rc = parseAndSetUp(flags, args, "lab"); rc >= 0) return rc;
  if (flags.positional().size() != 1) {
    return reportFailure(
        Status(StatusCode::kInvalidArgument, "usage: loco lab up NAME --hosts N [options]"));
  }
  const std::string name = flags.positional()[0];
  if (Status st = lab::validateLabName(name); !st.isOk()) return reportFailure(st);
  if (!flags.isSet("hosts"))
    return reportFailure(Status(StatusCode::kInvalidArgument, "--hosts N is required"));
  auto hosts = flags.getInt("hosts", 2, lab::kMaxHosts);
  if (!hosts) return reportFailure(hosts.status());
  auto options = linkOptions(flags);
  if (!options) return reportFailure(options.status());
  options->hosts = static_cast<int>(*hosts);

  if (Status st = lab::checkLabSupport(); !st.isOk()) return reportFailure(st);
  if (std::filesystem::exists(lab::stateDir(name)) || !lab::labNamespaces(name).empty()) {
    return reportFailure(Status(
        StatusCode::kAlreadyExists,
        fmt::format("a lab named '{}' already exists (or its namespaces do); `loco lab down {}` "
                    "removes it",
                    name, name)));
  }
  auto subnet = lab::pickSubnet();
  if (!subnet) return reportFailure(subnet.status());
  LabConfig cfg;
  cfg.name = name;
  cfg.subnet = *subnet;
  if (Status st = lab::applyOptions(cfg, *options); !st.isOk()) return reportFailure(st);
  if (Status st = checkCpuQuotas(cfg); !st.isOk()) return reportFailure(st);

  // The state directory comes first: whatever exists of a lab can then be found and removed.
  std::error_code ec;
  std::filesystem::create_directories(lab::stateDir(name), ec);
  if (ec)
    return reportFailure(
        Status(StatusCode::kIoError,
               fmt::format("cannot create {}: {}", lab::stateDir(name), ec.message())));
  if (Status st = saveLab(cfg); !st.isOk()) {
    lab::teardown(name);
    return reportFailure(st);
  }
  ::signal(SIGINT, onInterrupt);
  ::signal(SIGTERM, onInterrupt);
  if (Status st = lab::buildNetwork(cfg, [] { return g_interrupted.load(); }); !st.isOk())
    return reportFailure(st);

  // The supervisor outlives this command (detached, its own session, logs to the state dir).
  uv_loop_t loop;
  uv_loop_init(&loop);
  std::string exe = selfExecutable();
  std::vector<std::string> argv = {exe,  "lab",         "supervise",
                                   name, "--log-level", flags.get("log-level")};
  std::vector<char*> cargv;
  for (auto& a : argv) cargv.push_back(a.data());
  cargv.push_back(nullptr);
  int log_fd = ::open(lab::logPath(name).c_str(), O_CREAT | O_APPEND | O_WRONLY | O_CLOEXEC, 0644);
  uv_stdio_container_t stdio[3];
  stdio[0].flags = UV_IGNORE;
  stdio[1].flags = stdio[2].flags = UV_INHERIT_FD;
  stdio[1].data.fd = stdio[2].data.fd = log_fd;
  uv_process_options_t popts{};
  popts.file = exe.c_str();
  popts.args = cargv.data();
  popts.stdio = stdio;
  popts.stdio_count = 3;
  popts.flags = UV_PROCESS_DETACHED;
  uv_process_t proc;
  int rc = uv_spawn(&loop, &proc, &popts);
  ::close(log_fd);
  if (rc != 0) {
    lab::teardown(name);
    return reportFailure(
        Status(StatusCode::kInternal,
               fmt::format("cannot start the lab supervisor: {}", uv_strerror(rc))));
  }
  const pid_t supervisor = proc.pid;
  uv_unref(reinterpret_cast<uv_handle_t*>(&proc));
  uv_close(reinterpret_cast<uv_handle_t*>(&proc), nullptr);
  uv_run(&loop, UV_RUN_NOWAIT);
  uv_loop_close(&loop);

  for (int i = 0; i < 1000 && !g_interrupted; ++i) {
    if (alive(hubState(name).first)) {
      std::fputs(statusTable(cfg).c_str(), stdout);
      std::printf("run commands in a host with: loco lab exec %s1 -- CMD ...\n", name.c_str());
      return 0;
    }
    if (!alive(supervisor)) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  std::string log = readTextFile(lab::logPath(name));
  ::kill(supervisor, SIGTERM);
  for (int i = 0; i < 500 && alive(supervisor); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  lab::teardown(name);
  return reportFailure(
      Status(StatusCode::kInternal,
             g_interrupted ? "interrupted; the lab was removed"
                           : "the lab's hub did not start; the lab was removed. Its log:\n" + log));
}

// ---- supervise (internal) ----------------------------------------------------------------------

struct Supervisor {
  uv_loop_t loop{};
  uv_process_t hub{};
  uv_signal_t sigterm{}, sigint{}, sighup{};
  uv_timer_t cpu_timer{};
  std::map<int, double> cpu_applied;  // host -> quota in force (cores; 0: none)
  bool cpu_warned = false;
  std::string name;
  bool stopping = false;
  bool hub_running = false;
  int exit_code = 0;
};

// Slow hosts (--host I:cpu=C): keeps each such host's cgroup quota as the state file says, and
// every process living in the host's network namespace inside that cgroup. Processes started
// with `loco lab exec` or by `loco local` join at once; anything else (plain `ip netns exec`)
// within one sweep.
void applyCpuQuotas(Supervisor& s) {
  auto cfg = lab::parseConfig(readTextFile(lab::configPath(s.name)));
  if (!cfg) return;
  for (int i = 1; i <= cfg->hosts; ++i) {
    const double cores = cfg->hostCpu(i);
    auto applied = s.cpu_applied.find(i);
    if (cores <= 0 && applied == s.cpu_applied.end()) continue;  // never limited
    if (applied == s.cpu_applied.end() || applied->second != cores) {
      Status st = lab::setCpuQuota(cfg->cgroupName(i), cores);
      if (!st.isOk()) {
        if (!s.cpu_warned)
          LOG_ERROR(kLogCli, "lab {}: cannot give host {} a CPU quota: {}", s.name, i,
                    st.message());
        s.cpu_warned = true;
        continue;
      }
      LOG_INFO(kLogCli, "lab {}: host {} CPU quota {}", s.name, i,
               cores > 0 ? fmt::format("{:g} cores", cores) : std::string("removed"));
      s.cpu_applied[i] = cores;
    }
    if (cores <= 0) continue;
    for (pid_t pid : lab::pidsInNetns("/run/netns/" + cfg->nsName(i)))
      (void)lab::addToCgroup(cfg->cgroupName(i), pid);
  }
}

int labSupervise(const Args& args) {
  Flags flags("lab supervise", "internal: runs a lab's hub and removes the lab when it ends", {});
  if (int rc = parseAndSetUp(flags, args, "lab supervisor"); rc >= 0) return rc;
  if (flags.positional().size() != 1) return 2;
  static Supervisor s;  // uv callbacks find it through handle->data
  s.name = flags.positional()[0];
  ::setsid();
  (void)writeFileAtomic(lab::supervisorPidPath(s.name), fmt::format("{}\n", ::getpid()));
  uv_loop_init(&s.loop);

  std::string exe = selfExecutable();
  std::vector<std::string> argv = {exe,    "lab",         "hub",
                                   s.name, "--log-level", flags.get("log-level")};
  std::vector<char*> cargv;
  for (auto& a : argv) cargv.push_back(a.data());
  cargv.push_back(nullptr);
  uv_stdio_container_t stdio[3];
  stdio[0].flags = UV_IGNORE;
  stdio[1].flags = stdio[2].flags = UV_INHERIT_FD;
  stdio[1].data.fd = 1;
  stdio[2].data.fd = 2;
  uv_process_options_t popts{};
  popts.file = exe.c_str();
  popts.args = cargv.data();
  popts.stdio = stdio;
  popts.stdio_count = 3;
  popts.exit_cb = [](uv_process_t* p, int64_t status, int sig) {
    s.hub_running = false;
    if (!s.stopping) {
      LOG_ERROR(kLogCli,
                "lab {}: the hub exited unexpectedly (status {}, signal {}); removing the lab",
                s.name, status, sig);
      s.exit_code = 1;
    }
    uv_close(reinterpret_cast<uv_handle_t*>(p), nullptr);
    uv_signal_stop(&s.sigterm);
    uv_signal_stop(&s.sigint);
    uv_signal_stop(&s.sighup);
    uv_close(reinterpret_cast<uv_handle_t*>(&s.sigterm), nullptr);
    uv_close(reinterpret_cast<uv_handle_t*>(&s.sigint), nullptr);
    uv_close(reinterpret_cast<uv_handle_t*>(&s.sighup), nullptr);
    uv_timer_stop(&s.cpu_timer);
    uv_close(reinterpret_cast<uv_handle_t*>(&s.cpu_timer), nullptr);
  };
  uv_signal_init(&s.loop, &s.sigterm);
  uv_signal_init(&s.loop, &s.sigint);
  uv_signal_init(&s.loop, &s.sighup);
  if (int rc = uv_spawn(&s.loop, &s.hub, &popts); rc != 0) {
    LOG_ERROR(kLogCli, "lab {}: cannot start the hub: {}", s.name, uv_strerror(rc));
    lab::teardown(s.name);
    return 1;
  }
  s.hub_running = true;
  uv_timer_init(&s.loop, &s.cpu_timer);
  uv_timer_start(
      &s.cpu_timer, [](uv_timer_t*) { applyCpuQuotas(s); }, 0, 500);
  auto stop = [](uv_signal_t*, int sig) {
    LOG_INFO(kLogCli, "lab {}: signal {}; stopping the hub", s.name, sig);
    s.stopping = true;
    if (s.hub_running) uv_process_kill(&s.hub, SIGTERM);
  };
  uv_signal_start(&s.sigterm, stop, SIGTERM);
  uv_signal_start(&s.sigint, stop, SIGINT);
  // SIGHUP to the supervisor reaches the hub too (`lab set` signals the hub directly).
  uv_signal_start(
      &s.sighup,
      [](uv_signal_t*, int) {
        if (s.hub_running) uv_process_kill(&s.hub, SIGHUP);
      },
      SIGHUP);
  uv_run(&s.loop, UV_RUN_DEFAULT);
  uv_loop_close(&s.loop);
  lab::teardown(s.name);
  LOG_INFO(kLogCli, "lab {}: removed", s.name);
  return s.exit_code;
}

// ---- down / exec / set / partition / heal / status --------------------------------------------

int labDown(const Args& args) {
  Flags flags("lab down", "remove a lab: its hub, namespaces, interfaces and processes", {});
  if (int rc = parseAndSetUp(flags, args, "lab"); rc >= 0) return rc;
  if (flags.positional().size() != 1)
    return reportFailure(Status(StatusCode::kInvalidArgument, "usage: loco lab down NAME"));
  const std::string name = flags.positional()[0];
  if (Status st = lab::validateLabName(name); !st.isOk()) return reportFailure(st);
  if (::geteuid() != 0) return reportFailure(lab::checkLabSupport());
  if (!std::filesystem::exists(lab::stateDir(name))) {
    auto stray = lab::labNamespaces(name);
    return reportFailure(Status(
        StatusCode::kNotFound,
        stray.empty() ? fmt::format("no lab named '{}'", name)
                      : fmt::format("no lab named '{}'; namespaces such as {} exist but were not "
                                    "made by loco lab (remove them with `ip netns del`)",
                                    name, stray.front())));
  }
  pid_t supervisor = readPid(lab::supervisorPidPath(name));
  if (alive(supervisor)) {
    ::kill(supervisor, SIGTERM);
    for (int i = 0; i < 1000 && alive(supervisor); ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  // Whatever the supervisor did not get to (it was killed, or the lab was half-built).
  lab::teardown(name);
  std::printf("lab %s removed\n", name.c_str());
  return 0;
}

int labExec(const Args& args) {
  if (args.empty()) {
    std::fprintf(stderr, "usage: loco lab exec NAMEi -- CMD [ARGS...]\n");
    return 2;
  }
  const std::string host = args[0];
  std::size_t digits = host.find_last_not_of("0123456789");
  if (digits == std::string::npos || digits + 1 == host.size()) {
    return reportFailure(Status(StatusCode::kInvalidArgument,
                                fmt::format("'{}' is not a lab host (want NAMEi, e.g. t1)", host)));
  }
  auto cfg = lab::loadLab(host.substr(0, digits + 1));
  if (!cfg) return reportFailure(cfg.status());
  int index = std::atoi(host.c_str() + digits + 1);
  if (index < 1 || index > cfg->hosts) {
    return reportFailure(Status(StatusCode::kInvalidArgument,
                                fmt::format("lab '{}' has hosts {}1 to {}{}; there is no {}",
                                            cfg->name, cfg->name, cfg->name, cfg->hosts, host)));
  }
  std::size_t first = (args.size() > 1 && args[1] == "--") ? 2 : 1;
  if (first >= args.size())
    return reportFailure(Status(StatusCode::kInvalidArgument, "no command to run"));
  // A slow host's processes run under its CPU quota from their first instruction.
  if (cfg->hostCpu(index) > 0) {
    if (Status st = lab::addToCgroup(cfg->cgroupName(index), ::getpid()); !st.isOk())
      LOG_WARN(kLogCli, "{} has a CPU quota but this command runs without it: {}", host,
               st.message());
  }
  std::vector<std::string> argv = {"ip", "netns", "exec", host};
  argv.insert(argv.end(), args.begin() + static_cast<long>(first), args.end());
  std::vector<char*> cargv;
  for (auto& a : argv) cargv.push_back(a.data());
  cargv.push_back(nullptr);
  ::execvp("ip", cargv.data());
  return reportFailure(Status(StatusCode::kInternal,
                              fmt::format("cannot run ip netns exec: {}", std::strerror(errno))));
}

int labSet(const Args& args) {
  Flags flags("lab set", "change a lab's link parameters while traffic flows", linkFlags());
  if (int rc = parseAndSetUp(flags, args, "lab"); rc >= 0) return rc;
  if (flags.positional().size() != 1)
    return reportFailure(
        Status(StatusCode::kInvalidArgument, "usage: loco lab set NAME [options]"));
  auto cfg = lab::loadLab(flags.positional()[0]);
  if (!cfg) return reportFailure(cfg.status());
  auto options = linkOptions(flags);
  if (!options) return reportFailure(options.status());
  const auto old_rmem = cfg->tcp_rmem_max;
  const LabConfig before = *cfg;
  if (Status st = lab::applyOptions(*cfg, *options); !st.isOk()) return reportFailure(st);
  for (int i = 1; i <= cfg->hosts; ++i) {
    if (cfg->hostNat(i) != before.hostNat(i))
      return reportFailure(Status(
          StatusCode::kInvalidArgument,
          fmt::format("--host {}:nat is fixed when the lab is built (loco lab down, then up)", i)));
  }
  if (Status st = checkCpuQuotas(*cfg); !st.isOk()) return reportFailure(st);
  if (Status st = saveLab(*cfg); !st.isOk()) return reportFailure(st);
  if (cfg->tcp_rmem_max != old_rmem) {
    if (Status st = lab::applySysctls(*cfg); !st.isOk()) return reportFailure(st);
  }
  if (Status st = reloadHub(cfg->name); !st.isOk()) return reportFailure(st);
  std::fputs(statusTable(*cfg).c_str(), stdout);
  return 0;
}

int labPartition(const Args& args, bool heal) {
  std::vector<FlagSpec> specs;
  if (!heal)
    specs.push_back({"groups", "hosts that keep talking, groups separated by '/': 1,2/3,4", ""});
  Flags flags(
      heal ? "lab heal" : "lab partition",
      heal ? "end a partition" : "drop all traffic between groups of hosts until `loco lab heal`",
      specs);
  if (int rc = parseAndSetUp(flags, args, "lab"); rc >= 0) return rc;
  if (flags.positional().size() != 1) {
    return reportFailure(Status(
        StatusCode::kInvalidArgument,
        heal ? "usage: loco lab heal NAME" : "usage: loco lab partition NAME --groups 1,2/3,4"));
  }
  auto cfg = lab::loadLab(flags.positional()[0]);
  if (!cfg) return reportFailure(cfg.status());
  if (heal) {
    cfg->partition.clear();
  } else {
    if (!flags.isSet("groups"))
      return reportFailure(
          Status(StatusCode::kInvalidArgument, "--groups is required, e.g. 1,2/3,4"));
    auto groups = lab::parsePartition(flags.get("groups"), cfg->hosts);
    if (!groups) return reportFailure(groups.status());
    cfg->partition = *groups;
  }
  if (Status st = saveLab(*cfg); !st.isOk()) return reportFailure(st);
  if (Status st = reloadHub(cfg->name); !st.isOk()) return reportFailure(st);
  std::printf("lab %s: %s\n", cfg->name.c_str(),
              heal ? "healed" : ("partitioned " + flags.get("groups")).c_str());
  return 0;
}

int labStatus(const Args& args) {
  Flags flags("lab status", "show a lab's hosts, addresses and settings",
              {{"json", "one JSON object", "", true}});
  if (int rc = parseAndSetUp(flags, args, "lab"); rc >= 0) return rc;
  if (flags.positional().size() != 1)
    return reportFailure(
        Status(StatusCode::kInvalidArgument, "usage: loco lab status NAME [--json]"));
  auto cfg = lab::loadLab(flags.positional()[0]);
  if (!cfg) return reportFailure(cfg.status());
  if (flags.getBool("json")) {
    Json json = cfg->json();
    json["hub_running"] = alive(hubState(cfg->name).first);
    std::printf("%s\n", jsonDump(json).c_str());
  } else {
    std::fputs(statusTable(*cfg).c_str(), stdout);
  }
  return 0;
}

int labHub(const Args& args) {
  Flags flags("lab hub", "internal: the lab's packet hub", {});
  if (int rc = parseAndSetUp(flags, args, "lab hub"); rc >= 0) return rc;
  if (flags.positional().size() != 1) return 2;
  const std::string name = flags.positional()[0];
  return lab::runHub(lab::configPath(name), lab::hubReadyPath(name));
}

}  // namespace

int runLab(const Args& args) {
  const char* usage =
      "usage: loco lab COMMAND ...\n"
      "  up NAME --hosts N [--delay-ms D] [--jitter-ms J] [--loss P] [--rate-mbit R]\n"
      "          [--host I:rate-mbit=R|up-mbit=U|down-mbit=W|cpu=C]... [--link "
      "I-J:delay-ms=D,jitter-ms=J,loss=P,rate-mbit=R]...\n"
      "          [--tcp-rmem-max BYTES]\n"
      "  exec NAMEi -- CMD [ARGS...]     run a command inside host i\n"
      "  set NAME [options as for up]    change settings while traffic flows\n"
      "  partition NAME --groups 1,2/3,4 drop traffic between the groups\n"
      "  heal NAME                       end the partition\n"
      "  status NAME [--json]\n"
      "  down NAME                       remove everything the lab made\n";
  if (args.empty()) {
    std::fputs(usage, stderr);
    return 2;
  }
  const std::string sub = args[0];
  Args rest(args.begin() + 1, args.end());
  if (sub == "up") return labUp(rest);
  if (sub == "down") return labDown(rest);
  if (sub == "exec") return labExec(rest);
  if (sub == "set") return labSet(rest);
  if (sub == "partition") return labPartition(rest, false);
  if (sub == "heal") return labPartition(rest, true);
  if (sub == "status") return labStatus(rest);
  if (sub == "hub") return labHub(rest);
  if (sub == "supervise") return labSupervise(rest);
  if (sub == "--help" || sub == "-h" || sub == "help") {
    std::fputs(usage, stdout);
    return 0;
  }
  std::fprintf(stderr, "loco lab: unknown command '%s'\n%s", sub.c_str(), usage);
  return 2;
}

}  // namespace loco::cli
