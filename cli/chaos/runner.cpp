#include "cli/chaos/runner.h"

#include <dirent.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <thread>

#include "cli/chaos/invariants.h"
#include "cli/chaos/report.h"
#include "cli/commands.h"
#include "cli/lab/net.h"
#include "cli/plot.h"
#include "cli/tls_setup.h"
#include "crypto/ca.h"
#include "crypto/identity.h"
#include "p2p/link.h"
#include "p2p/status_client.h"
#include "p2p/tls_stream.h"

extern char** environ;

namespace loco::chaos {
namespace {

using cli::PlotExtras;
using cli::PlotMarker;
using cli::PlotSeries;
using cli::readTextFile;
using cli::reportFailure;
using cli::writeFileAtomic;
using cli::writeSvgPlot;

// loco local's and loco chaos's exit status after SIGINT (128 + the signal, as shells report it).
constexpr int kInterruptedExit = 130;

std::atomic<bool> g_interrupted{false};
extern "C" void onChaosSignal(int) {
  g_interrupted.store(true);
}

double steadyNow() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
double unixNow() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

void say(const std::string& msg) {
  std::printf("chaos: %s\n", msg.c_str());
  std::fflush(stdout);
}

// Starts argv with stdout and stderr appended to `log`.
pid_t start(const std::vector<std::string>& argv, const std::string& log) {
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 1, log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
  posix_spawn_file_actions_adddup2(&fa, 1, 2);
  std::vector<std::string> copy = argv;
  std::vector<char*> args;
  for (auto& a : copy) args.push_back(a.data());
  args.push_back(nullptr);
  pid_t pid = -1;
  if (posix_spawnp(&pid, args[0], &fa, nullptr, args.data(), environ) != 0) pid = -1;
  posix_spawn_file_actions_destroy(&fa);
  return pid;
}

// The exit code of `pid` once it ends within `timeout_s` (128 + signal), or nullopt.
std::optional<int> waitFor(pid_t pid, double timeout_s) {
  const double until = steadyNow() + timeout_s;
  for (;;) {
    int status = 0;
    pid_t r = ::waitpid(pid, &status, WNOHANG);
    if (r == pid) return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    if (r < 0) return -1;
    if (steadyNow() > until) return std::nullopt;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

// `loco ARGS...` to completion (bounded); the log gets its output.
Status loco(const std::string& exe, std::vector<std::string> args, const std::string& log,
            double timeout_s = 60) {
  args.insert(args.begin(), exe);
  pid_t pid = start(args, log);
  if (pid < 0) return Status(StatusCode::kInternal, "cannot start " + exe);
  auto rc = waitFor(pid, timeout_s);
  if (!rc) {
    ::kill(pid, SIGKILL);
    (void)waitFor(pid, 5);
    return Status(StatusCode::kTimeout,
                  fmt::format("`loco {}` took over {:g} s", args[1], timeout_s));
  }
  if (*rc != 0)
    return Status(StatusCode::kInternal, fmt::format("`loco {} {}` failed ({}); see {}", args[1],
                                                     args.size() > 2 ? args[2] : "", *rc, log));
  return Status();
}

// Mounts (or unmounts) in the mount namespace of `pid` (0: this process's). `loco lab exec` and
// `ip netns exec` give each process a mount namespace of its own, copied from ours when it
// starts, and ours propagates nothing; so a mount meant for a peer goes into both.
Status mountIn(pid_t pid, const std::string& dir, bool mount_it, double size_kib) {
  // Everything the child needs is prepared here: after fork() in a process with threads, the
  // child may only make system calls (no allocation).
  const std::string ns = fmt::format("/proc/{}/ns/mnt", pid);
  const std::string options = fmt::format("size={}k", static_cast<long>(size_kib));
  pid_t child = ::fork();
  if (child < 0) return Status(StatusCode::kInternal, "fork failed");
  if (child == 0) {
    if (pid > 0) {
      int fd = ::open(ns.c_str(), O_RDONLY | O_CLOEXEC);
      if (fd < 0 || ::setns(fd, CLONE_NEWNS) != 0) ::_exit(3);
    }
    int rc = mount_it ? ::mount("tmpfs", dir.c_str(), "tmpfs", 0, options.c_str())
                      : ::umount2(dir.c_str(), MNT_DETACH);
    ::_exit(rc == 0 ? 0 : 4);
  }
  auto rc = waitFor(child, 10);
  if (rc && *rc == 0) return Status();
  return Status(StatusCode::kInternal,
                fmt::format("cannot {} a tmpfs on {}{} ({})", mount_it ? "mount" : "unmount", dir,
                            pid > 0 ? fmt::format(" for pid {}", pid) : "", rc.value_or(-1)));
}

bool sameMountNs(pid_t pid) {
  char a[64] = {}, b[64] = {};
  return ::readlink("/proc/self/ns/mnt", a, sizeof(a) - 1) > 0 &&
         ::readlink(fmt::format("/proc/{}/ns/mnt", pid).c_str(), b, sizeof(b) - 1) > 0 &&
         std::string(a) == std::string(b);
}

// "10.50.0.3:7411" from /proc/net/tcp's "0300320A:1CF3" (IPv4; IPv6 stays in hex).
std::string procNetAddress(const std::string& hex) {
  const auto colon = hex.find(':');
  if (colon == std::string::npos) return hex;
  const std::string ip = hex.substr(0, colon);
  const unsigned port = static_cast<unsigned>(std::stoul(hex.substr(colon + 1), nullptr, 16));
  if (ip.size() != 8) return fmt::format("[{}]:{}", ip, port);
  const auto a = static_cast<std::uint32_t>(std::stoul(ip, nullptr, 16));
  return fmt::format("{}.{}.{}.{}:{}", a & 0xff, (a >> 8) & 0xff, (a >> 16) & 0xff, a >> 24, port);
}

// What each open descriptor of `pid` is, in words that stay the same across a process's life
// for the same kind of use: "tcp dialed 10.50.0.3:7411" (the far end), "tcp accepted from
// 10.50.0.4" (an ephemeral far port says nothing), "tcp listening on :7411", "pipe", "eventfd",
// a file's path. The TCP sockets are looked up by inode in the process's own network namespace.
// An empty result when the process is gone.
std::vector<std::string> describeFds(pid_t pid) {
  struct Tcp {
    std::string local, remote;
    unsigned local_port;
    bool listening;
  };
  std::map<std::string, Tcp> tcp;  // inode -> endpoints
  std::set<unsigned> listening_ports;
  for (const char* table : {"tcp", "tcp6"}) {
    std::ifstream in(fmt::format("/proc/{}/net/{}", pid, table));
    std::string line;
    std::getline(in, line);  // the header
    while (std::getline(in, line)) {
      std::istringstream f(line);
      std::string slot, local, remote, state, queues, timer, retr, uid, timeout, inode;
      if (!(f >> slot >> local >> remote >> state >> queues >> timer >> retr >> uid >> timeout >>
            inode))
        continue;
      const std::string l = procNetAddress(local);
      const unsigned port = static_cast<unsigned>(std::stoul(l.substr(l.rfind(':') + 1)));
      const bool listening = state == "0A";
      if (listening) listening_ports.insert(port);
      tcp[inode] = Tcp{l, procNetAddress(remote), port, listening};
    }
  }
  std::vector<std::string> out;
  const std::string dir = fmt::format("/proc/{}/fd", pid);
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return out;
  while (dirent* e = ::readdir(d)) {
    if (e->d_name[0] == '.') continue;
    char target[512] = {};
    const ssize_t n =
        ::readlink(fmt::format("{}/{}", dir, e->d_name).c_str(), target, sizeof(target) - 1);
    if (n <= 0) continue;
    std::string what(target, static_cast<std::size_t>(n));
    if (what.rfind("socket:[", 0) == 0) {
      auto it = tcp.find(what.substr(8, what.size() - 9));
      if (it == tcp.end()) {
        what = "socket (not TCP)";
      } else if (it->second.listening) {
        what = fmt::format("tcp listening on :{}", it->second.local_port);
      } else if (listening_ports.count(it->second.local_port)) {
        const std::string& r = it->second.remote;
        what = fmt::format("tcp accepted from {}", r.substr(0, r.rfind(':')));
      } else {
        what = "tcp dialed " + it->second.remote;
      }
    } else if (what.rfind("pipe:", 0) == 0) {
      what = "pipe";
    } else if (what.rfind("anon_inode:", 0) == 0) {
      what = what.substr(11);
    }
    out.push_back(std::move(what));
  }
  ::closedir(d);
  std::sort(out.begin(), out.end());
  return out;
}

long rssKib(pid_t pid) {
  std::ifstream in(fmt::format("/proc/{}/status", pid));
  std::string key;
  long v = -1;
  while (in >> key) {
    if (key == "VmRSS:") {
      in >> v;
      return v;
    }
    std::string rest;
    std::getline(in, rest);
  }
  return -1;
}

struct ProcInfo {
  pid_t pid = 0;
  bool running = false;
  int host = 0;
  std::string id;
  std::string address;
  int port = 0;
  int restarts = 0;
  bool resumed = false;
};

std::map<std::string, ProcInfo> readProcesses(const std::string& path) {
  std::map<std::string, ProcInfo> out;
  auto j = nlohmann::json::parse(readTextFile(path), nullptr, false);
  if (j.is_discarded() || !j.is_object()) return out;
  for (auto& [name, v] : j.items()) {
    ProcInfo p;
    p.pid = v.value("pid", 0);
    p.running = v.value("running", false);
    p.host = v.value("host", 0);
    p.id = v.value("id", "");
    p.address = v.value("address", "");
    p.port = v.value("port", 0);
    p.restarts = v.value("restarts", 0);
    p.resumed = v.value("resumed", false);
    out[name] = p;
  }
  return out;
}

// Polls the coordinator (and the standby) from inside lab host 1 (a thread of its own: entering
// a network namespace is per thread). With a standby, each sample is of the one that holds the
// group: the most members, then the most peers.
class StatusPoller {
 public:
  StatusPoller(lab::LabConfig cfg, double origin) : cfg_(std::move(cfg)), origin_(origin) {
    thread_ = std::thread([this] { loop(); });
  }
  ~StatusPoller() {
    stop_ = true;
    thread_.join();
  }
  void setPort(int port) { port_ = port; }
  void setStandbyPort(int port) { standby_port_ = port; }
  std::vector<StatusSample> drain() {
    std::lock_guard lock(mu_);
    return std::exchange(samples_, {});
  }

 private:
  void loop() {
    Status st = lab::enterHost(cfg_, 1);
    while (!stop_) {
      const int port = port_.load(), standby = standby_port_.load();
      if (st.isOk() && port > 0) {
        StatusSample s;
        auto v = p2p::fetchStatus({cfg_.address(1), static_cast<std::uint16_t>(port)},
                                  Deadline::after(Millis(300)));
        if (standby > 0) {
          auto w = p2p::fetchStatus({cfg_.address(1), static_cast<std::uint16_t>(standby)},
                                    Deadline::after(Millis(300)));
          auto key = [](const p2p::GroupView& g) {
            return std::make_pair(g.world(), g.peers.size());
          };
          if (w && (!v || key(*w) > key(*v))) {
            v = std::move(w);
            s.active = "standby";
          }
        }
        s.t = steadyNow() - origin_;
        if (v) {
          s.reachable = true;
          s.epoch = v->epoch;
          s.world = static_cast<int>(v->world());
          s.pending = static_cast<int>(v->pending());
          for (const auto& p : v->peers) {
            if (p.state == p2p::PeerState::kMember) s.members.push_back(p.id);
          }
        }
        std::lock_guard lock(mu_);
        samples_.push_back(std::move(s));
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  }
  lab::LabConfig cfg_;
  double origin_;
  std::atomic<bool> stop_{false};
  std::atomic<int> port_{0};
  std::atomic<int> standby_port_{0};
  std::mutex mu_;
  std::vector<StatusSample> samples_;
  std::thread thread_;
};

// A fault in progress.
struct ActiveFault {
  std::size_t index;  // into records
  int phase = 0;      // stall_joiner: 0 waiting for the restart's admission, 1 stalled
  pid_t pid = 0;      // the process it acts on (stop: SIGCONT goes there)
  double until = 0;   // when it is undone
  double deadline = 0;
  bool gave_up = false;  // stall_joiner: the restart never came or was never admitted
};

struct SwarmResult {
  int local_rc = -1;
  double run_s = 0;  // from the first round to the end
  std::optional<double> final_val;
  std::uint64_t inner_steps = 0;
  Timeline timeline;  // times relative to the first round
  std::vector<FaultRecord> records;
  std::vector<Verdict> verdicts;
};

class SwarmRun {
 public:
  SwarmRun(const RunOptions& o, const lab::LabConfig& cfg, std::string dir, bool faults,
           std::optional<double> baseline_val, std::string baseline_note)
      : o_(o),
        s_(o.scenario),
        cfg_(cfg),
        dir_(std::move(dir)),
        faults_(faults),
        baseline_val_(baseline_val),
        baseline_note_(std::move(baseline_note)),
        checker_(limits()) {
    if (faults_) {
      for (const Fault& f : s_.faults) records_.push_back(FaultRecord{f, {}, {}, "", ""});
    }
  }

  // Runs `loco local` to its end, or stops it (SIGINT) `stop_after_s` after the first round:
  // the calibration run, and a `--duration` soak once its schedule is over (see below).
  Result<SwarmResult> run(const std::vector<std::string>& training, double stop_after_s = 0);

 private:
  InvariantLimits limits() const {
    InvariantLimits l;
    l.heartbeat_timeout_s = s_.swarm.heartbeat_timeout_ms / 1000.0;
    l.hang_margin_s = s_.checks.hang_margin_s;
    l.growth_limit = s_.checks.growth_limit;
    l.val_loss_band = s_.checks.val_loss_band;
    // What one member's links to one host can need: both directions' streams (the peers run
    // with the link's default stream count), a control connection and a state transfer; times
    // the peers that share a host.
    const int peers_per_host = (s_.swarm.peers + s_.swarm.hostCount() - 1) / s_.swarm.hostCount();
    l.connections_per_host =
        (2 * static_cast<int>(p2p::LinkOptions{}.streams) + 2) * std::max(1, peers_per_host);
    return l;
  }
  double now() const { return steadyNow() - origin_; }
  Status labSet(std::vector<std::string> args) {
    args.insert(args.begin(), {"lab", "set", cfg_.name});
    return loco(o_.exe, args, dir_ + "/chaos-tools.log");
  }
  // Whether a run asked to stop at `stop_s` may stop now: every fault of the schedule was
  // injected and undone at least kSettle ago, so the last one's recovery is in the report. A
  // fault that waits for a target that never comes does not hold the end back more than kSettle.
  bool scheduleSettled(double t, double stop_s) const {
    constexpr double kSettle = 30;
    if (!faults_) return true;
    if (t - *t0_ > stop_s + 4 * kSettle) return true;
    if (next_fault_ < records_.size() || !active_.empty()) return false;
    for (const auto& r : records_) {
      const std::optional<double> last = r.ended_t ? r.ended_t : r.injected_t;
      if (last && t - *last < kSettle) return false;
    }
    return true;
  }
  void readRounds();
  void inject(FaultRecord& r);
  void progress(ActiveFault& a);
  void undo(ActiveFault& a);
  bool healthy() const;
  // The coordinator process that holds the group ("coordinator", or "standby").
  std::string activeCoordinator() const {
    return !tl_.status.empty() && tl_.status.back().reachable ? tl_.status.back().active
                                                              : "coordinator";
  }
  static bool isCoordinator(const std::string& name) {
    return name == "coordinator" || name == "standby";
  }
  int peerHost(const std::string& target) const {
    return s_.swarm.hostOfPeer(std::stoi(target.substr(5)));
  }
  std::string ckptDir(const std::string& target) const { return dir_ + "/ckpt/" + target; }

  const RunOptions& o_;
  const Scenario& s_;
  const lab::LabConfig& cfg_;
  std::string dir_;
  bool faults_;
  std::optional<double> baseline_val_;
  std::string baseline_note_;
  InvariantChecker checker_;
  std::vector<FaultRecord> records_;
  std::vector<ActiveFault> active_;
  std::size_t next_fault_ = 0;
  double origin_ = steadyNow();
  double unix_origin_ = unixNow();
  std::optional<double> t0_;         // the first round
  std::optional<double> first_due_;  // when the next fault became due (its target may be away)
  std::map<std::string, ProcInfo> procs_;
  std::map<std::string, std::size_t> read_;  // metrics file -> bytes consumed
  Timeline tl_;
  std::set<std::string> stopped_;   // process names we SIGSTOPped
  std::set<std::string> crippled_;  // peers a fault keeps from working (disk full, stalled)
  std::string partition_;
  bool coordinator_reachable_ = false;
  std::map<std::size_t, int> restarts_before_;  // record -> its target's restarts at injection
  std::map<std::size_t, pid_t> records_pid_;    // record -> its target's pid at injection
};

void SwarmRun::readRounds() {
  for (int i = 1; i <= s_.swarm.peers; ++i) {
    const std::string name = fmt::format("peer-{}", i);
    const std::string path = fmt::format("{}/run/{}.jsonl", dir_, name);
    std::ifstream in(path);
    if (!in) continue;
    std::size_t& consumed = read_[path];
    in.seekg(static_cast<std::streamoff>(consumed));
    std::string line;
    while (std::getline(in, line)) {
      if (in.eof()) break;  // still being written
      consumed += line.size() + 1;
      auto r = parseRoundLine(line, name);
      if (!r) continue;
      const double t = r->unix_s > 0 ? r->unix_s - unix_origin_ : now();
      if (!t0_ && r->contributors > 0) t0_ = t;
      checker_.onRound(*r, t);
      tl_.rounds.push_back(TimedRound{t, *r});
    }
  }
}

bool SwarmRun::healthy() const {
  // A coordinator: the first, or the standby (the peers move to it by themselves).
  bool coordinator = false;
  for (const char* name : {"coordinator", "standby"}) {
    auto c = procs_.find(name);
    coordinator = coordinator || (c != procs_.end() && c->second.running && !stopped_.count(name));
  }
  if (!coordinator || !coordinator_reachable_) return false;
  std::vector<std::vector<int>> groups;
  if (!partition_.empty()) {
    if (auto g = lab::parsePartition(partition_, s_.swarm.hostCount())) groups = *g;
  }
  auto groupOf = [&](int host) {
    for (std::size_t g = 0; g < groups.size(); ++g) {
      for (int h : groups[g]) {
        if (h == host) return static_cast<int>(g);
      }
    }
    return -1;
  };
  int ok = 0;
  for (int i = 1; i <= s_.swarm.peers; ++i) {
    const std::string name = fmt::format("peer-{}", i);
    auto p = procs_.find(name);
    if (p == procs_.end() || !p->second.running || stopped_.count(name) || crippled_.count(name))
      continue;
    if (!groups.empty() && groupOf(s_.swarm.hostOfPeer(i)) != groupOf(1)) continue;
    ++ok;
  }
  return 2 * ok > s_.swarm.peers;
}

void SwarmRun::inject(FaultRecord& r) {
  // With a standby, a coordinator fault hits the coordinator that holds the group.
  if (r.fault.kind == FaultKind::kFailover || (s_.swarm.standby && isCoordinator(r.fault.target)))
    r.fault.target = activeCoordinator();
  const Fault& f = r.fault;
  ActiveFault a{static_cast<std::size_t>(&r - records_.data())};
  const double t = now();
  auto target = procs_.find(f.target);
  if (f.processFault()) {
    if (target == procs_.end() || !target->second.running || target->second.pid <= 0) {
      // Not there right now (being restarted): try again on the next tick, for a while.
      if (!first_due_) first_due_ = t;
      if (t - *first_due_ < 30) return;
      r.injected_t = t;
      r.how = "the target was not running for 30 s; nothing done";
      ++next_fault_;
      first_due_.reset();
      return;
    }
    a.pid = target->second.pid;
    r.target_id = target->second.id;
    restarts_before_[a.index] = target->second.restarts;
    records_pid_[a.index] = target->second.pid;
  }
  Status st;
  switch (f.kind) {
    case FaultKind::kKill:
    case FaultKind::kRestartFromCheckpoint:
    case FaultKind::kFailover:
      ::kill(a.pid, SIGKILL);
      break;
    case FaultKind::kTerm:
      ::kill(a.pid, SIGTERM);
      break;
    case FaultKind::kStop:
      ::kill(a.pid, SIGSTOP);
      stopped_.insert(f.target);
      break;
    case FaultKind::kStallJoiner:
      st = labSet({"--host", fmt::format("{}:rate-mbit={:g}", peerHost(f.target), f.value)});
      ::kill(a.pid, SIGKILL);
      crippled_.insert(f.target);
      a.deadline = t + 60;
      break;
    case FaultKind::kDiskFull: {
      std::error_code ec;
      std::filesystem::create_directories(ckptDir(f.target), ec);
      st = mountIn(0, ckptDir(f.target), true, f.size_kib);
      if (st.isOk() && !sameMountNs(a.pid))
        st = mountIn(a.pid, ckptDir(f.target), true, f.size_kib);
      crippled_.insert(f.target);
      break;
    }
    case FaultKind::kPartition:
      st = loco(o_.exe, {"lab", "partition", cfg_.name, "--groups", f.groups},
                dir_ + "/chaos-tools.log");
      if (st.isOk()) partition_ = f.groups;
      break;
    case FaultKind::kHeal:
      st = loco(o_.exe, {"lab", "heal", cfg_.name}, dir_ + "/chaos-tools.log");
      partition_.clear();
      break;
    case FaultKind::kLoss:
      st = f.link.empty() ? labSet({"--loss", fmt::format("{:g}", f.value)})
                          : labSet({"--link", fmt::format("{}:loss={:g}", f.link, f.value)});
      break;
    case FaultKind::kDelay:
      st = f.link.empty() ? labSet({"--delay-ms", fmt::format("{:g}", f.value), "--jitter-ms",
                                    fmt::format("{:g}", f.jitter_ms)})
                          : labSet({"--link", fmt::format("{}:delay-ms={:g},jitter-ms={:g}", f.link,
                                                          f.value, f.jitter_ms)});
      break;
    case FaultKind::kRate:
      st = f.host == 0 ? labSet({"--rate-mbit", fmt::format("{:g}", f.value)})
                       : labSet({"--host", fmt::format("{}:rate-mbit={:g}", f.host, f.value)});
      break;
    case FaultKind::kSlowHost:
      st = labSet({"--host", fmt::format("{}:cpu={:g}", f.host, f.value)});
      break;
  }
  r.injected_t = t;
  ++next_fault_;
  first_due_.reset();
  say(fmt::format("{:7.1f} s  round {:>4}  {}{}", t - *t0_, checker_.maxStep(), f.describe(),
                  st.isOk() ? "" : " FAILED: " + st.message()));
  if (!st.isOk()) r.how = "could not be applied: " + st.message();
  const bool lasting = f.duration_s > 0 || f.kind == FaultKind::kStallJoiner;
  if (lasting) {
    a.until = t + f.duration_s;
    active_.push_back(a);
  } else {
    r.ended_t = t;
  }
}

// stall_joiner: wait for the restart's admission, then stall it.
void SwarmRun::progress(ActiveFault& a) {
  FaultRecord& r = records_[a.index];
  if (r.fault.kind != FaultKind::kStallJoiner || a.phase != 0) return;
  auto p = procs_.find(r.fault.target);
  if (p == procs_.end() || !p->second.running || p->second.pid == a.pid) {
    if (now() > a.deadline) {
      r.how = "its restart never came; nothing stalled";
      a.gave_up = true;
    }
    return;
  }
  // Admitted? Then its download of the shared state is under way.
  bool member = false;
  for (auto it = tl_.status.rbegin(); it != tl_.status.rend() && !member; ++it) {
    if (!it->reachable) continue;
    for (const auto& id : it->members) member = member || id == p->second.id;
    break;
  }
  if (!member) {
    if (now() > a.deadline) {
      r.how = "its restart was never admitted; nothing stalled";
      a.gave_up = true;
    }
    return;
  }
  a.pid = p->second.pid;
  ::kill(a.pid, SIGSTOP);
  stopped_.insert(r.fault.target);
  a.phase = 1;
  a.until = now() + r.fault.duration_s;
  r.how = fmt::format("restart pid {} admitted and SIGSTOPped at +{:.2f} s", a.pid,
                      now() - *r.injected_t);
  say(fmt::format("{:7.1f} s  round {:>4}  {} stalled (pid {}) right after its admission",
                  now() - *t0_, checker_.maxStep(), r.fault.target, a.pid));
}

void SwarmRun::undo(ActiveFault& a) {
  FaultRecord& r = records_[a.index];
  const Fault& f = r.fault;
  Status st;
  switch (f.kind) {
    case FaultKind::kStop:
      ::kill(a.pid, SIGCONT);
      stopped_.erase(f.target);
      break;
    case FaultKind::kStallJoiner:
      if (a.phase == 1) ::kill(a.pid, SIGCONT);
      stopped_.erase(f.target);
      crippled_.erase(f.target);
      st = labSet(
          {"--host", fmt::format("{}:rate-mbit={:g}", peerHost(f.target), s_.lab.rate_mbit)});
      break;
    case FaultKind::kDiskFull: {
      st = mountIn(0, ckptDir(f.target), false, 0);
      auto p = procs_.find(f.target);
      if (p != procs_.end() && p->second.running && !sameMountNs(p->second.pid))
        (void)mountIn(p->second.pid, ckptDir(f.target), false, 0);
      crippled_.erase(f.target);
      break;
    }
    case FaultKind::kPartition:
      st = loco(o_.exe, {"lab", "heal", cfg_.name}, dir_ + "/chaos-tools.log");
      partition_.clear();
      break;
    case FaultKind::kLoss:
      st = f.link.empty() ? labSet({"--loss", fmt::format("{:g}", s_.lab.loss)})
                          : labSet({"--link", fmt::format("{}:loss={:g}", f.link, s_.lab.loss)});
      break;
    case FaultKind::kDelay:
      st = f.link.empty() ? labSet({"--delay-ms", fmt::format("{:g}", s_.lab.delay_ms),
                                    "--jitter-ms", fmt::format("{:g}", s_.lab.jitter_ms)})
                          : labSet({"--link", fmt::format("{}:delay-ms={:g},jitter-ms={:g}", f.link,
                                                          s_.lab.delay_ms, s_.lab.jitter_ms)});
      break;
    case FaultKind::kRate:
      st = f.host == 0
               ? labSet({"--rate-mbit", fmt::format("{:g}", s_.lab.rate_mbit)})
               : labSet({"--host", fmt::format("{}:rate-mbit={:g}", f.host, s_.lab.rate_mbit)});
      break;
    case FaultKind::kSlowHost:
      st = labSet({"--host", fmt::format("{}:cpu=0", f.host)});
      break;
    default:
      break;
  }
  r.ended_t = now();
  if (!st.isOk()) say("could not undo " + f.describe() + ": " + st.message());
  if (t0_)
    say(fmt::format("{:7.1f} s  round {:>4}  end of: {}", now() - *t0_, checker_.maxStep(),
                    f.describe()));
}

Result<SwarmResult> SwarmRun::run(const std::vector<std::string>& training, double stop_after_s) {
  std::error_code ec;
  std::filesystem::remove_all(dir_ + "/run", ec);
  std::filesystem::create_directories(dir_ + "/run", ec);
  std::vector<std::string> args{o_.exe,
                                "local",
                                "--lab",
                                cfg_.name,
                                "--out",
                                dir_ + "/run",
                                "--peers",
                                std::to_string(s_.swarm.peers),
                                "--heartbeat-interval",
                                std::to_string(s_.swarm.heartbeat_interval_ms),
                                "--heartbeat-timeout",
                                std::to_string(s_.swarm.heartbeat_timeout_ms),
                                "--restart-backoff-ms",
                                std::to_string(s_.swarm.restart_backoff_ms),
                                "--timeout-ms",
                                std::to_string(static_cast<long>(s_.swarm.timeout_s * 1000)),
                                "--log-level",
                                o_.log_level};
  if (s_.needsCheckpoints()) {
    args.push_back("--checkpoint-dir");
    args.push_back(dir_ + "/ckpt");
  }
  if (s_.swarm.standby) {
    args.push_back("--standby");
    args.push_back("on");
  }
  if (o_.insecure) {
    args.push_back("--insecure");
    p2p::tls::useInsecure(/*warn=*/false);
  } else {
    // The CA loco local finds in its --out, and a certificate of our own for the status polls.
    auto ca = crypto::RunCa::init(dir_ + "/run/ca", std::chrono::hours(24 * 30));
    if (!ca) return ca.status();
    const std::string self_dir = dir_ + "/run/tls-chaos";
    if (Status st = cli::issueInto(*ca, crypto::ephemeralIdentity().id, self_dir,
                                   std::chrono::hours(24 * 7));
        !st.isOk() || !(st = cli::useTlsDir(self_dir)).isOk()) {
      return st;
    }
  }
  args.insert(args.end(), training.begin(), training.end());
  const std::string local_log = dir_ + "/local.log";
  ::unlink(local_log.c_str());
  origin_ = steadyNow();
  unix_origin_ = unixNow();  // the same instant on the wall clock
  pid_t local = start(args, local_log);
  if (local < 0) return Status(StatusCode::kInternal, "cannot start loco local");
  StatusPoller poller(cfg_, origin_);
  SwarmResult result;
  double last_sample = -1;
  // Every sample the resources invariant judges, so a finding can be looked into afterwards:
  // one JSON object per line, the descriptor listing only when it changed since the process's
  // previous sample.
  std::ofstream samples_out(dir_ + "/run/resources.jsonl");
  std::map<std::string, std::vector<std::string>> last_listing;
  std::optional<int> rc;
  bool asked_to_stop = false;
  bool stopped_at_duration = false;
  while (!(rc = waitFor(local, 0.1))) {
    const double t = now();
    procs_ = readProcesses(dir_ + "/run/processes.json");
    if (auto c = procs_.find("coordinator"); c != procs_.end()) poller.setPort(c->second.port);
    if (auto c = procs_.find("standby"); c != procs_.end()) poller.setStandbyPort(c->second.port);
    for (auto& s : poller.drain()) {
      coordinator_reachable_ = s.reachable;
      tl_.status.push_back(std::move(s));
    }
    readRounds();
    // Faults, on the clock that starts with the first round.
    if (t0_ && faults_ && !g_interrupted) {
      auto due = [&](const Fault& f) {
        return f.after_round > 0 ? checker_.maxStep() >= f.after_round : t >= *t0_ + f.at_s;
      };
      while (next_fault_ < records_.size() && due(records_[next_fault_].fault)) {
        const std::size_t before = next_fault_;
        inject(records_[next_fault_]);
        if (next_fault_ == before) break;  // waiting for its target
      }
      for (auto& a : active_) progress(a);
      for (auto it = active_.begin(); it != active_.end();) {
        const bool waiting =
            records_[it->index].fault.kind == FaultKind::kStallJoiner && it->phase == 0;
        if ((waiting && it->gave_up) || (!waiting && now() >= it->until)) {
          undo(*it);
          it = active_.erase(it);
        } else {
          ++it;
        }
      }
    }
    // How a process target came back: restarted by loco local (its restart count moved).
    for (std::size_t i = 0; i < records_.size(); ++i) {
      FaultRecord& r = records_[i];
      if (!r.injected_t || !r.fault.processFault() || r.fault.kind == FaultKind::kStallJoiner)
        continue;
      auto p = procs_.find(r.fault.target);
      if (p == procs_.end()) continue;
      auto [before, fresh] = restarts_before_.try_emplace(i, p->second.restarts);
      if (fresh || !r.how.empty()) continue;
      if (p->second.restarts > before->second && p->second.running) {
        r.how = fmt::format("restarted by loco local (pid {}{})", p->second.pid,
                            p->second.resumed ? ", from its checkpoint" : "");
      } else if (r.fault.kind == FaultKind::kStop && r.ended_t &&
                 p->second.pid == records_pid_[i]) {
        // Back without a restart: a member again (a peer) or answering (a coordinator).
        bool back = isCoordinator(r.fault.target) && coordinator_reachable_;
        if (!tl_.status.empty() && tl_.status.back().reachable) {
          for (const auto& id : tl_.status.back().members) back = back || id == r.target_id;
        }
        if (back) r.how = fmt::format("the same process (pid {}) came back", p->second.pid);
      }
    }
    if (t0_) checker_.onTick(t, healthy());
    if (t - last_sample >= 1) {
      last_sample = t;
      for (const auto& [name, p] : procs_) {
        if (!p.running || p.pid <= 0 || stopped_.count(name)) continue;
        std::vector<std::string> fds = describeFds(p.pid);
        const long rss = rssKib(p.pid);
        if (!fds.empty() && rss >= 0) {
          const int count = static_cast<int>(fds.size());
          nlohmann::json line{{"t", std::round(t * 10) / 10},
                              {"process", name},
                              {"pid", p.pid},
                              {"fds", count},
                              {"rss_kib", rss}};
          if (last_listing[name] != fds) {
            line["descriptors"] = fds;
            last_listing[name] = fds;
          }
          samples_out << line.dump() << '\n';
          checker_.onProcessSample(name, p.pid, ProcessSample{t, count, rss, std::move(fds)});
        }
      }
    }
    if (!asked_to_stop && (g_interrupted || (stop_after_s > 0 && t0_ && t - *t0_ > stop_after_s &&
                                             scheduleSettled(t, stop_after_s)))) {
      asked_to_stop = true;
      stopped_at_duration = !g_interrupted;
      ::kill(local, SIGINT);
    }
  }
  // The end: undo what is still in force, read what is left.
  for (auto& a : active_) undo(a);
  active_.clear();
  for (auto& r : records_) {
    if (r.injected_t && r.how.empty() && r.fault.processFault())
      r.how = "neither restarted nor back before the run ended";
  }
  readRounds();
  for (auto& s : poller.drain()) tl_.status.push_back(std::move(s));
  const double end = now();
  result.local_rc = *rc;
  if (t0_) checker_.runComplete(end);
  // The final validation loss: the highest step that has one.
  std::uint64_t best = 0;
  for (const auto& r : tl_.rounds) {
    if (r.line.val_loss && r.line.step >= best) {
      best = r.line.step;
      result.final_val = r.line.val_loss;
    }
    result.inner_steps = std::max(result.inner_steps, r.line.inner_step);
  }
  // Everything relative to the first round.
  const double shift = t0_.value_or(0);
  for (auto& s : tl_.status) s.t -= shift;
  for (auto& r : tl_.rounds) r.t -= shift;
  for (auto& r : records_) {
    if (r.injected_t) *r.injected_t -= shift;
    if (r.ended_t) *r.ended_t -= shift;
  }
  result.run_s = end - shift;
  result.verdicts = checker_.finish(result.final_val, baseline_val_, baseline_note_);
  for (auto& v : result.verdicts) {
    for (auto& x : v.violations) x.t -= x.t > 0 ? shift : 0;
  }
  Verdict completed{"completed", 1, {}, ""};
  if (stopped_at_duration && result.local_rc == kInterruptedExit) {
    // A soak ends at its duration: loco local stops its processes and reports "interrupted".
    completed.note = fmt::format("stopped after the --duration ({} inner steps), as planned",
                                 result.inner_steps);
  } else if (result.local_rc != 0) {
    completed.violations.push_back(
        Violation{"completed", result.run_s,
                  fmt::format("loco local exited {} (the run did not reach its last step); see {}",
                              result.local_rc, local_log)});
  } else {
    completed.note = "loco local: the run reached its last step";
  }
  result.verdicts.insert(result.verdicts.begin(), completed);
  result.timeline = std::move(tl_);
  result.records = records_;
  return result;
}

// The timeline: train and validation loss against time, world size on the right, faults marked.
Status writeTimeline(const std::string& path, const SwarmResult& r, const Scenario& s) {
  PlotSeries train{"train loss", "#1f77b4", {}}, val{"validation loss", "#d62728", {}};
  std::set<std::uint64_t> seen;
  for (const auto& x : r.timeline.rounds) {
    if (x.line.contributors > 0 && seen.insert(x.line.step).second)
      train.points.emplace_back(x.t, x.line.loss);
    if (x.line.val_loss) val.points.emplace_back(x.t, *x.line.val_loss);
  }
  PlotSeries world{"world (members)", "#2ca02c", {}};
  for (const auto& st : r.timeline.status) {
    if (st.t < -5) continue;
    world.points.emplace_back(st.t, st.reachable ? st.world : 0);
  }
  PlotExtras extras;
  extras.right = {world};
  extras.right_label = "peers in the group";
  const char* colors[] = {"#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};
  std::size_t i = 0;
  for (const auto& rec : r.records) {
    if (!rec.injected_t) continue;
    extras.markers.push_back(PlotMarker{*rec.injected_t, rec.ended_t.value_or(*rec.injected_t),
                                        rec.fault.describe(), colors[i++ % 6]});
  }
  return writeSvgPlot(
      path,
      fmt::format("loco chaos: {} (seed {})", s.path.empty() ? "random schedule" : s.path, s.seed),
      "seconds since the first round", "loss (nats/byte)", {train, val}, extras);
}

std::vector<std::string> withSteps(std::vector<std::string> flags, std::uint64_t steps) {
  for (std::size_t i = 0; i + 1 < flags.size(); ++i) {
    if (flags[i] == "--steps") {
      flags[i + 1] = std::to_string(steps);
      return flags;
    }
  }
  flags.push_back("--steps");
  flags.push_back(std::to_string(steps));
  return flags;
}

}  // namespace

int runChaos(RunOptions o) {
  Scenario& s = o.scenario;
  if (Status st = lab::checkLabSupport(); !st.isOk()) return reportFailure(st);
  std::error_code ec;
  std::filesystem::create_directories(o.out_dir, ec);
  if (ec)
    return reportFailure(
        Status(StatusCode::kIoError, fmt::format("cannot create {}: {}", o.out_dir, ec.message())));
  const std::string tools_log = o.out_dir + "/chaos-tools.log";
  if (std::filesystem::exists(lab::stateDir(s.name))) {
    return reportFailure(Status(
        StatusCode::kAlreadyExists,
        fmt::format("a lab named '{}' exists already (another chaos run?); `loco lab down {}` "
                    "removes it, or give the scenario another name",
                    s.name, s.name)));
  }
  struct sigaction sa {};
  sa.sa_handler = onChaosSignal;
  ::sigaction(SIGINT, &sa, nullptr);
  ::sigaction(SIGTERM, &sa, nullptr);

  say(fmt::format("lab {}: {} hosts, delay {:g} ms, jitter {:g} ms, loss {:g}, rate {:g} Mbit/s",
                  s.name, s.swarm.hostCount(), s.lab.delay_ms, s.lab.jitter_ms, s.lab.loss,
                  s.lab.rate_mbit));
  Status up = loco(o.exe,
                   {"lab", "up", s.name, "--hosts", std::to_string(s.swarm.hostCount()),
                    "--delay-ms", fmt::format("{:g}", s.lab.delay_ms), "--jitter-ms",
                    fmt::format("{:g}", s.lab.jitter_ms), "--loss", fmt::format("{:g}", s.lab.loss),
                    "--rate-mbit", fmt::format("{:g}", s.lab.rate_mbit)},
                   tools_log, 120);
  if (!up.isOk()) return reportFailure(up);
  auto down = [&] {
    if (o.keep_lab) {
      say("leaving lab " + s.name + " up (--keep-lab); `loco lab down " + s.name + "` removes it");
      return;
    }
    (void)loco(o.exe, {"lab", "down", s.name}, tools_log, 60);
  };
  auto cfg = lab::loadLab(s.name);
  if (!cfg) {
    down();
    return reportFailure(cfg.status());
  }
  std::vector<std::string> training = s.trainingFlags();

  // --random --duration: measure the swarm's speed, then size the run to the duration.
  if (o.duration_s > 0) {
    say("calibrating: a fault-free run for 25 s to measure the swarm's speed");
    SwarmRun cal(o, *cfg, o.out_dir + "/calibration", false, std::nullopt, "");
    std::filesystem::create_directories(o.out_dir + "/calibration", ec);
    auto r = cal.run(withSteps(training, 100000000), 25);
    if (!r || r->inner_steps == 0 || r->run_s <= 0) {
      down();
      return reportFailure(Status(
          StatusCode::kInternal,
          "calibration: the swarm applied no round; see " + o.out_dir + "/calibration/local.log"));
    }
    const double rate = static_cast<double>(r->inner_steps) / r->run_s;
    // Twice the calibrated steps, and the run is stopped once the duration is over: the
    // swarm's speed changes with faults and with the machine's load (one 1-hour soak sized at
    // exactly the calibrated rate ran out of steps after 42 minutes, another ran 71), and a soak
    // must inject faults for the whole duration it was asked for.
    const auto steps = static_cast<std::uint64_t>(std::ceil(2 * rate * o.duration_s / 100) * 100);
    say(
        fmt::format("calibration: {:.1f} inner steps/s; {} steps (twice what {:.0f} s take), "
                    "stopped after {:.0f} s of faults",
                    rate, steps, o.duration_s, o.duration_s));
    training = withSteps(training, steps);
    s.swarm.training = withSteps(s.swarm.training, steps);
  }
  (void)writeFileAtomic(o.out_dir + "/scenario.toml", toToml(s));

  std::optional<double> baseline_val;
  std::string baseline_note;
  if (s.checks.baseline == "run" && !g_interrupted) {
    say("baseline: the same swarm and seed without faults");
    std::filesystem::create_directories(o.out_dir + "/baseline", ec);
    SwarmRun base(o, *cfg, o.out_dir + "/baseline", false, std::nullopt, "");
    auto r = base.run(training);
    if (r && r->local_rc == 0 && r->final_val) {
      baseline_val = r->final_val;
      say(fmt::format("baseline: final validation loss {:.4f} after {:.1f} s", *baseline_val,
                      r->run_s));
    } else {
      baseline_note = "the fault-free baseline run failed; see " + o.out_dir + "/baseline";
      say(baseline_note);
    }
  } else if (s.checks.baseline == "none") {
    baseline_note = "no baseline (baseline = \"none\")";
  } else if (s.checks.baseline != "run") {
    baseline_val = std::stod(s.checks.baseline);
  }
  if (g_interrupted) {
    down();
    return kInterruptedExit;
  }

  say(fmt::format("run: {} peers, {} faults", s.swarm.peers, s.faults.size()));
  SwarmRun chaos_run(o, *cfg, o.out_dir, true, baseline_val, baseline_note);
  auto result = chaos_run.run(training, o.duration_s);
  down();
  if (!result) return reportFailure(result.status());

  std::vector<FaultOutcome> outcomes;
  std::string jsonl;
  for (const auto& rec : result->records) {
    outcomes.push_back(assessFault(rec, result->timeline, s.swarm.peers));
    jsonl += outcomeJson(outcomes.back()) + "\n";
  }
  bool passed = true;
  for (const auto& v : result->verdicts) passed = passed && v.held();
  jsonl += verdictJson(result->verdicts, passed) + "\n";
  const std::string text = reportText(s, outcomes, result->verdicts, result->run_s);
  for (Status st : {writeFileAtomic(o.out_dir + "/faults.jsonl", jsonl),
                    writeFileAtomic(o.out_dir + "/report.txt", text),
                    writeTimeline(o.out_dir + "/timeline.svg", *result, s)}) {
    if (!st.isOk()) say("could not write the report: " + st.message());
  }
  std::printf("\n%s\n%s", text.c_str(), jsonl.c_str());
  std::printf("wrote %s/report.txt, %s/faults.jsonl, %s/timeline.svg\n", o.out_dir.c_str(),
              o.out_dir.c_str(), o.out_dir.c_str());
  if (g_interrupted) return kInterruptedExit;
  return passed ? 0 : 1;
}

}  // namespace loco::chaos
