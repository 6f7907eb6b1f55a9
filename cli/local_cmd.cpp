// `loco local`: a coordinator and N peers as separate processes on this machine (or in a lab's
// hosts), supervised with libuv.
//
// Default: the main job. The peers train the small GPT together (DiLoCo unless told otherwise;
// every training flag is passed on to them); a live line shows each outer step; at the end
// OUT/run.jsonl (one line per outer step), loss plots (SVG) and a summary are written. Peers
// start one after another, so the ring order, and with it every result bit, repeats run to run.
// --kill-at / --join-at kill a peer (SIGKILL, for good) and add one mid-run. Ctrl+C stops every
// peer.
//
// Supervision (training): like an operator, not like a test harness. A peer that dies before the
// run reaches its last step is logged and, with --restart-dead (the default), started again with
// its identity, rank and metrics file after a backoff (1 s, doubling while it keeps dying young,
// at most 30 s); it rejoins as a newcomer (from its checkpoint when --checkpoint-dir has one) and
// the others train on meanwhile. A coordinator that dies is started again on the same address.
// The exit status says whether the run reached its last step with every peer's shared state in
// agreement, not whether every process lived. OUT/processes.json names every process's current
// pid and host (what `loco chaos` signals). --standby on: a second coordinator ("standby", on the
// coordinator's host, its own port) that every peer lists after the first; when the one that
// holds the group dies the peers move to the other, and the dead one is restarted, empty, on its
// address (peers register where the group is, p2p/membership_client.h).
//
// --idle: the membership demo: all peers join, one leaves, then everyone stops.
#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <sstream>

#include "cli/chaos/invariants.h"
#include "cli/commands.h"
#include "cli/lab/cgroup.h"
#include "cli/lab/nat.h"
#include "cli/lab/net.h"
#include "cli/plot.h"
#include "cli/tls_setup.h"
#include "cli/training_flags.h"
#include "crypto/ca.h"
#include "crypto/identity.h"
#include "p2p/base/json.h"
#include "p2p/base/text.h"
#include "p2p/status_client.h"
#include "p2p/tls_stream.h"
#include "training/text_data.h"

namespace loco::cli {
namespace {

// A peer that lived at least this long is healthy again: its next restart waits the base backoff.
constexpr Millis kHealthyLife{30000};
constexpr Millis kMaxBackoff{30000};
// Once the run reached its last step, peers get this long to leave by themselves.
constexpr Millis kFinishGrace{60000};
// A peer that did not take part in the last round (it was evicted or cut off) gets this long
// before it is told to stop: with the group gone it could only train on alone, from old state.
constexpr Millis kStragglerGrace{3000};

struct Child {
  std::string name;
  std::string peer_id;  // empty for the coordinator
  uv_process_t proc{};
  bool started = false;
  bool running = false;
  bool exit_handled = true;  // the supervisor has looked at the latest exit
  std::int64_t exit_status = -1;
  int term_signal = 0;
  bool expected_exit = false;  // we asked for it (shutdown, --kill-at): no restart
  bool finished = false;       // left after the run's last step
  bool gave_up = false;        // died too often to restart again
  bool resumed = false;        // the current life started from its checkpoint
  int pid = 0;
  std::uint64_t last_inner = 0;  // the latest inner step it reported
  int restarts = 0;
  int short_lives = 0;  // consecutive lives shorter than kHealthyLife
  TimePoint started_at{};
  std::optional<TimePoint> restart_at;
  Millis backoff{1000};
  double cpu = 0;  // --peer I:cpu=C: cores' worth (cgroup quota); 0: none
};

enum class Phase {
  kStartCoordinator,
  kWaitAdmitted,  // --idle
  kHold,
  kWaitLeave,
  kStartPeers,  // training: one peer after another
  kTraining,
  kStopPeers,
  kStopCoordinator,
  kDone
};

// One outer step as the peers reported it (training).
struct StepRecord {
  std::uint64_t inner_step = 0;
  std::size_t world = 0;
  double loss = NAN, val_loss = NAN, bytes_sent = 0, wall_s = 0, tokens_per_s = 0;
  double batch = 0, tokens = 0;  // the per-peer batch after the round; tokens all peers processed
  std::uint32_t instances = 1;   // multi-instance training: instances active after the round
  std::uint32_t retries = 0;
  std::map<std::string, std::string> digests;  // peer name -> shared-state digest
  // peer name -> its tokens over its wall time since it started, and its compute share of it
  std::map<std::string, double> e2e_tokens_per_s, utilization;
  double e2eTokensPerS() const {
    double sum = 0;
    for (const auto& [peer, v] : e2e_tokens_per_s) sum += v;
    return sum;
  }
  double meanUtilization() const {
    double sum = 0;
    for (const auto& [peer, v] : utilization) sum += v;
    return utilization.empty() ? 0 : sum / static_cast<double>(utilization.size());
  }
};

struct Swarm {
  uv_loop_t loop{};
  uv_timer_t timer{};
  uv_signal_t sigint{}, sigterm{};
  std::string exe, out_dir;
  // TLS (ARCHITECTURE.md §10): a throwaway run CA in out_dir/ca; every child gets a certificate
  // for its identity. Unset with --insecure.
  std::optional<crypto::RunCa> ca;
  int peers = 4;
  Millis hold{2000};
  Millis deadline_after{60000};
  TimePoint started = Clock::now();
  TimePoint phase_since = Clock::now();
  Phase phase = Phase::kStartCoordinator;
  std::vector<std::unique_ptr<Child>> children;  // [0] coordinator, then peers
  std::uint16_t port = 0;
  std::unique_ptr<Child> standby;  // --standby on: a second coordinator
  bool quorum = false;             // --standby on: the coordinators apply the quorum rule
  std::uint16_t standby_port = 0;
  // A lab with NATed hosts: the coordinator also runs a relay (p2p/relay.h) on this port, and
  // every peer is told about it (those the coordinator can dial back stay direct).
  std::uint16_t relay_port = 0;
  bool wantsRelay() const {
    if (!lab) return false;
    for (int i = 1; i <= lab->hosts; ++i) {
      if (lab->hostNat(i) != lab::NatMode::kNone) return true;
    }
    return false;
  }
  // The coordinator's --http (dashboard, /metrics): HOST:0 the first time, the same port after a
  // restart. Empty host: off. The standby serves none.
  std::string http_host;
  std::uint16_t http_port = 0;
  std::string last_view;
  std::string failure;
  bool interrupted = false;
  std::string log_level = "info";
  std::optional<lab::LabConfig> lab;  // --lab: processes live in the lab's hosts
  // --measure-topology: peers probe their links so the coordinator can order the ring around
  // slow ones. Default: on in a lab; on one machine the links say nothing about a WAN, and a
  // fixed ring keeps runs repeatable.
  bool measure_topology = false;
  int heartbeat_interval_ms = 250, heartbeat_timeout_ms = 2000;
  // Training:
  bool training = false;
  bool restart_dead = true;
  Millis restart_backoff{1000};
  int max_restarts = 20;  // consecutive short lives before a peer is given up
  std::string checkpoint_dir;
  std::vector<std::string> training_args;  // forwarded to every peer
  std::string method;                      // what the peers run (--method auto resolved)
  std::uint64_t total_steps = 0;
  std::size_t next_peer = 1;  // the next child to start (kStartPeers)
  std::int64_t kill_at = -1, join_at = -1;
  bool killed = false, added = false;
  std::map<std::string, std::size_t> metrics_read;  // metrics file -> bytes consumed
  std::map<std::uint64_t, StepRecord> steps;
  std::uint64_t last_shown = 0;
  bool shown_any = false;
  std::optional<TimePoint> completed_at;  // when the run reached its last step

  // Host for process `index` (0: coordinator, then peers), and how to reach it.
  int hostOf(std::size_t index) const { return lab ? static_cast<int>(index % lab->hosts) + 1 : 0; }
  std::string addressOf(std::size_t index) const {
    return lab ? lab::insideAddress(*lab, hostOf(index)) : "127.0.0.1";
  }
  std::string cgroupOf(std::size_t index) const {
    return fmt::format("local-{}-{}", ::getpid(), children[index]->name);
  }

  double elapsed() const { return std::chrono::duration<double>(Clock::now() - started).count(); }
  void say(const std::string& msg) {
    std::printf("[%6.2fs] %s\n", elapsed(), msg.c_str());
    std::fflush(stdout);
  }
  void setPhase(Phase p) {
    phase = p;
    phase_since = Clock::now();
  }
  Clock::duration inPhase() const { return Clock::now() - phase_since; }
  // The coordinators: the first, then the standby (if any).
  std::vector<Child*> coordinators() const {
    std::vector<Child*> out{children[0].get()};
    if (standby) out.push_back(standby.get());
    return out;
  }
  std::string coordinatorList() const {
    std::string out = fmt::format("{}:{}", addressOf(0), port);
    if (standby) out += fmt::format(",{}:{}", addressOf(0), standby_port);
    return out;
  }
  bool stopping() const {
    return phase == Phase::kStopPeers || phase == Phase::kStopCoordinator || phase == Phase::kDone;
  }
};

void onExit(uv_process_t* proc, int64_t exit_status, int term_signal) {
  auto* child = static_cast<Child*>(proc->data);
  child->running = false;
  child->exit_handled = false;
  child->exit_status = exit_status;
  child->term_signal = term_signal;
  uv_close(reinterpret_cast<uv_handle_t*>(proc), nullptr);
}

std::string describeExit(const Child& c) {
  if (c.term_signal != 0) return fmt::format("killed by signal {}", c.term_signal);
  return fmt::format("exited with status {}", c.exit_status);
}

// OUT/processes.json: every process's current pid, host and history, rewritten (atomically) on
// every start and exit, for whoever wants to signal or watch them (`loco chaos`).
void writeProcesses(const Swarm& s) {
  auto entry = [](const Child& c, int host, const std::string& address, int port, int rank,
                  const std::string& id) {
    return Json{{"pid", c.pid},
                {"running", c.running},
                {"host", host},
                {"address", address},
                {"port", port},
                {"rank", rank},
                {"id", id},
                {"restarts", c.restarts},
                {"resumed", c.resumed},
                {"finished", c.finished},
                {"gave_up", c.gave_up}};
  };
  Json json = Json::object();
  for (std::size_t i = 0; i < s.children.size(); ++i) {
    const Child& c = *s.children[i];
    json[c.name] = entry(c, s.hostOf(i), s.addressOf(i), i == 0 ? s.port : 0,
                         i == 0 ? -1 : static_cast<int>(i) - 1, c.peer_id);
  }
  if (s.standby) {
    // The standby is the coordinator's twin: its restarts count, the rest does not apply.
    const Child& c = *s.standby;
    Json standby = entry(c, s.hostOf(0), s.addressOf(0), s.standby_port, -1, "");
    standby["resumed"] = standby["finished"] = standby["gave_up"] = false;
    json["standby"] = std::move(standby);
  }
  (void)writeFileAtomic(s.out_dir + "/processes.json", jsonDump(json) + "\n");
}

Status spawn(Swarm& s, Child& child, std::size_t index, const std::vector<std::string>& args) {
  std::string log_path = fmt::format("{}/{}.log", s.out_dir, child.name);
  // A restarted process appends: its log tells every life of the process.
  const bool again = child.started;
  int fd =
      ::open(log_path.c_str(), O_CREAT | (again ? O_APPEND : O_TRUNC) | O_WRONLY | O_CLOEXEC, 0644);
  if (fd < 0) return Status(StatusCode::kIoError, fmt::format("cannot create {}", log_path));
  if (again) {
    std::string banner =
        fmt::format("==== loco local: restart {} at {:.2f} s ====\n", child.restarts, s.elapsed());
    (void)!::write(fd, banner.data(), banner.size());
  }
  std::vector<std::string> full;
  if (s.lab) full = lab::inHost(*s.lab, s.hostOf(index));
  full.push_back(s.exe);
  full.insert(full.end(), args.begin(), args.end());
  if (!s.ca) {
    full.push_back("--insecure");
  } else if (index == 0 || args.front() == "coordinator") {
    full.insert(full.end(), {"--ca", s.ca->dir()});
  } else {
    // The child reads the same identity file; its certificate must carry that id.
    auto ident = crypto::loadOrCreateIdentity(fmt::format("{}/{}.id", s.out_dir, child.name));
    if (!ident) return ident.status();
    const std::string dir = fmt::format("{}/tls/{}", s.out_dir, child.name);
    if (Status st = issueInto(*s.ca, ident->id, dir, std::chrono::hours(24 * 7)); !st.isOk()) {
      return st;
    }
    full.insert(full.end(), {"--tls-dir", dir});
  }
  std::vector<char*> argv;
  for (auto& a : full) argv.push_back(a.data());
  argv.push_back(nullptr);
  uv_stdio_container_t stdio[3];
  stdio[0].flags = UV_IGNORE;
  stdio[1].flags = UV_INHERIT_FD;
  stdio[1].data.fd = fd;
  stdio[2].flags = UV_INHERIT_FD;
  stdio[2].data.fd = fd;
  uv_process_options_t opts{};
  opts.file = full[0].c_str();
  opts.args = argv.data();
  opts.exit_cb = onExit;
  opts.stdio = stdio;
  opts.stdio_count = 3;
  child.proc.data = &child;
  int rc = uv_spawn(&s.loop, &child.proc, &opts);
  ::close(fd);
  if (rc != 0)
    return Status(StatusCode::kIoError,
                  fmt::format("cannot start {}: {}", child.name, uv_strerror(rc)));
  child.started = child.running = true;
  child.exit_handled = true;
  child.pid = child.proc.pid;
  child.started_at = Clock::now();
  child.restart_at.reset();
  // A slow machine: the lab host's quota (the lab supervisor's sweep would also find it) or this
  // peer's own (--peer I:cpu=C).
  if (s.lab && s.lab->hostCpu(s.hostOf(index)) > 0)
    (void)lab::addToCgroup(s.lab->cgroupName(s.hostOf(index)), child.pid);
  if (child.cpu > 0) {
    Status st = lab::setCpuQuota(s.cgroupOf(index), child.cpu);
    if (st.isOk()) st = lab::addToCgroup(s.cgroupOf(index), child.pid);
    if (!st.isOk())
      s.say(fmt::format("{} runs without its CPU quota: {}", child.name, st.message()));
  }
  writeProcesses(s);
  return Status();
}

void signalChild(Child& c, int sig) {
  if (c.running) uv_process_kill(&c.proc, sig);
}

bool anyRunning(const Swarm& s, std::size_t from = 0) {
  for (std::size_t i = from; i < s.children.size(); ++i) {
    if (s.children[i]->running) return true;
  }
  return from == 0 && s.standby && s.standby->running;
}

void beginShutdown(Swarm& s, const std::string& why) {
  if (s.stopping()) return;
  if (!why.empty()) s.say(why);
  for (std::size_t i = 1; i < s.children.size(); ++i) {
    s.children[i]->expected_exit = true;
    s.children[i]->restart_at.reset();
    signalChild(*s.children[i], SIGTERM);
  }
  s.setPhase(Phase::kStopPeers);
}

std::string viewLine(const p2p::GroupView& v, const Swarm& s) {
  std::string ids;
  for (const auto& p : v.peers) {
    std::string label = shortId(p.id);
    for (std::size_t i = 1; i < s.children.size(); ++i) {
      if (s.children[i]->peer_id == p.id) label = s.children[i]->name;
    }
    ids += " " + label + (p.state == p2p::PeerState::kPending ? "(pending)" : "");
  }
  return fmt::format("epoch {:>2}  world {}  pending {}  |{}", v.epoch, v.world(), v.pending(),
                     ids);
}

// Each peer checkpoints into a folder of its own (so one peer's disk can fill up alone).
std::string checkpointDirOf(const Swarm& s, const Child& c) {
  return s.checkpoint_dir.empty() ? "" : s.checkpoint_dir + "/" + c.name;
}

std::vector<std::string> trainingPeerArgs(Swarm& s, std::size_t index, bool initial) {
  Child& c = *s.children[index];
  std::vector<std::string> args{"join",
                                "--coordinator",
                                s.coordinatorList(),
                                "--listen",
                                s.addressOf(index) + ":0",
                                "--identity",
                                fmt::format("{}/{}.id", s.out_dir, c.name),
                                "--log-level",
                                s.log_level,
                                "--rank",
                                std::to_string(index - 1),
                                "--world-hint",
                                std::to_string(s.peers),
                                "--wait-for",
                                initial ? std::to_string(s.peers) : "1",
                                "--metrics",
                                fmt::format("{}/{}.jsonl", s.out_dir, c.name),
                                "--measure-topology",
                                s.measure_topology ? "on" : "off"};
  if (s.relay_port > 0)
    args.insert(args.end(), {"--relay", fmt::format("{}:{}", s.addressOf(0), s.relay_port)});
  // The training flags, with --checkpoint-dir made per peer. A restarted peer resumes from its
  // checkpoint when it has one (the group's newer state then reaches it through shared state).
  c.resumed = false;
  bool resume_given = false;
  for (std::size_t i = 0; i < s.training_args.size(); ++i) {
    const std::string& a = s.training_args[i];
    if (a == "--checkpoint-dir" && i + 1 < s.training_args.size()) {
      args.push_back(a);
      args.push_back(checkpointDirOf(s, c));
      ++i;
      continue;
    }
    if (a == "--resume") {
      resume_given = true;
      if (!initial) continue;  // decided below
    }
    args.push_back(a);
  }
  if (!s.checkpoint_dir.empty()) {
    const bool have =
        std::filesystem::exists(fmt::format("{}/peer-{}.ckpt", checkpointDirOf(s, c), index - 1));
    if (!initial && have) {
      args.push_back("--resume");
      c.resumed = true;
    } else if (initial && resume_given) {
      c.resumed = true;
    }
  }
  return args;
}

// Reads what the peers appended to their metrics files since the last tick.
void readMetrics(Swarm& s) {
  for (std::size_t i = 1; i < s.children.size(); ++i) {
    const std::string path = fmt::format("{}/{}.jsonl", s.out_dir, s.children[i]->name);
    std::ifstream in(path);
    if (!in) continue;
    std::size_t& consumed = s.metrics_read[path];
    in.seekg(static_cast<std::streamoff>(consumed));
    std::string line;
    while (std::getline(in, line)) {
      if (in.eof()) break;  // a line still being written
      consumed += line.size() + 1;
      auto line_record = chaos::parseRoundLine(line, s.children[i]->name);
      if (!line_record) continue;
      const chaos::RoundLine& l = *line_record;
      StepRecord& r = s.steps[l.step];
      r.inner_step = l.inner_step;
      s.children[i]->last_inner = std::max(s.children[i]->last_inner, r.inner_step);
      r.world = static_cast<std::size_t>(l.world);
      if (std::isfinite(l.loss)) r.loss = l.loss;
      if (l.val_loss) r.val_loss = *l.val_loss;
      r.bytes_sent = std::max(r.bytes_sent, l.bytes_sent);
      r.wall_s = std::max(r.wall_s, l.wall_s);
      r.tokens_per_s = std::max(r.tokens_per_s, l.tokens_per_s);
      r.retries = std::max(r.retries, l.retries);
      r.digests[s.children[i]->name] = l.digest;
      r.batch = std::max(r.batch, l.batch);
      r.tokens = std::max(r.tokens, l.tokens);
      r.instances = l.instances;
      if (l.e2e_tokens_per_s) r.e2e_tokens_per_s[s.children[i]->name] = *l.e2e_tokens_per_s;
      if (l.utilization) r.utilization[s.children[i]->name] = *l.utilization;
    }
  }
}

std::uint64_t innerStepReached(const Swarm& s) {
  return s.steps.empty() ? 0 : s.steps.rbegin()->second.inner_step;
}

bool runComplete(const Swarm& s) {
  return s.total_steps > 0 && innerStepReached(s) >= s.total_steps;
}

// One line per outer step, once the evaluating peer has reported it.
void showProgress(Swarm& s) {
  for (auto& [step, r] : s.steps) {
    if (s.shown_any && step <= s.last_shown) continue;
    if (std::isnan(r.val_loss) && s.steps.rbegin()->first == step && s.phase == Phase::kTraining)
      break;  // wait for the evaluation
    s.say(fmt::format(
        "step {:>4} | inner {:>5}/{} | world {} | loss {} | val {} | {:>6.0f} tok/s | util "
        "{:>3.0f}% "
        "| sent {:8.1f} MB{}",
        step, r.inner_step, s.total_steps, r.world,
        std::isnan(r.loss) ? std::string("  -   ") : fmt::format("{:.4f}", r.loss),
        std::isnan(r.val_loss) ? std::string("  -   ") : fmt::format("{:.4f}", r.val_loss),
        r.e2eTokensPerS(), 100 * r.meanUtilization(), r.bytes_sent / 1e6,
        r.retries ? fmt::format(" ({} retries)", r.retries) : ""));
    s.last_shown = step;
    s.shown_any = true;
  }
}

void startPeer(Swarm& s, std::size_t index, bool initial) {
  Status st = spawn(s, *s.children[index], index, trainingPeerArgs(s, index, initial));
  if (!st.isOk()) {
    s.failure = st.message();
    beginShutdown(s, s.failure);
  }
}

std::vector<std::string> coordinatorArgs(const Swarm& s, bool standby = false) {
  std::vector<std::string> args{
      "coordinator",
      "--listen",
      fmt::format("{}:{}", s.addressOf(0), standby ? s.standby_port : s.port),  // 0 the first time
      "--port-file",
      s.out_dir + (standby ? "/standby.port" : "/coordinator.port"),
      "--heartbeat-interval",
      std::to_string(s.heartbeat_interval_ms),
      "--heartbeat-timeout",
      std::to_string(s.heartbeat_timeout_ms),
      "--log-level",
      s.log_level};
  // Two coordinators can be alive at once: only the side with a majority may train.
  if (s.quorum) args.push_back("--quorum");
  if (!standby && s.wantsRelay()) {
    // Written before --port-file, so the relay's port is known when the coordinator's is.
    args.insert(args.end(), {"--relay", fmt::format("{}:{}", s.addressOf(0), s.relay_port),
                             "--relay-port-file", s.out_dir + "/relay.port"});
  }
  if (!standby && !s.http_host.empty()) {
    args.insert(args.end(), {"--http", p2p::HostPort{s.http_host, s.http_port}.toString(),
                             "--http-port-file", s.out_dir + "/coordinator.http-port"});
  }
  return args;
}

// When a restart of `c` is due: the base backoff after a healthy life, doubling while it keeps
// dying young, capped.
void scheduleRestart(Swarm& s, Child& c) {
  const bool young = Clock::now() - c.started_at < kHealthyLife;
  c.short_lives = young ? c.short_lives + 1 : 0;
  c.backoff = young ? std::min(kMaxBackoff, c.short_lives > 1 ? c.backoff * 2 : s.restart_backoff)
                    : s.restart_backoff;
  c.restart_at = Clock::now() + c.backoff;
}

// The supervisor's look at every process that exited since the last tick (training).
void superviseExits(Swarm& s) {
  if (Child* sb = s.standby.get(); sb && sb->started && !sb->running && !sb->exit_handled) {
    sb->exit_handled = true;
    writeProcesses(s);
    if (!sb->expected_exit && !s.stopping()) {
      scheduleRestart(s, *sb);
      s.say(fmt::format("standby coordinator {}; restarting it on {}:{} in {:.1f} s",
                        describeExit(*sb), s.addressOf(0), s.standby_port, toSeconds(sb->backoff)));
    }
  }
  for (std::size_t i = 0; i < s.children.size(); ++i) {
    Child& c = *s.children[i];
    if (!c.started || c.running || c.exit_handled) continue;
    c.exit_handled = true;
    writeProcesses(s);
    if (c.expected_exit || s.stopping()) continue;
    if (i == 0) {
      if (!s.restart_dead) {
        s.failure =
            fmt::format("the coordinator {}; see {}/coordinator.log", describeExit(c), s.out_dir);
        beginShutdown(s, s.failure + " (--restart-dead off: stopping)");
        continue;
      }
      scheduleRestart(s, c);
      s.say(fmt::format("coordinator {}; restarting it on {}:{} in {:.1f} s", describeExit(c),
                        s.addressOf(0), s.port, toSeconds(c.backoff)));
      continue;
    }
    readMetrics(s);
    if (c.exit_status == 0 && c.term_signal == 0 && runComplete(s)) {
      c.finished = true;  // left after the last step, as it should
      writeProcesses(s);
      continue;
    }
    if (runComplete(s)) continue;  // died at the very end: nothing left to rejoin
    if (!s.restart_dead) {
      s.say(fmt::format("{} {} at inner step {}; the others train on (--restart-dead off)", c.name,
                        describeExit(c), innerStepReached(s)));
      continue;
    }
    scheduleRestart(s, c);
    if (c.short_lives > s.max_restarts) {
      c.gave_up = true;
      c.restart_at.reset();
      s.say(fmt::format(
          "{} {}; it died {} times in a row within {} s of starting: giving up on "
          "it (see {}/{}.log)",
          c.name, describeExit(c), c.short_lives, kHealthyLife.count() / 1000, s.out_dir, c.name));
      writeProcesses(s);
      continue;
    }
    s.say(fmt::format("{} {} at inner step {}; restarting it in {:.1f} s", c.name, describeExit(c),
                      innerStepReached(s), toSeconds(c.backoff)));
  }
}

// Starts every process whose restart is due.
void restartDue(Swarm& s) {
  if (s.stopping()) return;
  if (Child* sb = s.standby.get();
      sb && sb->restart_at && Clock::now() >= *sb->restart_at && !sb->running) {
    ++sb->restarts;
    if (Status st = spawn(s, *sb, 0, coordinatorArgs(s, true)); !st.isOk()) {
      s.failure = st.message();
      beginShutdown(s, s.failure);
    }
  }
  for (std::size_t i = 0; i < s.children.size(); ++i) {
    Child& c = *s.children[i];
    if (!c.restart_at || Clock::now() < *c.restart_at || c.running) continue;
    if (i > 0 && runComplete(s)) {
      c.restart_at.reset();
      continue;
    }
    ++c.restarts;
    if (i == 0) {
      Status st = spawn(s, c, 0, coordinatorArgs(s));
      if (!st.isOk()) {
        s.failure = st.message();
        beginShutdown(s, s.failure);
      }
      continue;
    }
    startPeer(s, i, false);
    s.say(fmt::format("{} restarted (restart {}{})", c.name, c.restarts,
                      c.resumed ? ", from its checkpoint" : ""));
  }
}

void tickTraining(Swarm& s, const std::optional<p2p::GroupView>& view) {
  if (s.phase == Phase::kStartPeers) {
    if (s.next_peer > static_cast<std::size_t>(s.peers)) {
      s.say(fmt::format("all {} peers started; training ({} inner steps per peer)", s.peers,
                        s.total_steps));
      s.setPhase(Phase::kTraining);
      return;
    }
    // The ring is the order of registration: start the next peer once the previous one is known
    // (the first peers wait for all of them before training, so they are still registered).
    if (s.next_peer == 1 || (view && view->peers.size() >= s.next_peer - 1)) {
      startPeer(s, s.next_peer, true);
      ++s.next_peer;
      s.phase_since = Clock::now();
    } else if (s.inPhase() > Millis(30000)) {
      s.failure = fmt::format("peer-{} did not register within 30 s", s.next_peer - 1);
      beginShutdown(s, s.failure);
    }
    return;
  }
  if (s.phase != Phase::kTraining) return;
  readMetrics(s);
  showProgress(s);
  const std::uint64_t reached = innerStepReached(s);
  if (s.kill_at >= 0 && !s.killed && reached >= static_cast<std::uint64_t>(s.kill_at)) {
    Child& victim = *s.children[static_cast<std::size_t>(s.peers)];
    victim.expected_exit = true;  // leaves for good: not restarted
    s.killed = true;
    s.say(fmt::format("chaos: kill -9 {} at inner step {}", victim.name, reached));
    signalChild(victim, SIGKILL);
  }
  if (s.join_at >= 0 && !s.added && reached >= static_cast<std::uint64_t>(s.join_at)) {
    s.added = true;
    const std::size_t index = s.children.size() - 1;  // prepared in runLocal
    s.say(fmt::format("chaos: {} joins at inner step {}", s.children[index]->name, reached));
    startPeer(s, index, false);
  }
  if (runComplete(s) && !s.completed_at) {
    s.completed_at = Clock::now();
    for (auto& c : s.children) c->restart_at.reset();
  }
  // The peers leave by themselves when the schedule is done; a dead one waits for its restart.
  bool pending = false;
  for (std::size_t i = 1; i < s.children.size(); ++i)
    pending = pending || s.children[i]->running || s.children[i]->restart_at.has_value();
  if (!pending) {
    readMetrics(s);
    showProgress(s);
    s.say(runComplete(s) ? "all peers finished; stopping the coordinator (SIGTERM)"
                         : "no peer left to train, and none to restart; stopping the coordinator");
    for (Child* c : s.coordinators()) {
      c->expected_exit = true;
      c->restart_at.reset();
      signalChild(*c, SIGTERM);
    }
    s.setPhase(Phase::kStopCoordinator);
  } else if (s.completed_at && Clock::now() - *s.completed_at > kStragglerGrace &&
             Clock::now() - *s.completed_at <= kFinishGrace) {
    for (std::size_t i = 1; i < s.children.size(); ++i) {
      Child& c = *s.children[i];
      if (!c.running || c.expected_exit || c.last_inner >= s.total_steps) continue;
      c.expected_exit = true;
      s.say(
          fmt::format("the run is over but {} was not in its last round (it reported inner "
                      "step {}); stopping it (SIGTERM)",
                      c.name, c.last_inner));
      signalChild(c, SIGTERM);
    }
  } else if (s.completed_at && Clock::now() - *s.completed_at > kFinishGrace) {
    beginShutdown(s, fmt::format("the run reached its last step {} s ago but some peers are still "
                                 "there; stopping them",
                                 kFinishGrace.count() / 1000));
  }
}

// run.jsonl, plots and the summary lines of a training run. Returns whether every reporting
// peer's shared-state digest agreed after every round.
bool writeTrainingResults(Swarm& s) {
  readMetrics(s);
  std::string jsonl;
  PlotSeries train_vs_step{"train loss", "#1f77b4", {}},
      val_vs_step{"validation loss", "#d62728", {}};
  PlotSeries train_vs_bytes{"train loss", "#1f77b4", {}},
      val_vs_bytes{"validation loss", "#d62728", {}};
  PlotSeries batch_vs_step{"per-peer batch", "#2ca02c", {}};
  std::vector<std::uint64_t> batch_changes;  // the batch trajectory (adaptive batch runs)
  std::vector<std::pair<std::uint64_t, std::uint32_t>> merges;  // (outer step, instances after)
  std::uint32_t instances_before = 0;
  std::size_t disagreements = 0;
  std::optional<double> first_val, last_val;
  double tokens = 0, e2e_tokens = 0, utilization = 0;
  std::size_t token_samples = 0;
  for (const auto& [step, r] : s.steps) {
    std::set<std::string> distinct;
    for (const auto& [peer, d] : r.digests) distinct.insert(d);
    const bool agree = distinct.size() <= 1;
    if (!agree) ++disagreements;
    jsonl += jsonDump({{"step", step},
                       {"inner_step", r.inner_step},
                       {"world", r.world},
                       {"loss", jsonFixed(r.loss, 6)},
                       {"val_loss", jsonFixed(r.val_loss, 6)},
                       {"bytes_sent", jsonFixed(r.bytes_sent, 0)},
                       {"wall_s", jsonFixed(r.wall_s, 3)},
                       {"retries", r.retries},
                       {"peers_reporting", r.digests.size()},
                       {"digests_agree", agree},
                       {"batch", jsonFixed(r.batch, 0)},
                       {"tokens", jsonFixed(r.tokens, 0)},
                       {"instances", r.instances}}) +
             "\n";
    if (instances_before == 0 || r.instances != instances_before)
      merges.emplace_back(step, r.instances);
    instances_before = r.instances;
    if (r.batch > 0) {
      batch_vs_step.points.emplace_back(static_cast<double>(r.inner_step), r.batch);
      const auto b = static_cast<std::uint64_t>(r.batch);
      if (batch_changes.empty() || batch_changes.back() != b) batch_changes.push_back(b);
    }
    train_vs_step.points.emplace_back(static_cast<double>(r.inner_step), r.loss);
    val_vs_step.points.emplace_back(static_cast<double>(r.inner_step), r.val_loss);
    train_vs_bytes.points.emplace_back(r.bytes_sent, r.loss);
    val_vs_bytes.points.emplace_back(r.bytes_sent, r.val_loss);
    if (std::isfinite(r.val_loss)) {
      if (!first_val) first_val = r.val_loss;
      last_val = r.val_loss;
    }
    if (r.tokens_per_s > 0) tokens += r.tokens_per_s, ++token_samples;
    if (!r.e2e_tokens_per_s.empty()) {
      e2e_tokens = r.e2eTokensPerS();
      utilization = r.meanUtilization();
    }
  }
  for (Status st :
       {writeFileAtomic(s.out_dir + "/run.jsonl", jsonl),
        writeSvgPlot(s.out_dir + "/loss_vs_steps.svg", "loss against inner steps",
                     "inner steps per peer", "loss (nats/byte)", {train_vs_step, val_vs_step}),
        writeSvgPlot(s.out_dir + "/loss_vs_bytes.svg", "loss against bytes sent",
                     "bytes sent by all peers", "loss (nats/byte)",
                     {train_vs_bytes, val_vs_bytes})}) {
    if (!st.isOk()) s.say("could not write results: " + st.message());
  }
  std::printf("\ntraining: %zu outer steps",
              s.steps.empty() ? 0 : static_cast<std::size_t>(s.steps.rbegin()->first));
  if (first_val && last_val) std::printf(", validation loss %.4f -> %.4f", *first_val, *last_val);
  if (!s.steps.empty())
    std::printf(", %.1f MB sent, %.1f s", s.steps.rbegin()->second.bytes_sent / 1e6, s.elapsed());
  if (token_samples) {
    std::printf(
        ", %.0f tokens/s end to end (all peers; compute alone %.0f per peer), %.0f %% "
        "compute utilization",
        e2e_tokens, tokens / static_cast<double>(token_samples), 100 * utilization);
  }
  if (batch_changes.size() > 1) {
    std::string trajectory;
    for (std::uint64_t b : batch_changes)
      trajectory += (trajectory.empty() ? "" : " -> ") + std::to_string(b);
    std::printf("\nbatch per peer: %s", trajectory.c_str());
    Status st =
        writeSvgPlot(s.out_dir + "/batch_vs_steps.svg", "per-peer batch against inner steps",
                     "inner steps per peer", "windows per inner step", {batch_vs_step});
    if (!st.isOk()) s.say("could not write results: " + st.message());
  }
  if (merges.size() > 1) {
    std::string said = std::to_string(merges.front().second) + " instances";
    for (std::size_t i = 1; i < merges.size(); ++i)
      said += fmt::format(" -> {} after round {}", merges[i].second, merges[i].first);
    std::printf("\ninstances per peer: %s", said.c_str());
  }
  std::printf("\nshared-state digests: %s\n",
              disagreements == 0 ? "equal on every reporting peer after every round"
                                 : fmt::format("DIFFERED in {} round(s)", disagreements).c_str());
  std::printf("wrote %s/run.jsonl, %s/loss_vs_steps.svg, %s/loss_vs_bytes.svg\n", s.out_dir.c_str(),
              s.out_dir.c_str(), s.out_dir.c_str());
  return disagreements == 0;
}

void tick(Swarm& s) {
  Child& coord = *s.children[0];
  if (s.phase != Phase::kDone && Clock::now() - s.started > s.deadline_after) {
    s.failure = fmt::format("the run did not finish within {} ms", s.deadline_after.count());
    s.say(s.failure + "; killing every process");
    for (auto& c : s.children) {
      c->restart_at.reset();
      signalChild(*c, SIGKILL);
    }
    if (s.standby) {
      s.standby->restart_at.reset();
      signalChild(*s.standby, SIGKILL);
    }
    s.setPhase(Phase::kDone);
  }
  if (s.training) {
    superviseExits(s);
    restartDue(s);
  } else {
    // The membership demo: any unexpected death ends it.
    for (auto& c : s.children) {
      if (c->started && !c->running && !c->expected_exit && s.failure.empty()) {
        s.failure = fmt::format("{} exited unexpectedly (status {}, signal {}); see {}/{}.log",
                                c->name, c->exit_status, c->term_signal, s.out_dir, c->name);
        c->expected_exit = true;
        beginShutdown(s, s.failure);
      }
    }
  }
  std::optional<p2p::GroupView> view;
  // The view of the coordinator that holds the group (with a standby: the one with more peers).
  for (Child* c : s.coordinators()) {
    const std::uint16_t port = c == &coord ? s.port : s.standby_port;
    if (port == 0 || !c->running) continue;
    auto v = p2p::fetchStatus({s.addressOf(0), port}, Deadline::after(Millis(500)));
    if (v && (!view || v->peers.size() > view->peers.size())) view = std::move(v.value());
  }
  if (view) {
    std::string line = viewLine(*view, s);
    if (line != s.last_view) {
      s.say(line);
      s.last_view = line;
    }
  }
  switch (s.phase) {
    case Phase::kStartCoordinator: {
      std::ifstream f(s.out_dir + "/coordinator.port");
      int port = 0, standby_port = 0;
      if (s.standby) {
        std::ifstream g(s.out_dir + "/standby.port");
        g >> standby_port;
      }
      if (f >> port && port > 0 && (!s.standby || standby_port > 0)) {
        s.port = static_cast<std::uint16_t>(port);
        s.standby_port = static_cast<std::uint16_t>(std::max(0, standby_port));
        if (int relay_port = 0; std::ifstream(s.out_dir + "/relay.port") >> relay_port) {
          s.relay_port = static_cast<std::uint16_t>(relay_port);
          s.say(fmt::format("relay for the lab's NATed hosts on {}:{}", s.addressOf(0),
                            s.relay_port));
        }
        writeProcesses(s);
        s.say(fmt::format(
            "coordinator listening on {}:{}{}; starting {} peers", s.addressOf(0), port,
            s.standby ? fmt::format(", a standby on port {}", standby_port) : "", s.peers));
        if (int http_port = 0;
            std::ifstream(s.out_dir + "/coordinator.http-port") >> http_port && http_port > 0) {
          s.http_port = static_cast<std::uint16_t>(http_port);
          std::string host = s.http_host == "0.0.0.0" ? "127.0.0.1" : s.http_host;
          s.say(fmt::format("dashboard: http://{}/ (metrics at /metrics){}",
                            p2p::HostPort{host, s.http_port}.toString(),
                            s.lab ? fmt::format(", inside lab host {}1", s.lab->name) : ""));
        }
        if (s.training) {
          s.setPhase(Phase::kStartPeers);
          break;
        }
        for (std::size_t i = 1; i < s.children.size(); ++i) {
          Child& c = *s.children[i];
          Status st = spawn(
              s, c, i,
              {"join", "--idle", "--coordinator", fmt::format("{}:{}", s.addressOf(0), s.port),
               "--listen", s.addressOf(i) + ":0", "--identity",
               fmt::format("{}/{}.id", s.out_dir, c.name), "--log-level", s.log_level});
          if (!st.isOk()) {
            s.failure = st.message();
            return beginShutdown(s, s.failure);
          }
        }
        s.setPhase(Phase::kWaitAdmitted);
      } else if (s.inPhase() > Millis(10000)) {
        s.failure = "the coordinator did not start listening within 10 s";
        beginShutdown(s, s.failure);
      }
      break;
    }
    case Phase::kWaitAdmitted:
      if (view && view->world() == static_cast<std::size_t>(s.peers) && view->pending() == 0) {
        s.say(fmt::format("all {} peers admitted; holding {} ms", s.peers, s.hold.count()));
        s.setPhase(Phase::kHold);
      }
      break;
    case Phase::kHold:
      if (s.inPhase() >= s.hold) {
        Child& leaver = *s.children.back();
        leaver.expected_exit = true;
        s.say(fmt::format("{} leaves (SIGTERM)", leaver.name));
        signalChild(leaver, SIGTERM);
        s.setPhase(Phase::kWaitLeave);
      }
      break;
    case Phase::kWaitLeave:
      if (!s.children.back()->running && view &&
          view->world() == static_cast<std::size_t>(s.peers - 1) && s.inPhase() >= Millis(1000)) {
        beginShutdown(s, "stopping the remaining peers (SIGTERM)");
      }
      break;
    case Phase::kStartPeers:
    case Phase::kTraining:
      tickTraining(s, view);
      break;
    case Phase::kStopPeers:
      // The grace period counts from when the shutdown began (this phase), not from the tick.
      if (!anyRunning(s, 1)) {
        s.say("all peers exited; stopping the coordinator (SIGTERM)");
        for (Child* c : s.coordinators()) {
          c->expected_exit = true;
          c->restart_at.reset();
          signalChild(*c, SIGTERM);
        }
        s.setPhase(Phase::kStopCoordinator);
      } else if (s.inPhase() > Millis(5000)) {
        s.say("peers did not stop within 5 s; killing them");
        for (std::size_t i = 1; i < s.children.size(); ++i) signalChild(*s.children[i], SIGKILL);
        s.setPhase(Phase::kStopPeers);  // once per 5 s, not every tick
      }
      break;
    case Phase::kStopCoordinator:
      if (!coord.running && !(s.standby && s.standby->running)) {
        s.setPhase(Phase::kDone);
      } else if (s.inPhase() > Millis(5000)) {
        for (Child* c : s.coordinators()) signalChild(*c, SIGKILL);
      }
      break;
    case Phase::kDone:
      break;
  }
  if (s.phase == Phase::kDone && !anyRunning(s)) {
    uv_timer_stop(&s.timer);
    uv_close(reinterpret_cast<uv_handle_t*>(&s.timer), nullptr);
    uv_close(reinterpret_cast<uv_handle_t*>(&s.sigint), nullptr);
    uv_close(reinterpret_cast<uv_handle_t*>(&s.sigterm), nullptr);
  }
}

void onSignal(uv_signal_t* h, int sig) {
  auto* s = static_cast<Swarm*>(h->data);
  s->interrupted = true;
  beginShutdown(*s, fmt::format("signal {}: stopping every process", sig));
}

// --peer I:cpu=C (repeated): per-peer CPU quotas.
Result<std::map<int, double>> parsePeerOverrides(const std::vector<std::string>& specs, int peers) {
  std::map<int, double> out;
  for (const std::string& spec : specs) {
    auto colon = spec.find(':');
    auto eq = spec.find('=', colon == std::string::npos ? 0 : colon);
    if (colon == std::string::npos || eq == std::string::npos ||
        spec.substr(colon + 1, eq - colon - 1) != "cpu") {
      return Status(StatusCode::kInvalidArgument,
                    fmt::format("--peer '{}': want I:cpu=C (peer I runs with C cores' worth of "
                                "CPU, e.g. 2:cpu=0.33)",
                                spec));
    }
    auto index =
        lab::parseNumber(fmt::format("--peer '{}' index", spec), spec.substr(0, colon), 1, peers);
    if (!index) return index.status();
    auto cores = lab::parseNumber(fmt::format("--peer '{}' cpu", spec), spec.substr(eq + 1), 0.01,
                                  lab::kMaxCpuCores);
    if (!cores) return cores.status();
    out[static_cast<int>(*index)] = *cores;
  }
  return out;
}

}  // namespace

int runLocal(const Args& args) {
  std::vector<FlagSpec> specs{
      {"peers", "number of peers", "4"},
      {"out", "directory for logs, identities, run.jsonl and plots", "loco-local"},
      {"insecure", "plaintext connections (default: TLS with a throwaway run CA in --out/ca)", "",
       true},
      {"idle", "membership demo instead of training: all join, one leaves, all stop", "", true},
      {"hold-ms", "--idle: ms to keep the full group before one peer leaves", "2000"},
      {"timeout-ms",
       "give up (and kill everything) after this long (default: 60 s idle, 30 min training)", ""},
      {"kill-at", "training: kill -9 the last peer once the run reaches this inner step", ""},
      {"join-at", "training: start one more peer once the run reaches this inner step", ""},
      {"lab", "place the coordinator in host 1 and the peers round-robin in this lab's hosts", ""},
      {"measure-topology",
       "on: peers probe their links to members they have not measured yet and the ring is ordered "
       "around slow ones; off: a fixed ring (default: on with --lab, off otherwise)",
       ""},
      {"restart-dead",
       "on: restart a peer (or the coordinator) that dies before the run's last step; off: the "
       "others train on without it",
       "on"},
      {"restart-backoff-ms", "wait before the first restart of a dead process (doubles, max 30 s)",
       "1000"},
      {"max-restarts", "give up on a peer after this many lives in a row shorter than 30 s", "20"},
      {"peer", "I:cpu=C: peer I (1-based) runs with C cores' worth of CPU (a cgroup quota; root)",
       "", false, true},
      {"heartbeat-interval", "the coordinator's heartbeat interval, ms", "250"},
      {"heartbeat-timeout", "the coordinator evicts a peer silent this long, ms", "2000"},
      {"standby",
       "on: a standby coordinator beside the first; the peers fail over to it (training); both "
       "apply the quorum rule (loco coordinator --quorum)",
       "off"},
      {"http",
       "the coordinator's dashboard and /metrics at HOST:PORT (port 0: any free port; off: none)",
       "127.0.0.1:0"}};
  for (auto& spec : trainingFlagSpecs()) specs.push_back(std::move(spec));
  Flags flags("local",
              "train on this machine: a coordinator and N peers as processes, with a live view",
              std::move(specs));
  if (int rc = parseAndSetUp(flags, args, "local"); rc >= 0) return rc;
  const bool training = !flags.getBool("idle");
  // A training run of one peer is the single-worker baseline; the membership demo needs two.
  auto peers = flags.getInt("peers", training ? 1 : 2, 64);
  auto hold = flags.getInt("hold-ms", 0, 3600000);
  auto backoff = flags.getInt("restart-backoff-ms", 0, 600000);
  auto max_restarts = flags.getInt("max-restarts", 0, 1000000);
  auto hb_interval = flags.getInt("heartbeat-interval", 10, 60000);
  auto hb_timeout = flags.getInt("heartbeat-timeout", 100, 600000);
  for (const auto* r : {&peers, &hold, &backoff, &max_restarts, &hb_interval, &hb_timeout}) {
    if (!*r) return reportFailure(r->status());
  }
  auto restart = flags.getOnOff("restart-dead");
  if (!restart) return reportFailure(restart.status());
  auto standby = flags.getOnOff("standby");
  if (!standby) return reportFailure(standby.status());
  if (*standby && !training)
    return reportFailure(
        Status(StatusCode::kInvalidArgument, "--standby is for training runs, not --idle"));
  auto overrides = parsePeerOverrides(flags.getAll("peer"), static_cast<int>(*peers));
  if (!overrides) return reportFailure(overrides.status());
  if (!overrides->empty()) {
    if (!training)
      return reportFailure(
          Status(StatusCode::kInvalidArgument, "--peer is for training runs, not --idle"));
    if (auto root = lab::detectCpuCgroup(); !root) return reportFailure(root.status());
    if (::geteuid() != 0)
      return reportFailure(
          Status(StatusCode::kUnavailable, "--peer I:cpu=C needs root (it writes cgroup files)"));
  }
  std::int64_t timeout_ms = training ? 1800000 : 60000;
  if (flags.isSet("timeout-ms")) {
    auto t = flags.getInt("timeout-ms", 1000, 86400000);
    if (!t) return reportFailure(t.status());
    timeout_ms = *t;
  }
  Swarm s;
  s.training = training;
  s.restart_dead = *restart;
  s.restart_backoff = Millis(*backoff);
  s.max_restarts = static_cast<int>(*max_restarts);
  s.heartbeat_interval_ms = static_cast<int>(*hb_interval);
  s.heartbeat_timeout_ms = static_cast<int>(*hb_timeout);
  if (training) {
    // Every problem with the training flags or the data shows here, before any process starts.
    auto config = trainingConfigFromFlags(flags);
    if (!config) return reportFailure(config.status());
    auto corpus = training::TextCorpus::load(config->train.data, config->train.model.context);
    if (!corpus) return reportFailure(corpus.status());
    s.training_args = forwardedTrainingFlags(flags);
    s.method = methodDescription(flags, *config);
    s.total_steps = config->steps;
    s.checkpoint_dir = config->checkpoint_dir;
    for (auto [name, out] :
         {std::pair<const char*, std::int64_t*>{"kill-at", &s.kill_at}, {"join-at", &s.join_at}}) {
      if (!flags.isSet(name)) continue;
      auto v = flags.getInt(name, 0, static_cast<std::int64_t>(config->steps));
      if (!v) return reportFailure(v.status());
      *out = *v;
    }
    if (s.kill_at >= 0 && s.join_at >= 0 && s.join_at < s.kill_at) {
      return reportFailure(
          Status(StatusCode::kInvalidArgument, "--join-at must not come before --kill-at"));
    }
    // One LibTorch/OpenMP thread per peer unless told otherwise; spinning OpenMP threads steal
    // the cores the other peers need.
    ::setenv("OMP_WAIT_POLICY", "PASSIVE", 0);
    ::setenv("OMP_NUM_THREADS", flags.get("threads").c_str(), 0);
  } else if (flags.isSet("kill-at") || flags.isSet("join-at")) {
    return reportFailure(Status(StatusCode::kInvalidArgument,
                                "--kill-at and --join-at are for training runs, not --idle"));
  }
  if (flags.isSet("lab")) {
    auto cfg = lab::loadLab(flags.get("lab"));
    if (!cfg) return reportFailure(cfg.status());
    // This process watches from host 1, where the coordinator lives (before any thread starts).
    if (cfg->hostNat(1) != lab::NatMode::kNone)
      return reportFailure(
          Status(StatusCode::kInvalidArgument,
                 fmt::format("--lab {}: host 1 runs the coordinator and must not be "
                             "behind a NAT (put NATed hosts at 2 and above)",
                             cfg->name)));
    if (Status st = lab::enterHost(*cfg, 1); !st.isOk()) return reportFailure(st);
    s.lab = std::move(cfg.value());
  }
  if (flags.get("measure-topology").empty()) {
    s.measure_topology = s.lab.has_value();
  } else {
    auto mt = flags.getOnOff("measure-topology");
    if (!mt) return reportFailure(mt.status());
    s.measure_topology = *mt;
  }
  if (flags.get("http") != "off") {
    auto http = p2p::parseHostPort(flags.get("http"), /*allow_port_zero=*/true);
    if (!http) return reportFailure(http.status().withContext("--http"));
    s.http_host = http->host;
    s.http_port = http->port;
  }
  s.exe = selfExecutable();
  s.out_dir = flags.get("out");
  s.peers = static_cast<int>(*peers);
  s.hold = Millis(*hold);
  s.deadline_after = Millis(timeout_ms);
  s.log_level = flags.get("log-level");
  if (std::error_code ec; !std::filesystem::create_directories(s.out_dir, ec) && ec) {
    return reportFailure(
        Status(StatusCode::kIoError,
               fmt::format("cannot create --out directory {}: {}", s.out_dir, ec.message())));
  }
  if (flags.getBool("insecure")) {
    p2p::tls::useInsecure();
  } else {
    // A throwaway CA (made on the first run in this --out), and a certificate for this
    // process's own status requests.
    const std::string ca_dir = s.out_dir + "/ca";
    auto ca = std::filesystem::exists(ca_dir + "/ca.key")
                  ? crypto::RunCa::load(ca_dir)
                  : crypto::RunCa::init(ca_dir, std::chrono::hours(24 * 30));
    if (!ca) return reportFailure(ca.status());
    s.ca = std::move(*ca);
    std::filesystem::create_directories(s.out_dir + "/tls");
    const std::string self_dir = s.out_dir + "/tls/local";
    if (Status st =
            issueInto(*s.ca, crypto::ephemeralIdentity().id, self_dir, std::chrono::hours(24 * 7));
        !st.isOk() || !(st = useTlsDir(self_dir)).isOk()) {
      return reportFailure(st);
    }
  }
  ::unlink((s.out_dir + "/coordinator.port").c_str());
  ::unlink((s.out_dir + "/standby.port").c_str());
  ::unlink((s.out_dir + "/coordinator.http-port").c_str());

  s.children.push_back(std::make_unique<Child>(Child{"coordinator"}));
  const int extra = s.join_at >= 0 ? 1 : 0;  // the late joiner, started by --join-at
  for (int i = 1; i <= s.peers + extra; ++i) {
    auto c = std::make_unique<Child>();
    c->name = fmt::format("peer-{}", i);
    auto ident = crypto::loadOrCreateIdentity(fmt::format("{}/{}.id", s.out_dir, c->name));
    if (!ident) return reportFailure(ident.status());
    c->peer_id = ident->id;
    if (auto it = overrides->find(i); it != overrides->end()) c->cpu = it->second;
    s.children.push_back(std::move(c));
  }
  for (auto& c : s.children)
    ::unlink(fmt::format("{}/{}.jsonl", s.out_dir, c->name).c_str());  // a fresh run

  uv_loop_init(&s.loop);
  uv_timer_init(&s.loop, &s.timer);
  s.timer.data = &s;
  uv_signal_init(&s.loop, &s.sigint);
  uv_signal_init(&s.loop, &s.sigterm);
  s.sigint.data = s.sigterm.data = &s;
  uv_signal_start(&s.sigint, onSignal, SIGINT);
  uv_signal_start(&s.sigterm, onSignal, SIGTERM);

  s.say(fmt::format("local swarm: 1 coordinator + {} peers{}, logs in {}/", s.peers,
                    s.lab ? fmt::format(" in lab {} ({} hosts)", s.lab->name, s.lab->hosts) : "",
                    s.out_dir));
  if (s.training) s.say("training with " + s.method);
  s.quorum = *standby;
  Status st = spawn(s, *s.children[0], 0, coordinatorArgs(s));
  if (!st.isOk()) return reportFailure(st);
  if (*standby) {
    s.standby = std::make_unique<Child>(Child{"standby"});
    if (st = spawn(s, *s.standby, 0, coordinatorArgs(s, true)); !st.isOk()) {
      signalChild(*s.children[0], SIGKILL);
      return reportFailure(st);
    }
  }
  uv_timer_start(
      &s.timer, [](uv_timer_t* t) { tick(*static_cast<Swarm*>(t->data)); }, 0, 200);
  uv_run(&s.loop, UV_RUN_DEFAULT);
  uv_loop_close(&s.loop);
  for (std::size_t i = 1; i < s.children.size(); ++i) {
    if (s.children[i]->cpu > 0) lab::removeCgroup(s.cgroupOf(i));
  }
  writeProcesses(s);

  bool digests_agree = true;
  if (s.training) digests_agree = writeTrainingResults(s);
  std::printf("\nsummary:\n");
  std::vector<Child*> all;
  for (auto& c : s.children) all.push_back(c.get());
  if (s.standby) all.push_back(s.standby.get());
  for (Child* c : all) {
    if (!c->started) continue;
    std::string what;
    if (c == s.children[static_cast<std::size_t>(s.peers)].get() && s.killed &&
        c->term_signal == SIGKILL) {
      what = "killed by --kill-at (as asked)";
    } else {
      what = c->exit_status == 0 && c->term_signal == 0
                 ? "exited cleanly (status 0)"
                 : fmt::format("exit status {}, signal {}", c->exit_status, c->term_signal);
    }
    if (c->restarts) what += fmt::format("; restarted {} time(s)", c->restarts);
    if (c->gave_up) what += "; given up";
    std::printf("  %-12s %s\n", c->name.c_str(), what.c_str());
  }
  if (!digests_agree && s.failure.empty()) s.failure = "peers disagreed on the shared state";
  if (!s.failure.empty()) std::printf("failure: %s\n", s.failure.c_str());
  if (s.interrupted) {
    std::printf("interrupted\n");
    return 130;
  }
  bool ok = s.failure.empty();
  if (s.training) {
    // The run's verdict: it reached its last step with one state everywhere.
    const bool complete = runComplete(s);
    ok = ok && complete;
    const std::string verdict =
        complete ? fmt::format("the run reached its last step ({} inner steps){}", s.total_steps,
                               ok ? "" : ", but see the failure above")
                 : fmt::format("the run did NOT reach its last step ({} of {} inner steps)",
                               innerStepReached(s), s.total_steps);
    std::printf("%s\n", verdict.c_str());
  } else {
    for (auto& c : s.children)
      ok = ok && (!c->started || (c->exit_status == 0 && c->term_signal == 0));
    std::printf("%s\n",
                ok ? "all processes exited cleanly" : "the local swarm did not finish cleanly");
  }
  return ok ? 0 : 1;
}

}  // namespace loco::cli
